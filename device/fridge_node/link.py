"""The Haven session to the kiosk: hello, welcome, then readings and alarms until acknowledged.

Theory of operation
-------------------
The node is the Noise ``IK`` initiator: it holds its static key (provisioned)
and knows the kiosk's. A session that opens carries, on lane 0, the node's
``sensor-hello``; nothing else goes until the kiosk's ``sensor-welcome``,
which tells the time and what the kiosk already stores (``Node.welcome``
sets the clock and drops it). Then every alarm not acknowledged goes on
lane 0 and the readings on lane 1, in batches of at most ``MAX_BATCH``,
with at most ``WINDOW`` readings unacknowledged at a time (the session
buffers little on a board); each acknowledgement drops what it covers from
the ring and lets the next batch go.

Delivery is at least once: the node sends again, in the next session,
whatever was not acknowledged; the kiosk stores each reading under (device,
number), so a repeat is the same record. A session that closes (the line was
quiet for ``dead_timeout``, or the kiosk refused us) is replaced by a new
handshake after a backoff that doubles up to ``MAX_BACKOFF`` (longer after a
refusal: a technician has to fix the keys).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from device.fridge_node.ring import unix_time
from protocol import sensor
from protocol.crypto import X25519PrivateKey
from protocol.errors import ProtocolError
from protocol.session.core import Closed, Connected, MessageReceived, Session, SessionConfig

if TYPE_CHECKING:
    from collections.abc import Callable

    from device.fridge_node.ring import Ring

WINDOW = 2 * sensor.MAX_BATCH  #: readings sent and not yet acknowledged
FIRST_BACKOFF = 2.0
MAX_BACKOFF = 64.0
REFUSED_BACKOFF = 300.0
MODEL = "haven-fridge-node/1"
MAX_EVENTS = 16


def session_config(baud: int) -> SessionConfig:
    """A quiet serial line's session: small buffers, a ping a minute, and through an
    outage a probe or a handshake every few seconds rather than every second (each
    wakes a board that has nothing else to do)."""
    return SessionConfig(pattern="IK", lanes=sensor.LANES, rate=baud / 10, max_frame=1024,
                         window=8192, send_buffer=16384, max_inflight=4096,
                         max_message=4096, keepalive=60.0, dead_timeout=300.0, max_rto=8.0,
                         max_probe_interval=5.0)


class Link:
    """The session of the moment (None between sessions) and what it has sent."""

    def __init__(self, ring: Ring, welcome: Callable[[int, int, int, float], None]) -> None:
        self.ring = ring
        self._welcome = welcome
        self.session: Session | None = None
        self.state = "down"  #: down, handshake, hello (waiting for welcome), open
        self.retry_at = 0.0
        self.backoff = FIRST_BACKOFF
        self.sent_upto = 0  #: readings below this went out in this session
        self.alarms_sent_upto = 0
        self.sessions = 0
        self.bad_messages = 0  #: messages from the kiosk that failed their checks
        self.last_close = ""  #: why the last session ended
        #: ("connected",) and ("closed", reason), for step mode
        self.events: list[tuple[str, ...]] = []

    def advance(self, now: float, node_key: bytes | None, kiosk_public: bytes | None,
                baud: int, boot: int, device: str) -> None:
        """Start a session when it is time and the keys are there."""
        if self.session is not None or now < self.retry_at:
            return
        if node_key is None or kiosk_public is None:
            self.state = "unprovisioned"
            return
        self._hello = sensor.encode(sensor.HELLO, device=device, model=MODEL,
                                    next=self.ring.next_seq, boot=boot)
        self.session = Session(initiator=True, config=session_config(baud),
                               static_key=X25519PrivateKey.from_private_bytes(node_key),
                               remote_static=kiosk_public, now=now)
        self.state = "handshake"
        self.sessions += 1

    def receive(self, data: bytes, now: float) -> None:
        if self.session is not None:
            self.session.receive_data(data, now)
            self._drain(now)

    def output(self, now: float) -> bytes:
        if self.session is None:
            return b""
        out = self.session.data_to_send(now)
        self._drain(now)
        return out

    def deadline(self) -> float | None:
        if self.session is None:
            return self.retry_at if self.state != "unprovisioned" else None
        return self.session.next_deadline()

    def pump(self) -> None:
        """Send what is waiting, as far as the window allows (after the welcome)."""
        session, ring = self.session, self.ring
        if session is None or self.state != "open":
            return
        for alarm in ring.alarms:
            if alarm[0] >= self.alarms_sent_upto:
                seq, kind, state, since, minutes, extreme = alarm
                session.send_message(sensor.ALARM_LANE, sensor.encode(
                    sensor.ALARM, seq=seq, kind=kind, state=state,
                    since=unix_time(since) or 0, minutes=minutes, extreme=extreme))
                self.alarms_sent_upto = seq + 1
        self.sent_upto = max(self.sent_upto, ring.first)
        while self.sent_upto < ring.next_seq and self.sent_upto - ring.first < WINDOW:
            first = self.sent_upto
            n = min(sensor.MAX_BATCH, ring.next_seq - first)
            batch = []
            for seq in range(first, first + n):
                stamp, value = ring.reading(seq)
                batch.append([unix_time(stamp), value])
            session.send_message(sensor.READINGS_LANE,
                                 sensor.encode(sensor.READINGS, first=first, readings=batch))
            self.sent_upto = first + n

    def _drain(self, now: float) -> None:
        session = self.session
        while session is not None and (event := session.next_event()) is not None:
            if isinstance(event, Connected):
                self.state = "hello"
                session.send_message(sensor.ALARM_LANE, self._hello)
                self._note(("connected",))
            elif isinstance(event, MessageReceived):
                self._on_message(event.data, now)
            elif isinstance(event, Closed):
                self._closed(event, now)
                session = None

    def _on_message(self, data: bytes, now: float) -> None:
        try:
            msg = sensor.decode(data)
        except ProtocolError:
            self.bad_messages += 1
            return
        if msg.type == sensor.WELCOME.number:
            self._welcome(msg.get("time"), msg.get("acked"), msg.get("alarms_acked"), now)
            self.state = "open"
            self.backoff = FIRST_BACKOFF
            self.sent_upto = self.ring.first
            self.alarms_sent_upto = 0
        elif msg.type == sensor.READINGS_ACK.number and self.state == "open":
            self.ring.drop_below(msg.get("upto"))
        elif msg.type == sensor.ALARM_ACK.number and self.state == "open":
            self.ring.drop_alarms_below(msg.get("upto"))
        else:
            self.bad_messages += 1
            return
        self.pump()

    def _closed(self, event: Closed, now: float) -> None:
        self.session = None
        self.state = "down"
        self.last_close = event.reason
        wait = REFUSED_BACKOFF if event.by_peer and event.reason == "unknown-key" else self.backoff
        self.retry_at = now + wait
        self.backoff = min(self.backoff * 2, MAX_BACKOFF)
        self._note(("closed", event.reason))

    def _note(self, event: tuple[str, ...]) -> None:
        """Keep an event for step mode; only the latest few when nobody takes them."""
        self.events.append(event)
        if len(self.events) > MAX_EVENTS:
            self.events.pop(0)
