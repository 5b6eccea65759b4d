"""A simulated serial line on a simulated clock, for sessions (sans-I/O).

Theory of operation
-------------------
``LinkSim`` joins two ``protocol.session.core.Session`` objects through two
one-way lines. Each line has a byte rate (n bytes take n/rate seconds, as on
a UART), a latency, a byte error rate (each damaged byte gets one bit
flipped), optional outages (bytes that would be on the line then are lost),
and a seeded generator, so a run is exact and repeatable. Time only moves
from one event to the next, so a minute of link time costs milliseconds.

This is the model the tests and the frame-size plot use; ``tools/linkemu``
does the same to real ptys in real time.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from protocol.session.core import Event, Session


@dataclass
class Line:
    """One direction of the link."""

    rate: float = 11520.0
    latency: float = 0.01
    error_rate: float = 0.0
    outages: list[tuple[float, float]] = field(default_factory=list)
    duplicate: float = 0.0  #: probability that a write arrives twice
    jitter: float = 0.0  #: extra random delay per write, up to this: reorders writes
    truncate: float = 0.0  #: probability that a write loses its tail
    seed: int = 1
    bytes_in: int = 0
    corrupted: int = 0
    dropped: int = 0

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._free_at = 0.0
        self._next_error = self._gap()

    def set_error_rate(self, error_rate: float) -> None:
        """Change the line's byte error rate from now on."""
        self.error_rate = error_rate
        self._next_error = self._gap()

    def _gap(self) -> int:
        if self.error_rate <= 0:
            return 1 << 62
        # Bytes until the next damaged one: geometric with parameter p.
        u = self._rng.random()
        return int(math.log1p(-u) / math.log1p(-self.error_rate))

    def carry(self, data: bytes, now: float) -> list[tuple[float, bytes]]:
        """Put ``data`` on the line at ``now``; return (arrival time, bytes) pieces."""
        self.bytes_in += len(data)
        start = max(now, self._free_at)
        per_byte = 1.0 / self.rate
        self._free_at = start + len(data) * per_byte
        buf = bytearray(data)
        i = self._next_error
        while i < len(buf):
            buf[i] ^= 1 << self._rng.randrange(8)
            self.corrupted += 1
            i += 1 + self._gap()
        self._next_error = i - len(buf)
        if self.truncate and self._rng.random() < self.truncate:
            cut = self._rng.randrange(len(buf) + 1)
            self.dropped += len(buf) - cut
            del buf[cut:]
        pieces: list[tuple[float, bytes]] = []
        # Cut around outages: a byte departing inside one is lost.
        pos = 0
        t = start
        while pos < len(buf):
            outage = next(((a, b) for a, b in self.outages if b > t), None)
            if outage is None or outage[0] >= t + (len(buf) - pos) * per_byte:
                pieces.append((self._free_at + self.latency, bytes(buf[pos:])))
                break
            a, b = outage
            before = max(0, int((a - t) / per_byte))
            if before:
                arrival = t + before * per_byte + self.latency
                pieces.append((arrival, bytes(buf[pos : pos + before])))
            lost_until = max(a, t + before * per_byte)
            lost = min(len(buf) - pos - before, int((b - lost_until) / per_byte) + 1)
            self.dropped += lost
            pos += before + lost
            t = lost_until + lost * per_byte
        if self.jitter:
            pieces = [(at + self._rng.uniform(0, self.jitter), p) for at, p in pieces]
        if self.duplicate and pieces and self._rng.random() < self.duplicate:
            at, piece = pieces[-1]
            pieces.append((at + self._rng.uniform(0, 0.5), piece))
        return pieces

    @property
    def free_at(self) -> float:
        return self._free_at


class LinkSim:
    """Two sessions and two lines on one simulated clock."""

    def __init__(self, a: Session, b: Session, ab: Line, ba: Line, now: float = 0.0) -> None:
        self.ends = (a, b)
        self.lines = (ab, ba)
        self.now = now
        self._queue: list[tuple[float, int, int, bytes]] = []
        self._seq = 0
        self.events: tuple[list[Event], list[Event]] = ([], [])

    def _pump(self) -> None:
        for side in (0, 1):
            out = self.ends[side].data_to_send(self.now)
            if out:
                for at, piece in self.lines[side].carry(out, self.now):
                    heapq.heappush(self._queue, (at, self._seq, 1 - side, piece))
                    self._seq += 1
            while (ev := self.ends[side].next_event()) is not None:
                self.events[side].append(ev)

    def run(self, until: Callable[[LinkSim], bool], limit: float) -> bool:
        """Advance until ``until(self)`` holds (True) or ``limit`` seconds pass (False)."""
        end = self.now + limit
        while True:
            self._pump()
            if until(self):
                return True
            times = [d for d in (s.next_deadline() for s in self.ends) if d is not None]
            if self._queue:
                times.append(self._queue[0][0])
            nxt = max(min(times), self.now + 1e-6) if times else end
            if nxt > end:
                self.now = end
                return False
            self.now = nxt
            while self._queue and self._queue[0][0] <= self.now:
                _, _, side, piece = heapq.heappop(self._queue)
                self.ends[side].receive_data(piece, self.now)
