"""The link fault model and line model: pure, no I/O, no clock.

Theory of operation
-------------------
This is the one fault model. ``tools/linkemu.py`` owns the ptys, sockets and
the wall clock; ``tools/linksim.py`` joins two sessions on a simulated clock.
Both hand every byte to a ``Direction`` from here, with the time it was
written, so a test on the simulated clock and a program behind the emulator
meet the same faults from the same seed. Tests drive these classes directly
and can replay exactly what a running emulator did to a stream.

One direction of a link is ``FaultModel`` followed by ``Line``, inside a
``Direction``:

``FaultModel.feed(data, now)`` applies, in this order:

1. *Outages* (``Windows``): a byte that arrives while the link is out is
   dropped.
2. *Units* (frame-sized loss and duplication). The stream is cut into units:
   a run ending in 0x00 (our framing's delimiter), or ``max_unit`` bytes when
   no 0x00 comes (ZMODEM and other unframed streams), or an idle line (the
   I/O side calls ``end_unit()``). When a unit starts, it is lost with
   probability ``loss`` (all its bytes dropped) or else duplicated with
   probability ``dup`` (a copy is sent again when the unit ends). The
   decision is made at the unit's first byte, so no byte is ever held back
   waiting for the end of its unit.
3. *Corruption*, on every byte that goes on the line (duplicates included):
   independent byte errors with probability ``corrupt`` (flip one random bit,
   or replace the byte with a different one), and bursts that start with
   probability ``burst`` per byte and damage the next ``burst_len`` bytes.
   Gaps between errors are drawn from the geometric distribution, so the
   cost is per error, not per byte, and the result does not depend on how
   the stream was chunked.

Each mechanism draws from its own ``random.Random`` seeded from
``(seed, direction, mechanism)``, so turning one knob does not reshuffle the
others, and the output is a function of the seed and the byte stream only
(plus the times, when outages or idle gaps are in play).

``Line`` is the serial-line model. Byte *i* departs at
``max(arrival_i, departure_{i-1}) + 1/rate`` and is delivered ``latency``
seconds later; a stall window holds departures until it ends. Departure
times are computed from that formula, never from when ``advance()`` happens
to be called, so a late wake-up delivers late but never changes the schedule.
Bytes not yet departed are the sender's transmit buffer: the I/O side stops
reading the sender while it is full, as a UART's driver would block.

``Direction`` ties them together the way both callers need: it feeds what
the sender wrote through the fault model onto the line, closes a unit once
the line has been idle ``unit_gap`` seconds, and hands delivered bytes to a
``write`` callable (a pty, a socket, or a simulated session), counting what
the receiver could not take as an overrun. It says when it next needs to run.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

DELIMITER = 0


def geometric_gap(rng: random.Random, p: float) -> int:
    """Good bytes before the next hit, for independent hits with probability ``p``."""
    if p <= 0.0:
        return 1 << 62
    if p >= 1.0:
        return 0
    return int(math.log(1.0 - rng.random()) / math.log1p(-p))


class Windows:
    """Time windows (outages or stalls): fixed ones plus, optionally, random ones.

    Random windows have exponential gaps of mean ``mean_gap`` seconds between
    the end of one and the start of the next, and last ``duration`` seconds.
    """

    def __init__(
        self,
        fixed: list[tuple[float, float]] | None = None,
        *,
        mean_gap: float = 0.0,
        duration: float = 0.0,
        rng: random.Random | None = None,
    ) -> None:
        self._pending = sorted((s, s + d) for s, d in (fixed or []) if d > 0)
        self._starts = [s for s, _ in self._pending]
        self._mean_gap = mean_gap
        self._duration = duration
        self._rng = rng or random.Random(0)
        self._random_end = 0.0
        self._seen = 0.0

    def _extend(self, until: float) -> None:
        if self._mean_gap <= 0 or self._duration <= 0:
            return
        while self._random_end <= until:
            start = self._random_end + self._rng.expovariate(1.0 / self._mean_gap)
            self._pending.append((start, start + self._duration))
            self._starts.append(start)
            self._random_end = start + self._duration
        self._pending.sort()

    def next_after(self, now: float) -> tuple[float, float] | None:
        """The first window that ends after ``now`` (it may already have begun)."""
        self._seen = max(self._seen, now)
        self._extend(now)
        while self._pending and self._pending[0][1] <= now:
            self._pending.pop(0)
        return self._pending[0] if self._pending else None

    def active(self, now: float) -> bool:
        win = self.next_after(now)
        return win is not None and win[0] <= now

    @property
    def count(self) -> int:
        """Windows that had begun by the latest time asked about."""
        return sum(1 for s in self._starts if s <= self._seen)


@dataclass
class Faults:
    """The knobs of one direction. Probabilities are per byte or per unit."""

    corrupt: float = 0.0  #: per byte: one independent byte error
    corrupt_mode: str = "flip"  #: "flip" one random bit, or "replace" the byte
    burst: float = 0.0  #: per byte: a burst of errors starts here
    burst_len: int = 8  #: bytes damaged by one burst
    loss: float = 0.0  #: per unit: the whole unit is dropped
    dup: float = 0.0  #: per unit: the unit is sent twice
    max_unit: int = 1024  #: a unit with no 0x00 ends after this many bytes


@dataclass
class FaultStats:
    bytes_in: int = 0  #: bytes the sender wrote
    bytes_out: int = 0  #: bytes put on the line (after loss and duplication)
    outage_bytes: int = 0  #: dropped because the link was out
    units: int = 0  #: units started
    lost_units: int = 0
    lost_bytes: int = 0
    dup_units: int = 0
    dup_bytes: int = 0  #: extra bytes sent as duplicates
    corrupted: int = 0  #: bytes changed, single errors and bursts together
    byte_errors: int = 0  #: of which independent byte errors
    bursts: int = 0  #: bursts started
    burst_bytes: int = 0  #: of which damaged by bursts

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class FaultModel:
    """Applies outages, unit loss and duplication, and corruption to one direction."""

    def __init__(
        self,
        faults: Faults,
        *,
        seed: int | str = 0,
        direction: str = "ab",
        outages: Windows | None = None,
    ) -> None:
        if faults.max_unit < 1 or faults.burst_len < 1:
            raise ValueError("max_unit and burst_len must be at least 1")
        if faults.corrupt_mode not in ("flip", "replace"):
            raise ValueError("corrupt_mode is 'flip' or 'replace'")
        self.faults = faults
        self.outages = outages
        self.stats = FaultStats()
        self._rng_unit = random.Random(f"{seed}:{direction}:unit")
        self._rng_err = random.Random(f"{seed}:{direction}:corrupt")
        self._rng_burst = random.Random(f"{seed}:{direction}:burst")
        self._unit_len = 0  # bytes of the current unit so far; 0 = no unit open
        self._unit_lost = False
        self._unit_dup: bytearray | None = None
        self._to_error = geometric_gap(self._rng_err, faults.corrupt)
        self._to_burst = geometric_gap(self._rng_burst, faults.burst)
        self._burst_left = 0

    def set_corrupt(self, corrupt: float) -> None:
        """Change the byte error rate from the next byte on."""
        self.faults.corrupt = corrupt
        self._to_error = geometric_gap(self._rng_err, corrupt)

    @property
    def unit_open(self) -> bool:
        return self._unit_len > 0

    def feed(self, data: bytes, now: float = 0.0) -> bytes:
        """Take bytes the sender wrote at time ``now``; return the bytes for the line."""
        self.stats.bytes_in += len(data)
        if self.outages is not None and data and self.outages.active(now):
            self.stats.outage_bytes += len(data)
            return b""
        return self._corrupt(self._units(data))

    def end_unit(self) -> bytes:
        """The line went idle: close the open unit; return its duplicate, if any."""
        return self._corrupt(self._close_unit())

    def _close_unit(self) -> bytes:
        out = b""
        if self._unit_dup is not None:
            out = bytes(self._unit_dup)
            self.stats.dup_units += 1
            self.stats.dup_bytes += len(out)
        self._unit_len = 0
        self._unit_dup = None
        self._unit_lost = False
        return out

    def _units(self, data: bytes) -> bytes:
        f = self.faults
        out = bytearray()
        i, n = 0, len(data)
        while i < n:
            if self._unit_len == 0:
                # Always draw both numbers so the sequence does not depend on the rates.
                r_loss, r_dup = self._rng_unit.random(), self._rng_unit.random()
                self.stats.units += 1
                self._unit_lost = r_loss < f.loss
                self._unit_dup = bytearray() if (not self._unit_lost and r_dup < f.dup) else None
                if self._unit_lost:
                    self.stats.lost_units += 1
            limit = min(n, i + f.max_unit - self._unit_len)
            j = data.find(DELIMITER, i, limit)
            end = j + 1 if j >= 0 else limit
            seg = data[i:end]
            self._unit_len += len(seg)
            if self._unit_lost:
                self.stats.lost_bytes += len(seg)
            else:
                out += seg
                if self._unit_dup is not None:
                    self._unit_dup += seg
            if j >= 0 or self._unit_len >= f.max_unit:
                out += self._close_unit()
            i = end
        return bytes(out)

    def _corrupt(self, data: bytes) -> bytes:
        n = len(data)
        if n == 0:
            return data
        self.stats.bytes_out += n
        hits: dict[int, int] = {}  # position -> XOR mask (never 0)
        # Bursts first: a byte inside a burst is damaged once, by the burst.
        pos = 0
        while pos < n:
            if self._burst_left:
                take = min(self._burst_left, n - pos)
                for k in range(pos, pos + take):
                    hits[k] = self._rng_burst.randrange(1, 256)
                self.stats.burst_bytes += take
                self._burst_left -= take
                pos += take
                if self._burst_left == 0:
                    self._to_burst = geometric_gap(self._rng_burst, self.faults.burst)
                continue
            if self._to_burst >= n - pos:
                self._to_burst -= n - pos
                break
            pos += self._to_burst
            self._to_burst = 0
            self._burst_left = self.faults.burst_len
            self.stats.bursts += 1
        # Independent byte errors.
        pos = self._to_error
        while pos < n:
            if self.faults.corrupt_mode == "flip":
                mask = 1 << self._rng_err.randrange(8)
            else:
                mask = self._rng_err.randrange(1, 256)
            if pos not in hits:
                hits[pos] = mask
                self.stats.byte_errors += 1
            pos += 1 + geometric_gap(self._rng_err, self.faults.corrupt)
        self._to_error = pos - n
        if not hits:
            return data
        buf = bytearray(data)
        for k, mask in hits.items():
            buf[k] ^= mask
        self.stats.corrupted += len(hits)
        return bytes(buf)


@dataclass
class _Segment:
    t: float  # arrival time (tx queue) or departure time of data[0] (flight)
    data: bytes
    off: int = 0


@dataclass
class LineStats:
    bytes_departed: int = 0
    bytes_delivered: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass
class Line:
    """Rate, latency and stalls of one direction (see the module docstring)."""

    rate: float | None = None  #: bytes per second; None = as fast as they come
    latency: float = 0.0
    stalls: Windows | None = None
    stats: LineStats = field(default_factory=LineStats)
    free_at: float = 0.0  #: departure time of the last byte that departed
    oldest_due: float = 0.0  #: when the first byte of the last delivery was due

    def __post_init__(self) -> None:
        self._tx: deque[_Segment] = deque()
        self._flight: deque[_Segment] = deque()
        self._queued = 0
        self._step = 1.0 / self.rate if self.rate else 0.0

    @property
    def queued(self) -> int:
        """Bytes written by the sender that have not departed (the transmit buffer)."""
        return self._queued

    @property
    def in_flight(self) -> int:
        return sum(len(s.data) - s.off for s in self._flight)

    @property
    def idle(self) -> bool:
        return not self._tx and not self._flight

    def send(self, data: bytes, now: float) -> None:
        if data:
            self._tx.append(_Segment(now, data))
            self._queued += len(data)

    def advance(self, now: float) -> bytes:
        """Depart what departs by ``now``; return the bytes delivered by ``now``."""
        self._depart(now)
        return self._deliver(now)

    def next_time(self) -> float | None:
        """When the next byte departs or is delivered (None if nothing is pending)."""
        times = []
        if self._flight:
            s = self._flight[0]
            times.append(s.t + s.off * self._step + self.latency)
        if self._tx:
            s = self._tx[0]
            t = max(s.t, self.free_at) + self._step
            if self.stalls is not None:
                win = self.stalls.next_after(t)
                if win is not None and win[0] <= t:
                    t = win[1] + self._step
            times.append(t)
        return min(times) if times else None

    def _depart(self, now: float) -> None:
        while self._tx:
            stall = None
            if self.stalls is not None:
                stall = self.stalls.next_after(max(self.free_at, self._tx[0].t))
            if stall is None or stall[0] > now:
                self._depart_until(now, strict=False)
                return
            # A stall begins by ``now``: what departs before it does; the rest waits.
            self._depart_until(stall[0], strict=True)
            if not self._tx:
                return
            self.free_at = max(self.free_at, stall[1])
            if now < stall[1]:
                return

    def _depart_until(self, limit: float, *, strict: bool) -> None:
        step = self._step
        while self._tx:
            seg = self._tx[0]
            start = max(seg.t, self.free_at)
            remaining = len(seg.data) - seg.off
            if step:
                count = int(math.floor((limit - start) / step + 1e-9))
                if strict and count > 0 and start + count * step >= limit:
                    count -= 1
                count = max(0, min(remaining, count))
            else:
                count = remaining if start <= limit and not (strict and start >= limit) else 0
            if count == 0:
                return
            chunk = seg.data[seg.off : seg.off + count]
            self._flight.append(_Segment(start + step, chunk))
            self.free_at = start + count * step
            self._queued -= count
            self.stats.bytes_departed += count
            seg.off += count
            if seg.off < len(seg.data):
                return
            self._tx.popleft()

    def _deliver(self, now: float) -> bytes:
        out = bytearray()
        step, lat = self._step, self.latency
        while self._flight:
            seg = self._flight[0]
            remaining = len(seg.data) - seg.off
            first = seg.t + seg.off * step + lat
            if first > now + 1e-12:
                break
            if not out:
                self.oldest_due = first
            count = remaining if not step else min(remaining, int((now - first) / step + 1e-9) + 1)
            out += seg.data[seg.off : seg.off + count]
            seg.off += count
            if seg.off < len(seg.data):
                break
            self._flight.popleft()
        self.stats.bytes_delivered += len(out)
        return bytes(out)


class Direction:
    """One direction: sender's bytes -> faults -> line -> receiver."""

    def __init__(
        self,
        name: str,
        faults: FaultModel,
        line: Line,
        *,
        unit_gap: float = 0.0,
        tx_buffer: int = 4096,
        rx_buffer: int = 1 << 20,
    ) -> None:
        self.name = name
        self.faults = faults
        self.line = line
        self.unit_gap = unit_gap
        self.tx_buffer = tx_buffer
        self.rx_buffer = rx_buffer
        self.pending = bytearray()  # delivered by the line, not yet taken by the receiver
        self.last_input = 0.0
        self.eof = False  # the sender closed
        self.overrun = 0
        # tcflush() by the programs (serial mode): the kernel discarded bytes the
        # sender wrote before we read them, or bytes we delivered before it read them.
        self.sender_flushes = 0
        self.receiver_flushes = 0
        self.bytes_written = 0
        self.first_write: float | None = None
        self.last_write = 0.0
        self.first_write_bytes = 0
        self.max_late = 0.0

    def wants_read(self) -> bool:
        return not self.eof and self.line.queued < self.tx_buffer

    def on_data(self, data: bytes, now: float) -> None:
        self.last_input = now
        self.line.send(self.faults.feed(data, now), now)

    def drained(self) -> bool:
        return self.line.idle and not self.pending and not self.faults.unit_open

    def pump(self, now: float, write: Callable[[bytes], int]) -> None:
        """Close an idle unit, deliver what is due, and write what the receiver takes."""
        if (
            self.unit_gap > 0
            and self.faults.unit_open
            and self.line.queued == 0
            and now - max(self.last_input, self.line.free_at) >= self.unit_gap
        ) or (self.eof and self.faults.unit_open):
            self.line.send(self.faults.end_unit(), now)
        due = self.line.advance(now)
        if due:
            self.max_late = max(self.max_late, now - self.line.oldest_due)
            room = self.rx_buffer - len(self.pending)
            if len(due) > room:
                self.overrun += len(due) - max(room, 0)
                due = due[: max(room, 0)]
            self.pending += due
        if self.pending:
            try:
                n = write(bytes(self.pending))
            except (BlockingIOError, InterruptedError):
                n = 0
            if n > 0:
                if self.first_write is None:
                    self.first_write = now
                    self.first_write_bytes = n
                self.last_write = now
                self.bytes_written += n
                del self.pending[:n]

    def deadline(self) -> float | None:
        times = []
        nt = self.line.next_time()
        if nt is not None:
            times.append(nt)
        if self.faults.unit_open and self.unit_gap > 0:
            times.append(max(self.last_input, self.line.free_at) + self.unit_gap)
        return min(times) if times else None

    def report(self) -> dict[str, Any]:
        out: dict[str, Any] = self.faults.stats.as_dict()
        out.update(self.line.stats.as_dict())
        out["overrun"] = self.overrun
        out["sender_flushes"] = self.sender_flushes
        out["receiver_flushes"] = self.receiver_flushes
        out["bytes_written"] = self.bytes_written
        span = self.last_write - (self.first_write or 0.0)
        rate = (self.bytes_written - self.first_write_bytes) / span if span > 0 else None
        out["achieved_rate"] = round(rate, 1) if rate else None
        out["write_span_s"] = round(span, 3)
        out["first_write_s"] = None if self.first_write is None else round(self.first_write, 3)
        out["last_write_s"] = round(self.last_write, 3)
        out["max_late_s"] = round(self.max_late, 4)
        if self.faults.outages is not None:
            out["outages"] = self.faults.outages.count
        if self.line.stalls is not None:
            out["stalls"] = self.line.stalls.count
        return out
