"""protocol/vectors/wire.json: frames, messages, bad messages and their error codes."""

from check import done, equal, hexed, raises, vectors

from protocol import crc32c, framing, messages
from protocol.framing import FrameDecoder, encode_frame

V = vectors("wire")

for v in V["frames"]:
    payload, wire = hexed(v["payload"]), hexed(v["wire"])
    equal(encode_frame(payload, crc=v["crc"]), wire, v["description"])
    equal(FrameDecoder(crc=v["crc"]).feed(wire), [payload], v["description"])
    # The table-driven CRC, the reference a port implements, gives the same bytes.
    fast = framing.crc32c
    framing.crc32c = crc32c._pure_crc32c
    equal(encode_frame(payload, crc=v["crc"]), wire, v["description"])
    framing.crc32c = fast

for v in V["messages"]:
    data = hexed(v["cbor"])
    msg = messages.decode(data)
    equal(msg.type, v["type"], v["name"])
    equal(msg.name, v["name"], v["name"])
    equal(msg.fields, {int(k): x for k, x in v["fields"].items()}, v["name"])
    equal(messages.encode(msg), data, v["name"])

for v in V["bad_messages"]:
    raises(v["error"], messages.decode, hexed(v["cbor"]))

done()
