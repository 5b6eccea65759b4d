"""Two sessions joined by the link emulator's fault model, on a simulated clock.

Theory of operation
-------------------
``LinkSim`` joins two ``protocol.session.core.Session`` objects through two
one-way ``Line`` objects. Each ``Line`` is a ``tools.linkfaults.Direction``:
the same ``FaultModel`` (outages, frame-sized loss and duplication, byte
errors and bursts) and the same line model (rate, latency, stalls, the
sender's transmit buffer, units closed by an idle gap) that ``tools/linkemu``
applies to real ptys and sockets in real time. A simulated run with seed *n*
meets the faults the emulator would make with seed *n* on the same bytes;
only the clock differs.

Time moves from one event to the next (a session deadline, a byte due on a
line), so a minute of link time costs milliseconds. Like the emulator, the
simulation wakes at most once per ``tick`` of link time to deliver bytes, so a
busy line hands over a few dozen bytes at a time rather than one.
Nothing on a serial line or a TCP stream reorders bytes, and neither does
this model: a duplicate unit follows its original.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

from protocol.session.core import Event, Session
from tools.linkfaults import Direction, FaultModel, Faults, FaultStats, Windows
from tools.linkfaults import Line as LineModel

TICK = 0.01  #: shortest wait between deliveries (linkemu's --tick; its default is 0.002)


@dataclass
class Line:
    """One direction of the simulated link, with the emulator's knobs and defaults.

    ``outages`` and ``stalls`` are ``(start, duration)`` windows in link seconds,
    as ``linkemu --outage START:DUR`` and ``--stall START:DUR``.
    """

    rate: float | None = 11520.0  #: bytes per second; None = as fast as they come
    latency: float = 0.01
    faults: Faults = field(default_factory=Faults)
    outages: list[tuple[float, float]] = field(default_factory=list)
    stalls: list[tuple[float, float]] = field(default_factory=list)
    unit_gap: float = 0.02  #: an idle line this long ends a unit (linkemu's default)
    tx_buffer: int = 4096  #: the sender's transmit buffer (linkemu's ``--buffer``)
    seed: int = 1
    name: str = "ab"  #: the direction, part of the fault model's seed as in linkemu

    def __post_init__(self) -> None:
        stalls = Windows(self.stalls) if self.stalls else None
        # A copy: set_corrupt() on one line must not change another sharing the knobs.
        model = FaultModel(replace(self.faults), seed=self.seed, direction=self.name,
                           outages=Windows(self.outages))
        line = LineModel(rate=self.rate, latency=self.latency, stalls=stalls)
        self.direction = Direction(self.name, model, line, unit_gap=self.unit_gap,
                                   tx_buffer=self.tx_buffer)

    @property
    def stats(self) -> FaultStats:
        return self.direction.faults.stats

    def set_corrupt(self, corrupt: float) -> None:
        """Change the byte error rate from now on."""
        self.direction.faults.set_corrupt(corrupt)


class LinkSim:
    """Two sessions and two lines on one simulated clock."""

    def __init__(self, a: Session, b: Session, ab: Line, ba: Line, now: float = 0.0,
                 tick: float = TICK) -> None:
        self.ends = (a, b)
        self.lines = (ab, ba)
        self.now = now
        self.tick = tick
        self.events: tuple[list[Event], list[Event]] = ([], [])

    def _step(self) -> None:
        """Deliver what is due, then take what each session writes and its events."""
        for side in (0, 1):
            receiver = self.ends[1 - side]

            def write(data: bytes, receiver: Session = receiver) -> int:
                receiver.receive_data(data, self.now)
                return len(data)

            self.lines[side].direction.pump(self.now, write)
        for side in (0, 1):
            direction = self.lines[side].direction
            if direction.wants_read():
                out = self.ends[side].data_to_send(self.now)
                if out:
                    direction.on_data(out, self.now)
            while (ev := self.ends[side].next_event()) is not None:
                self.events[side].append(ev)

    def _next_time(self, end: float) -> float:
        times: list[float] = []
        for session, line in zip(self.ends, self.lines, strict=True):
            due = line.direction.deadline()
            if due is not None:
                due = max(due, self.now + self.tick)
                times.append(due)
            wake = session.next_deadline()
            if wake is not None:
                if due is not None and not line.direction.wants_read():
                    # Its transmit buffer is full: like a blocked writer, it waits for room.
                    wake = max(wake, due)
                times.append(wake)
        return max(min(times), self.now + 1e-6) if times else end

    def run(self, until: Callable[[LinkSim], bool], limit: float) -> bool:
        """Advance until ``until(self)`` holds (True) or ``limit`` seconds pass (False)."""
        end = self.now + limit
        while True:
            self._step()
            if until(self):
                return True
            nxt = self._next_time(end)
            if nxt > end:
                self.now = end
                return False
            self.now = nxt
