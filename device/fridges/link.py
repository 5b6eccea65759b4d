"""The kiosk's end of one fridge node's serial line, sans-I/O.

Theory of operation
-------------------
``FridgeLink`` is a responder ``Session`` (Noise ``IK``: the node knows the
kiosk's static key) and the kiosk's half of ``protocol.sensor``. It has the
session's surface (``receive_data(data, now)``, ``data_to_send(now)``,
``next_event()``, ``next_deadline()``), so the serial driver
(``device.fridges.port``) and ``tools.linksim`` drive it as they drive a
session.

* The handshake reveals the node's static key; a key no enrolment holds
  (``FridgeRecords.by_key``) is refused (``unknown-key``) and counted.
* ``sensor-hello`` is answered with ``sensor-welcome``: the kiosk's time and
  how far the node's readings and alarms are stored.
* ``readings`` and ``alarm`` are committed to the store first
  (``FridgeRecords``), then acknowledged (``readings-ack``,
  ``alarm-ack``), so an acknowledged reading is on the kiosk's disk. A write
  that fails (a full disk, a locked store) is not acknowledged: the node
  keeps the readings and sends them again in its next session.
* Readings are committed in batches, not as they come: a reading a minute
  committed alone, with the sync round and the collection each commit
  brings, writes 97 MiB of the SD card a fridge a day; an hour's in one
  commit 4.5 MiB (``./tools/bench fridge``). Received readings wait in
  memory (acknowledged only once committed) until ``commit_every`` seconds have
  passed since the first of them, ``COMMIT_READINGS`` wait, an alarm
  comes (the readings before it are committed first, so the hub gets them
  in order) or the session ends. Nothing is lost meanwhile: the node holds
  every reading until it is acknowledged, and sends it again otherwise.
* A message that fails ``protocol.sensor``'s checks, or that the kiosk never
  takes (a welcome, an acknowledgement), is counted and dropped; frames that
  fail their checks are the session's to drop, counted in its stats. Nothing
  the node sends raises out of here.
* A session that ends (the node went silent past ``dead_timeout``, a
  refusal, a protocol error) is followed at once by a fresh responder, so
  the line always waits for the node's next handshake. A restarted node's
  handshake takes over the live session (``protocol.session``).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from device.fridges.records import Enrolment, FridgeRecords
from protocol import sensor
from protocol.crypto import X25519PrivateKey
from protocol.errors import ProtocolError
from protocol.session.core import Closed, Connected, Event, MessageReceived, Session
from protocol.session.events import CLOSED, SessionConfig

log = logging.getLogger("haven.fridges")

#: Longest a received reading waits in memory for its commit (and its acknowledgement).
COMMIT_EVERY = 3600.0
#: Readings that make a commit at once: half of the node's unacknowledged window.
COMMIT_READINGS = 120
#: The responder's session settings; the node's hello must agree on lanes.
CONFIG = SessionConfig(pattern="IK", lanes=sensor.LANES, rate=11520.0, keepalive=60.0,
                       dead_timeout=300.0, max_frame=1024, window=8192)


@dataclass
class LinkCounts:
    """What one line has seen beyond the session's own stats."""

    sessions: int = 0  #: sessions opened with an enrolled node
    refused_keys: int = 0  #: handshakes from a key no enrolment holds
    bad_messages: int = 0  #: messages that failed the sensor checks, or were unexpected
    readings: int = 0  #: readings newly stored
    alarms: int = 0  #: alarm messages newly stored
    store_failures: int = 0  #: writes that failed (not acknowledged: tried again later)
    commits: int = 0  #: batches of readings committed
    bad_frames: int = 0  #: frames of ended sessions that failed their checks


class FridgeLink:
    """One serial line's sensor sessions (see the module docstring). ``clock()`` gives
    Unix seconds (the welcome's time); ``on_alarm(enrolment)`` is called after an
    alarm is stored, ``on_stored()`` after each commit, readings' or an alarm's.
    ``commit_every``: see the module docstring (0: each readings message at once)."""

    def __init__(self, records: FridgeRecords, static_key: X25519PrivateKey, *,
                 config: SessionConfig = CONFIG, clock: Callable[[], float] = time.time,
                 on_alarm: Callable[[Enrolment], None] | None = None,
                 on_stored: Callable[[], None] | None = None,
                 commit_every: float = COMMIT_EVERY, now: float = 0.0) -> None:
        self.records = records
        self.static_key = static_key
        self.config = config
        self.clock = clock
        self.on_alarm = on_alarm
        self.on_stored = on_stored
        self.counts = LinkCounts()
        self.node: Enrolment | None = None  #: the enrolled node of the open session
        self.commit_every = commit_every
        #: Received readings messages not committed yet, and when the first came.
        self._pending: list[tuple[int, list[Any]]] = []
        self._commit_due: float | None = None
        self._events: list[Event] = []
        self._flush = b""  # what an ended session still had to say (a refusal, a close)
        self._refused = b""  # the last key refused
        self.session = self._new_session(now)

    # -- the session's surface --------------------------------------------------

    def receive_data(self, data: bytes, now: float) -> None:
        self.session.receive_data(data, now)
        self._drain(now)

    def data_to_send(self, now: float) -> bytes:
        if self._commit_due is not None and now >= self._commit_due:
            self._commit_readings(now)
        out = self.session.data_to_send(now)
        self._drain(now)
        if self._flush:
            out, self._flush = self._flush + out + self.session.data_to_send(now), b""
        return out

    def next_event(self) -> Event | None:
        return self._events.pop(0) if self._events else None

    def next_deadline(self) -> float | None:
        if self._flush:
            return float("-inf")
        times = [t for t in (self.session.next_deadline(), self._commit_due) if t is not None]
        return min(times) if times else None

    @property
    def frames_dropped(self) -> int:
        """Frames that failed their checks on this line, every session's."""
        return self.counts.bad_frames + _bad_frames(self.session)

    # -- inside ------------------------------------------------------------------

    def _new_session(self, now: float) -> Session:
        return Session(initiator=False, config=dataclasses.replace(self.config),
                       static_key=self.static_key, accept_static=self._accept, now=now)

    def _enrolment(self, key: bytes) -> Enrolment | None:
        try:
            return self.records.by_key(key)
        except Exception as exc:  # noqa: BLE001 - a store that cannot be read: refuse, retry
            self.counts.store_failures += 1
            log.error("fridge enrolments unreadable (%s: %s)", type(exc).__name__, exc)
            return None

    def _accept(self, key: bytes) -> bool:
        if self._enrolment(key) is not None:
            return True
        self.counts.refused_keys += 1
        # Once per key in a row: a node that retries every few seconds writes no log
        # line each time to the card.
        level = logging.DEBUG if key == self._refused else logging.WARNING
        self._refused = key
        log.log(level, "fridge node refused: key %s is not enrolled", key.hex()[:16])
        return False

    def _drain(self, now: float) -> None:
        while (ev := self.session.next_event()) is not None:
            self._events.append(ev)
            if isinstance(ev, Connected):
                self.node = self._enrolment(ev.remote_static or b"")
                if self.node is None:  # removed while its handshake ran
                    self.session.close("unknown-key")
                else:
                    self.counts.sessions += 1
            elif isinstance(ev, MessageReceived):
                self._on_message(ev.data, now)
            elif isinstance(ev, Closed):
                self._commit_readings(now)
                # What could not be stored is the node's to send again, in its next session.
                self._pending, self._commit_due = [], None
                old, self.node = self.session, None
                self.counts.bad_frames += _bad_frames(old)
                self._flush += old.data_to_send(now)
                self.session = self._new_session(now)

    def _on_message(self, data: bytes, now: float) -> None:
        node = self.node
        if node is None:
            return
        try:
            msg = sensor.decode(data)
            if msg.type == sensor.HELLO.number:
                self._welcome(node, msg)
            elif msg.type == sensor.READINGS.number:
                self._readings(msg, now)
            elif msg.type == sensor.ALARM.number:
                self._alarm(node, msg, now)
            else:
                raise ValueError(f"a node does not send {msg.name}")
        except (ProtocolError, ValueError) as exc:
            n = self.counts.bad_messages = self.counts.bad_messages + 1
            log.log(logging.WARNING if n & (n - 1) == 0 else logging.DEBUG,  # 1, 2, 4, 8...
                    "fridge %s: message dropped (%d so far): %s", node.name, n, exc)
        except Exception as exc:  # noqa: BLE001 - the store failed: no ack, sent again
            self.counts.store_failures += 1
            log.error("fridge %s: not stored (%s: %s); the node sends it again",
                      node.name, type(exc).__name__, exc)

    def _stored(self) -> None:
        if self.on_stored is not None:
            self.on_stored()

    def _send(self, spec: Any, **values: Any) -> None:
        if self.session.state == CLOSED:  # committed as the session ended: no one to tell
            return
        self.session.send_message(sensor.ALARM_LANE, sensor.encode(spec, **values))

    def _welcome(self, node: Enrolment, hello: Any) -> None:
        cur = self.records.cursor(node)
        if hello.get("next") < cur.acked:  # readings it had not committed: it renumbers
            log.info("fridge %s: its next reading is %d, below the %d stored: it numbers "
                     "its new ones from there", node.name, hello.get("next"), cur.acked)
        self._send(sensor.WELCOME, time=int(self.clock()), acked=cur.acked,
                   alarms_acked=cur.alarms_acked)

    def _readings(self, msg: Any, now: float) -> None:
        first, readings = msg.get("first"), msg.get("readings")
        last = self._pending[-1] if self._pending else None
        if last is not None and last[0] + len(last[1]) == first:
            last[1].extend(readings)  # the node sends them in order: one run
        else:
            self._pending.append((first, list(readings)))
        if self._commit_due is None:
            self._commit_due = now + self.commit_every
        if sum(len(r) for _, r in self._pending) >= COMMIT_READINGS:
            self._commit_readings(now)

    def _commit_readings(self, now: float) -> None:
        """Commit the readings waiting, a run a transaction, and acknowledge them."""
        node = self.node
        while self._pending and node is not None:
            first, readings = self._pending[0]
            try:
                upto, new = self.records.store_readings(node, first, readings)
            except Exception as exc:  # noqa: BLE001 - not acknowledged: tried again later
                self.counts.store_failures += 1
                log.error("fridge %s: readings not stored (%s: %s); tried again later",
                          node.name, type(exc).__name__, exc)
                self._commit_due = now + self.commit_every
                return
            self._pending.pop(0)
            self.counts.readings += new
            self.counts.commits += 1
            self._send(sensor.READINGS_ACK, upto=upto)
            self._stored()
        self._pending, self._commit_due = [], None

    def _alarm(self, node: Enrolment, msg: Any, now: float) -> None:
        self._commit_readings(now)  # the readings before it first, as the node took them
        upto, new = self.records.store_alarm(node, msg)
        if new:
            self.counts.alarms += 1
            log.warning("fridge %s: %s alarm %s", node.name, msg.get("kind"), msg.get("state"))
            if self.on_alarm is not None:
                self.on_alarm(node)
            self._stored()
        self._send(sensor.ALARM_ACK, upto=upto)


def _bad_frames(session: Session) -> int:
    """Frames a session dropped: garbled on the line (COBS), failing the handshake's
    checks, refused (a failed tag, a replay, an unknown kind), or carrying
    a malformed control message."""
    stats = session.stats
    return (session.garbled_frames + stats.bad_handshake + stats.bad_messages
            + stats.refused_frames)
