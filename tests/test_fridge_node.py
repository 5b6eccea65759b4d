"""The fridge node (device/fridge_node/) under MicroPython, joined to a kiosk stand-in.

The node runs as a MicroPython process in step mode (tests/fridge_node_proc.py)
on a simulated clock; ``FakeKiosk`` is a CPython responder Session that speaks
protocol/sensor.py as a kiosk does: it refuses node keys it was not given,
welcomes, stores each reading under (device, number) and acknowledges.
``tools.linksim.LinkSim`` joins the two over an emulated 115200-baud line.
The node's pure parts (ring files, monitor, sensor decoding) are checked on
CPython too, where a test can reach inside them.
"""

from __future__ import annotations

import ast
import os
import select
import subprocess
import time
from collections import deque
from pathlib import Path

import pytest

from device.fridge_node import monitor, ring, sensors, settings
from protocol import sensor
from protocol.crypto import X25519PrivateKey
from protocol.messages import Message
from protocol.session.core import Connected, Event, MessageReceived, Session, SessionConfig
from tests import micropython_port
from tests.fridge_helpers import pty_pair
from tests.fridge_node_proc import NodeProcess, provision
from tests.micropython_port import ROOT
from tools.linksim import Line, LinkSim

KIOSK_KEY = X25519PrivateKey.from_private_bytes(bytes(range(32, 64)))
KIOSK_PUBLIC = KIOSK_KEY.public_key().public_bytes_raw()
NODE_KEY = bytes(range(32))
EPOCH = 1_800_000_000  #: the kiosk's Unix time at simulated second 0
MINUTE = 60.0


class FakeKiosk:
    """A kiosk's end of sensor sessions, with a Session's surface for LinkSim."""

    def __init__(self, accept: set[bytes], now: float = 0.0) -> None:
        self.accept = accept
        self.readings: dict[int, tuple[int | None, int | str]] = {}
        self.alarms: dict[int, tuple[str, str, int, int, int | None]] = {}
        self.clashes: list[int] = []  #: numbers sent again with a different reading
        self.hellos: list[dict[str, object]] = []
        self._events: deque[Event] = deque()
        self.session = self._new(now)

    def _new(self, now: float) -> Session:
        return Session(initiator=False, config=SessionConfig(pattern="IK", lanes=sensor.LANES,
                                                             keepalive=60.0, dead_timeout=300.0),
                       static_key=KIOSK_KEY, accept_static=lambda key: key in self.accept,
                       now=now)

    @property
    def acked(self) -> int:
        n = 0
        while n in self.readings:
            n += 1
        return max(self.readings, default=-1) + 1 if n == len(self.readings) else n

    def receive_data(self, data: bytes, now: float) -> None:
        if self.session.state == "closed":  # its last words (a refusal) went out: a new one
            self.session = self._new(now)
        self.session.receive_data(data, now)
        while (event := self.session.next_event()) is not None:
            self._events.append(event)
            if isinstance(event, MessageReceived):
                self._on_message(sensor.decode(event.data), now)

    def _on_message(self, msg: Message, now: float) -> None:
        send = self.session.send_message
        if msg.type == sensor.HELLO.number:
            self.hellos.append({"device": msg.get("device"), "next": msg.get("next"),
                                "boot": msg.get("boot")})
            upto = max(self.readings, default=-1) + 1
            alarms = max(self.alarms, default=-1) + 1
            send(0, sensor.encode(sensor.WELCOME, time=EPOCH + int(now), acked=upto,
                                  alarms_acked=alarms))
        elif msg.type == sensor.READINGS.number:
            first = msg.get("first")
            for i, reading in enumerate(msg.get("readings")):
                got = tuple(reading)
                if self.readings.setdefault(first + i, got) != got:
                    self.clashes.append(first + i)
            send(0, sensor.encode(sensor.READINGS_ACK, upto=first + len(msg.get("readings"))))
        elif msg.type == sensor.ALARM.number:
            self.alarms[msg.get("seq")] = (msg.get("kind"), msg.get("state"), msg.get("since"),
                                           msg.get("minutes"), msg.get("extreme"))
            send(0, sensor.encode(sensor.ALARM_ACK, upto=msg.get("seq") + 1))

    def data_to_send(self, now: float) -> bytes:
        return self.session.data_to_send(now)

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def next_deadline(self) -> float | None:
        return self.session.next_deadline()


def joined(node: NodeProcess, kiosk: FakeKiosk, now: float = 0.0,
           outages: list[tuple[float, float]] | None = None) -> LinkSim:
    line = {"rate": 11520.0, "outages": outages or []}
    return LinkSim(node, kiosk, Line(name="nk", **line), Line(name="kn", **line),  # type: ignore[arg-type]
                   now=now)


def run_until(sim: LinkSim, t: float) -> None:
    sim.run(lambda s: False, t - sim.now)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return tmp_path / "node"


def test_readings_alarms_and_faults_reach_the_kiosk_in_order(folder: Path) -> None:
    public = provision(folder, KIOSK_PUBLIC, NODE_KEY, alarm_after=300)
    kiosk = FakeKiosk({public})
    profile = "steady:5.0,steady:4.5:10,high:9.5:8,steady:5.0:4,none:3,crc:1,reset:1,range:1"
    with NodeProcess(folder, profile=profile) as node:
        sim = joined(node, kiosk)
        run_until(sim, 40 * MINUTE + 1)
        status = node.status(sim.now)
    assert kiosk.clashes == []
    assert sorted(kiosk.readings) == list(range(41))
    values = [kiosk.readings[n][1] for n in range(41)]
    assert values[:10] == [450] * 10 and values[10:18] == [950] * 8
    assert values[22:28] == ["no-sensor"] * 3 + ["crc", "reset-value", "out-of-range"]
    times = [kiosk.readings[n][0] or 0 for n in range(41)]
    assert all(b - a == 60 for a, b in zip(times, times[1:], strict=False))
    assert times[0] == EPOCH  # taken before the welcome set the clock: set afterwards
    alarms = [kiosk.alarms[n] for n in sorted(kiosk.alarms)]
    assert alarms == [("high", "raised", EPOCH + 600, 5, 950),
                      ("high", "cleared", EPOCH + 600, 8, 950),
                      ("sensor", "raised", EPOCH + 1320, 5, None),
                      ("sensor", "cleared", EPOCH + 1320, 6, None)]
    assert status["faults"] == 6 and status["dropped"] == 0 and status["link"] == "open"


def test_a_full_ring_drops_the_oldest_readings_and_counts_them(folder: Path) -> None:
    public = provision(folder, KIOSK_PUBLIC, NODE_KEY, capacity=10)
    kiosk = FakeKiosk({public})
    with NodeProcess(folder) as node:
        sim = joined(node, kiosk, outages=[(0.0, 15 * MINUTE + 30)])
        run_until(sim, 15 * MINUTE + 1)
        assert node.status(sim.now)["dropped"] == 6 and kiosk.readings == {}
        run_until(sim, 20 * MINUTE + 1)
        status = node.status(sim.now)
    assert sorted(kiosk.readings) == list(range(6, 21))
    assert status["dropped"] == 6 and status["readings"] == 0 and status["first"] == 21


def test_a_power_cut_keeps_committed_readings_alarms_and_their_numbers(folder: Path) -> None:
    public = provision(folder, KIOSK_PUBLIC, NODE_KEY, alarm_after=300, commit_every=600)
    kiosk = FakeKiosk({public})
    profile = "steady:5.0,high:10.0:30"
    with NodeProcess(folder, profile=profile) as node:
        # The line is out: nothing is acknowledged. The alarm at 300 s commits at once,
        # then readings every 600 s after it: at 900 s, readings 0 to 15.
        sim = joined(node, kiosk, outages=[(0.0, 1e9)])
        run_until(sim, 1450.0)
        before = node.status(sim.now)
        node.kill()
        node.start(1460.0)
        after = node.status(1460.0)
        sim = joined(node, kiosk, now=1460.0)
        run_until(sim, 1460.0 + 6 * MINUTE + 1)
    assert (before["next"], before["next_alarm"], before["boot"]) == (25, 1, 1)
    assert (after["first"], after["next"], after["next_alarm"], after["boot"]) == (0, 17, 1, 2)
    assert after["torn"] == 0
    assert sorted(kiosk.readings) == list(range(23))
    # Taken before the kiosk told the time, then a reboot lost the node's clock: unknown.
    assert {kiosk.readings[n][0] for n in range(16)} == {None}
    assert [kiosk.readings[n][1] for n in (0, 5, 6, 15)] == [1000] * 4
    assert kiosk.readings[16][0] == EPOCH + 1460
    # The excursion goes on after the boot: a new alarm, numbered after the committed one.
    assert sorted(kiosk.alarms) == [0, 1] and kiosk.alarms[1][:2] == ("high", "raised")


def test_a_reboot_that_lost_delivered_readings_numbers_new_ones_after_them(
        folder: Path) -> None:
    public = provision(folder, KIOSK_PUBLIC, NODE_KEY)
    kiosk = FakeKiosk({public})
    with NodeProcess(folder) as node:
        sim = joined(node, kiosk)
        run_until(sim, 10 * MINUTE + 30)
        assert sorted(kiosk.readings) == list(range(11))
        node.kill()  # nothing committed since the boot: readings 0 to 10 are lost here
        node.start(11 * MINUTE)
        sim = joined(node, kiosk, now=11 * MINUTE)
        run_until(sim, 15 * MINUTE + 1)
        status = node.status(sim.now)
    assert kiosk.clashes == []
    assert sorted(kiosk.readings) == list(range(16))
    times = [kiosk.readings[n][0] or 0 for n in range(16)]
    assert times == sorted(times) and times[11] == EPOCH + 11 * 60
    assert status["next"] == 16 and kiosk.hellos[-1]["boot"] == 2


def test_a_kiosk_refuses_a_node_key_it_was_not_given(folder: Path) -> None:
    provision(folder, KIOSK_PUBLIC, NODE_KEY)
    kiosk = FakeKiosk(set())
    with NodeProcess(folder) as node:
        sim = joined(node, kiosk)
        run_until(sim, 2 * MINUTE)
        status = node.status(sim.now)
    assert status["last_close"] == "unknown-key" and status["link"] == "down"
    assert kiosk.readings == {} and kiosk.hellos == []


def test_a_node_with_the_wrong_kiosk_key_never_opens(folder: Path) -> None:
    other = X25519PrivateKey.from_private_bytes(bytes(32 * [7])).public_key()
    public = provision(folder, other.public_bytes_raw(), NODE_KEY)
    kiosk = FakeKiosk({public})
    with NodeProcess(folder) as node:
        sim = joined(node, kiosk)
        run_until(sim, 2 * MINUTE)
        status = node.status(sim.now)
    assert status["link"] == "handshake" and status["readings"] == 3
    assert kiosk.readings == {} and kiosk.hellos == []
    assert not any(isinstance(event, Connected) for event in sim.events[1])


def test_a_failing_request_in_step_mode_is_refused_and_changes_nothing(folder: Path) -> None:
    provision(folder, KIOSK_PUBLIC, NODE_KEY)
    with NodeProcess(folder) as node:
        with pytest.raises(RuntimeError, match="unknown request"):
            node._ask("jump", 10.0)
        with pytest.raises(RuntimeError, match="bad request 'feed'"):
            node._ask("feed", 10.0, "text, not bytes")
        assert node.status(10.0)["taken"] == 1  # still there, and took its first reading
        assert node.console("set capacity 50", 10.0) == "ok (from the next boot)"
        assert node.console("set low 9", 10.0).startswith("error: the range's low end")
        assert node.console("kiosk 12", 10.0) == "error: a key is 64 hex digits"
        assert node.console("set low 2.5", 10.0) == "ok"
        assert "low 250" in node.console("config", 10.0).splitlines()


# -- the pure parts, on CPython ----------------------------------------------------


def test_a_torn_commit_leaves_the_one_before(tmp_path: Path) -> None:
    files, kept = ring.RingFiles(str(tmp_path)), ring.Ring(capacity=4)
    for n in range(6):  # wraps around: readings 2 to 5 stay
        kept.add(ring.stamp_of(60.0 * n, 1_700_000_000), 400 + n)
    kept.add_alarm("high", "raised", ring.stamp_of(5.0, None), 31, 900)
    files.commit(kept)
    kept.add(ring.stamp_of(400.0, None), "crc")
    files.commit(kept)
    newest = tmp_path / "ring.0"  # generation 2
    whole = newest.read_bytes()
    for damage in (whole[:-3], whole[:-1] + b"\x00", bytes(16) + whole[16:], b""):
        newest.write_bytes(damage)
        back = ring.RingFiles(str(tmp_path))
        restored = ring.Ring(capacity=4)
        assert back.load(restored) and back.torn == 1 and restored.generation == 1
        assert (restored.first, restored.count, restored.dropped) == (2, 4, 2)
        assert [restored.reading(n)[1] for n in range(2, 6)] == [402, 403, 404, 405]
        assert ring.unix_time(restored.reading(2)[0]) == 1_700_000_120
        # A reading or alarm stamped on the lost monotonic clock is written as unknown.
        assert restored.alarms == [[0, "high", "raised", ring.UNKNOWN, 31, 900]]


def test_a_ring_of_many_chunks_comes_back_whole(tmp_path: Path) -> None:
    files, kept = ring.RingFiles(str(tmp_path)), ring.Ring(capacity=300)
    for n in range(333):
        kept.add(ring.stamp_of(60.0 * n, 1_700_000_000 if n % 2 else None), n - 100)
    files.commit(kept)
    back = ring.Ring(capacity=300)
    assert ring.RingFiles(str(tmp_path)).load(back)
    assert (back.first, back.count, back.dropped) == (33, 300, 33)
    assert [back.reading(n)[1] for n in range(33, 333)] == list(range(-67, 233))
    assert ring.unix_time(back.reading(33)[0]) == 1_700_000_000 + 33 * 60
    assert ring.unix_time(back.reading(34)[0]) is None


def test_the_ring_drops_acknowledged_readings_and_renumbers() -> None:
    r = ring.Ring(capacity=3)
    for value in ("no-sensor", -5500, 12500):
        r.add(ring.stamp_of(1.0, None), value)
    r.drop_below(2)
    assert (r.first, r.count, r.reading(2)[1]) == (2, 1, 12500)
    r.set_clock(1_800_000_000)
    assert ring.unix_time(r.reading(2)[0]) == 1_800_000_001
    r.renumber(40)
    assert (r.first, r.next_seq, r.reading(40)[1]) == (40, 41, 12500)


@pytest.mark.parametrize(("raw", "want"), [
    (0x0191, 2506), (0xFF5E, -1013), (0xFC90, -5500), (0x07D0, 12500),  # halves: away from 0
    (sensors.RESET_RAW, "reset-value"), (sensors.RANGE_RAW, "out-of-range"),
])
def test_a_scratchpad_is_a_temperature_or_a_fault(raw: int, want: int | str) -> None:
    assert sensors.decode(sensors.scratchpad(raw)) == want


def test_no_answer_and_a_bad_crc_are_faults() -> None:
    pad = sensors.scratchpad(0x0191)
    assert sensors.decode(None) == "no-sensor" and sensors.decode(pad[:5]) == "no-sensor"
    assert sensors.decode(pad[:8] + bytes([pad[8] ^ 1])) == "crc"
    # The CRC of a real DS18B20 scratchpad (its datasheet's example ROM code's CRC is 0xA2).
    assert sensors.crc8(bytes.fromhex("02 1C B8 01 00 00 00")) == 0xA2


def test_a_bad_profile_says_why() -> None:
    for text in ("warm:3", "high:9", "none:x", "steady:4:5:6"):
        with pytest.raises(ValueError, match="bad profile segment"):
            sensors.parse_profile(text)


def test_an_excursion_from_high_to_low_clears_one_alarm_and_raises_the_other() -> None:
    m = monitor.Monitor(low=200, high=800, alarm_after=120)
    seen = []
    values: list[int | str] = [900, 950, "crc", 920, 100, 150, 50, 500]
    for minute, value in enumerate(values):
        seen += m.reading(60.0 * minute, value)
    assert seen == [("high", "raised", 0.0, 3, 950), ("high", "cleared", 0.0, 4, 950),
                    ("low", "raised", 240.0, 2, 50), ("low", "cleared", 240.0, 3, 50)]


def test_the_node_imports_only_protocol_and_itself() -> None:
    allowed = {"protocol", "__future__", "typing", "binascii", "json", "os", "select", "struct",
               "sys", "time", "machine", "onewire", "ds18x20",
               "collections"}  # collections.abc: for the type checker only
    for path in (ROOT / "device/fridge_node").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                ok = name.split(".")[0] in allowed or (name + ".").startswith("device.fridge_node.")
                assert ok, f"{path.name} imports {name}"


def test_the_node_in_real_time_on_a_pty_with_its_console_on_stdin(folder: Path) -> None:
    """The unix port's own driver: a serial device (a pty), the real clock, stdin."""
    public = provision(folder, KIOSK_PUBLIC, NODE_KEY, interval=1)
    kiosk = FakeKiosk({public}, now=time.monotonic())
    master, slave = pty_pair()
    proc = subprocess.Popen(
        [micropython_port.interpreter(), "-m", "device.fridge_node.unix", "--data", str(folder),
         "--serial", os.ttyname(slave), "--profile", "steady:4.0"],
        cwd=ROOT, env=dict(os.environ, MICROPYPATH=micropython_port.path()), bufsize=0,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    said = b""
    try:
        end = time.monotonic() + 60  # a bound, far beyond the few seconds this takes
        while time.monotonic() < end and b"link open" not in said:
            kiosk_out = kiosk.data_to_send(time.monotonic())
            if kiosk_out:
                os.write(master, kiosk_out)
            out = proc.stdout.fileno()
            ready, _, _ = select.select([master, out], [], [], 0.05)
            if master in ready:
                kiosk.receive_data(os.read(master, 4096), time.monotonic())
            if out in ready:
                said += os.read(out, 4096)
            if len(kiosk.readings) >= 2 and b"status" not in said:
                proc.stdin.write(b"status\n")
                said += b"status asked\n"
    finally:
        proc.kill()
        proc.wait()
        os.close(master)
        os.close(slave)
    assert b"link open" in said, said
    assert kiosk.hellos[0]["device"] == "fridge-1"
    assert [kiosk.readings[n][1] for n in sorted(kiosk.readings)][:2] == [400, 400]


def test_settings_that_do_not_fit_keep_their_defaults(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(
        '{"values": {"low": "cold", "high": 99999, "interval": 30, "speed": 3}, "name": "f"}')
    s = settings.Settings(str(tmp_path))
    assert (s["low"], s["high"], s["interval"], s.name) == (200, 800, 30, "f")
    (tmp_path / "config.json").write_text("{not json")
    assert settings.Settings(str(tmp_path))["interval"] == 60
    with pytest.raises(ValueError, match="unknown setting"):
        s.set_value("speed", "3")
    assert "speed" not in (tmp_path / "config.json").read_text()


def test_a_one_shot_console_command_that_fails_exits_non_zero(tmp_path: Path) -> None:
    """Provisioning from a script: a refused command says why and exits 1."""
    def console(*words: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [micropython_port.interpreter(), "-m", "device.fridge_node.unix", "--data",
             str(tmp_path), "console", *words], cwd=ROOT, capture_output=True, text=True,
            env=dict(os.environ, MICROPYPATH=micropython_port.path()), timeout=60)

    bad = console("kiosk", "zz")
    assert bad.returncode == 1 and bad.stdout.strip() == "error: a key is 64 hex digits"
    good = console("kiosk", "ab" * 32)
    assert good.returncode == 0 and good.stdout.strip() == "ok"
    assert f"kiosk {'ab' * 32}" in console("config").stdout.splitlines()
