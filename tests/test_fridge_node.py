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

from collections import deque
from pathlib import Path

import pytest

from protocol import sensor
from protocol.crypto import X25519PrivateKey
from protocol.messages import Message
from protocol.session.core import Event, MessageReceived, Session, SessionConfig
from tests.fridge_node_proc import NodeProcess, provision
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
        self.session.receive_data(data, now)
        while (event := self.session.next_event()) is not None:
            self._events.append(event)
            if isinstance(event, MessageReceived):
                self._on_message(sensor.decode(event.data), now)
        if self.session.state == "closed":
            self.session = self._new(now)  # ready for the node's next handshake

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
