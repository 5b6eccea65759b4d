"""The console's SMP codec (protocol/smp) held to protocol/vectors/smp.json, which the
`smp` package (smpclient's and smpmgr's codec) made, and to the demultiplexer's rules:
SMP lines, COBS frames and text on one stream, each fed all at once, a byte at a time
and with junk between; bad lines dropped and counted; bounded buffers."""

from __future__ import annotations

import base64
import json
import random
from pathlib import Path

import cbor2
from hypothesis import given, settings
from hypothesis import strategies as st
from smp import packet as smppacket

from device.console.groups import Port
from device.console.service import SmpService
from protocol.framing import encode_frame
from protocol.smp import console, demux
from protocol.smp import header as smph
from protocol.smp.demux import Demux, HavenFrame, Text

from .console_helpers import fake_stats
from .micropython.smp_feed import feed_bytewise, packets_of

VECTORS = json.loads((Path(__file__).resolve().parent.parent / "protocol" / "vectors"
                      / "smp.json").read_text())


def test_crc16_xmodem_vectors() -> None:
    for v in VECTORS["crc16_xmodem"]:
        assert console.crc16_xmodem(bytes.fromhex(v["data"])) == v["crc"]


def test_console_lines_are_smps_own_and_decode_three_ways() -> None:
    for v in VECTORS["console"]:
        packet, lines = bytes.fromhex(v["packet"]), bytes.fromhex(v["lines"])
        assert console.encode(packet, line_length=v["line_length"]) == lines
        assert b"".join(smppacket.encode(packet, line_length=v["line_length"])) == lines
        assert packets_of(Demux().feed(lines)) == [packet]
        assert packets_of(feed_bytewise(Demux(), lines)) == [packet]
        d = Demux()
        evs = d.feed(b"log: started\r\n" + lines + b"\xff\xfe junk")
        assert packets_of(evs) == [packet]
        assert d.flush() == [] and d.line_stats.dropped == 0


def test_headers_match_smps() -> None:
    for v in VECTORS["headers"]:
        h = smph.decode(bytes.fromhex(v["hex"]))
        assert (h.op, h.version, h.flags, h.length, h.group, h.seq, h.command) == (
            v["op"], v["version"], v["flags"], v["length"], v["group"], v["seq"], v["command"])
        assert h.encode().hex() == v["hex"]


def test_our_answers_are_byte_for_byte_smps(tmp_path: Path) -> None:
    from device.console.env import ConsoleEnv
    (tmp_path / "ex").mkdir()
    (tmp_path / "ex" / "bundle.cbor").write_bytes(b"abc")
    env = ConsoleEnv(export_dir=tmp_path / "ex", import_dir=tmp_path / "im", stats=fake_stats,
                     restart=lambda: None)
    service = SmpService(env)

    class Everyone:
        def permits(self, group: int, command: int, op: str) -> bool:
            return True

    port = Port(access=Everyone())
    by_seq = {v["seq"]: bytes.fromhex(c["packet"]) for v in VECTORS["headers"]
              for c in VECTORS["console"] if c["packet"].startswith(v["hex"])}
    for seq, name in ((1, "echo"), (2, "params"), (3, "download")):
        answer, _ = service.handle(by_seq[seq], port)
        assert answer is not None and answer.hex() == VECTORS["responses"][name]


def test_bad_lines_are_dropped_and_counted() -> None:
    good = console.encode(bytes(8) + cbor2.dumps({}))
    d = Demux()
    body = base64.b64decode(good[2:-1])
    bad_crc = b"\x06\x09" + base64.b64encode(body[:-1] + bytes([body[-1] ^ 1])) + b"\n"
    assert packets_of(d.feed(bad_crc)) == [] and d.line_stats.bad_crc == 1
    # Not whole base64 quanta, or a pad inside: bad base64.
    d.feed(b"\x06\x09QUJ\n")
    d.feed(b"\x06\x09QQ==QUJD\n")
    assert d.line_stats.bad_base64 == 2
    # A length that lies: too small, too large, shorter than the data, longer than it.
    for n in (3, 60000):
        d.feed(b"\x06\x09" + base64.b64encode(n.to_bytes(2, "big") + bytes(10)) + b"\n")
    d.feed(b"\x06\x09" + base64.b64encode((12).to_bytes(2, "big") + body[2:] + bytes(6))
           + b"\n")
    assert d.line_stats.bad_length == 3
    d.feed(b"\x06\x09" + base64.b64encode((400).to_bytes(2, "big") + bytes(10)) + b"\n")
    assert packets_of(d.feed(good)) == [body[2:-2]] and d.line_stats.abandoned == 1
    assert packets_of(d.feed(b"\x04\x14QUJD\n")) == [] and d.line_stats.orphans == 1


def test_frames_text_and_smp_told_apart() -> None:
    smp_lines = console.encode(bytes(8) + cbor2.dumps({"d": "x" * 300}), line_length=64)
    frame = encode_frame(b"haven\n\x06\x09 frame with newlines\n in it")
    stream = (b"\x00" + frame + b"shell$ status\n" + smp_lines + b"text then a frame\n"
              + frame + b"\x00\x00" + b"trailing log line\n")
    for evs in (Demux().feed(stream), feed_bytewise(Demux(), stream)):
        kinds = [type(e).__name__ for e in evs]
        assert kinds.count("SmpPacket") == 1 and kinds.count("HavenFrame") == 2, kinds
        frames = [e for e in evs if isinstance(e, HavenFrame)]
        assert all(f.wire == frame for f in frames)
        assert b"shell$ status\n" in b"".join(e.data for e in evs if isinstance(e, Text))


def test_smp_line_glued_to_text_is_found() -> None:
    lines = console.encode(bytes(8))
    assert packets_of(Demux().feed(b"no newline before \x04 it" + lines)) == [bytes(8)]


def test_buffers_stay_bounded() -> None:
    d = Demux(max_run=1024)
    rng = random.Random(5)
    for _ in range(200):
        d.feed(rng.randbytes(700).replace(b"\n", b"").replace(b"\x00", b""))
        assert len(d._run) <= 1024
    assert d.stats.oversized >= 1
    lines = console.encode(bytes(8))
    assert packets_of(d.feed(b"\n" + lines)) == [bytes(8)]
    # Many short lines with no 0x00: handed out as text, never held past the bound.
    evs = d.feed(b"a log line\n" * 5000)
    assert len(d._run) <= 1024 and sum(len(e.data) for e in evs if isinstance(e, Text)) > 0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.binary(min_size=8, max_size=600), st.binary(max_size=300)),
                min_size=1, max_size=6),
       st.integers(min_value=1, max_value=97), st.sampled_from([16, 128, 1000]))
def test_every_packet_survives_junk_between(pairs: list[tuple[bytes, bytes]], chunk: int,
                                            line_length: int) -> None:
    stream = b"".join(junk + console.encode(p, line_length=line_length) for p, junk in pairs)
    d = Demux()
    evs: list[demux.Event] = []
    for i in range(0, len(stream), chunk):
        evs += d.feed(stream[i : i + chunk])
    assert packets_of(evs) == [p for p, _ in pairs]
