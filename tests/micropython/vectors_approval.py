"""protocol/vectors/approval.json: an offline enrolment approval signed byte for byte, read
back, refused once expired, the enrolment that presents it, and bad approvals' codes."""

from check import done, equal, hexed, raises, vectors

from protocol.crypto import Ed25519PrivateKey
from protocol.sync import approval

V = vectors("approval")
hub_ed = Ed25519PrivateKey.from_private_bytes(hexed(V["hub_seed"]))
hub_pub = hub_ed.public_key().public_bytes_raw()
fields = {k: x for k, x in V["approval"].items() if k != "bytes"}
doc = hexed(V["approval"]["bytes"])
equal(approval.issue(hub_ed, hexed(V["hub_x25519"]), **fields), doc, "issue")
a = approval.read_approval(doc, hub_pub, fields["expires"] - 1)
equal({k: getattr(a, k) for k in fields}, fields, "read back")
raises("expired", approval.read_approval, doc, hub_pub, fields["expires"])
request = hexed(V["enrolment"]["request"])
equal(approval.enrolment(doc, request).hex(), V["enrolment"]["bytes"], "enrolment")
for bad in V["bad"]:
    raises(bad["code"], approval.read_approval, hexed(bad["bytes"]), hub_pub)

done()
