"""protocol/vectors/chunking.json: the gear table and mask bits, each input's cut points
and chunk names (streamed in 4,097-byte pieces, and by the definition's rules over the
whole input for the small ones), and the transfer messages both ways."""

from check import done, equal, hexed, vectors
from chunk_inputs import ends, make_input, reference_cuts

from protocol import messages, transfer
from protocol.chunking import BIT_ORDER, GEAR, Chunker, ChunkParams, chunk_id

V = vectors("chunking")


def streamed(data: bytes, piece: int, params: ChunkParams) -> list[bytes]:
    chunker = Chunker(params)
    out: list[bytes] = []
    for i in range(0, len(data), piece):
        out += chunker.feed(data[i : i + piece])
    return out + chunker.finish()


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
