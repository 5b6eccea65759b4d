"""protocol/vectors/sync.json: a kiosk's batch chain (payloads, hashes, signed heads,
messages) byte for byte, Ed25519 through protocol.crypto; the sync messages; bad
payloads refused with their codes. A deflated payload inflates to its deltas, and
pack() chooses deflate for it too (with other bytes, maybe: RFC 1951 allows them)."""

from check import done, equal, hexed, raises, true, vectors

from protocol import messages, strict_cbor
from protocol.crypto import Ed25519PrivateKey
from protocol.sync import batches as sync

V = vectors("sync")
DELTAS = [hexed(v["hex"]) for v in vectors("crdt")["valid"]]
KEY = Ed25519PrivateKey.from_private_bytes(hexed(V["ed25519_seed"]))
PUBLIC = KEY.public_key().public_bytes_raw()
DEVICE = V["device"]

for v in V["batches"]:
    what = "batch " + str(v["seq"])
    deltas = [DELTAS[i] for i in v["deltas"]]
    payload, prev = hexed(v["payload"]), hexed(v["prev"])
    equal(sync.unpack(payload), deltas, what)
    packed = sync.pack(deltas)
    equal(packed[0], payload[0], what + ": stored or deflated")
    equal(sync.unpack(packed), deltas, what + ": packed here")
    if payload[0] == sync.STORED:
        equal(packed, payload, what)
    batch = sync.Batch(v["seq"], prev, payload, hexed(v["sig"]))
    equal(batch.hash.hex(), v["hash"], what)
    head = sync.head_bytes(DEVICE, batch.seq, batch.hash)
    equal(head.hex(), v["head"], what)
    equal(KEY.sign(head), batch.sig, what + ": RFC 8032 signature")
    sync.verify_batch(batch, DEVICE, PUBLIC)
    true(sync.head_signed(PUBLIC, batch.sig, head), what)
    msg = messages.decode(hexed(v["message"]))
    equal(msg.name, "sync-batch", what)
    equal(msg.fields, {1: batch.seq, 3: payload, 4: batch.sig}, what)
    equal(messages.encode(msg).hex(), v["message"], what)

first, second = V["batches"]
equal(second["prev"], first["hash"], "the chain links")
equal(first["prev"], sync.GENESIS.hex(), "the chain starts at genesis")
wrong = sync.Batch(2, sync.GENESIS, hexed(second["payload"]), hexed(second["sig"]))
raises("forged", sync.verify_batch, wrong, DEVICE, PUBLIC)
true(not sync.head_signed(PUBLIC, bytes(64), hexed(first["head"])), "a zero signature")

for v in V["messages"]:
    msg = messages.decode(hexed(v["cbor"]))
    equal(msg.name, v["name"], v["name"])
    hexes = v.get("bytes", ["1"] if msg.name == "sync-changes" else [])
    want = {int(k): hexed(x) if k in hexes else x for k, x in v["fields"].items()}
    equal(msg.fields, want, v["name"])
    equal(messages.encode(msg).hex(), v["cbor"], v["name"])

for v in V["bad_payloads"]:
    raises(v["code"], sync.unpack, hexed(v["hex"]))

# One small delta is stored, many are deflated, none is an empty array.
equal(sync.pack(DELTAS[:1]), bytes((sync.STORED,)) + strict_cbor.dumps(DELTAS[:1]), "stored")
many = sync.pack(DELTAS * 20)
equal(many[0], sync.DEFLATED, "deflated")
true(len(many) < len(strict_cbor.dumps(DELTAS * 20)) / 3, "deflate shrinks repeats")
equal(sync.unpack(many), DELTAS * 20, "deflated round trip")
equal(sync.unpack(sync.pack([])), [], "empty")
done()
