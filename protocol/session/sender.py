"""The sending side of a session's selective-repeat ARQ (see ``core.py``).

``SessionSender`` holds the send lanes, the frames in flight, the frame sizer
and the RTT estimator. It fills the next frame, lowest lane first, within the
peer's window and the in-flight limit: one lane's segment is a data frame;
control messages, or segments of more lanes while there is room, make a
mixed frame, which saves a header and a tag per part. It takes
acknowledgements and finds losses by packet threshold or by the
retransmission timer. After a timeout no data flies: the session probes with
small pings, at most ``max_probe_interval`` apart, and data resumes the moment
any authenticated frame comes back. An outage then costs what was in flight
(held near the bandwidth-delay product on a line of known rate) plus a few
pings, and ends for us within one probe interval of the line's return.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from protocol import varint
from protocol.errors import RemoteProtocolError
from protocol.messages import Message
from protocol.session import frames as w
from protocol.session.arq import PACKET_THRESHOLD, FrameSizer, RttEstimator, SendLane
from protocol.session.events import SessionConfig, SessionStats, _Sent

if TYPE_CHECKING:
    from collections.abc import Callable

    #: Seals ``(kind, plaintext)`` into a frame; returns its packet number and the frame.
    Seal = Callable[[int, bytes], tuple[int, bytes]]

#: Most a part of a mixed frame adds to its lane bytes: kind, length and offset varints.
PART_RESERVE = 1 + 4 + 8
#: Fewer free bytes than this in a frame are not worth another part.
MIN_PART = 16

#: The most bytes of a data frame that are not lane data (the offset's varint: 8 at most).
DATA_OVERHEAD = w.HEADER_SIZE + w.TAG_SIZE + 8


def check_peer_limits(max_frame: int) -> None:
    """Refuse a frame size no sender could work with (``peer_limits`` clamps the rest)."""
    if max_frame < 64:
        raise RemoteProtocolError(f"peer max_frame {max_frame} is too small", "protocol")


class SessionSender:
    """The send lanes of one session and the frames of them in flight.

    The lanes, the sizer and the RTT estimate outlive a link; ``new_link``
    forgets what was in flight and the peer's limits.
    """

    def __init__(self, config: SessionConfig, stats: SessionStats, now: float) -> None:
        self.config = cfg = config
        self.stats = stats
        self.lanes = [SendLane(cfg.send_buffer) for _ in range(cfg.lanes)]
        self.sizer = FrameSizer(
            min_size=cfg.min_frame,
            max_size=cfg.max_frame - DATA_OVERHEAD,
            overhead=DATA_OVERHEAD + 3,
        )
        self.rtt = RttEstimator(cfg.initial_rto, cfg.min_rto, cfg.max_rto)
        self.new_link(now)

    def new_link(self, now: float) -> None:
        self.peer_frame = self.config.max_frame
        self.peer_window = self.config.window
        self.inflight: dict[int, _Sent] = {}  # by packet number, oldest first
        self.largest_acked = -1
        self.rtt_sampled = -1
        self.probing = False  # after a timeout: one frame in flight at a time
        self.rto_start = now

    @property
    def all_acked(self) -> bool:
        return all(lane.all_acked for lane in self.lanes)

    def peer_limits(self, max_frame: int, window: int) -> None:
        """Take the frame size and window the peer announced in the handshake."""
        check_peer_limits(max_frame)
        if max_frame > self.config.max_frame or window > self.config.window:
            self.stats.clamped += 1
        self.peer_frame = min(max_frame, self.config.max_frame)
        self.peer_window = max(1024, min(window, self.config.window))
        self.sizer.max_size = self.peer_frame - DATA_OVERHEAD
        self.sizer.cap = min(self.sizer.cap, self.sizer.max_size)

    def rewind(self, peer_has: list[int]) -> None:
        """Resume: send again from where the peer says it is."""
        if len(peer_has) != len(self.lanes):  # not zip(strict=): MicroPython has none
            raise RemoteProtocolError("resume positions malformed", "bad-resume")
        for i, lane in enumerate(self.lanes):
            lane.rewind(peer_has[i])
        self.inflight.clear()

    # -- acknowledgements and losses -------------------------------------------

    def on_ack(self, msg: Message, now: float) -> None:
        progress = False
        for lane, cum, ranges in w.decode_ack_lanes(msg.get("lanes")):
            if lane < self.config.lanes:
                self.lanes[lane].on_ack(cum, ranges)
        for spn, sent in sorted(self.inflight.items()):
            if all(self.lanes[lane].is_acked(start, end) for lane, start, end in sent.segments):
                del self.inflight[spn]
                self.sizer.on_frame(sent.size, lost=False)
                self.largest_acked = max(self.largest_acked, spn)
                progress = True
                if spn == msg.get("largest") and spn > self.rtt_sampled:
                    self.rtt_sampled = spn
                    self.rtt.sample(now - sent.time - msg.get("delay_ms") / 1000)
        if progress:
            self.probing = False
            self.rto_start = now
        if not self.config.stream:
            self._detect_losses(now)

    def _detect_losses(self, now: float) -> None:
        srtt = self.rtt.srtt or self.config.initial_rto
        # Oldest first, sorted: a MicroPython dict keeps no insertion order.
        for spn, sent in sorted(self.inflight.items()):
            if spn >= self.largest_acked:
                break
            if self.largest_acked - spn >= PACKET_THRESHOLD or now - sent.time > 1.125 * srtt:
                del self.inflight[spn]
                self._lose(sent)
                self.sizer.on_frame(sent.size, lost=True)

    def _lose(self, sent: _Sent) -> None:
        for lane, start, end in sent.segments:
            self.lanes[lane].mark_lost(start, end)
        self.stats.lost_frames += 1

    @property
    def deadline(self) -> float | None:
        """When the retransmission timer expires; None when it is not running."""
        if self.config.stream or not (self.inflight or self.probing):
            return None
        wait = self.rtt.rto
        if self.probing:
            wait = min(wait, self.config.max_probe_interval)
        return self.rto_start + wait

    def on_timers(self, now: float) -> bool:
        """On a timeout every frame in flight is lost and probing starts.

        Returns True when the session should send a probe now."""
        deadline = self.deadline
        if deadline is None or now < deadline:
            return False
        self.stats.timeouts += 1
        for _, sent in sorted(self.inflight.items()):
            self._lose(sent)
        self.inflight.clear()
        self.rtt.on_timeout()
        if not self.probing:
            self.sizer.on_timeout()
        self.probing = True
        self.rto_start = now
        return True

    def on_frame_from_peer(self, now: float) -> None:
        """Any authenticated frame proves the line works again."""
        if self.probing:
            self.probing = False
            self.rto_start = now

    # -- data out ----------------------------------------------------------------

    def data_allowed(self) -> bool:
        """True when a data frame could go out as soon as the line is free
        (and the session is ready for data)."""
        if not any(lane.can_send_below(lane.base + self.peer_window) for lane in self.lanes):
            return False
        if self.config.stream:
            return True
        if self.probing:
            return False
        return self.inflight_bytes() < self.inflight_limit()

    def inflight_bytes(self) -> int:
        return sum(s.data_bytes for s in self.inflight.values())

    def inflight_limit(self) -> int:
        """Bytes that may be in flight: about 1.25 bandwidth-delay products on a
        line of known rate (never under two frames), else ``max_inflight``."""
        cfg = self.config
        if not cfg.rate:
            return cfg.max_inflight
        srtt = self.rtt.srtt if self.rtt.srtt is not None else cfg.initial_rto / 2
        frames = 2 * (self.frame_size() + self.sizer.overhead)
        return min(cfg.max_inflight, max(frames, int(1.25 * cfg.rate * srtt)))

    def frame_size(self) -> int:
        """The data payload size for the next frame."""
        cfg = self.config
        if cfg.frame_size:
            return cfg.frame_size
        if cfg.stream:
            return self.sizer.max_size
        size = self.sizer.size
        if cfg.rate:
            # Keep one frame's time on the line short: a frame lost to an
            # outage, or waiting ahead of an urgent lane, then costs little.
            size = min(size, max(self.sizer.min_size, int(cfg.rate * cfg.max_frame_time)))
        return size

    def next_data_frame(self, now: float, seal: Seal, control: bytes = b"") -> bytes | None:
        """The next frame with lane data, sealed by ``seal``, or None if none may go out.

        ``control`` (a control frame's plaintext, maybe empty) rides in the same
        frame; when this returns None, sending it is left to the caller."""
        if not self.data_allowed():
            return None
        size = self.frame_size()
        # A frame of one segment holds ``size`` lane bytes after its offset; a mixed
        # frame holds no more than that in all, part headers included.
        limit = size + 8
        used = len(control) + PART_RESERVE if control else 0
        segments: list[tuple[int, int, bytes, bool]] = []
        for index, lane in enumerate(self.lanes):
            while lane.has_pending:
                room = size if used == 0 else limit - used - PART_RESERVE
                if room < MIN_PART and used:
                    break
                retransmit = bool(lane.lost)
                segment = lane.next_segment(room, lane.base + self.peer_window)
                if segment is None:
                    break
                offset, data = segment
                segments.append((index, offset, data, retransmit))
                used += PART_RESERVE + len(data)
        if not segments:
            return None
        bodies = [(w.KIND_DATA | index, varint.encode(offset) + data)
                  for index, offset, data, _ in segments]
        if len(bodies) == 1 and not control:
            pn, frame = seal(*bodies[0])
        else:
            parts = [(w.KIND_CONTROL, control)] if control else []
            pn, frame = seal(w.KIND_MIXED, w.pack_parts(parts + bodies))
        self.inflight[pn] = _Sent([(index, offset, offset + len(data))
                                   for index, offset, data, _ in segments], now, len(frame) + 2)
        if len(self.inflight) == 1:
            self.rto_start = now
        for _, _, data, retransmit in segments:
            self.stats.data_bytes_sent += len(data)
            if retransmit:
                self.stats.retransmitted_bytes += len(data)
        return frame
