"""protocol/vectors/scope.json: verifier ids and year verifiers, scope checksums and heads,
the signed stable point, which records each role's scope holds, bad scopes, and the sync
messages that carry scopes, byte for byte."""

from check import done, edn, equal, hexed, raises, true, vectors

from protocol import messages
from protocol.crypto import Ed25519PrivateKey
from protocol.sync import batches  # noqa: F401  (registers the sync messages)
from protocol.sync.scope import (
    Scope,
    StablePointError,
    facts_of,
    heads_of,
    in_scope,
    open_stable_point,
    scope_checksum,
    scope_checksum_v1,
    sign_stable_point,
    verifier_record_id,
    year_verifier,
)

V = vectors("scope")


key = hexed(V["fleet_key"])
for v in V["verifiers"]:
    pid = hexed(v["pid"])
    equal(verifier_record_id(key, v["site"], pid).hex(), v["record_id"], "verifier id")
    equal(year_verifier(key, v["site"], pid, v["year"]), v["verifier"], "year verifier")

for name, checksum in (("checksums", scope_checksum), ("checksums_v1", scope_checksum_v1)):
    for v in V[name]:
        heads = [(hexed(r), s, n, d) for r, s, n, d in v["heads"]]
        equal(checksum(heads).hex(), v["sum"], v["about"])
for v in V["heads_of"]:
    writes = [(hexed(r), s, n, d, [tuple(c) for c in ctx]) for r, s, n, d, ctx in v["writes"]]
    equal(sorted([r.hex(), s, n, d] for r, s, n, d in heads_of(writes)), v["heads"], v["about"])

v = V["stable_point"]
hub = Ed25519PrivateKey.from_private_bytes(hexed(V["hub_seed"]))
public = hub.public_key().public_bytes_raw()
equal(sign_stable_point(hub, v["device"], v["cursor"], v["time"]).hex(), v["doc"], "stable point")
equal(open_stable_point(hexed(v["doc"]), public, v["device"]), (v["cursor"], v["time"]),
      "stable point opened")
for bad in v["bad"]:
    refused = raises(StablePointError.code, open_stable_point, hexed(bad["doc"]), public,
                     bad["device"])
    true(isinstance(refused, StablePointError) and bad["message"] in str(refused), bad["about"])

v = V["scopes"]
scopes = [(role, Scope.from_wire(v[role])) for role in ("door", "clinician", "full")]
patients = {hexed(p) for p in v["patients"]}
for record in v["records"]:
    facts = facts_of(hexed(record["rid"]), record["type"], edn(record["fields"]))
    for role, scope in scopes:
        equal(in_scope(scope, facts, patients), record[role], role + ": " + record["about"])
for bad in V["bad_scopes"]:
    raises("bad-scope", Scope.from_wire, edn(bad["wire"]))

for v in V["messages"]:
    msg = messages.decode(hexed(v["cbor"]))
    equal([msg.name, msg.fields], [v["name"], edn(v["fields"])], v["about"])
    names = {}
    for spec_fields in (msg.spec.required, msg.spec.optional):
        for k, (n, _) in spec_fields.items():
            names[k] = n
    again = messages.make(v["name"], **{names[k]: x for k, x in msg.fields.items()})
    equal(messages.encode(again).hex(), v["cbor"], v["about"])
for v in V["bad_messages"]:
    raises(v["code"], messages.decode, hexed(v["cbor"]))

done()
