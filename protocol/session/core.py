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
   control messages, or both under one header and tag (a mixed frame). The
   packet number counts transmissions and is the nonce: a retransmission is
   a new packet with a new nonce. The replay window refuses old and repeated
   packets; a frame that fails its tag changes no state, so a forged
   acknowledgement cannot make us drop data.
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
7. **Takeover** and **refusals**: an open responder runs a new initiator's
   handshake beside the live session, which it replaces only once it
   completes as the same peer; what we refuse is answered with a reason
   (``handshakes.py``).

Every state change goes through ``events.TRANSITIONS``.
"""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING

from protocol import messages, varint
from protocol.errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from protocol.framing import encode_frame
from protocol.messages import Message
from protocol.session import frames as w
from protocol.session.events import (
    CLOSED,
    HANDSHAKE,
    OPEN,
    RESUMING,
    Closed,
    Connected,
    Event,
    MessageReceived,
    SessionConfig,
    SessionStats,
)
from protocol.session.handshakes import HandshakeRun, Handshaking, resume_token
from protocol.session.noise import FrameOpener

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "Closed", "Connected", "Event", "MessageReceived", "Session", "SessionConfig", "SessionStats",
]


class Session(Handshaking):
    """One end of a session. See the module docstring.

    ``Session(initiator=..., config=..., static_key=..., remote_static=...,
    resume_lookup=..., accept_static=..., admit_handshake=..., now=...)``.
    ``admit_handshake`` (responder) is asked, with ``now``, before a first
    handshake message starts a key exchange; ``False`` drops it unanswered
    (``handshakes.py``, "Admission"). ``accept_static``
    (responder) is asked about the initiator's static key as soon as the
    handshake reveals it (IK's first message, XX's last); a ``False`` refuses
    the initiator with the reason ``"unknown-key"``. A responder's
    ``remote_static`` pins that key the same way.
    """

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
    def is_taking_over(self) -> bool:
        """True while a new initiator's handshake runs beside the open session."""
        return self._second is not None

    @property
    def urgent_frames(self) -> int:
        """Handshake and refusal frames waiting to go out (at most ``MAX_URGENT``)."""
        return len(self._urgent)

    @property
    def retransmit_deadline(self) -> float | None:
        """When the retransmission timer expires; None when it is not running
        (never in stream mode)."""
        return self._tx.deadline

    @property
    def receive_positions(self) -> list[int]:
        """How far each lane has been received in order (what a resume reports)."""
        return self._rx.positions

    @property
    def window_overruns(self) -> int:
        """Lane segments the peer sent past our receive window (we cut them)."""
        return sum(lane.beyond_window for lane in self._rx.lanes)

    @property
    def queued_bytes(self) -> int:
        """Lane bytes queued to send that the peer has not acknowledged yet."""
        return sum(lane.end - lane.base for lane in self._tx.lanes)

    @property
    def last_ping(self) -> float | None:
        """When the newest ping the peer has not answered went out (None: none)."""
        return max(self._ping_sent.values(), default=None)

    @property
    def buffered_bytes(self) -> int:
        """Bytes read from the line that are not yet a whole frame."""
        return self._decoder.buffered

    @property
    def garbled_frames(self) -> int:
        """Runs the framing dropped before the session saw them (bad COBS, runts, oversized)."""
        return self._decoder.stats.dropped

    def next_event(self) -> Event | None:
        return self._events.pop(0) if self._events else None

    def close(self, reason: str = "shutdown", detail: str = "",
              retry_ms: int | None = None) -> None:
        """Say goodbye; the CLOSE goes out with the next ``data_to_send``. ``retry_ms``:
        how long the peer should wait before it comes back (reason ``busy``)."""
        if self.state == CLOSED:
            return
        if self._sealer is not None:
            self._control.append(messages.make("close", reason=reason, detail=detail or None,
                                               retry_ms=retry_ms))
        self._finish(Closed(reason, detail, retry_ms=retry_ms), "close")

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

    def _horizon(self) -> float:
        # Hand the next frame over shortly before the line is free: early
        # enough that it never idles, late enough that frames do not queue
        # (a queue would add to the round trip and to what an outage loses).
        rate = self.config.rate or 1.0
        return max(0.02, 0.25 * (self._tx.frame_size() + 40) / rate)

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
                self._on_control(body, now)
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
        try:
            peer_has = self._proven_positions(self._resume_secret, run, msg)
        except RemoteProtocolError as exc:
            self._refuse(run, "protocol", str(exc))
            return False
        if run.hs.remote_static != self.remote_static:
            self._refuse(run, "protocol", "resume from another key")
            return False
        self._take_over(run, now, peer_has)
        return True

    def _proven_positions(self, secret: bytes, run: HandshakeRun, msg: Message) -> list[int]:
        """The lane positions of a RESUME whose token proves ``secret`` over ``run``."""
        assert run.hs is not None
        if not hmac.compare_digest(resume_token(secret, run.hs), msg.get("token")):
            raise RemoteProtocolError("resume token does not verify", "auth")
        return w.positions(msg.get("positions"), self.config.lanes)

    def _refused(self, now: float) -> None:
        self.stats.refused_frames += 1
        self._refused_in_row += 1
        if self._refused_in_row >= self.config.flood_limit and self.state != CLOSED:
            self._finish(Closed("flood", f"{self._refused_in_row} bad frames in a row"), "fail")

    def _on_refusal(self, body: bytes) -> None:
        try:
            msg = messages.decode(body)
            reason, detail = str(msg.get("reason")), str(msg.get("detail", ""))
            retry_ms = msg.get("retry_ms")
        except ProtocolError:
            self.stats.bad_handshake += 1
            return
        self._finish(Closed(reason, detail, by_peer=True, retry_ms=retry_ms), "fail")

    def _on_control(self, plain: bytes, now: float) -> None:
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
                handler(self, msg, now)
            except RemoteProtocolError as exc:
                if exc.code in ("bad-resume", "auth"):
                    raise
                self.stats.bad_messages += 1

    def _on_ping(self, msg: Message, now: float) -> None:
        self._control.append(messages.make("pong", nonce=msg.get("nonce")))

    def _on_pong(self, msg: Message, now: float) -> None:
        sent = self._ping_sent.pop(msg.get("nonce"), None)
        if sent is not None and not self._tx.inflight:
            self._tx.rtt.sample(now - sent)

    def _on_close(self, msg: Message, now: float) -> None:
        self._finish(Closed(msg.get("reason"), msg.get("detail", ""), by_peer=True,
                            retry_ms=msg.get("retry_ms")), "close")

    def _on_resume(self, msg: Message, now: float) -> None:
        if self._resumed_msg is not None and not self.initiator:
            if not any(m is self._resumed_msg for m in self._control):
                self._control.append(self._resumed_msg)  # our answer was lost
            return
        if self.initiator or self.state != RESUMING:
            raise RemoteProtocolError("unexpected resume", "protocol")
        wanted = self._run.resume_request
        old = self._lookup(wanted) if self._lookup and wanted else None
        if old is None or old._resume_secret is None or old.remote_static != self.remote_static:
            raise RemoteProtocolError("unknown session", "bad-resume")
        peer_has = self._proven_positions(old._resume_secret, self._run, msg)
        # Take over the old session's streams; the old object is finished.
        self._tx.lanes = old._tx.lanes
        self._rx.lanes, self._rx.assembly = old._rx.lanes, old._rx.assembly
        self.session_id, self._resume_secret = old.session_id, old._resume_secret
        if old.state != CLOSED:
            old._finish(Closed("resumed", "the session moved to a new link"), "close")
        self._transition("resumed")
        self._send_resumed(peer_has)
        self._connected(True)

    def _on_resumed(self, msg: Message, now: float) -> None:
        if self.initiator and self.state == OPEN:
            return  # a repeat of an answer we already have
        if not self.initiator or self.state != RESUMING:
            raise RemoteProtocolError("unexpected resumed", "protocol")
        self._resume_msg = None
        self._tx.rewind(w.positions(msg.get("positions"), self.config.lanes))
        self._transition("resumed")
        self._connected(True)

    def _on_ack(self, msg: Message, now: float) -> None:
        self._tx.on_ack(msg, now)

    _CONTROL: dict[int, Callable[[Session, Message, float], None]] = {
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
        # Each check is its deadline's own sum (``next_deadline``): a caller woken at
        # the deadline it was given finds the timer due, whatever the rounding.
        if now >= self._last_heard + cfg.dead_timeout:
            self._finish(Closed("timeout", "no authenticated frame from the peer"), "fail")
            return
        if self.state == HANDSHAKE and now >= run.sent_at + run.rto:
            self._resend_handshake(run, now)
        if (second := self._second) is not None:
            if now >= second.heard_at + cfg.dead_timeout:
                self._drop_second()  # its initiator went away
            elif not second.complete and now >= second.sent_at + second.rto:
                self._resend_handshake(second, now)
        if self._resume_msg is not None and now >= run.sent_at + run.rto:
            self._control.append(self._resume_msg)
            run.sent_at = now
            run.rto = min(run.rto * 2, cfg.max_rto)
        if self._tx.on_timers(now) or (
            self.is_open and now >= self._last_eliciting + cfg.keepalive
        ):
            nonce = self._sealer.next_nonce if self._sealer else 0
            self._ping_sent[nonce] = now
            self._control.append(messages.make("ping", nonce=nonce))
            self._last_eliciting = now

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
