"""protocol/vectors/audit.json: each entry byte for byte (its detail's canonical JSON, its
strict CBOR), its chain hash and signature by the code and as SPEC.md words them, its
record id, and the whole chain verified as a hub holds it."""

import hashlib

from check import done, equal, hexed, true, vectors

from protocol.crdt.delta import Delta
from protocol.crdt.schema import AUDIT
from protocol.crypto import Ed25519PrivateKey
from protocol.sync import audit as chain

V = vectors("audit")

key = Ed25519PrivateKey.from_private_bytes(hexed(V["kiosk_seed"]))
public, node = key.public_key().public_bytes_raw(), V["node"]
deltas = []
for v in V["entries"]:
    entry = chain.make_entry(v["seq"], v["time"], v["who"], v["what"], v["result"],
                             v["detail"])
    prev, seq = hexed(v["prev"]), v["seq"].to_bytes(8, "big")
    equal(entry.encode().hex(), v["entry"], "entry")
    equal(entry.detail, v["detail_text"], "detail")
    # The format itself, apart from the code: SPEC.md "Audit".
    equal(hashlib.sha256(b"haven-audit\0" + prev + seq + hexed(v["entry"])).digest().hex(),
          v["hash"], "hash rule")
    head = b"haven-audit-head\0" + f"{node:08x}".encode() + b"\0" + seq + hexed(v["hash"])
    key.public_key().verify(hexed(v["sig"]), head)
    signed = chain.sign(key, node, prev, entry)
    equal((signed.hash.hex(), signed.sig.hex()), (v["hash"], v["sig"]), "signed")
    equal(chain.audit_id(node, v["seq"]).hex(), v["record_id"], "record id")
    deltas.append(Delta(hexed(v["record_id"]), AUDIT.number, node, v["seq"], set={
        AUDIT.field(n).number: x for n, x in signed.values().items()}))
true(chain.verify(node, public, deltas)["ok"], "the chain verifies")

done()
