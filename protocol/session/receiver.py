"""The receiving side of a session's selective-repeat ARQ (see ``core.py``).

``SessionReceiver`` holds the receive lanes and the bytes of messages not yet
complete. It turns lane data into ``MessageReceived`` events and schedules
acknowledgements: at once when a lane has or had a gap, when a frame brings
nothing new, or on every second frame; otherwise ``ack_delay`` after the first
frame not yet acknowledged.
"""

from __future__ import annotations

from protocol import messages, varint
from protocol.errors import RemoteProtocolError
from protocol.messages import Message
from protocol.session import frames as w
from protocol.session.arq import RecvLane
from protocol.session.events import Event, MessageReceived, SessionConfig


class SessionReceiver:
    """The receive lanes of one session; complete messages go to ``events``.

    The lanes and the partial messages outlive a link; ``new_link`` forgets
    the acknowledgement owed on the old one.
    """

    def __init__(self, config: SessionConfig, events: list[Event]) -> None:
        self.config = config
        self.events = events
        self.lanes = [RecvLane(config.window) for _ in range(config.lanes)]
        self.assembly = [bytearray() for _ in range(config.lanes)]
        self.new_link()

    def new_link(self) -> None:
        self.ack_due: float | None = None
        self.ack_unsent = 0
        self.largest_rx: tuple[int, float] | None = None

    @property
    def positions(self) -> list[int]:
        """How far each lane has been received in order."""
        return [lane.cum for lane in self.lanes]

    def on_data(self, lane: int, plain: bytes, ready: bool) -> bool:
        """One lane segment (``varint(offset) bytes``); messages are delivered only
        once ``ready`` (after resume). True if it wants an acknowledgement at once:
        the lane has or had a gap, or the segment brought nothing new. The caller
        checked that the lane exists."""
        offset, pos = varint.decode(plain)
        recv = self.lanes[lane]
        before_ooo = bool(recv.held_ranges)
        data = recv.on_data(offset, plain[pos:])
        if data and ready:
            self._deliver(lane, data)
        elif data:
            self.assembly[lane] += data
        return before_ooo or bool(recv.held_ranges) or not data

    def _deliver(self, lane: int, data: bytes) -> None:
        buf = self.assembly[lane]
        buf += data
        pos = 0
        while pos < len(buf):
            try:
                size, start = varint.decode(bytes(buf[pos : pos + 8]))
            except RemoteProtocolError:
                break  # the length itself is not complete yet
            if size > self.config.max_message:
                raise RemoteProtocolError(f"message of {size} bytes announced", "too-large")
            if pos + start + size > len(buf):
                break
            self.events.append(MessageReceived(lane, bytes(buf[pos + start : pos + start + size])))
            pos += start + size
        buf[:pos] = b""  # not del: MicroPython deletes no bytearray slice

    def note_eliciting(self, pn: int, now: float, urgent: bool) -> None:
        """A frame with lane data arrived: schedule its acknowledgement."""
        if self.largest_rx is None or pn > self.largest_rx[0]:
            self.largest_rx = (pn, now)
        self.ack_unsent += 1
        if urgent or self.ack_unsent >= 2:
            self.ack_due = now
        elif self.ack_due is None:
            self.ack_due = now + self.config.ack_delay

    def make_ack(self, now: float) -> Message:
        assert self.largest_rx is not None
        largest, at = self.largest_rx
        states = [(i, r.cum, r.ack_state()[1]) for i, r in enumerate(self.lanes) if r.cum or
                  r.held_ranges]
        self.ack_due = None
        self.ack_unsent = 0
        return messages.make(
            "ack", largest=largest, delay_ms=int((now - at) * 1000),
            lanes=w.encode_ack_lanes(states),
        )
