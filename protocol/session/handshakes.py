"""A session's handshakes: the one its link began with, and a takeover's.

Theory of operation
-------------------
``Handshaking`` is the half of ``core.Session`` that holds its state and
drives its Noise handshakes; ``Session`` adds the public API, data frames and
timers. A ``HandshakeRun`` is one handshake over a lossy line: our frame for
each step (sent again, byte for byte, until the peer's next step arrives), the
peer's frame for each step (so a repeat is recognised), the retransmission
timer, what the hello or the welcome carried, and a second run's keys.

**Takeover**: an open responder that reads a new first handshake message (not
the one its session began with) runs it as a second handshake beside the live
session, which goes on meanwhile. Nothing of that run touches the session
until it completes as the same peer: the same remote static key, and proof
that the peer holds the new keys (in XX the last message, which we read; in IK
and NN, where the last message is ours and a first message can be replayed,
the first frame that opens under the new keys). It is then a new session
(``Connected``, new id, fresh lanes: the peer started over) unless the hello
resumes this very session with a valid token, which keeps the lanes and
rewinds them, as a resume on a new link does. A stranger's handshake, another
key's, or an anonymous (NN) one that does not prove a resume is dropped, and
the live session never notices. One second handshake at a time: a newer first
message replaces it, as it restarts a responder still in its handshake, so a
flood of them costs what it costs a responder before its session opens.

**Admission**: a responder given ``admit_handshake`` asks it, with the
current time, before a first handshake message starts a new key exchange
(a repeat of the one it answered is answered again without asking). On
``False`` the frame is dropped unanswered and counted
(``SessionStats.handshakes_throttled``): the server's rate cap on key
exchanges lives with the server; the session only calls it.

**Refusals**: a version or hello we cannot take, or a static key that
``accept_static`` (or a pinned ``remote_static``) refuses, is answered with a
reason: a refusal frame in the clear while the initiator is still in its
handshake, a CLOSE under the new keys once it is complete (an XX initiator is
open after its last message and takes nothing unsealed).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from protocol import WIRE_VERSION, messages
from protocol.crypto import X25519PrivateKey
from protocol.errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from protocol.framing import FrameDecoder
from protocol.messages import Message
from protocol.session import frames as w
from protocol.session.events import (
    HANDSHAKE,
    OPEN,
    Closed,
    Connected,
    Event,
    SessionConfig,
    SessionStats,
    next_state,
)
from protocol.session.noise import FrameOpener, FrameSealer, Handshake
from protocol.session.receiver import SessionReceiver
from protocol.session.sender import SessionSender, check_peer_limits

if TYPE_CHECKING:
    from collections.abc import Callable

PROLOGUE = b"haven-session"
SUPPORTED_VERSIONS = [WIRE_VERSION]
MAX_URGENT = 4  #: handshake and refusal frames waiting to go out; older ones give way


@dataclass
class HandshakeRun:
    __match_args__ = (
        "sent_at", "rto", "heard_at", "hs", "frames", "seen", "new_secret", "resume_request",
        "limits", "sealer", "opener", "read_last"
    )
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


def resume_token(secret: bytes, hs: Handshake) -> bytes:
    """Proof of the resume secret, bound to the new handshake."""
    return hmac.new(secret, hs.handshake_hash, hashlib.sha256).digest()


class Handshaking:
    """The state of a session and its handshakes (see the module docstring)."""

    def __init__(
        self,
        *,
        initiator: bool,
        config: SessionConfig | None = None,
        static_key: X25519PrivateKey | None = None,
        remote_static: bytes | None = None,
        resume_lookup: Callable[[bytes], Handshaking | None] | None = None,
        accept_static: Callable[[bytes], bool] | None = None,
        admit_handshake: Callable[[float], bool] | None = None,
        now: float = 0.0,
    ) -> None:
        self.config = cfg = config or SessionConfig()
        if not 1 <= cfg.lanes <= w.MAX_LANES:
            raise LocalProtocolError(f"lanes must be 1 to {w.MAX_LANES}")
        self.initiator = initiator
        self.state = HANDSHAKE
        self.stats = SessionStats()
        self.session_id: bytes | None = None
        self.remote_static: bytes | None = None
        self._static = static_key
        self._pin = remote_static
        self._lookup = resume_lookup
        self._accept_static = accept_static
        self._admit = admit_handshake
        self._resume_secret: bytes | None = None
        self._events: list[Event] = []  # a list: MicroPython's deque is bounded
        self._tx = SessionSender(cfg, self.stats, now)  # send lanes, frames in flight
        self._rx = SessionReceiver(cfg, self._events)  # receive lanes, acknowledgements
        self._start_link(now)

    def _start_link(self, now: float) -> None:
        cfg = self.config
        self._decoder = FrameDecoder(max_payload=cfg.max_frame, crc=False)
        self._sealer: FrameSealer | None = None
        self._opener: FrameOpener | None = None
        self._run = self._new_run(now)  # this link's handshake
        self._second: HandshakeRun | None = None  # a new initiator's, beside the open session
        self._tx.new_link(now)
        self._rx.new_link()
        self._control: list[Message] = []
        self._ping_sent: dict[int, float] = {}
        self._last_heard = now
        self._last_eliciting = now
        self._last_write = float("-inf")
        self._line_free_at = now
        self._urgent: list[bytes] = []  # handshake and refusal frames to send now
        self._resume_msg: Message | None = None  # sent again until answered
        self._resumed_msg: Message | None = None  # our answer, for repeats
        self._refused_in_row = 0
        if self.initiator:
            self._run.hs = self._new_handshake()
            hello = messages.make(
                "hello", versions=SUPPORTED_VERSIONS, max_frame=cfg.max_frame,
                window=cfg.window, lanes=cfg.lanes, stream=cfg.stream or None,
                resume=self.session_id,
            )
            self._write_handshake(self._run, messages.encode(hello), now)

    def _new_run(self, now: float) -> HandshakeRun:
        return HandshakeRun(sent_at=now, rto=self.config.initial_rto, heard_at=now)

    def _new_handshake(self) -> Handshake:
        pattern = self.config.pattern
        static = None if pattern == "NN" else self._static
        # A responder checks the initiator's key itself (``_accepts``), after
        # the message that carries it, so that it can say why it refuses.
        pin = None if pattern == "NN" or not self.initiator else self._pin
        return Handshake(
            pattern, initiator=self.initiator, static_key=static, remote_static=pin,
            prologue=PROLOGUE,
        )

    def _transition(self, trigger: str) -> None:
        self.state = next_state(self.state, trigger)

    def _finish(self, event: Closed, trigger: str) -> None:
        self._events.append(event)
        self._transition(trigger)
        self._second = None

    def _connected(self, resumed: bool) -> None:
        assert self.session_id is not None
        self._events.append(Connected(self.session_id, self.remote_static, resumed))

    def _send_urgent(self, frame: bytes) -> None:
        if frame not in self._urgent:
            self._urgent.append(frame)
            del self._urgent[:-MAX_URGENT]

    def _seal(
        self, kind: int, plain: bytes, sealer: FrameSealer | None = None
    ) -> tuple[int, bytes]:
        """The packet number and the frame that carries ``plain``."""
        sealer = sealer or self._sealer
        assert sealer is not None
        head = w.header(kind, sealer.next_nonce)
        pn, sealed = sealer.seal(head, plain)
        return pn, head + sealed

    # -- handshake frames ----------------------------------------------------

    def _write_handshake(self, run: HandshakeRun, payload: bytes, now: float) -> None:
        assert run.hs is not None
        step = run.step
        msg = run.hs.write_message(payload)
        run.frames[step] = w.with_crc(bytes((w.KIND_HANDSHAKE, step)) + msg)
        self._queue_handshake(run, step, now)
        if run.hs.is_complete:
            self._complete(run, now)

    def _queue_handshake(self, run: HandshakeRun, step: int, now: float) -> None:
        self._send_urgent(run.frames[step])
        run.sent_at = now

    def _resend_handshake(self, run: HandshakeRun, now: float) -> None:
        if run.frames:
            self._queue_handshake(run, max(run.frames), now)
            run.rto = min(run.rto * 2, self.config.max_rto)

    def _on_handshake(self, body: bytes, now: float) -> None:
        step = body[1]
        run, second = self._run, self._second
        for r in (run, second):
            if r is not None and r.seen.get(step) == body:
                # A repeat: our answer was lost. Send it again, byte for byte.
                if step + 1 in r.frames:
                    self._queue_handshake(r, step + 1, now)
                else:
                    self.stats.bad_handshake += 1
                return
        if (not self.initiator and step == 0 and self.state in (HANDSHAKE, OPEN)
                and self._admit is not None and not self._admit(now)):
            self.stats.handshakes_throttled += 1  # dropped before any DH: the peer retries
            return
        if not self.initiator and step == 0 and self.state == HANDSHAKE:
            if run.seen:  # the initiator started over (new process, new ephemeral key)
                self._transition("restart")
                self._run = run = self._new_run(now)
            self._read_step(run, body, now)
        elif not self.initiator and step == 0 and self.state == OPEN:
            if second is not None:
                self._drop_second()  # a newer first message replaces it
            self._second = second = self._new_run(now)
            self._read_step(second, body, now)
        elif second is not None and step == second.step and not second.complete:
            self._read_step(second, body, now)
        elif self.state == HANDSHAKE and step == run.step:
            self._read_step(run, body, now)
        else:
            self.stats.bad_handshake += 1

    def _read_step(self, run: HandshakeRun, body: bytes, now: float) -> None:
        step, msg = body[1], body[2:]
        live = run is self._run
        if run.hs is None:  # responder: the first message starts it
            run.hs = self._new_handshake()
        try:
            payload = run.hs.read_message(msg)
        except ProtocolError as exc:
            self.stats.bad_handshake += 1
            if not live:
                self._drop_second()  # a stranger: the live session goes on
            elif not self.initiator and step == 0:
                run.hs = None  # noise or a stranger: wait for a good first message
            else:
                self._finish(Closed("auth", str(exc)), "fail")
            return
        run.seen[step] = body
        run.heard_at = now
        if live:
            self._last_heard = now
        rs = run.hs.remote_static
        if not self.initiator and rs is not None:  # a responder reads it once: now
            if not self._accepts(rs):
                self._refuse(run, "unknown-key", "this static key is not accepted here")
                return
            if not live and not self._same_peer(rs):
                self._refuse(run, "busy", "a session with another peer is open on this link")
                return
        try:
            self._on_handshake_payload(run, step, payload, now)
        except RemoteProtocolError as exc:
            self._refuse(run, "protocol", str(exc))
            return
        # Reading the payload may have ended this run (a refusal, a drop, a takeover).
        if not (self.state == HANDSHAKE if live else run is self._second and run.sealer is None):
            return
        if run.hs.is_complete:
            run.read_last = True
            self._complete(run, now)
        elif run.hs.is_my_turn:
            self._write_handshake(run, b"", now)

    def _accepts(self, key: bytes) -> bool:
        if self._pin is not None and not hmac.compare_digest(key, self._pin):
            return False
        return self._accept_static is None or bool(self._accept_static(key))

    def _same_peer(self, key: bytes | None) -> bool:
        mine = self.remote_static
        return mine is not None and key is not None and hmac.compare_digest(key, mine)

    def _on_handshake_payload(
        self, run: HandshakeRun, step: int, payload: bytes, now: float
    ) -> None:
        cfg = self.config
        if step == 0:
            hello = messages.decode(payload)
            if hello.type != w.HELLO.number:
                raise RemoteProtocolError("first handshake payload is not a hello", "protocol")
            versions = hello.get("versions")
            common = [v for v in SUPPORTED_VERSIONS if v in versions]
            if not common:
                self._refuse(run, "version", f"no common version: peer speaks {versions!r}")
                return
            if hello.get("lanes") != cfg.lanes or bool(hello.get("stream")) != cfg.stream:
                raise RemoteProtocolError("lanes or stream mode differ", "protocol")
            run.limits = hello.get("max_frame"), hello.get("window")
            if run is self._run:
                self._tx.peer_limits(*run.limits)
            else:  # a second handshake's limits wait for it to take over
                check_peer_limits(run.limits[0])
            run.resume_request = hello.get("resume")
            if run is self._second and not self._may_take_over(run):
                return
            # The welcome is encrypted in every pattern we use (it follows "ee"),
            # so the secret that later proves a resume is known to the two ends only.
            run.new_secret = secrets.token_bytes(32)
            welcome = messages.make(
                "welcome", version=max(common), max_frame=cfg.max_frame, window=cfg.window,
                lanes=cfg.lanes, secret=run.new_secret,
            )
            self._write_handshake(run, messages.encode(welcome), now)
        elif step == 1 and self.initiator:
            welcome = messages.decode(payload)
            if welcome.type != w.WELCOME.number or welcome.get("version") not in SUPPORTED_VERSIONS:
                raise RemoteProtocolError("bad welcome", "protocol")
            self._tx.peer_limits(welcome.get("max_frame"), welcome.get("window"))
            run.new_secret = welcome.get("secret")

    def _may_take_over(self, run: HandshakeRun) -> bool:
        """Whether a second handshake's hello could ever replace the session;
        if not, it is refused before we spend a key exchange on it."""
        if run.resume_request is not None and run.resume_request != self.session_id:
            self._refuse(run, "protocol", "an open link resumes only its own session")
            return False
        if run.resume_request is None and self.remote_static is None:
            # Nothing proves an anonymous peer is ours. Drop it unanswered: if it
            # is ours, restarted, its hello is answered once this session ends.
            self.stats.bad_handshake += 1
            self._drop_second()
            return False
        return True

    def _refuse(self, run: HandshakeRun, reason: str, detail: str) -> None:
        """Tell the initiator of ``run`` why we stop: in the clear while it is in
        its handshake, under the new keys once the handshake is complete."""
        close = messages.make("close", reason=reason, detail=detail[:200])
        if run.hs is not None and run.hs.is_complete:
            if run.sealer is None:
                run.sealer, run.opener = run.hs.split()
            self._send_urgent(self._seal(w.KIND_CONTROL, w.pack_control([close]), run.sealer)[1])
        else:
            self._send_urgent(w.with_crc(bytes((w.KIND_REFUSE,)) + messages.encode(close)))
        if run is self._run:
            self._finish(Closed(reason, detail), "fail")
        else:
            self._drop_second()

    def _drop_second(self) -> None:
        """Forget the second handshake; the session goes on as it was."""
        second, self._second = self._second, None
        if second is not None:
            self.stats.handshakes_dropped += 1
            if second.sealer is None:  # its unanswered handshake frames stay unsent
                self._urgent = [f for f in self._urgent if f not in second.frames.values()]

    # -- a handshake completes -----------------------------------------------

    def _complete(self, run: HandshakeRun, now: float) -> None:
        if run is self._run:
            self._established(now)
        else:
            self._second_complete(run, now)

    def _established(self, now: float) -> None:
        run = self._run
        assert run.hs is not None
        self._sealer, self._opener = run.hs.split()
        self.remote_static = run.hs.remote_static
        self._tx.rto_start = self._last_eliciting = now
        if self.initiator and self.session_id is not None:
            self._transition("established-resuming")
            assert self._resume_secret is not None
            token = resume_token(self._resume_secret, run.hs)
            self._resume_msg = messages.make("resume", token=token, positions=self._rx.positions)
            self._control.append(self._resume_msg)
            run.sent_at = now
            return
        if not self.initiator and run.resume_request:
            self._transition("established-resuming")
            return  # wait for the RESUME message and its token
        self._transition("established")
        if not run.new_secret:
            detail = "the welcome carried no resume secret"
            self._control.append(messages.make("close", reason="protocol", detail=detail))
            self._finish(Closed("protocol", detail), "fail")
            return
        self.session_id = run.hs.handshake_hash[:16]
        self._resume_secret = run.new_secret
        self._connected(False)

    def _second_complete(self, run: HandshakeRun, now: float) -> None:
        assert run.hs is not None
        run.sealer, run.opener = run.hs.split()
        if run.resume_request is None and not self._same_peer(run.hs.remote_static):
            self._refuse(run, "busy", "a session with another peer is open on this link")
            return  # checked when the key arrived; here again for a key that never did
        if run.resume_request is None and run.read_last:
            self._take_over(run, now, None)
        # Otherwise wait for a frame under its keys: a RESUME with its token,
        # or (IK) any frame, which a replayed first message cannot produce.

    def _take_over(self, run: HandshakeRun, now: float, peer_has: list[int] | None) -> None:
        """The second handshake becomes the session, fresh or resumed."""
        assert run.hs is not None and run.limits is not None
        self._transition("take-over")
        self.stats.takeovers += 1
        tx = SessionSender(self.config, self.stats, now)
        tx.peer_limits(*run.limits)
        if peer_has is None:  # the peer started over: so do its lanes
            self._rx = SessionReceiver(self.config, self._events)
            self.session_id = run.hs.handshake_hash[:16]
            self._resume_secret = run.new_secret
        else:
            tx.lanes = self._tx.lanes
            self._rx.new_link()
        self._tx = tx
        self._run, self._second = run, None
        self._sealer, self._opener = run.sealer, run.opener
        self.remote_static = run.hs.remote_static
        self._control, self._ping_sent = [], {}
        self._last_heard = self._last_eliciting = now
        self._resume_msg = self._resumed_msg = None
        self._refused_in_row = 0
        if peer_has is not None:
            self._send_resumed(peer_has)
        self._connected(peer_has is not None)

    def _send_resumed(self, peer_has: list[int]) -> None:
        """Rewind our lanes to what the peer holds, and tell it what we hold."""
        self._tx.rewind(peer_has)
        self._resumed_msg = messages.make("resumed", positions=self._rx.positions)
        self._control.append(self._resumed_msg)
