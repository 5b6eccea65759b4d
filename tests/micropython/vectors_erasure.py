"""protocol/vectors/erasure.json: erasure record ids and successor ids (and the patient ids
they refuse), the hub's erasure write byte for byte, the husk every replica keeps of an
erased patient's writes, and which records an erasure covers."""

from typing import TYPE_CHECKING

from check import done, edn, equal, hexed, true, vectors

from protocol.crdt.delta import decode, encode
from protocol.crdt.erasure import covers, erasure_record_id, husk, successor_id
from protocol.crdt.schema import ERASURE

if TYPE_CHECKING:
    from collections.abc import Callable

V = vectors("erasure")


def refused(derive: "Callable[[bytes], bytes]", patient: bytes) -> bool:
    try:
        derive(patient)
    except ValueError:
        return True
    return False


for case in V["record_ids"]:
    pid = hexed(case["patient"])
    equal(erasure_record_id(pid).hex(), case["erasure_record_id"], "erasure record id")
    equal(successor_id(pid).hex(), case["successor_id"], "successor id")

for bad in V["bad_patients"]:
    for derive in (erasure_record_id, successor_id):
        true(refused(derive, hexed(bad["patient"])), bad["about"])

put = V["erasure_put"]
delta = decode(hexed(put["delta"]))
equal((delta.type, delta.record_id.hex(), delta.node, delta.stamp),
      (ERASURE.number, put["record_id"], put["node"], put["stamp"]), "erasure put")
equal(delta.record_id, erasure_record_id(hexed(put["patient"])), "erasure put's record")
equal({ERASURE.by_number[k].name: v for k, v in delta.set.items()},
      {k: edn(x) for k, x in put["fields"].items()}, "erasure put's fields")
equal(encode(delta).hex(), put["delta"], "erasure put encoded")

for case in V["husks"]:
    got = husk(decode(hexed(case["delta"])))
    equal(encode(got).hex(), case["husk"], case["about"])
    true(not (got.set or got.add or got.remove or got.extra), case["about"])

erased = {hexed(V["erased"])}
for case in V["covers"]:
    fields = {int(k): edn(x) for k, x in case["fields"].items()}
    equal(covers(erased, case["type"], hexed(case["rid"]), fields), case["covered"],
          case["about"])

done()
