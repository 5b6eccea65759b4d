"""protocol/vectors/tech.json: the technician's X25519 session key of an Ed25519 seed, each
tech-* message byte for byte both ways, and the messages the decoder refuses with their
codes."""

from check import done, equal, hexed, raises, vectors

from protocol import tech_messages as tm
from protocol.crypto import Ed25519PrivateKey, X25519PrivateKey

V = vectors("tech")

key = V["key"]
seed = hexed(key["ed25519_seed"])
equal(Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw().hex(),
      key["ed25519_public"], "ed25519 public")
equal(tm.x25519_private(seed).hex(), key["x25519_private"], "x25519 private")
equal(X25519PrivateKey.from_private_bytes(tm.x25519_private(seed)).public_key()
      .public_bytes_raw().hex(), key["x25519_public"], "x25519 public")
equal(tm.x25519_public(hexed(key["ed25519_public"])).hex(), key["x25519_public"],
      "x25519 public of the ed25519 public")
for bad in (b"\x01" + bytes(31), b"\x00" * 31):
    raises("bad-key", tm.x25519_public, bad)

for item in V["messages"]:
    msg = tm.decode(hexed(item["bytes"]))
    equal(msg.name, item["type"], item["type"])
    fields = {}
    for name, value in item["fields"].items():
        got = msg.get(name)
        fields[name] = hexed(value) if isinstance(got, bytes) else value
        equal(got, fields[name], item["type"] + " " + name)
    equal(tm.encode(item["type"], **fields).hex(), item["bytes"], item["type"])

for item in V["bad"]:
    raises(item["code"], tm.decode, hexed(item["bytes"]))

done()
