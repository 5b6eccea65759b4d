"""The link emulator checks itself: the faults it claims are the faults it made.

The pure models (tools/linkfaults.py) are checked directly; then the real
emulator runs as a subprocess, both pty ends are opened through pyserial, and
a seeded stream of frames goes through. What comes out must equal, byte for
byte, what the fault model predicts for that seed; the counts must sit within
5 sigma of the binomial the rates imply, and must equal the emulator's own
stats. No test asserts a wall-clock time; every wait has a deadline.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import serial

from protocol.framing import FrameDecoder, encode_frame
from tools.linkfaults import FaultModel, Faults, Line, Windows

ROOT = Path(__file__).resolve().parents[1]
DEADLINE = 20.0  # seconds any one wait may take before the test fails


def within(observed: int, n: int, p: float, sigmas: float = 5.0) -> bool:
    """``observed`` is within ``sigmas`` standard deviations of Binomial(n, p)."""
    mean = n * p
    sd = math.sqrt(n * p * (1 - p))
    return abs(observed - mean) <= sigmas * sd + 1


def frames(seed: int, count: int) -> tuple[list[bytes], bytes]:
    rng = random.Random(seed)
    payloads = [rng.randbytes(rng.randrange(8, 300)) for _ in range(count)]
    return payloads, b"".join(encode_frame(p) for p in payloads)


# --- the pure models ------------------------------------------------------------


def test_fault_model_does_not_depend_on_chunking() -> None:
    _, wire = frames(1, 500)
    faults = Faults(corrupt=1e-3, burst=1e-4, loss=0.05, dup=0.05)
    whole = FaultModel(faults, seed=9).feed(wire)
    model = FaultModel(faults, seed=9)
    rng = random.Random(2)
    out, i = b"", 0
    while i < len(wire):
        n = rng.randrange(1, 700)
        out += model.feed(wire[i : i + n])
        i += n
    assert out == whole


def test_fault_counts_follow_the_rates() -> None:
    _, wire = frames(3, 4000)
    f = Faults(corrupt=2e-3, burst=1e-4, burst_len=6, loss=0.03, dup=0.02)
    model = FaultModel(f, seed=5)
    model.feed(wire)
    s = model.stats
    assert s.units == 4000
    assert within(s.lost_units, s.units, f.loss)
    assert within(s.dup_units, s.units - s.lost_units, f.dup)
    assert within(s.byte_errors, s.bytes_out, f.corrupt)
    assert within(s.bursts, s.bytes_out, f.burst)
    assert s.corrupted == s.byte_errors + s.burst_bytes
    assert s.burst_bytes <= s.bursts * f.burst_len
    assert s.bytes_out == s.bytes_in - s.lost_bytes + s.dup_bytes


def test_corruption_changes_exactly_the_counted_bytes() -> None:
    data = random.Random(4).randbytes(200_000)
    for mode in ("flip", "replace"):
        model = FaultModel(Faults(corrupt=1e-3, burst=2e-4, corrupt_mode=mode), seed=1)
        out = model.feed(data)
        assert len(out) == len(data)
        assert sum(a != b for a, b in zip(data, out, strict=True)) == model.stats.corrupted
        if mode == "flip":  # a flipped byte differs in one bit, unless a burst hit it
            singles = [bin(a ^ b).count("1") for a, b in zip(data, out, strict=True) if a != b]
            assert singles.count(1) >= model.stats.byte_errors


def test_units_without_delimiters_are_max_unit_blocks() -> None:
    data = bytes(range(1, 256)) * 40  # no 0x00 anywhere, like ZMODEM's headers
    model = FaultModel(Faults(loss=0.3, max_unit=100), seed=2)
    out = model.feed(data)
    assert model.stats.units == math.ceil(len(data) / 100)
    assert model.stats.lost_bytes == 100 * model.stats.lost_units
    assert len(out) == len(data) - model.stats.lost_bytes
    blocks = [data[i : i + 100] for i in range(0, len(data), 100)]
    kept = iter(blocks)  # what came out is whole blocks, in order, some missing
    assert all(out[i : i + 100] in kept for i in range(0, len(out), 100))


def test_idle_gap_ends_a_unit_and_sends_its_duplicate() -> None:
    model = FaultModel(Faults(dup=1.0), seed=0)
    assert model.feed(b"AT+HELLO") == b"AT+HELLO"
    assert model.unit_open
    assert model.end_unit() == b"AT+HELLO"
    assert not model.unit_open


def test_outage_drops_what_arrives_inside_it() -> None:
    model = FaultModel(Faults(), outages=Windows([(1.0, 2.0)]))
    assert model.feed(b"a\x00", 0.5) == b"a\x00"
    assert model.feed(b"b\x00", 1.5) == b""
    assert model.feed(b"c\x00", 2.99) == b""
    assert model.feed(b"d\x00", 3.0) == b"d\x00"
    assert model.stats.outage_bytes == 4
    assert model.outages is not None and model.outages.count == 1


def test_random_outages_are_seeded() -> None:
    def starts(seed: int) -> list[bool]:
        w = Windows(mean_gap=5.0, duration=1.0, rng=random.Random(seed))
        return [w.active(t / 10) for t in range(2000)]

    assert starts(1) == starts(1)
    assert starts(1) != starts(2)
    share = sum(starts(1)) / 2000
    assert 0.05 < share < 0.4  # about 1/6 of the time


def test_line_schedules_each_byte() -> None:
    line = Line(rate=1000.0, latency=0.25)
    line.send(b"x" * 100, 0.0)
    assert line.advance(0.25) == b""  # the first byte departs at 1 ms
    assert len(line.advance(0.2505)) == 0
    assert len(line.advance(0.2601)) == 10
    assert line.queued == 0  # everything has departed by now: 0.26 s > 0.1 s
    line.send(b"y" * 10, 0.05)  # arrives while the line is busy until 0.1
    assert len(line.advance(0.35)) == 90  # 11..100 delivered by 0.35
    assert len(line.advance(0.355)) == 5  # y departs at 0.101 .. 0.110
    assert len(line.advance(1.0)) == 5


def test_line_holds_bytes_through_a_stall() -> None:
    line = Line(rate=100.0, stalls=Windows([(0.05, 1.0)]))
    line.send(b"z" * 20, 0.0)
    assert len(line.advance(0.5)) == 4  # 10, 20, 30, 40 ms; 50 ms is in the stall
    assert line.advance(1.05) == b""
    assert len(line.advance(1.2)) == 15  # 1.06 .. 1.20
    assert len(line.advance(1.25)) == 1


# --- the real emulator, over ptys ------------------------------------------------


class Emu:
    def __init__(self, mode: str, *args: str, tmp: Path) -> None:
        self.stats_path = tmp / f"stats-{mode}.json"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tools.linkemu", mode, *args, "--stats", str(self.stats_path)],
            cwd=ROOT, stdout=subprocess.PIPE, text=True,
        )
        assert self.proc.stdout is not None
        self.endpoints: dict[str, str] = json.loads(self.proc.stdout.readline())

    def stats(self) -> dict[str, Any]:
        """Ask the running emulator for its stats (SIGUSR1) and read them."""
        self.stats_path.unlink(missing_ok=True)
        self.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + DEADLINE
        while not self.stats_path.exists():
            assert time.monotonic() < deadline, "no stats after SIGUSR1"
            time.sleep(0.02)
        result: dict[str, Any] = json.loads(self.stats_path.read_text())
        return result

    def stop(self) -> dict[str, Any]:
        self.stats_path.unlink(missing_ok=True)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(DEADLINE) == 0
        result: dict[str, Any] = json.loads(self.stats_path.read_text())
        return result

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def emulators(tmp_path: Path) -> Iterator[list[Emu]]:
    started: list[Emu] = []
    yield started
    for emu in started:
        emu.kill()


def read_exactly(port: serial.Serial, n: int) -> bytes:
    buf = bytearray()
    deadline = time.monotonic() + DEADLINE
    while len(buf) < n and time.monotonic() < deadline:
        buf += port.read(min(65536, n - len(buf)) or 1)
    return bytes(buf)


def exchange(a: serial.Serial, b: serial.Serial, ab: bytes, ba: bytes,
             want_ab: int, want_ba: int) -> tuple[bytes, bytes]:
    """Write both streams at once; read what each end gets, up to the expected length."""
    got: dict[str, bytes] = {}

    def read(name: str, port: serial.Serial, n: int) -> None:
        got[name] = read_exactly(port, n)

    threads = [
        threading.Thread(target=a.write, args=(ab,), daemon=True),
        threading.Thread(target=b.write, args=(ba,), daemon=True),
        threading.Thread(target=read, args=("ab", b, want_ab), daemon=True),
        threading.Thread(target=read, args=("ba", a, want_ba), daemon=True),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(DEADLINE + 5)
    assert not any(t.is_alive() for t in threads), "a pty transfer did not finish"
    return got.get("ab", b""), got.get("ba", b"")


SEED = 11
FAULTS_AB = Faults(corrupt=1e-3, burst=1e-4, burst_len=8, loss=0.03, dup=0.03)
FAULTS_BA = Faults(corrupt=2e-3)  # corruption only: the two ends line up byte for byte


def test_serial_stream_matches_the_seeded_model(emulators: list[Emu], tmp_path: Path) -> None:
    emu = Emu("serial", "--seed", str(SEED), "--unit-gap", "0", "--buffer", "65536",
              "--corrupt", "1e-3,2e-3", "--burst", "1e-4,0", "--burst-len", "8",
              "--loss", "0.03,0", "--dup", "0.03,0", tmp=tmp_path)
    emulators.append(emu)
    payloads_ab, wire_ab = frames(100, 1500)
    _, wire_ba = frames(200, 1000)
    model_ab = FaultModel(FAULTS_AB, seed=SEED, direction="ab")
    model_ba = FaultModel(FAULTS_BA, seed=SEED, direction="ba")
    want_ab, want_ba = model_ab.feed(wire_ab), model_ba.feed(wire_ba)

    a = serial.Serial(emu.endpoints["a"], timeout=0.1, write_timeout=DEADLINE)
    b = serial.Serial(emu.endpoints["b"], timeout=0.1, write_timeout=DEADLINE)
    got_ab, got_ba = exchange(a, b, wire_ab, wire_ba, len(want_ab), len(want_ba))
    assert read_exactly_nothing_more(a, b)
    stats = emu.stats()

    # Byte for byte what the seed implies, in both directions.
    assert got_ab == want_ab
    assert got_ba == want_ba
    # On the corruption-only direction, the ends differ in exactly the counted bytes.
    diff = sum(x != y for x, y in zip(wire_ba, got_ba, strict=True))
    assert diff == stats["ba"]["corrupted"] == model_ba.stats.corrupted
    # The emulator's report agrees with the model, count for count.
    for name, model in (("ab", model_ab), ("ba", model_ba)):
        for key, value in model.stats.as_dict().items():
            assert stats[name][key] == value, (name, key)
        assert stats[name]["bytes_written"] == model.stats.bytes_out
        assert stats[name]["overrun"] == 0
    # And the counts follow the rates (binomial, 5 sigma).
    s = model_ab.stats
    assert s.units == len(payloads_ab)
    assert within(s.lost_units, s.units, FAULTS_AB.loss)
    assert within(s.dup_units, s.units - s.lost_units, FAULTS_AB.dup)
    assert within(s.byte_errors, s.bytes_out, FAULTS_AB.corrupt)
    assert within(s.bursts, s.bytes_out, FAULTS_AB.burst)
    assert within(model_ba.stats.corrupted, len(wire_ba), FAULTS_BA.corrupt)
    # A frame decoder at the far end sees only frames that were sent, or counted drops.
    decoder = FrameDecoder()
    sent = set(payloads_ab)
    decoded = decoder.feed(got_ab)
    assert all(p in sent for p in decoded)
    assert decoder.stats.frames + decoder.stats.dropped >= s.units - s.lost_units
    a.close()
    b.close()
    emu.stop()


def read_exactly_nothing_more(a: serial.Serial, b: serial.Serial) -> bool:
    """Nothing beyond the predicted bytes arrives (a short, bounded look)."""
    time.sleep(0.2)
    return bool(a.in_waiting == 0 and b.in_waiting == 0)


def test_serial_with_rate_latency_and_outage(emulators: list[Emu], tmp_path: Path) -> None:
    emu = Emu("serial", "--rate", "200000", "--latency", "0.02", tmp=tmp_path)
    emulators.append(emu)
    a = serial.Serial(emu.endpoints["a"], timeout=0.1)
    b = serial.Serial(emu.endpoints["b"], timeout=0.1)
    _, wire = frames(5, 200)
    got_ab, got_ba = exchange(a, b, wire, wire[::-1], len(wire), len(wire))
    assert got_ab == wire and got_ba == wire[::-1]
    a.close()
    b.close()
    stats = emu.stop()
    assert stats["ab"]["bytes_written"] == stats["ba"]["bytes_written"] == len(wire)

    # An outage that covers the whole run drops every byte, and says so.
    emu = Emu("serial", "--outage", "0:3600", tmp=tmp_path)
    emulators.append(emu)
    a = serial.Serial(emu.endpoints["a"], timeout=0.1)
    b = serial.Serial(emu.endpoints["b"], timeout=0.3)
    a.write(wire[:5000])
    a.flush()
    deadline = time.monotonic() + DEADLINE
    while emu.stats()["ab"]["bytes_in"] < 5000:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert b.read(100) == b""
    a.close()
    b.close()
    stats = emu.stop()
    assert stats["ab"]["outage_bytes"] == 5000 and stats["ab"]["outages"] == 1


def test_serial_end_may_close_and_reopen(emulators: list[Emu], tmp_path: Path) -> None:
    emu = Emu("serial", tmp=tmp_path)
    emulators.append(emu)
    a = serial.Serial(emu.endpoints["a"], timeout=0.1)
    for word in (b"first\x00", b"second\x00"):
        b = serial.Serial(emu.endpoints["b"], timeout=0.1)
        a.write(word)
        assert read_exactly(b, len(word)) == word
        b.close()
    a.close()
    emu.stop()


# --- the real emulator, TCP mode --------------------------------------------------


class EchoServer:
    """Echoes every connection until the client closes it."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(DEADLINE)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        conn.settimeout(DEADLINE)
        with conn:
            try:
                while data := conn.recv(65536):
                    conn.sendall(data)
                conn.shutdown(socket.SHUT_WR)
            except OSError:
                pass


def echo_through(port: int, data: bytes) -> tuple[bytes, str]:
    """Send ``data`` and read the echo until EOF or an error; say how it ended."""
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as s:
        got = bytearray()

        def send() -> None:
            try:
                s.sendall(data)
                s.shutdown(socket.SHUT_WR)
            except OSError:
                pass

        t = threading.Thread(target=send, daemon=True)
        t.start()
        try:
            while chunk := s.recv(65536):
                got += chunk
            how = "eof"
        except ConnectionResetError:
            how = "reset"
        t.join(DEADLINE)
    return bytes(got), how


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.sock.close()


def test_tcp_passes_data_intact(emulators: list[Emu], echo: EchoServer,
                                tmp_path: Path) -> None:
    emu = Emu("tcp", "--target", f"127.0.0.1:{echo.port}", "--latency", "0.01",
              "--rate", "5000000", "--stall", "0.5:0.2", tmp=tmp_path)
    emulators.append(emu)
    port = int(emu.endpoints["listen"].rsplit(":", 1)[1])
    data = random.Random(8).randbytes(300_000)
    got, how = echo_through(port, data)
    assert how == "eof" and got == data
    got, how = echo_through(port, data[:1000])  # a second connection works too
    assert how == "eof" and got == data[:1000]
    stats = emu.stop()
    assert stats["connections"] == 2 and stats["resets"] == 0
    assert stats["ab"]["bytes_in"] == stats["ab"]["bytes_written"] == 301_000
    assert stats["ab"]["corrupted"] == 0


def test_tcp_resets_when_asked(emulators: list[Emu], echo: EchoServer, tmp_path: Path) -> None:
    emu = Emu("tcp", "--target", f"127.0.0.1:{echo.port}", "--reset-after", "50000",
              tmp=tmp_path)
    emulators.append(emu)
    port = int(emu.endpoints["listen"].rsplit(":", 1)[1])
    data = random.Random(9).randbytes(400_000)
    got, how = echo_through(port, data)
    assert how == "reset" or len(got) < len(data)
    assert data.startswith(got)  # what did arrive is intact
    stats = emu.stop()
    assert stats["connections"] == 1 and stats["resets"] == 1


def test_wrapper_has_help() -> None:
    out = subprocess.run([sys.executable, "-m", "tools.linkemu", "serial", "--help"],
                         cwd=ROOT, capture_output=True, text=True, timeout=DEADLINE)
    assert out.returncode == 0 and "--corrupt" in out.stdout
    assert os.access(ROOT / "tools" / "linkemu", os.X_OK)
