"""The parts of selective-repeat ARQ that know nothing of frames or keys.

Theory of operation
-------------------
Each lane is a reliable, ordered byte stream, like a QUIC stream. The sender
keeps the bytes of a lane from the peer's cumulative acknowledgement upwards
(``SendLane``); every transmission carries ``(lane, offset, bytes)`` under a
fresh packet number, so a retransmission may be cut into other sizes than the
first sending. The receiver (``RecvLane``) acknowledges the next offset it
expects (cumulative) and up to ``MAX_SACK_RANGES`` ranges it holds beyond it
(SACK, as in RFC 2018, in bytes). A range is sent again only when it is
judged lost: a packet sent after it was acknowledged while it was not (the
packet threshold of RFC 9002 section 6.1.1), or the retransmission timer
(``RttEstimator``, RFC 6298) expired.

``FrameSizer`` picks the payload size that maximises goodput for the byte
error rate measured from recent losses: a frame of ``n`` bytes with ``o``
bytes of overhead survives with probability ``(1 - p) ** (n + o)``, so the
best ``n`` grows as ``sqrt(o / p)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from protocol.errors import LocalProtocolError, RemoteProtocolError
from protocol.ranges import RangeSet


def _log1p(x: float) -> float:
    """``log(1 + x)``, exact for tiny ``x`` too: math.log1p where it exists (MicroPython
    lacks it), else log(1 + x) corrected for the rounding of 1 + x (Goldberg, 1991)."""
    if hasattr(math, "log1p"):
        return math.log1p(x)
    u = 1.0 + x
    return x if u == 1.0 else math.log(u) * x / (u - 1.0)


MAX_SACK_RANGES = 16
PACKET_THRESHOLD = 3


class SendLane:
    """The sending side of one lane: a buffer from the acknowledged offset up."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.base = 0  #: everything below is acknowledged
        self.next_new = 0  #: first offset never sent
        self._buf = bytearray()  #: bytes from ``base`` to ``end``
        self.sacked = RangeSet()  #: acknowledged above ``base``
        self.lost = RangeSet()  #: to be sent again

    @property
    def end(self) -> int:
        return self.base + len(self._buf)

    @property
    def free(self) -> int:
        return max(0, self.capacity - len(self._buf))

    @property
    def all_acked(self) -> bool:
        return not self._buf

    @property
    def has_pending(self) -> bool:
        return bool(self.lost) or self.next_new < self.end

    def can_send_below(self, limit: int) -> bool:
        """True if ``next_segment`` would return something below offset ``limit``."""
        first = self.lost.first()
        start = first[0] if first is not None else self.next_new
        return start < min(limit, self.end)

    def write(self, data: bytes) -> None:
        if len(data) > self.free:
            raise LocalProtocolError("send buffer full", "buffer-full")
        self._buf += data

    def next_segment(self, max_len: int, limit: int) -> tuple[int, bytes] | None:
        """The next range to send, at most ``max_len`` bytes, below offset ``limit``."""
        first = self.lost.first()
        if first is not None:
            start, end = first
            end = min(end, start + max_len)
        elif self.next_new < self.end:
            start = self.next_new
            end = min(self.end, start + max_len)
        else:
            return None
        end = min(end, limit)
        if end <= start:
            return None
        self.lost.remove(start, end)
        self.next_new = max(self.next_new, end)
        return start, bytes(self._buf[start - self.base : end - self.base])

    def on_ack(self, cum: int, ranges: list[tuple[int, int]]) -> None:
        if cum > self.next_new or any(e > self.next_new for _, e in ranges):
            raise RemoteProtocolError("acknowledgement of data never sent", "bad-ack")
        if cum > self.base:
            self._buf[: cum - self.base] = b""
            self.base = cum
        for s, e in ranges:
            self.sacked.add(max(s, self.base), e)
        self.sacked.remove_below(self.base)
        self.lost.remove_below(self.base)
        for s, e in self.sacked:
            self.lost.remove(s, e)

    def is_acked(self, start: int, end: int) -> bool:
        return end <= self.base or self.sacked.covers(max(start, self.base), end)

    def mark_lost(self, start: int, end: int) -> None:
        start = max(start, self.base)
        if end <= start:
            return
        self.lost.add(start, end)
        for s, e in self.sacked:
            self.lost.remove(s, e)

    def rewind(self, offset: int) -> None:
        """After a resume: the peer holds everything below ``offset``."""
        if offset < self.base or offset > self.end:
            raise RemoteProtocolError("resume position outside the send buffer", "bad-resume")
        self.on_ack(min(offset, self.next_new), [])
        if offset > self.base:  # acknowledged data we thought unsent: drop it too
            self._buf[: offset - self.base] = b""
            self.base = offset
        self.next_new = self.base
        self.sacked = RangeSet()
        self.lost = RangeSet()


class RecvLane:
    """The receiving side of one lane: reassembly and acknowledgement state."""

    def __init__(self, window: int) -> None:
        self.window = window
        self.cum = 0  #: next offset expected in order
        self._held: dict[int, bytes] = {}  #: out-of-order pieces by offset
        self.held_ranges = RangeSet()
        self.beyond_window = 0

    def on_data(self, offset: int, data: bytes) -> bytes:
        """Take a segment; return the bytes that became deliverable in order."""
        end = offset + len(data)
        if end > self.cum + self.window:
            self.beyond_window += 1
            end = self.cum + self.window
            data = data[: max(0, end - offset)]
        if end <= self.cum or self.held_ranges.covers(offset, end):
            return b""
        if offset > self.cum:
            self._held[offset] = data
            self.held_ranges.add(offset, end)
            return b""
        out = bytearray(data[self.cum - offset :])
        self.cum = end
        while self._held:
            # Pull every held piece that now touches the in-order edge.
            progressed = False
            for start in sorted(self._held):
                piece = self._held[start]
                if start > self.cum:
                    break
                del self._held[start]
                progressed = True
                tail = start + len(piece)
                if tail > self.cum:
                    out += piece[self.cum - start :]
                    self.cum = tail
            if not progressed:
                break
        self.held_ranges.remove_below(self.cum)
        return bytes(out)

    def ack_state(self) -> tuple[int, list[tuple[int, int]]]:
        return self.cum, list(self.held_ranges)[:MAX_SACK_RANGES]


class RttEstimator:
    """Round-trip time and retransmission timeout, RFC 6298 section 2."""

    def __init__(self, initial_rto: float = 1.0, min_rto: float = 0.2, max_rto: float = 60.0):
        self.srtt: float | None = None
        self.rttvar = 0.0
        self.min_rto = min_rto
        self.max_rto = max_rto
        self._rto = initial_rto
        self.backoff = 0

    def sample(self, rtt: float) -> None:
        rtt = max(rtt, 0.0)
        if self.srtt is None:
            self.srtt = rtt
            self.rttvar = rtt / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - rtt)
            self.srtt = 0.875 * self.srtt + 0.125 * rtt
        self._rto = self.srtt + max(0.01, 4 * self.rttvar)
        self.backoff = 0

    @property
    def rto(self) -> float:
        return min(self.max_rto, max(self.min_rto, self._rto) * (1 << self.backoff))

    def on_timeout(self) -> None:
        if self.rto < self.max_rto:
            self.backoff += 1


@dataclass
class FrameSizer:
    """Chooses the data payload size from the measured byte error rate.

    Losses are counted per frame with the frame's size, decayed per frame
    (``memory_frames``): enough frames to tell 1e-5 from 1e-6 without
    jumping at every loss, few enough that small frames on a noisy line
    re-adapt within seconds. A timeout with no acknowledgement halves a cap on the
    size, which a run of acknowledged frames lifts again: that takes care of
    a line so bad that no frame of the current size gets through.
    """

    __match_args__ = (
        "min_size", "max_size", "overhead", "memory_frames", "prior_bytes", "prior_error_rate",
        "initial_size"
    )
    min_size: int = 48
    max_size: int = 4096
    overhead: int = 28
    memory_frames: float = 40.0
    prior_bytes: float = 1024.0
    prior_error_rate: float = 1e-6
    initial_size: int = 1024  #: start here; acknowledged frames lift the cap

    def __post_init__(self) -> None:
        self._frames = 0.0
        self._lost = 0.0
        self._bytes = 0.0
        self.cap = min(self.max_size, self.initial_size)
        self._choice = self.max_size
        self._choose()

    @property
    def error_rate(self) -> float:
        """Estimated probability that a byte on the line is damaged."""
        frames = self._frames + self.prior_bytes / 1024
        lost = self._lost + self.prior_bytes * self.prior_error_rate
        size = (self._bytes + self.prior_bytes) / frames
        loss = min(lost / frames, 0.99)
        return -_log1p(-loss) / size

    @property
    def size(self) -> int:
        return min(self._choice, self.cap)

    def on_frame(self, wire_size: int, lost: bool) -> None:
        decay = math.exp(-1.0 / self.memory_frames)
        self._frames = self._frames * decay + 1
        self._bytes = self._bytes * decay + wire_size
        self._lost = self._lost * decay + (1 if lost else 0)
        if not lost and self.cap < self.max_size:
            self.cap = min(self.max_size, self.cap + max(wire_size // 2, 16))
        self._choose()

    def on_timeout(self) -> None:
        self.cap = max(self.min_size, min(self.cap, self.size) // 2)

    def efficiency(self, size: int, error_rate: float | None = None) -> float:
        p = self.error_rate if error_rate is None else error_rate
        total = size + self.overhead
        return float(size / total * (1 - p) ** total)

    def best_size(self, error_rate: float) -> int:
        best, best_eff = self.min_size, -1.0
        size = self.min_size
        while size <= self.max_size:
            eff = self.efficiency(size, error_rate)
            if eff > best_eff:
                best, best_eff = size, eff
            size = max(size + 8, int(size * 1.125))
        eff = self.efficiency(self.max_size, error_rate)
        return self.max_size if eff > best_eff else best

    def _choose(self) -> None:
        self._choice = self.best_size(self.error_rate)
