"""protocol/vectors/fleet_rotation.json: patient ids chained through the fleet key's
generations, from the hub's id (rotated_id) and from the passport or code (chained_id)."""

import uuid

from check import done, equal, hexed, vectors

from protocol.crdt import ids

V = vectors("fleet_rotation")
keys = [hexed(k) for k in V["keys"]]
for case in V["cases"]:
    derive = ids.patient_id if case["kind"] == "passport" else ids.code_patient_id
    first = derive(keys[0], case["given"])
    expected = [uuid.UUID(i) for i in case["ids"]]
    equal(first, expected[0], case["given"])
    for g in range(1, len(keys)):
        equal(ids.rotated_id(keys[g], expected[g - 1].bytes), expected[g], "rotated")
        equal(ids.chained_id(first, [ids.hmac_of(k) for k in keys[1:g + 1]]), expected[g],
              "chained")

done()
