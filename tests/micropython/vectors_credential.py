"""protocol/vectors/credential.json: technician certificates, their checks against a kiosk,
the technician's proof, hub-signed time, revocation lists and bad documents."""

from check import done, equal, hexed, raises, true, vectors

from protocol.crypto import Ed25519PrivateKey
from protocol.sync import credential as c

V = vectors("credential")
HUB = Ed25519PrivateKey.from_private_bytes(hexed(V["hub_seed"]))
HUB_PUB = HUB.public_key().public_bytes_raw()
TECH = Ed25519PrivateKey.from_private_bytes(hexed(V["technician_seed"]))

v = V["certificate"]
doc = c.issue(HUB, name=v["name"], serial=v["serial"],
              technician_ed25519=hexed(v["technician_ed25519"]), not_before=v["not_before"],
              expires=v["expires"], sites=v["sites"], kiosks=v["kiosks"], actions=v["actions"])
equal(doc.hex(), v["bytes"], "certificate")
tech = c.read_technician(doc, HUB_PUB)
equal([tech.name, tech.serial, list(tech.sites), list(tech.kiosks), list(tech.actions),
       tech.not_before, tech.expires, tech.ed25519.hex()],
      [v["name"], v["serial"], v["sites"], v["kiosks"], v["actions"], v["not_before"],
       v["expires"], v["technician_ed25519"]], "certificate read back")

for case in V["checks"]:
    args = {"now": case["now"], "site": case["site"], "device_id": case["device"],
            "revoked": frozenset(case["revoked"]), "lower_bound": case["lower_bound"],
            "action": case["action"]}
    if case["code"] is None:
        equal(c.check(tech, **args), None, "check")
    else:
        raises(case["code"], c.check, tech, **args)

a = V["auth"]
nonce, binding = hexed(a["nonce"]), hexed(a["binding"])
equal(c.auth_message(nonce, a["device"], binding).hex(), a["message"], "auth message")
equal(c.sign_auth(TECH, nonce, a["device"], binding).hex(), a["signature"], "auth signature")
equal(c.verify_auth(tech, hexed(a["signature"]), nonce, a["device"], binding), None, "auth")
for other in [(nonce, "00000012", binding), (nonce, a["device"], b"another port"),
              (bytes(32), a["device"], binding)]:
    raises("bad-proof", c.verify_auth, tech, hexed(a["signature"]), *other)

t = V["time"]
equal(c.sign_time(HUB, hexed(t["nonce"]), t["time"]).hex(), t["bytes"], "time statement")
equal(c.read_time(hexed(t["bytes"]), HUB_PUB, hexed(t["nonce"])), t["time"], "time read")
raises(t["other_code"], c.read_time, hexed(t["bytes"]), HUB_PUB, hexed(t["other_nonce"]))

r = V["revocations"]
equal(c.sign_revocations(HUB, r["number"], r["issued"], r["serials"]).hex(), r["bytes"],
      "revocations")
got = c.read_revocations(hexed(r["bytes"]), HUB_PUB)
equal([got.number, got.issued, sorted(got.serials)], [r["number"], r["issued"], r["serials"]],
      "revocations read")

READERS = {"technician": lambda doc: c.read_technician(doc, HUB_PUB),
           "revocations": lambda doc: c.read_revocations(doc, HUB_PUB),
           "time": lambda doc: c.read_time(doc, HUB_PUB, bytes(32))}
for case in V["bad"]:
    refused = raises(case["code"], READERS[case["reader"]], hexed(case["bytes"]))
    true(isinstance(refused, c.CredentialError), case["what"])

done()
