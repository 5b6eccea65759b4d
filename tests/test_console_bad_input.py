"""Bad input on the technician's console: malformed SMP (a bad CRC, bad base64, lengths
that lie, unknown groups and commands, CBOR bombs, a 10,000-character name) gets an SMP
error or is dropped and counted, never a crash; and while text and random garbage flood
the port, every SMP request and every Haven session message still gets its answer, with
the server's buffers within their bounds."""

from __future__ import annotations

import base64
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cbor2
import pytest
import serial
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from smp import packet as smppacket

from protocol.driver.session_driver import SessionDriver, session_config
from protocol.session.events import Connected, MessageReceived
from protocol.smp import console
from protocol.smp import header as smph
from protocol.smp.demux import Demux, HavenFrame, SmpPacket

from .console_helpers import Kiosk, console_kiosk

BOUND = 5.0


@pytest.fixture
def kiosk(tmp_path: Path) -> Iterator[Kiosk]:
    with console_kiosk(tmp_path) as k:
        yield k


def request(group: int, command: int, body: bytes, *, op: int = smph.OP_WRITE, seq: int = 1,
            length: int | None = None) -> bytes:
    head = smph.Header(op, smph.VERSION_2, 0, len(body) if length is None else length, group,
                       seq, command)
    return head.encode() + body


def answer(port: serial.Serial, bound: float = BOUND) -> tuple[smph.Header, Any]:
    """The next SMP answer, decoded with smp's own codec."""
    decoder = smppacket.decode()
    next(decoder)
    end = time.monotonic() + bound
    while time.monotonic() < end:
        line = port.read_until(b"\n")
        if not line.endswith(b"\n"):
            continue
        try:
            decoder.send(line)
        except StopIteration as done:
            frame = bytes(done.value)
            return smph.decode(frame), cbor2.loads(frame[smph.SIZE:])
    raise AssertionError("no answer")


def echo_ok(port: serial.Serial, text: str = "still here", seq: int = 9) -> None:
    port.write(console.encode(request(0, 0, cbor2.dumps({"d": text}), seq=seq)))
    head, body = answer(port)
    assert head.seq == seq and body == {"r": text}


def test_malformed_smp_is_answered_or_dropped_and_counted(kiosk: Kiosk) -> None:
    with serial.serial_for_url(kiosk.port, timeout=0.2) as port:
        good = console.encode(request(0, 0, cbor2.dumps({"d": "x"})))
        raw = base64.b64decode(good[2:-1])
        # Dropped and counted: a bad CRC, bad base64, lengths in the framing that lie.
        port.write(b"\x06\x09" + base64.b64encode(raw[:-1] + bytes([raw[-1] ^ 0x55])) + b"\n")
        port.write(b"\x06\x09QUJD=QUJD\n")
        port.write(b"\x06\x09" + base64.b64encode(b"\x01\x90" + raw[2:12]) + b"\n")  # 400
        port.write(b"\x06\x09" + base64.b64encode(b"\x00\x03" + raw[2:]) + b"\n")
        port.write(b"\x04\x14QUJD\n")
        name = "n" * 10_000  # does not fit the 4096-byte buffer: dropped before any handler
        big = console.encode(request(8, 0, cbor2.dumps(
            {"name": name, "off": 0, "data": b"x", "len": 1})))
        port.write(big)
        port.write(console.encode(request(0, 0, b"", op=smph.OP_WRITE_RSP)))  # not a request
        echo_ok(port)
        stats = kiosk.server.stats()
        assert stats["lines_bad_crc"] == 1 and stats["lines_bad_base64"] == 1
        # Its first line says too long; the rest are continuations of nothing.
        assert stats["lines_bad_length"] == 2
        assert stats["lines_orphans"] == 1 + big.count(b"\n") - 1
        assert stats["lines_abandoned"] == 1 and stats["smp_not_requests"] == 1
        assert not kiosk.env.import_dir.exists()

        # Answered with SMP's own codes: the header's length lies, unknown group and
        # command, CBOR bombs, a body that is not a map.
        bombs = [
            b"\x81" * 3000 + b"\x00",  # 3000 nested arrays
            b"\xa1\x61d\x5b\xff\xff\xff\xff\xff\xff\xff\xff",  # a 2**64-byte string
            b"\xa1\x61d\x9b\x00\x00\x00\x01\x00\x00\x00\x00",  # 2**32 items
            b"\xa1\x61d\x9f\x9f\x9f\xff\xff\xff",  # indefinite lengths
            b"\xa1\x61d\xd8\x1c\x80",  # tag 28 (shared references)
            b"\xa2\x61d\x61a\x61d\x61b",  # a key twice
            b"\x18\x2a",  # 42, not a map
        ]
        cases = [(request(0, 0, cbor2.dumps({"d": "x"}), length=200), 3),
                 (request(77, 0, b"\xa0", op=smph.OP_READ), 8),
                 (request(0, 99, b"\xa0", op=smph.OP_READ), 8)]
        cases += [(request(0, 0, b), 3) for b in bombs]
        for i, (packet, rc) in enumerate(cases):
            seq = 100 + i
            port.write(console.encode(packet[:6] + bytes([seq]) + packet[7:]))
            head, body = answer(port)
            assert head.seq == seq and body.get("rc") == rc, (i, body)
        echo_ok(port)
    assert kiosk.server.running


def flood(cable: Any, stop: threading.Event, seed: int) -> None:
    rng = random.Random(seed)
    while not stop.is_set():
        if rng.random() < 0.3:
            cable.inject(f"[{time.monotonic():.3f}] log: {rng.random()} ok\n".encode())
        else:
            cable.inject(rng.randbytes(rng.randint(16, 400)))
        time.sleep(0.002)


def test_garbage_flood_every_request_answered_and_bounded(tmp_path: Path) -> None:
    """SMP requests and a Haven session share the port with a flood of text and garbage."""
    kiosk_key, tech_key = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    cfg = session_config(stream=False, initial_rto=0.3, min_rto=0.1)
    haven = SessionDriver(initiator=False, config=cfg, static_key=kiosk_key, restart=True)

    def on_events(events: list[Any]) -> None:  # the kiosk's side echoes what it is sent
        for e in events:
            if isinstance(e, MessageReceived):
                haven.send(e.lane, b"echo:" + e.data)

    with console_kiosk(tmp_path, haven=haven, on_haven_events=on_events) as k, \
            serial.serial_for_url(k.port, timeout=0) as port:
        tech = SessionDriver(initiator=True, config=cfg, static_key=tech_key)
        answers: dict[int, Any] = {}
        echoes: list[bytes] = []
        stop = threading.Event()
        noise = threading.Thread(target=flood, args=(k.cable, stop, 7), daemon=True)
        noise.start()
        demux = Demux()
        sent = 0
        next_smp = time.monotonic()
        end = time.monotonic() + 20.0
        try:
            flood_until = time.monotonic() + 1.5
            while time.monotonic() < end:
                now = time.monotonic()
                if now > flood_until:
                    stop.set()
                if sent < 40 and now >= next_smp and len(answers) == sent:
                    seq = sent
                    text = "z" * (1 + 37 * seq)  # one line to several
                    port.write(console.encode(request(0, 0, cbor2.dumps({"d": text}), seq=seq)))
                    sent += 1
                    next_smp = now + 0.02
                out = tech.output(now)
                if out:
                    port.write(out)
                for e in demux.feed(port.read(65536)):
                    if isinstance(e, SmpPacket):
                        head = smph.decode(e.data)
                        answers[head.seq] = cbor2.loads(e.data[smph.SIZE:])
                    elif isinstance(e, HavenFrame):
                        tech.feed(e.wire, time.monotonic())
                for ev in tech.events():
                    if isinstance(ev, Connected):
                        for i in range(5):
                            tech.send(1, b"ping %d" % i)
                    elif isinstance(ev, MessageReceived):
                        echoes.append(ev.data)
                if sent == 40 and len(answers) == 40 and len(echoes) == 5 and stop.is_set():
                    break
                time.sleep(0.002)
        finally:
            stop.set()
            noise.join(BOUND)
        assert {s: a["r"] for s, a in answers.items()} == {
            s: "z" * (1 + 37 * s) for s in range(40)}
        assert sorted(echoes) == [b"echo:ping %d" % i for i in range(5)]
        stats = k.server.stats()
        assert stats["demux_text_bytes"] > 10_000, stats
        assert len(k.server.demux._run) <= k.server.demux.max_run
        assert k.server.running and k.server.stats()["smp_errors"] == 0
