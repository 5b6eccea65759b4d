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
   (kind, low 16 bits of the packet number) and the payload. The packet
   number counts transmissions, so it is the nonce: a retransmission,
   however it is cut, is a new packet with a new nonce. The replay window
   refuses old and repeated packets; a frame that fails its tag changes no
   state, so a forged acknowledgement cannot make us drop data.
3. **Reliability** (``protocol.arq``): lanes are byte streams with
   cumulative + SACK acknowledgements, loss found by packet threshold or by
   the RFC 6298 timer. After a timeout only one probe frame is in flight
   until the line answers again, so an outage costs a few small probes, not
   a window of data. The frame size follows the measured error rate.
   ``SessionConfig(stream=True)`` (for TCP) keeps the framing, the
   authentication, the acknowledgements and resume, and drops the timers.
4. **Lanes** are served lowest number first at every frame boundary, so an
   urgent message overtakes bulk data within one frame.
5. **Resume**: ``reconnect()`` starts a fresh handshake (never a saved
   cipher state) on a new link. The first control message then names the
   session and proves it with a token bound to the new handshake; each side
   says how far it has received, and sending continues from there.
6. **Liveness**: a ping when idle, and ``Closed("timeout")`` only after
   ``dead_timeout`` seconds without one authenticated frame.

Every state change goes through ``TRANSITIONS``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections import deque
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from . import WIRE_VERSION, messages, varint
from . import session_wire as w
from .arq import PACKET_THRESHOLD, FrameSizer, RecvLane, RttEstimator, SendLane
from .errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from .framing import FrameDecoder, encode_frame
from .messages import Message
from .noise import FrameOpener, FrameSealer, Handshake
from .session_types import (
    CLOSED,
    HANDSHAKE,
    OPEN,
    TRANSITIONS,
    Closed,
    Connected,
    Event,
    MessageReceived,
    SessionConfig,
    SessionStats,
    _Sent,
)

PROLOGUE = b"haven-session"
SUPPORTED_VERSIONS = [WIRE_VERSION]

class Session:
    """One end of a session. See the module docstring."""

    def __init__(
        self,
        *,
        initiator: bool,
        config: SessionConfig | None = None,
        static_key: X25519PrivateKey | None = None,
        remote_static: bytes | None = None,
        resume_lookup: Callable[[bytes], Session | None] | None = None,
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
        self._resume_secret: bytes | None = None
        self._events: deque[Event] = deque()
        self._send = [SendLane(cfg.send_buffer) for _ in range(cfg.lanes)]
        self._recv = [RecvLane(cfg.window) for _ in range(cfg.lanes)]
        self._assembly = [bytearray() for _ in range(cfg.lanes)]
        self._sizer = FrameSizer(
            min_size=cfg.min_frame,
            max_size=cfg.max_frame - self._data_overhead(cfg.max_frame),
            overhead=self._data_overhead(cfg.max_frame) + 3,
        )
        self._rtt = RttEstimator(cfg.initial_rto, cfg.min_rto, cfg.max_rto)
        self._hs_out: bytes | None = None  # a handshake frame to send now
        self._resume_request: bytes | None = None
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
        self._send[lane].write(varint.encode(len(data)) + data)

    def can_send(self, lane: int, size: int) -> bool:
        return self._send[lane].free >= size + 8

    @property
    def all_acked(self) -> bool:
        """True when the peer has acknowledged every byte we queued."""
        return all(lane.all_acked for lane in self._send)

    @property
    def is_open(self) -> bool:
        return self.state == OPEN and self._ready

    @property
    def frame_size(self) -> int:
        return self._sizer.size

    @property
    def error_rate(self) -> float:
        return self._sizer.error_rate

    @property
    def srtt(self) -> float | None:
        return self._rtt.srtt

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
        times = [self._last_heard + self.config.dead_timeout]
        if self.state == HANDSHAKE and self._hs_frames or self._resume_msg is not None:
            times.append(self._hs_sent_at + self._hs_rto)
        if self._ack_due is not None:
            times.append(self._ack_due)
        if self._inflight and not self.config.stream:
            times.append(self._rto_start + self._rtt.rto)
        if self.is_open:
            times.append(self._last_eliciting + self.config.keepalive)
            if self.config.rate and (self._data_allowed() or self._control):
                times.append(self._line_free_at - self._horizon())
        return min(times)

    # -- the link ------------------------------------------------------------

    def _start_link(self, now: float) -> None:
        cfg = self.config
        self._decoder = FrameDecoder(max_payload=cfg.max_frame, crc=False)
        self._sealer: FrameSealer | None = None
        self._opener: FrameOpener | None = None
        self._ready = False  # data may flow (after resume, if any)
        self._hs: Handshake | None = None
        self._hs_frames: dict[int, bytes] = {}  # our frame for each step
        self._hs_seen: dict[int, bytes] = {}  # the peer's frame for each step
        self._hs_sent_at = now
        self._hs_rto = cfg.initial_rto
        self._peer_frame = cfg.max_frame
        self._peer_window = cfg.window
        self._control: list[Message] = []
        self._inflight: dict[int, _Sent] = {}
        self._ping_sent: dict[int, float] = {}
        self._largest_acked = -1
        self._rtt_sampled = -1
        self._probing = False
        self._rto_start = now
        self._ack_due: float | None = None
        self._ack_unsent = 0
        self._largest_rx: tuple[int, float] | None = None
        self._last_heard = now
        self._last_eliciting = now
        self._last_write = float("-inf")
        self._line_free_at = now
        self._hs_out = None
        self._resume_request = None
        self._new_secret: bytes | None = None
        self._resume_msg: Message | None = None  # sent again until answered
        self._resumed_msg: Message | None = None  # our answer, for repeats
        self._refused_in_row = 0
        if self.initiator:
            self._hs = self._new_handshake()
            hello: dict[str, Any] = dict(
                versions=SUPPORTED_VERSIONS,
                max_frame=cfg.max_frame,
                window=cfg.window,
                lanes=cfg.lanes,
                stream=cfg.stream or None,
                resume=self.session_id,
            )
            self._write_handshake(messages.encode(messages.make("hello", **hello)), now)

    def _new_handshake(self) -> Handshake:
        pattern = self.config.pattern
        static = None if pattern == "NN" else self._static
        pin = None if pattern == "NN" else self._pin
        return Handshake(
            pattern, initiator=self.initiator, static_key=static, remote_static=pin,
            prologue=PROLOGUE,
        )

    def _data_overhead(self, max_frame: int) -> int:
        return w.HEADER_SIZE + w.TAG_SIZE + len(varint.encode(1 << 30))

    def _horizon(self) -> float:
        # Keep about one frame queued ahead so the line never idles.
        rate = self.config.rate or 1.0
        return max(0.005, (self._sizer.size + 40) / rate)

    def _transition(self, trigger: str) -> None:
        new = TRANSITIONS[self.state].get(trigger)
        if new is None:
            raise LocalProtocolError(f"cannot {trigger} in state {self.state}", "state")
        self.state = new

    def _finish(self, event: Closed, trigger: str) -> None:
        self._events.append(event)
        self._transition(trigger)

    # -- handshake -----------------------------------------------------------

    def _write_handshake(self, payload: bytes, now: float) -> None:
        assert self._hs is not None
        step = self._hs_step()
        msg = self._hs.write_message(payload)
        self._hs_frames[step] = w.with_crc(bytes((w.KIND_HANDSHAKE, step)) + msg)
        self._queue_handshake(step, now)
        if self._hs.is_complete:
            self._established(now)

    def _hs_step(self) -> int:
        return len(self._hs_frames) + len(self._hs_seen)

    def _queue_handshake(self, step: int, now: float) -> None:
        self._hs_out = self._hs_frames[step]
        self._hs_sent_at = now

    def _on_handshake(self, body: bytes, now: float) -> None:
        step, msg = body[1], body[2:]
        if step in self._hs_seen:
            # A repeat: our answer was lost. Send it again, byte for byte.
            if self._hs_seen[step] == body and step + 1 in self._hs_frames:
                self._queue_handshake(step + 1, now)
            elif step == 0 and not self.initiator and self.state == HANDSHAKE:
                self._restart_responder(body, now)
            else:
                self.stats.bad_handshake += 1
            return
        if self.state != HANDSHAKE or step != self._hs_step():
            self.stats.bad_handshake += 1
            return
        if self._hs is None:  # responder: the first message starts it
            self._hs = self._new_handshake()
        try:
            payload = self._hs.read_message(msg)
        except ProtocolError as exc:
            self.stats.bad_handshake += 1
            if not self.initiator and step == 0:
                self._hs = None  # noise or a stranger: wait for a good first message
                return
            self._finish(Closed("auth", str(exc)), "fail")
            return
        self._hs_seen[step] = body
        self._last_heard = now
        try:
            self._on_handshake_payload(step, payload, now)
        except RemoteProtocolError as exc:
            self._refuse("protocol", str(exc))
            return
        if self.state == HANDSHAKE and self._hs.is_complete:
            self._established(now)
        elif self.state == HANDSHAKE and self._hs.is_my_turn:
            self._write_handshake(b"", now)

    def _restart_responder(self, body: bytes, now: float) -> None:
        # The initiator started over (new process, new ephemeral key).
        self._hs, self._hs_frames, self._hs_seen = None, {}, {}
        self._on_handshake(body, now)

    def _on_handshake_payload(self, step: int, payload: bytes, now: float) -> None:
        cfg = self.config
        if step == 0:
            hello = messages.decode(payload)
            if hello.type != w.HELLO.number:
                raise RemoteProtocolError("first handshake payload is not a hello", "protocol")
            versions = hello.get("versions")
            common = [v for v in SUPPORTED_VERSIONS if v in versions]
            if not common:
                self._refuse("version", f"no common version: peer speaks {versions!r}")
                return
            if hello.get("lanes") != cfg.lanes or bool(hello.get("stream")) != cfg.stream:
                raise RemoteProtocolError("lanes or stream mode differ", "protocol")
            self._peer_limits(hello.get("max_frame"), hello.get("window"))
            self._resume_request = hello.get("resume")
            # The welcome is encrypted in every pattern we use (it follows "ee"),
            # so the secret that later proves a resume is known to the two ends only.
            self._new_secret = secrets.token_bytes(32)
            welcome = messages.make(
                "welcome", version=max(common), max_frame=cfg.max_frame, window=cfg.window,
                lanes=cfg.lanes, secret=self._new_secret,
            )
            self._write_handshake(messages.encode(welcome), now)
        elif step == 1 and self.initiator:
            welcome = messages.decode(payload)
            if welcome.type != w.WELCOME.number or welcome.get("version") not in SUPPORTED_VERSIONS:
                raise RemoteProtocolError("bad welcome", "protocol")
            self._peer_limits(welcome.get("max_frame"), welcome.get("window"))
            self._new_secret = welcome.get("secret")

    def _peer_limits(self, max_frame: int, window: int) -> None:
        if max_frame < 64:
            raise RemoteProtocolError(f"peer max_frame {max_frame} is too small", "protocol")
        if max_frame > self.config.max_frame or window > self.config.window:
            self.stats.clamped += 1
        self._peer_frame = min(max_frame, self.config.max_frame)
        self._peer_window = max(1024, min(window, self.config.window))
        self._sizer.max_size = self._peer_frame - self._data_overhead(self._peer_frame)
        self._sizer.cap = min(self._sizer.cap, self._sizer.max_size)

    def _fail_established(self, reason: str, detail: str) -> None:
        self._control.append(messages.make("close", reason=reason, detail=detail))
        self._finish(Closed(reason, detail), "fail")

    def _refuse(self, reason: str, detail: str) -> None:
        close = messages.encode(messages.make("close", reason=reason, detail=detail[:200]))
        self._hs_out = w.with_crc(bytes((w.KIND_REFUSE,)) + close)
        self._finish(Closed(reason, detail), "fail")

    def _established(self, now: float) -> None:
        assert self._hs is not None
        self._sealer, self._opener = self._hs.split()
        self.remote_static = self._hs.remote_static
        h = self._hs.handshake_hash
        self._transition("established")
        self._rto_start = self._last_eliciting = now
        if self.initiator and self.session_id is not None:
            assert self._resume_secret is not None
            token = hmac.new(self._resume_secret, h, hashlib.sha256).digest()
            positions = [lane.cum for lane in self._recv]
            self._resume_msg = messages.make("resume", token=token, positions=positions)
            self._control.append(self._resume_msg)
            self._hs_sent_at = now
            return
        if not self.initiator and self._resume_request:
            return  # wait for the RESUME message and its token
        if not self._new_secret:
            self._fail_established("protocol", "the welcome carried no resume secret")
            return
        self.session_id = h[:16]
        self._resume_secret = self._new_secret
        self._ready = True
        self._events.append(Connected(self.session_id, self.remote_static, False))

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
        if kind != w.KIND_CONTROL and kind & 0xF0 != w.KIND_DATA or len(frame) < 3:
            self._refused(now)
            return
        if self._opener is None:
            self.stats.early_frames += 1
            return
        head = frame[: w.HEADER_SIZE]
        try:
            pn = self._opener.expand_nonce(int.from_bytes(head[1:3], "big"), w.PN_BITS)
            plain = self._opener.open(pn, head, frame[w.HEADER_SIZE :])
        except ProtocolError:
            self._refused(now)
            return
        self._refused_in_row = 0
        self._last_heard = now
        self.stats.frames_received += 1
        if kind == w.KIND_CONTROL:
            self._on_control(pn, plain, now)
        else:
            self._on_data(kind & 0x0F, pn, plain, now)

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

    def _on_data(self, lane: int, pn: int, plain: bytes, now: float) -> None:
        if lane >= self.config.lanes:
            raise RemoteProtocolError(f"data on lane {lane}, which does not exist", "protocol")
        offset, pos = varint.decode(plain)
        recv = self._recv[lane]
        before_ooo = bool(recv.held_ranges)
        data = recv.on_data(offset, plain[pos:])
        self._note_eliciting(pn, now, urgent=before_ooo or bool(recv.held_ranges) or not data)
        if data and self._ready:
            self._deliver(lane, data)
        elif data:
            self._assembly[lane] += data

    def _deliver(self, lane: int, data: bytes) -> None:
        buf = self._assembly[lane]
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
            self._events.append(MessageReceived(lane, bytes(buf[pos + start : pos + start + size])))
            pos += start + size
        del buf[:pos]

    def _note_eliciting(self, pn: int, now: float, urgent: bool) -> None:
        if self._largest_rx is None or pn > self._largest_rx[0]:
            self._largest_rx = (pn, now)
        self._ack_unsent += 1
        if urgent or self._ack_unsent >= 2:
            self._ack_due = now
        elif self._ack_due is None:
            self._ack_due = now + self.config.ack_delay

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
        if sent is not None and not self._inflight:
            self._rtt.sample(now - sent)

    def _on_close(self, msg: Message, pn: int, now: float) -> None:
        self._finish(Closed(msg.get("reason"), msg.get("detail", ""), by_peer=True), "close")

    def _on_resume(self, msg: Message, pn: int, now: float) -> None:
        if self._resumed_msg is not None and not self.initiator:
            self._control.append(self._resumed_msg)  # our answer was lost
            return
        if self.initiator or self._ready:
            raise RemoteProtocolError("unexpected resume", "protocol")
        wanted = self._resume_request
        old = self._lookup(wanted) if self._lookup and wanted else None
        assert self._hs is not None
        if old is None or old._resume_secret is None or old.remote_static != self.remote_static:
            raise RemoteProtocolError("unknown session", "bad-resume")
        assert self._sealer is not None
        expect = hmac.new(old._resume_secret, self._session_hash, hashlib.sha256).digest()
        if not hmac.compare_digest(expect, msg.get("token")):
            raise RemoteProtocolError("resume token does not verify", "auth")
        peer_has = w.positions(msg.get("positions"), self.config.lanes)
        # Take over the old session's streams; the old object is finished.
        self._send, self._recv, self._assembly = old._send, old._recv, old._assembly
        self.session_id, self._resume_secret = old.session_id, old._resume_secret
        if old.state != CLOSED:
            old._finish(Closed("resumed", "the session moved to a new link"), "close")
        self._resume_lanes(peer_has)
        self._resumed_msg = messages.make("resumed", positions=[r.cum for r in self._recv])
        self._control.append(self._resumed_msg)
        assert self.session_id is not None
        self._events.append(Connected(self.session_id, self.remote_static, True))

    def _on_resumed(self, msg: Message, pn: int, now: float) -> None:
        if self.initiator and self._ready:
            return  # a repeat of an answer we already have
        if not self.initiator:
            raise RemoteProtocolError("unexpected resumed", "protocol")
        self._resume_msg = None
        self._resume_lanes(w.positions(msg.get("positions"), self.config.lanes))
        assert self.session_id is not None
        self._events.append(Connected(self.session_id, self.remote_static, True))

    def _resume_lanes(self, peer_has: list[int]) -> None:
        for lane, offset in zip(self._send, peer_has, strict=True):
            lane.rewind(offset)
        self._inflight.clear()
        self._ready = True

    def _on_ack(self, msg: Message, pn: int, now: float) -> None:
        progress = False
        for lane, cum, ranges in w.decode_ack_lanes(msg.get("lanes")):
            if lane < self.config.lanes:
                self._send[lane].on_ack(cum, ranges)
        for spn, sent in list(self._inflight.items()):
            if self._send[sent.lane].is_acked(sent.start, sent.end):
                del self._inflight[spn]
                self._sizer.on_frame(sent.size, lost=False)
                self._largest_acked = max(self._largest_acked, spn)
                progress = True
                if spn == msg.get("largest") and spn > self._rtt_sampled:
                    self._rtt_sampled = spn
                    self._rtt.sample(now - sent.time - msg.get("delay_ms") / 1000)
        if progress:
            self._probing = False
            self._rto_start = now
        if not self.config.stream:
            self._detect_losses(now)

    def _detect_losses(self, now: float) -> None:
        srtt = self._rtt.srtt or self.config.initial_rto
        for spn, sent in list(self._inflight.items()):
            if spn >= self._largest_acked:
                break
            if self._largest_acked - spn >= PACKET_THRESHOLD or now - sent.time > 1.125 * srtt:
                del self._inflight[spn]
                self._lose(sent)
                self._sizer.on_frame(sent.size, lost=True)

    def _lose(self, sent: _Sent) -> None:
        self._send[sent.lane].mark_lost(sent.start, sent.end)
        self.stats.lost_frames += 1

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
        if now - self._last_heard > self.config.dead_timeout:
            self._finish(Closed("timeout", "no authenticated frame from the peer"), "fail")
            return
        if self.state == HANDSHAKE and now >= self._hs_sent_at + self._hs_rto:
            last = max(self._hs_frames) if self._hs_frames else None
            if last is not None:
                self._queue_handshake(last, now)
                self._hs_rto = min(self._hs_rto * 2, self.config.max_rto)
        if self._resume_msg is not None and now >= self._hs_sent_at + self._hs_rto:
            self._control.append(self._resume_msg)
            self._hs_sent_at = now
            self._hs_rto = min(self._hs_rto * 2, self.config.max_rto)
        if self._inflight and not self.config.stream and now >= self._rto_start + self._rtt.rto:
            self.stats.timeouts += 1
            for sent in self._inflight.values():
                self._lose(sent)
            self._inflight.clear()
            self._rtt.on_timeout()
            self._sizer.on_timeout()
            self._probing = True
            self._rto_start = now
        if self.is_open and now - self._last_eliciting >= self.config.keepalive:
            nonce = self._sealer.next_nonce if self._sealer else 0
            self._ping_sent[nonce] = now
            self._control.append(messages.make("ping", nonce=nonce))
            self._last_eliciting = now

    def _data_allowed(self) -> bool:
        """True when a data frame could go out as soon as the line is free."""
        if not self._ready or not any(lane.has_pending for lane in self._send):
            return False
        if self.config.stream:
            return True
        if self._probing and self._inflight:
            return False
        return self._inflight_bytes() < self.config.max_inflight

    def _inflight_bytes(self) -> int:
        return sum(s.end - s.start for s in self._inflight.values())

    def _next_frame(self, now: float) -> bytes | None:
        if self._hs_out is not None:
            frame, self._hs_out = self._hs_out, None
            return frame
        if self._sealer is None or self.state == CLOSED and not self._control:
            return None
        if self._ack_due is not None and now >= self._ack_due:
            self._control.append(self._make_ack(now))
        if self._control:
            body = w.pack_control(self._control)
            self._control = []
            return self._seal(w.KIND_CONTROL, body)
        if not self._ready or self.state != OPEN:
            return None
        return self._next_data_frame(now)

    def _make_ack(self, now: float) -> Message:
        assert self._largest_rx is not None
        largest, at = self._largest_rx
        states = [(i, r.cum, r.ack_state()[1]) for i, r in enumerate(self._recv) if r.cum or
                  r.held_ranges]
        self._ack_due = None
        self._ack_unsent = 0
        return messages.make(
            "ack", largest=largest, delay_ms=int((now - at) * 1000),
            lanes=w.encode_ack_lanes(states),
        )

    def _next_data_frame(self, now: float) -> bytes | None:
        cfg = self.config
        if not self._data_allowed():
            return None
        size = cfg.frame_size or (self._sizer.max_size if cfg.stream else self._sizer.size)
        for index, lane in enumerate(self._send):
            if not lane.has_pending:
                continue
            retransmit = bool(lane.lost)
            segment = lane.next_segment(size, lane.base + self._peer_window)
            if segment is None:
                continue
            offset, data = segment
            frame = self._seal(w.KIND_DATA | index, varint.encode(offset) + data)
            assert self._sealer is not None
            pn = self._sealer.next_nonce - 1
            self._inflight[pn] = _Sent(index, offset, offset + len(data), now, len(frame) + 2)
            if len(self._inflight) == 1:
                self._rto_start = now
            self._last_eliciting = now
            self.stats.data_bytes_sent += len(data)
            if retransmit:
                self.stats.retransmitted_bytes += len(data)
            return frame
        return None

    def _seal(self, kind: int, plain: bytes) -> bytes:
        assert self._sealer is not None
        head = w.header(kind, self._sealer.next_nonce)
        _, sealed = self._sealer.seal(head, plain)
        return head + sealed

    @property
    def _session_hash(self) -> bytes:
        assert self._hs is not None
        return self._hs.handshake_hash
