"""protocol/vectors/crdt.json: deltas, each encoded and decoded byte for byte, and the bad
ones refused with their codes, one by one (``decode``) and as a batch (``decode_many``,
which takes cbor2's C path on CPython and ``decode`` for each under MicroPython)."""

from check import done, equal, hexed, raises, true, vectors

from protocol.crdt.clock import Dot
from protocol.crdt.delta import Delta, decode, decode_many, encode
from protocol.errors import ProtocolError

V = vectors("crdt")


def keyed(m):
    return {int(k): v for k, v in m.items()}


def from_vector(d):
    return Delta(
        hexed(d["record_id"].replace("-", "")), d["type"], d["node"], d["stamp"], d["kind"],
        keyed(d["set"]), {k: tuple(v) for k, v in keyed(d["add"]).items()},
        {k: tuple(v) for k, v in keyed(d["remove"]).items()},
        tuple(Dot(s, n) for n, s in d["ctx"]), d["schema"],
        hexed(d["resolves"]) if d["resolves"] else None, keyed(d["extra"]),
    )


for v in V["valid"]:
    delta, data = from_vector(v["delta"]), hexed(v["hex"])
    equal(encode(delta), data, v["description"])
    equal(decode(data), delta, v["description"])
    equal(len(data), v["size"], v["description"])

for v in V["invalid"]:
    raises(v["code"], decode, hexed(v["hex"]))

# The batch decoder gives the same answers, in order, for the good and the bad mixed.
mixed = []
for i in range(max(len(V["valid"]), len(V["invalid"]))):
    mixed += V["valid"][i : i + 1] + V["invalid"][i : i + 1]
got = decode_many([hexed(v["hex"]) for v in mixed])
equal(len(got), len(mixed), "decode_many")
for i, v in enumerate(mixed):
    result = got[i]
    if "code" in v:
        true(isinstance(result, ProtocolError), v["description"])
        equal(result.code, v["code"], v["description"])
    else:
        equal(result, from_vector(v["delta"]), v["description"])

done()
