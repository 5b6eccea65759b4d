"""protocol/vectors/chunking.json: the gear table and mask bits, each input's cut points
and chunk names (streamed in 4,097-byte pieces, and by the definition's rules over the
whole input for the small ones), and the transfer messages both ways."""

import hashlib
from typing import Any

from check import done, equal, hexed, vectors

from protocol import messages, transfer
from protocol.chunking import BIT_ORDER, GEAR, Chunker, ChunkParams, chunk_id

V = vectors("chunking")


def counter_stream(seed: bytes, n: int) -> bytes:
    """SHA-256(seed || k as 8 bytes big-endian) for k = 0, 1, ..., cut to n bytes."""
    out = bytearray((n + 31) // 32 * 32)  # in place: MicroPython's heap is 2 MB
    for k in range(len(out) // 32):
        out[32 * k : 32 * k + 32] = hashlib.sha256(seed + k.to_bytes(8, "big")).digest()
    return bytes(out[:n]) if n < len(out) else bytes(out)


def make_input(spec: dict[str, Any]) -> bytes:
    if spec["kind"] == "sha256-counter":
        return counter_stream(spec["seed"].encode(), spec["length"])
    if spec["kind"] == "sha256-counter-hex":
        return counter_stream(spec["seed"].encode(), spec["length"] // 2).hex().encode()
    if spec["kind"] == "zeros":
        return bytes(spec["length"])
    raise AssertionError(spec)


def reference_cuts(data: bytes, p: ChunkParams) -> list[int]:
    """The module docstring's rules 2-4, literally, over the whole input at once."""
    x = int.from_bytes(bytes(GEAR[b] for b in data), "little")
    h = 0
    for j in range(31):
        h ^= x << (9 * j)
    hb = bytes(2) + h.to_bytes(len(data) + 40, "little")  # H bytes -2, -1, 0, 1, ...
    cuts: list[int] = []
    s, n = 0, len(data)
    while s < n:
        end = 0
        for i in range(s + p.min_size - 1, min(s + p.avg_size - 1, n)):
            if (hb[i] | hb[i + 1] << 8 | hb[i + 2] << 16) & p.mask_s == 0:
                end = i + 1
                break
        if not end:
            for i in range(s + p.avg_size - 1, min(s + p.max_size - 1, n)):
                if (hb[i] | hb[i + 1] << 8 | hb[i + 2] << 16) & p.mask_l == 0:
                    end = i + 1
                    break
        if not end:
            end = min(s + p.max_size, n)
        cuts.append(end)
        s = end
    return cuts


def streamed(data: bytes, piece: int, params: ChunkParams) -> list[bytes]:
    chunker = Chunker(params)
    out: list[bytes] = []
    for i in range(0, len(data), piece):
        out += chunker.feed(data[i : i + piece])
    return out + chunker.finish()


def ends(chunks: list[bytes]) -> list[int]:
    out, acc = [], 0
    for c in chunks:
        acc += len(c)
        out.append(acc)
    return out


equal(GEAR.hex(), V["gear"], "gear")
equal(list(BIT_ORDER), V["bit_order"], "bit order")

for case in V["chunking"]:
    q = case["params"]
    p = ChunkParams(q["min_size"], q["avg_size"], q["max_size"], q["level"])
    equal((p.mask_s, p.mask_l), (case["mask_s"], case["mask_l"]), case["name"])
    data = make_input(case["input"])
    chunks = streamed(data, 4097, p)
    equal(ends(chunks), case["cut_offsets"], case["name"])
    equal([chunk_id(c).hex() for c in chunks], case["chunk_sha256"], case["name"])
    del chunks
    if len(data) <= 100_000:
        equal(reference_cuts(data, p), case["cut_offsets"], case["name"] + " by the rules")

equal(transfer.OFFER.number, 40, "xfer-offer")  # importing transfer registers xfer-*
for item in V["transfer_messages"]:
    msg = messages.decode(hexed(item["cbor"]))
    equal(msg.name, item["name"], item["name"])
    spec = msg.spec
    assert spec is not None
    fields = {}
    for table in (spec.required, spec.optional):
        for key, (name, kind) in table.items():
            if name in item["fields"]:
                value = item["fields"][name]
                fields[name] = hexed(value) if kind is bytes else value
                equal(msg.fields[key], fields[name], item["name"] + " " + name)
    equal(messages.encode(messages.make(item["name"], **fields)).hex(), item["cbor"],
          item["name"])

done()
