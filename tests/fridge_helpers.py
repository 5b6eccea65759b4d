"""A CPython stand-in for a fridge node, for the kiosk side's tests (``device.fridges``).

``NodeStandIn`` is the initiator ``Session`` and a few lines of the node's half of
``protocol.sensor``: after the kiosk's welcome it sends what it was given to send,
and keeps what the kiosk acknowledges. It has the session's surface, so
``tools.linksim.LinkSim`` joins it to a ``FridgeLink`` on a simulated clock.
"""

from __future__ import annotations

import os
import select
import time
import tty
from collections.abc import Callable, Iterable
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from device.fridges.link import CONFIG
from protocol import sensor
from protocol.messages import Message
from protocol.session.core import Connected, Event, MessageReceived, Session
from protocol.sync import sensor_records as ids
from tools.linksim import Line, LinkSim


class NodeStandIn:
    """The node's end. ``outbox``: (lane, bytes) to send once welcomed; ``on_message``
    is called with each sensor message the kiosk sends."""

    def __init__(self, key: X25519PrivateKey, kiosk_public: bytes, name: str = "fridge-1",
                 now: float = 0.0, next_seq: int = 0) -> None:
        self.key, self.kiosk_public, self.name = key, kiosk_public, name
        self.session = self._session(now)
        self.next_seq = next_seq
        self.outbox: list[tuple[int, bytes]] = []
        self.received: list[Message] = []
        self.welcomed = False
        self.on_message: Callable[[Message], None] | None = None

    def _session(self, now: float) -> Session:
        return Session(initiator=True, config=CONFIG, static_key=self.key,
                       remote_static=self.kiosk_public, now=now)

    def restart(self, now: float) -> None:
        """A new process: a new session from its first handshake."""
        self.session, self.welcomed = self._session(now), False

    def readings(self, first: int, values: list[Any]) -> None:
        self.send(sensor.READINGS_LANE, sensor.READINGS, first=first, readings=values)

    def send(self, lane: int, spec: Any, **values: Any) -> None:
        self.outbox.append((lane, sensor.encode(spec, **values)))

    def send_raw(self, lane: int, data: bytes) -> None:
        self.outbox.append((lane, data))

    # -- the session's surface --------------------------------------------------

    def receive_data(self, data: bytes, now: float) -> None:
        self.session.receive_data(data, now)

    def data_to_send(self, now: float) -> bytes:
        if self.welcomed:
            while self.outbox:
                self.session.send_message(*self.outbox.pop(0))
        return self.session.data_to_send(now)

    def next_event(self) -> Event | None:
        ev = self.session.next_event()
        if isinstance(ev, Connected):
            self.session.send_message(sensor.ALARM_LANE, sensor.encode(
                sensor.HELLO, device=self.name, model="stand-in", next=self.next_seq, boot=1))
        elif isinstance(ev, MessageReceived):
            msg = sensor.decode(ev.data)
            self.received.append(msg)
            if msg.type == sensor.WELCOME.number:
                self.welcomed = True
            if self.on_message is not None:
                self.on_message(msg)
        return ev

    def next_deadline(self) -> float | None:
        if self.welcomed and self.outbox:
            return float("-inf")
        return self.session.next_deadline()

    def acks(self, spec: Any) -> list[int]:
        return [m.get("upto") for m in self.received if m.type == spec.number]


def joined(node: Any, link: Any, now: float = 0.0) -> LinkSim:
    """The two ends on a clean 115200-baud line."""
    return LinkSim(node, link, Line(name="ab"), Line(name="ba"), now=now)


def pty_pair() -> tuple[int, int]:
    """A raw pty: the node's end (master) and the kiosk's (its slave's path opens)."""
    master, slave = os.openpty()
    tty.setraw(master)
    tty.setraw(slave)
    return master, slave


def drive(nodes: list[NodeStandIn], masters: list[int], done: Callable[[], bool],
          bound: float = 30.0) -> bool:
    """Run each node on its pty in real time until ``done()`` (True) or ``bound``
    seconds pass (False)."""
    end = time.monotonic() + bound
    while time.monotonic() < end:
        if done():
            return True
        for node, master in zip(nodes, masters, strict=True):
            out = node.data_to_send(time.monotonic())
            if out:
                os.write(master, out)
            while node.next_event() is not None:
                pass
            if select.select([master], [], [], 0.005)[0]:
                node.receive_data(os.read(master, 4096), time.monotonic())
    return done()


def readings_held(records: Iterable[tuple[bytes, dict[int, Any]]], device: bytes
                  ) -> list[tuple[str | None, int | str]]:
    """Every reading of the node whose device record is ``device`` that ``records`` ((id,
    fields by number) of its ``temperature`` records, hour and single) hold: (time, value),
    in time order (an hour's slot's time is its minute's start; unknown times first)."""
    held: list[tuple[str | None, int | str]] = []
    hours = ids.hour_id(device, 0), ids.hour_id(device, ids.MAX_SEQ)
    singles = ids.reading_id(device, 0), ids.reading_id(device, ids.MAX_SEQ)
    for rid, f in records:
        if hours[0] <= rid <= hours[1]:
            start = int.from_bytes(rid[12:], "big") * ids.HOUR_S
            held += [(ids.iso_time(start + n * ids.PERIOD_S), v)
                     for n, v in ids.hour_slots(f[7], f[8], f.get(9)).items()]
        elif singles[0] <= rid <= singles[1]:
            held.append((f.get(2), f[3] if 3 in f else f[4]))
    return sorted(held, key=lambda r: (r[0] is not None, r[0] or ""))
