"""The session's configuration, events, statistics and state table.

``TRANSITIONS`` maps each state to the triggers it allows and the state each
leads to; ``Session`` changes state only through it, and a trigger a state
does not list is a ``LocalProtocolError`` (as in h11's ``_state.py``):

* ``handshake``: the Noise handshake of this link is under way. The
  responder restarts it (``restart``) when the initiator starts over; it ends
  ``established`` (a new session: open) or ``established-resuming`` (the
  hello named a session to resume: the token is still to come).
* ``resuming``: the handshake is complete and the resume is being proven;
  ``resumed`` opens the session with the old session's lanes.
* ``open``: data flows. An open responder runs a second handshake beside the
  session when a new initiator starts one, and ``take-over`` gives the
  session that handshake's keys once it completes as the same peer.
* ``closed``: nothing more happens.

``reconnect`` (initiator only) starts a new link's handshake from any state
but closed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from protocol import MICROPYTHON
from protocol.errors import LocalProtocolError

HANDSHAKE, RESUMING, OPEN, CLOSED = "handshake", "resuming", "open", "closed"
TRANSITIONS: dict[str, dict[str, str]] = {
    HANDSHAKE: {"restart": HANDSHAKE, "established": OPEN, "established-resuming": RESUMING,
                "reconnect": HANDSHAKE, "close": CLOSED, "fail": CLOSED},
    RESUMING: {"resumed": OPEN, "reconnect": HANDSHAKE, "close": CLOSED, "fail": CLOSED},
    OPEN: {"take-over": OPEN, "reconnect": HANDSHAKE, "close": CLOSED, "fail": CLOSED},
    CLOSED: {},
}


def next_state(state: str, trigger: str) -> str:
    """The state ``trigger`` leads to from ``state``; ``LocalProtocolError`` if
    ``state`` does not allow it. ``Session`` changes state only through this."""
    new = TRANSITIONS[state].get(trigger)
    if new is None:
        raise LocalProtocolError(f"cannot {trigger} in state {state}", "state")
    return new


@dataclass
class SessionConfig:
    __match_args__ = (
        "pattern", "stream", "rate", "max_frame", "frame_size", "min_frame", "window",
        "send_buffer", "max_inflight", "lanes", "max_message", "initial_rto", "min_rto", "max_rto",
        "max_probe_interval", "max_frame_time", "ack_delay", "keepalive", "dead_timeout",
        "flood_limit"
    )
    pattern: str = "XX"  #: "XX", "IK" or "NN"
    stream: bool = False  #: the link is reliable (TCP): no retransmission timers
    rate: float | None = None  #: line rate in bytes/s, for pacing; None: unpaced
    max_frame: int = 4096  #: largest session frame we accept
    frame_size: int | None = None  #: fixed data payload size; None: adapt to the line
    min_frame: int = 48
    window: int = 65536  #: per-lane receive window, bytes
    send_buffer: int = 1 << 20  #: per-lane send buffer, bytes
    max_inflight: int = 16384  #: unacknowledged bytes, all lanes
    lanes: int = 4
    max_message: int = 1 << 20
    initial_rto: float = 1.0
    min_rto: float = 0.2
    max_rto: float = 4.0
    max_probe_interval: float = 1.0  #: after a timeout, ping at least this often
    max_frame_time: float = 0.15  #: with a known rate: longest frame, in line seconds
    ack_delay: float = 0.02
    keepalive: float = 10.0
    dead_timeout: float = 120.0
    flood_limit: int = 10000  #: refused frames in a row before we give up


@dataclass(frozen=True)
class Connected:
    __match_args__ = ("session_id", "remote_static", "resumed")
    session_id: bytes
    remote_static: bytes | None
    resumed: bool


@dataclass(frozen=True)
class MessageReceived:
    __match_args__ = ("lane", "data")
    lane: int
    data: bytes


@dataclass(frozen=True)
class Closed:
    __match_args__ = ("reason", "detail", "by_peer", "retry_ms")
    reason: str
    detail: str = ""
    by_peer: bool = False
    retry_ms: int | None = None  #: the peer's ``close`` asked us to wait this long (busy)


if TYPE_CHECKING or not MICROPYTHON:  # noqa: SIM108 (mypy needs the alias as a plain assignment)
    Event = Connected | MessageReceived | Closed
else:  # MicroPython has no runtime union of types; only annotations name Event there
    Event = object


@dataclass
class SessionStats:
    __match_args__ = (
        "bytes_sent", "bytes_received", "frames_sent", "frames_received", "data_bytes_sent",
        "retransmitted_bytes", "lost_frames", "timeouts", "early_frames", "bad_handshake",
        "takeovers", "handshakes_dropped", "handshakes_throttled", "bad_messages",
        "unknown_messages", "clamped", "refused_frames", "extra"
    )
    bytes_sent: int = 0
    bytes_received: int = 0
    frames_sent: int = 0
    frames_received: int = 0  #: authenticated frames
    data_bytes_sent: int = 0  #: lane bytes, first sendings and retransmissions
    retransmitted_bytes: int = 0
    lost_frames: int = 0
    timeouts: int = 0
    early_frames: int = 0  #: encrypted frames before we had keys
    bad_handshake: int = 0
    takeovers: int = 0  #: second handshakes that became the session
    handshakes_dropped: int = 0  #: second handshakes refused, failed, superseded or expired
    handshakes_throttled: int = 0  #: first handshake messages dropped: admission said no
    bad_messages: int = 0
    unknown_messages: int = 0
    clamped: int = 0  #: absurd values from the peer, clamped
    refused_frames: int = 0  #: frames that failed authentication, replays, unknown kinds
    extra: dict[str, int] = field(default_factory=dict)


@dataclass
class _Sent:
    """A frame in flight: the lane ranges ``(lane, start, end)`` it carries."""

    __match_args__ = ("segments", "time", "size")
    segments: list[tuple[int, int, int]]
    time: float
    size: int

    @property
    def data_bytes(self) -> int:
        return sum(end - start for _, start, end in self.segments)
