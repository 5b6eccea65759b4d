"""A reliable, authenticated, resumable session over a byte stream, sans-I/O.

Theory of operation
-------------------
The caller owns the line. It passes in what it read and the current time,
takes out bytes to write, and calls again at ``next_deadline()``::

    s = Session(initiator=True, config=SessionConfig(rate=11520))
    s.send_message(lane=1, data=b"...")
    line.write(s.data_to_send(now))
    s.receive_data(line.read(), now)
    while (event := s.next_event()) is not None: ...

1. **Handshake** (SPEC.md "Session"): a Noise handshake (``XX`` when both
   ends have static keys, ``IK`` when the initiator already knows the
   responder's, ``NN`` for an encrypted but anonymous link) whose payloads
   negotiate the wire version, frame size, window and lanes. Handshake
   frames are sent again, byte for byte, until the peer's next step arrives.
2. **Frames** after the handshake carry an AEAD tag over a 3-byte header
   (kind, low 16 bits of the packet number) and the payload: lane data,
   control messages, or both (a mixed frame: data of several lanes and the
   acknowledgement owed, under one header and tag). The packet
   number counts transmissions, so it is the nonce: a retransmission,
   however it is cut, is a new packet with a new nonce. The replay window
   refuses old and repeated packets; a frame that fails its tag changes no
   state, so a forged acknowledgement cannot make us drop data.
3. **Reliability**: lanes are byte streams with cumulative + SACK
   acknowledgements (``SessionSender`` and ``SessionReceiver``); after a
   timeout only pings probe the line until it answers, and the frame size
   follows the measured error rate. ``stream=True`` (TCP) drops the timers.
4. **Lanes** are served lowest number first at every frame boundary, so an
   urgent message overtakes bulk data within one frame.
5. **Resume**: ``reconnect()`` starts a fresh handshake (never a saved
   cipher state) on a new link. The first control message then names the
   session and proves it with a token bound to the new handshake; each side
   says how far it has received, and sending continues from there.
6. **Liveness**: a ping when idle, and ``Closed("timeout")`` only after
   ``dead_timeout`` seconds without one authenticated frame.
7. **Takeover**: an open responder that reads a new first handshake message
   (not the one its session began with) runs it as a second handshake beside
   the live session, which goes on meanwhile. It becomes the session only
   when it completes as the same peer: the same remote static key, and proof
   that the peer holds the new handshake's keys (in XX the last message,
   which we read; in IK and NN, where the last message is ours and a first
   message can be replayed, the first frame that opens under the new keys).
   A new session (``Connected``, new id, fresh lanes: the peer started over)
   unless the hello resumes this very session with a valid token, which
   keeps the lanes and rewinds them, as a resume on a new link does. A
   stranger's handshake, another key's, or an anonymous (NN) one that does
   not prove a resume is dropped, and the live session never notices. One
   second handshake at a time: a newer first message replaces it, as it
   restarts a responder still in its handshake, so a flood of them costs what
   it costs a responder before its session opens.
8. **Refusals**: a version or hello we cannot take, or a static key that
   ``accept_static`` (or a pinned ``remote_static``) refuses, is answered
   with a reason: a refusal frame in the clear while the initiator is still
   in its handshake, a CLOSE under the new keys once it is complete (an XX
   initiator is open after its last message and takes nothing unsealed).

Every state change goes through ``events.TRANSITIONS``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections import deque
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from protocol import WIRE_VERSION, messages, varint
from protocol.errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from protocol.framing import FrameDecoder, encode_frame
from protocol.messages import Message
from protocol.session import frames as w
from protocol.session.events import (
    CLOSED,
    HANDSHAKE,
    OPEN,
    RESUMING,
    TRANSITIONS,
    Closed,
    Connected,
    Event,
    MessageReceived,
    SessionConfig,
    SessionStats,
)
from protocol.session.handshakes import HandshakeRun
from protocol.session.noise import FrameOpener, FrameSealer, Handshake
from protocol.session.receiver import SessionReceiver
from protocol.session.sender import SessionSender, check_peer_limits

__all__ = [
    "Closed", "Connected", "Event", "MessageReceived", "Session", "SessionConfig", "SessionStats",
]

PROLOGUE = b"haven-session"
SUPPORTED_VERSIONS = [WIRE_VERSION]
MAX_URGENT = 4  #: handshake and refusal frames waiting to go out; older ones give way

class Session:
    """One end of a session. See the module docstring.

    ``accept_static`` (responder) is asked about the initiator's static key as
    soon as the handshake reveals it (IK's first message, XX's last); a
    ``False`` refuses the initiator with the reason ``"unknown-key"``. A
    responder's ``remote_static`` pins that key the same way.
    """

    def __init__(
        self,
        *,
        initiator: bool,
        config: SessionConfig | None = None,
        static_key: X25519PrivateKey | None = None,
        remote_static: bytes | None = None,
        resume_lookup: Callable[[bytes], Session | None] | None = None,
        accept_static: Callable[[bytes], bool] | None = None,
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
        self._resume_secret: bytes | None = None
        self._events: deque[Event] = deque()
        self._tx = SessionSender(cfg, self.stats, now)  # send lanes, frames in flight
        self._rx = SessionReceiver(cfg, self._events)  # receive lanes, acknowledgements
        self._urgent: list[bytes] = []  # handshake and refusal frames to send now
        self._last_write = float("-inf")
        self._line_free_at = now
        self._start_link(now)

    # -- public API ----------------------------------------------------------

    def send_message(self, lane: int, data: bytes) -> None:
        """Queue one message on ``lane`` (0 is the most urgent)."""
        if self.state == CLOSED:
            raise LocalProtocolError("the session is closed", "closed")
        if not 0 <= lane < self.config.lanes:
            raise LocalProtocolError(f"no lane {lane}")
        if len(data) > self.config.max_message:
            raise LocalProtocolError("message larger than max_message", "too-large")
        self._tx.lanes[lane].write(varint.encode(len(data)) + data)

    def can_send(self, lane: int, size: int) -> bool:
        return self._tx.lanes[lane].free >= size + 8

    @property
    def all_acked(self) -> bool:
        """True when the peer has acknowledged every byte we queued."""
        return self._tx.all_acked

    @property
    def is_open(self) -> bool:
        return self.state == OPEN

    @property
    def frame_size(self) -> int:
        return self._tx.frame_size()

    @property
    def error_rate(self) -> float:
        return self._tx.sizer.error_rate

    @property
    def srtt(self) -> float | None:
        return self._tx.rtt.srtt

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def close(self, reason: str = "shutdown", detail: str = "") -> None:
        """Say goodbye; the CLOSE goes out with the next ``data_to_send``."""
        if self.state == CLOSED:
            return
        if self._sealer is not None:
            self._control.append(messages.make("close", reason=reason, detail=detail or None))
        self._finish(Closed(reason, detail), "close")

    def reconnect(self, now: float) -> None:
        """The link was replaced: handshake again and resume (initiator only)."""
        if not self.initiator:
            raise LocalProtocolError("only the initiator reconnects; the responder takes a new one")
        if self.session_id is None:
            raise LocalProtocolError("nothing to resume before the first handshake")
        self._transition("reconnect")
        self._start_link(now)

    def receive_data(self, data: bytes, now: float) -> None:
        """Take bytes read from the line (``b""`` is allowed)."""
        self.stats.bytes_received += len(data)
        for frame in self._decoder.feed(data):
            if self.state == CLOSED:
                return
            try:
                self._on_frame(frame, now)
            except RemoteProtocolError as exc:
                # An authenticated peer broke the rules: say why and stop.
                self.close("protocol", str(exc))

    def data_to_send(self, now: float) -> bytes:
        """Bytes to write to the line now (maybe none)."""
        self._on_timers(now)
        out = bytearray()
        if now - self._last_write > 0.5:
            out += b"\x00"  # flush whatever noise preceded this burst
        while self.config.rate is None or self._line_free_at <= now + self._horizon():
            frame = self._next_frame(now)
            if frame is None:
                break
            wire = encode_frame(frame, crc=False)
            out += wire
            self.stats.frames_sent += 1
            if self.config.rate:
                start = max(self._line_free_at, now)
                self._line_free_at = start + len(wire) / self.config.rate
        if len(out) > 1 or (out and self._last_write == float("-inf")):
            self._last_write = now
            self.stats.bytes_sent += len(out)
            return bytes(out)
        return b""

    def next_deadline(self) -> float | None:
        """When to call ``data_to_send`` again even if nothing arrives."""
        if self.state == CLOSED:
            return None
        run, cfg = self._run, self.config
        times = [self._last_heard + cfg.dead_timeout]
        if self.state == HANDSHAKE and run.frames or self._resume_msg is not None:
            times.append(run.sent_at + run.rto)
        if (second := self._second) is not None:
            times.append(second.heard_at + cfg.dead_timeout)
            if second.frames and not second.complete:
                times.append(second.sent_at + second.rto)
        if (rto_at := self._tx.deadline) is not None:
            times.append(rto_at)
        if self.is_open:
            times.append(self._last_eliciting + cfg.keepalive)
        # Frames waiting to go out leave when they are due and the line is free.
        wants = [self._rx.ack_due] if self._rx.ack_due is not None else []
        if self._control or self._urgent or self._data_allowed():
            wants.append(float("-inf"))
        if wants:
            line_free = self._line_free_at - self._horizon() if cfg.rate else float("-inf")
            times.append(max(min(wants), line_free))
        return min(times)

    # -- the link ------------------------------------------------------------

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
        self._urgent = []
        self._resume_msg: Message | None = None  # sent again until answered
        self._resumed_msg: Message | None = None  # our answer, for repeats
        self._refused_in_row = 0
        if self.initiator:
            run = self._run
            run.hs = self._new_handshake()
            hello: dict[str, Any] = dict(
                versions=SUPPORTED_VERSIONS,
                max_frame=cfg.max_frame,
                window=cfg.window,
                lanes=cfg.lanes,
                stream=cfg.stream or None,
                resume=self.session_id,
            )
            self._write_handshake(run, messages.encode(messages.make("hello", **hello)), now)

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

    def _horizon(self) -> float:
        # Hand the next frame over shortly before the line is free: early
        # enough that it never idles, late enough that frames do not queue
        # (a queue would add to the round trip and to what an outage loses).
        rate = self.config.rate or 1.0
        return max(0.02, 0.25 * (self._tx.frame_size() + 40) / rate)

    def _transition(self, trigger: str) -> None:
        new = TRANSITIONS[self.state].get(trigger)
        if new is None:
            raise LocalProtocolError(f"cannot {trigger} in state {self.state}", "state")
        self.state = new

    def _finish(self, event: Closed, trigger: str) -> None:
        self._events.append(event)
        self._transition(trigger)
        self._second = None

    def _send_urgent(self, frame: bytes) -> None:
        if frame not in self._urgent:
            self._urgent.append(frame)
            del self._urgent[:-MAX_URGENT]

    # -- handshake -----------------------------------------------------------

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

    def _active(self, run: HandshakeRun) -> bool:
        """True while ``run`` is still to be read from or written to."""
        if run is self._run:
            return self.state == HANDSHAKE
        return run is self._second and run.sealer is None

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
        if not self._active(run):
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

    def _fail_established(self, reason: str, detail: str) -> None:
        self._control.append(messages.make("close", reason=reason, detail=detail))
        self._finish(Closed(reason, detail), "fail")

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
        h = run.hs.handshake_hash
        self._tx.rto_start = self._last_eliciting = now
        if self.initiator and self.session_id is not None:
            self._transition("established-resuming")
            assert self._resume_secret is not None
            token = hmac.new(self._resume_secret, h, hashlib.sha256).digest()
            positions = self._rx.positions
            self._resume_msg = messages.make("resume", token=token, positions=positions)
            self._control.append(self._resume_msg)
            run.sent_at = now
            return
        if not self.initiator and run.resume_request:
            self._transition("established-resuming")
            return  # wait for the RESUME message and its token
        self._transition("established")
        if not run.new_secret:
            self._fail_established("protocol", "the welcome carried no resume secret")
            return
        self.session_id = h[:16]
        self._resume_secret = run.new_secret
        self._events.append(Connected(self.session_id, self.remote_static, False))

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
        assert self.session_id is not None
        if peer_has is not None:
            self._tx.rewind(peer_has)
            self._resumed_msg = messages.make("resumed", positions=self._rx.positions)
            self._control.append(self._resumed_msg)
        self._events.append(Connected(self.session_id, self.remote_static, peer_has is not None))

    # -- frames in -----------------------------------------------------------

    def _on_frame(self, frame: bytes, now: float) -> None:
        kind = frame[0] if frame else 0
        if kind in (w.KIND_HANDSHAKE, w.KIND_REFUSE):
            body = w.strip_crc(frame)
            if body is None or len(body) < 2:
                self.stats.bad_handshake += 1
            elif kind == w.KIND_HANDSHAKE:
                self._on_handshake(body, now)
            elif self.state == HANDSHAKE:
                self._on_refusal(body[1:])
            return
        if not (w.is_part_kind(kind) or kind == w.KIND_MIXED) or len(frame) < 3:
            self._refused(now)
            return
        second = self._second
        if self._opener is None and (second is None or second.opener is None):
            self.stats.early_frames += 1
            return
        head, sealed = frame[: w.HEADER_SIZE], frame[w.HEADER_SIZE :]
        opened = self._open(self._opener, head, sealed)
        if opened is None and second is not None and second.opener is not None:
            opened = self._open(second.opener, head, sealed)
            if opened is not None and not self._on_second_frame(second, kind, *opened, now):
                return
        if opened is None:
            self._refused(now)
            return
        pn, plain = opened
        self._refused_in_row = 0
        self._last_heard = now
        self.stats.frames_received += 1
        self._tx.on_frame_from_peer(now)
        urgent, data = False, False
        for part, body in w.frame_parts(kind, plain, self.config.lanes):
            if part == w.KIND_CONTROL:
                self._on_control(pn, body, now)
            else:
                urgent |= self._rx.on_data(part & 0x0F, body, self.state == OPEN)
                data = True
        if data:  # one acknowledgement owed per frame, however many lanes it fed
            self._rx.note_eliciting(pn, now, urgent)

    def _open(
        self, opener: FrameOpener | None, head: bytes, sealed: bytes
    ) -> tuple[int, bytes] | None:
        if opener is None:
            return None
        try:
            pn = opener.expand_nonce(int.from_bytes(head[1:3], "big"), w.PN_BITS)
            return pn, opener.open(pn, head, sealed)
        except ProtocolError:
            return None

    def _on_second_frame(
        self, run: HandshakeRun, kind: int, pn: int, plain: bytes, now: float
    ) -> bool:
        """A frame under the second handshake's keys: its peer holds them.
        True if the second handshake took over (the frame is then the session's)."""
        try:
            parts = w.frame_parts(kind, plain, self.config.lanes)
        except RemoteProtocolError as exc:
            self._refuse(run, "protocol", str(exc))
            return False
        if run.resume_request is None:
            self._take_over(run, now, None)  # its key was checked when it arrived
            return True
        for part, body in parts:
            if part != w.KIND_CONTROL:
                continue
            try:
                msgs = w.unpack_control(body)
            except RemoteProtocolError:
                continue
            for msg in msgs:
                if msg.type == w.RESUME.number:
                    return self._resume_here(run, msg, now)
        self.stats.early_frames += 1  # nothing but a RESUME can open a resume
        return False

    def _resume_here(self, run: HandshakeRun, msg: Message, now: float) -> bool:
        """The second handshake resumes this session: check its token first."""
        assert run.hs is not None and self._resume_secret is not None
        expect = hmac.new(self._resume_secret, run.hs.handshake_hash, hashlib.sha256).digest()
        try:
            token = msg.get("token")
            peer_has = w.positions(msg.get("positions"), self.config.lanes)
        except (ProtocolError, TypeError) as exc:
            self._refuse(run, "protocol", f"bad resume: {exc}")
            return False
        if not isinstance(token, bytes) or not hmac.compare_digest(expect, token):
            self._refuse(run, "protocol", "resume token does not verify")
            return False
        if run.hs.remote_static != self.remote_static:
            self._refuse(run, "protocol", "resume from another key")
            return False
        self._take_over(run, now, peer_has)
        return True

    def _refused(self, now: float) -> None:
        self._refused_in_row += 1
        if self._refused_in_row >= self.config.flood_limit and self.state != CLOSED:
            self._finish(Closed("flood", f"{self._refused_in_row} bad frames in a row"), "fail")

    def _on_refusal(self, body: bytes) -> None:
        try:
            msg = messages.decode(body)
            reason, detail = str(msg.get("reason")), str(msg.get("detail", ""))
        except ProtocolError:
            self.stats.bad_handshake += 1
            return
        self._finish(Closed(reason, detail, by_peer=True), "fail")

    def _on_control(self, pn: int, plain: bytes, now: float) -> None:
        try:
            msgs = w.unpack_control(plain)
        except RemoteProtocolError:
            self.stats.bad_messages += 1
            return
        for msg in msgs:
            handler = self._CONTROL.get(msg.type)
            if handler is None:
                self.stats.unknown_messages += 1
                continue
            try:
                handler(self, msg, pn, now)
            except RemoteProtocolError as exc:
                if exc.code in ("bad-resume", "auth"):
                    raise
                self.stats.bad_messages += 1

    def _on_ping(self, msg: Message, pn: int, now: float) -> None:
        self._control.append(messages.make("pong", nonce=msg.get("nonce")))

    def _on_pong(self, msg: Message, pn: int, now: float) -> None:
        sent = self._ping_sent.pop(msg.get("nonce"), None)
        if sent is not None and not self._tx.inflight:
            self._tx.rtt.sample(now - sent)

    def _on_close(self, msg: Message, pn: int, now: float) -> None:
        self._finish(Closed(msg.get("reason"), msg.get("detail", ""), by_peer=True), "close")

    def _on_resume(self, msg: Message, pn: int, now: float) -> None:
        if self._resumed_msg is not None and not self.initiator:
            if not any(m is self._resumed_msg for m in self._control):
                self._control.append(self._resumed_msg)  # our answer was lost
            return
        if self.initiator or self.state != RESUMING:
            raise RemoteProtocolError("unexpected resume", "protocol")
        wanted = self._run.resume_request
        old = self._lookup(wanted) if self._lookup and wanted else None
        assert self._run.hs is not None
        if old is None or old._resume_secret is None or old.remote_static != self.remote_static:
            raise RemoteProtocolError("unknown session", "bad-resume")
        expect = hmac.new(old._resume_secret, self._run.hs.handshake_hash,
                          hashlib.sha256).digest()
        if not hmac.compare_digest(expect, msg.get("token")):
            raise RemoteProtocolError("resume token does not verify", "auth")
        peer_has = w.positions(msg.get("positions"), self.config.lanes)
        # Take over the old session's streams; the old object is finished.
        self._tx.lanes = old._tx.lanes
        self._rx.lanes, self._rx.assembly = old._rx.lanes, old._rx.assembly
        self.session_id, self._resume_secret = old.session_id, old._resume_secret
        if old.state != CLOSED:
            old._finish(Closed("resumed", "the session moved to a new link"), "close")
        self._resume_lanes(peer_has)
        self._resumed_msg = messages.make("resumed", positions=self._rx.positions)
        self._control.append(self._resumed_msg)
        assert self.session_id is not None
        self._events.append(Connected(self.session_id, self.remote_static, True))

    def _on_resumed(self, msg: Message, pn: int, now: float) -> None:
        if self.initiator and self.state == OPEN:
            return  # a repeat of an answer we already have
        if not self.initiator or self.state != RESUMING:
            raise RemoteProtocolError("unexpected resumed", "protocol")
        self._resume_msg = None
        self._resume_lanes(w.positions(msg.get("positions"), self.config.lanes))
        assert self.session_id is not None
        self._events.append(Connected(self.session_id, self.remote_static, True))

    def _resume_lanes(self, peer_has: list[int]) -> None:
        self._tx.rewind(peer_has)
        self._transition("resumed")

    def _on_ack(self, msg: Message, pn: int, now: float) -> None:
        self._tx.on_ack(msg, now)

    _CONTROL: dict[int, Callable[[Session, Message, int, float], None]] = {
        messages.PING.number: _on_ping,
        messages.PONG.number: _on_pong,
        messages.CLOSE.number: _on_close,
        w.RESUME.number: _on_resume,
        w.RESUMED.number: _on_resumed,
        w.ACK.number: _on_ack,
    }

    # -- timers and frames out -----------------------------------------------

    def _on_timers(self, now: float) -> None:
        if self.state == CLOSED:
            return
        cfg, run = self.config, self._run
        if now - self._last_heard > cfg.dead_timeout:
            self._finish(Closed("timeout", "no authenticated frame from the peer"), "fail")
            return
        if self.state == HANDSHAKE and now >= run.sent_at + run.rto:
            self._resend_handshake(run, now)
        if (second := self._second) is not None:
            if now - second.heard_at > cfg.dead_timeout:
                self._drop_second()  # its initiator went away
            elif not second.complete and now >= second.sent_at + second.rto:
                self._resend_handshake(second, now)
        if self._resume_msg is not None and now >= run.sent_at + run.rto:
            self._control.append(self._resume_msg)
            run.sent_at = now
            run.rto = min(run.rto * 2, cfg.max_rto)
        if self._tx.on_timers(now) or (
            self.is_open and now - self._last_eliciting >= cfg.keepalive
        ):
            nonce = self._sealer.next_nonce if self._sealer else 0
            self._ping_sent[nonce] = now
            self._control.append(messages.make("ping", nonce=nonce))
            self._last_eliciting = now

    def _resend_handshake(self, run: HandshakeRun, now: float) -> None:
        if run.frames:
            self._queue_handshake(run, max(run.frames), now)
            run.rto = min(run.rto * 2, self.config.max_rto)

    def _data_allowed(self) -> bool:
        """True when a data frame could go out as soon as the line is free."""
        return self.state == OPEN and self._tx.data_allowed()

    def _next_frame(self, now: float) -> bytes | None:
        if self._urgent:
            return self._urgent.pop(0)
        if self._sealer is None or self.state == CLOSED and not self._control:
            return None
        data_ok = self._data_allowed()
        # An acknowledgement that is due goes now; one not yet due rides along
        # with data that goes anyway (it then costs no frame of its own).
        if self._rx.ack_due is not None and (now >= self._rx.ack_due or data_ok):
            self._control.append(self._rx.make_ack(now))
        control = w.pack_control(self._control)
        self._control = []
        frame = self._tx.next_data_frame(now, self._seal, control) if data_ok else None
        if frame is not None:
            self._last_eliciting = now
            return frame
        return self._seal(w.KIND_CONTROL, control)[1] if control else None

    def _seal(
        self, kind: int, plain: bytes, sealer: FrameSealer | None = None
    ) -> tuple[int, bytes]:
        """The packet number and the frame that carries ``plain``."""
        sealer = sealer or self._sealer
        assert sealer is not None
        head = w.header(kind, sealer.next_nonce)
        pn, sealed = sealer.seal(head, plain)
        return pn, head + sealed
