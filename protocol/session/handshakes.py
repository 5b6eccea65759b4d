"""One Noise handshake as a session runs it over a lossy line.

Theory of operation
-------------------
A ``HandshakeRun`` holds what a session needs to drive one handshake: the
``noise.Handshake`` itself, our frame for each step (sent again, byte for
byte, until the peer's next step arrives), the peer's frame for each step
(so a repeat is recognised), the retransmission timer, what the hello or the
welcome carried, and, once the handshake is complete, the transport keys.

A session has the run its link began with, and an open responder may have one
more: a *second* handshake that a new initiator started while the live
session goes on (``core.Session``). The second run keeps its keys and the
peer's announced limits to itself; the session takes them over only when the
run completes and proves it is the same peer. Nothing of a run touches the
live session until then, so a run that fails or is abandoned leaves it as it was.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from protocol.session.noise import FrameOpener, FrameSealer, Handshake


@dataclass
class HandshakeRun:
    sent_at: float  #: when our latest handshake frame was queued
    rto: float  #: wait this long for the peer's next step before sending ours again
    heard_at: float  #: when the peer's latest handshake frame arrived
    hs: Handshake | None = None  #: a responder's starts with the first message it reads
    frames: dict[int, bytes] = field(default_factory=dict)  #: our frame for each step
    seen: dict[int, bytes] = field(default_factory=dict)  #: the peer's frame for each step
    new_secret: bytes | None = None  #: the resume secret the welcome carries
    resume_request: bytes | None = None  #: the session the hello asks to resume
    limits: tuple[int, int] | None = None  #: the peer's max_frame and window, from its hello
    sealer: FrameSealer | None = None  #: a second run's keys, once it is complete
    opener: FrameOpener | None = None
    read_last: bool = False  #: we read the last message: the peer proved it holds its keys

    @property
    def step(self) -> int:
        """The next step of the handshake, ours or the peer's."""
        return len(self.frames) + len(self.seen)

    @property
    def complete(self) -> bool:
        return self.hs is not None and self.hs.is_complete
