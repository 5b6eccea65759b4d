"""protocol/vectors/sealed_identity.json: check-in identities sealed to the hub (HPKE with
AES-256-GCM) open to their values, their CBOR and patient ids; bad ones are refused."""

from check import done, equal, hexed, raises, true, vectors

from protocol import strict_cbor
from protocol.crdt import schema
from protocol.crdt.ids import code_patient_id, patient_id
from protocol.crypto import X25519PrivateKey
from protocol.sync.sealed_identity import INFO, SealedIdentityError, open_identity

V = vectors("sealed_identity")
hub_x = X25519PrivateKey.from_private_bytes(hexed(V["hub_x25519_private"]))
equal(hub_x.public_key().public_bytes_raw().hex(), V["hub_x25519"], "hub key")
equal(V["info"].encode(), INFO, "info")
equal([f.number for f in schema.CHECKIN.fields if f.name == "sealedIdentity"], [10],
      "the check-in's field")
cid, fleet = hexed(V["checkin"]), hexed(V["fleet_key"])
for case in V["sealed"]:
    kind, value = open_identity(case["text"], cid, hub_x)
    equal([kind, value], [case["kind"], case["value"]], "opened")
    equal(strict_cbor.dumps([cid, kind, value]).hex(), case["plain"], "plain")
    derive = patient_id if kind == "passport" else code_patient_id
    equal(str(derive(fleet, value)), case["patient_id"], "patient id")
for bad in V["bad"]:
    refused = raises(SealedIdentityError.code, open_identity, bad["text"], cid, hub_x)
    true(isinstance(refused, SealedIdentityError), bad["why"])

done()
