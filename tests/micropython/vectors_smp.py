"""protocol/vectors/smp.json: CRC-16/XMODEM, SMP's console lines (encoded, and decoded by
the demultiplexer all at once, a byte at a time and between text), SMP headers, and the
headers of the kiosk's answers (their bodies are the console service's, a kiosk's part)."""

from check import done, equal, hexed, vectors
from smp_feed import feed_bytewise, packets_of

from protocol.smp import console
from protocol.smp import header as smph
from protocol.smp.demux import Demux

V = vectors("smp")

for v in V["crc16_xmodem"]:
    equal(console.crc16_xmodem(hexed(v["data"])), v["crc"], "crc16")

for v in V["console"]:
    packet, lines = hexed(v["packet"]), hexed(v["lines"])
    equal(console.encode(packet, line_length=v["line_length"]), lines, "console lines")
    equal(packets_of(Demux().feed(lines)), [packet], "demux")
    equal(packets_of(feed_bytewise(Demux(), lines)), [packet], "demux bytewise")
    d = Demux()
    evs = d.feed(b"log: started\r\n" + lines + b"\xff\xfe junk")
    equal(packets_of(evs), [packet], "demux among text")
    equal(d.flush(), [], "flush")
    equal(d.line_stats.dropped, 0, "dropped")

requests = {}
for v in V["headers"]:
    h = smph.decode(hexed(v["hex"]))
    equal((h.op, h.version, h.flags, h.length, h.group, h.seq, h.command),
          (v["op"], v["version"], v["flags"], v["length"], v["group"], v["seq"], v["command"]),
          "header " + v["hex"])
    equal(h.encode().hex(), v["hex"], "header encoded")
    requests[h.seq] = h

for seq, name in ((1, "echo"), (2, "params"), (3, "download")):
    answer = hexed(V["responses"][name])
    head, body = smph.split(answer)
    equal(smph.pack(requests[seq].response(len(body)), body), answer, name)

done()
