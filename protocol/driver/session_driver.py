"""Run a sans-I/O ``Session`` over a ``Link``: the one session driver.

Theory of operation
-------------------
``SessionDriver`` owns the current ``protocol.session.core.Session`` of one
end, and outlives it: statistics are summed over every session it ran, and
a caller (a kiosk between rounds) may keep it, and its session, across many
exchanges and across links.

The driver is itself sans-I/O at its core, so an event loop can drive it:

* ``feed(data, now)``: bytes read from the link (``None``: the far end
  closed it, reported as ``LinkClosed``);
* ``output(now)``: bytes to write now;
* ``next_deadline()``: when to call ``output`` again if nothing arrives;
* ``events()``: what happened, in order.

``poll(max_wait)`` is the blocking loop's turn over those four steps: write
what is due, wait on the link until input arrives or the next deadline
(``max_wait`` at most), feed what was read, return the events.

Sessions end and begin here:

* the handshake, keepalives (``SessionConfig.keepalive``) and the dead
  timeout are the session's; the driver passes its ``Connected``,
  ``MessageReceived`` and ``Closed`` events through;
* ``attach(link)`` moves to a new link: an initiator whose session is open
  (or was resuming on a link that broke in turn) resumes it there
  (``Session.reconnect``: a fresh handshake, then each side says how far it
  got, so nothing acknowledged crosses again); any other session starts
  over;
* with ``restart=True`` (servers, and transfers that retry), a session
  that failed on our side (silence, a flood, a broken rule) is replaced at
  once by a fresh one and reported as ``Restarted``. One the peer closed or
  refused is reported as its ``Closed``, and replaced only on the responder,
  whose fresh session waits for the next handshake (an initiator's would
  start one the peer just declined). A peer that starts a new handshake
  while our session is open is the session's to judge (SPEC.md, "Session");
* ``close()`` says goodbye; what the session still owes (a CLOSE, a
  refusal) is written even after it was replaced.

``admit_handshake`` is handed to every session the driver makes (a server's
rate cap on key exchanges: ``Session``'s admission).

The driver never closes a link: whoever opened it does.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from protocol.driver.errors import LinkError
from protocol.driver.link import Link
from protocol.session.core import Session
from protocol.session.events import (
    CLOSED,
    Closed,
    Connected,
    Event,
    SessionConfig,
    SessionStats,
)

MAX_WAIT = 0.05  #: longest wait in one ``poll`` by default, so callers stay responsive


@dataclass(frozen=True)
class Restarted:
    """The session failed on our side and a fresh one took its place."""

    reason: str


@dataclass(frozen=True)
class LinkClosed:
    """The far end closed the link."""


DriverEvent = Event | Restarted | LinkClosed


def session_config(*, stream: bool, baud: int | None = None, **options: Any) -> SessionConfig:
    """A ``SessionConfig`` for a link: paced to ``baud`` (8N1) on a line that is
    not a stream; ``options`` set the other fields (keepalive, dead_timeout...)."""
    return SessionConfig(stream=stream, rate=baud / 10 if baud and not stream else None,
                         **options)


def sum_stats(*stats: SessionStats) -> SessionStats:
    total = SessionStats()
    for f in fields(SessionStats):
        if f.name != "extra":
            setattr(total, f.name, sum(getattr(s, f.name) for s in stats))
    return total


class SessionDriver:
    """One end's sessions over a link; see the module docstring."""

    def __init__(self, *, initiator: bool, config: SessionConfig,
                 static_key: X25519PrivateKey | None = None, remote_static: bytes | None = None,
                 resume_lookup: Callable[[bytes], Session | None] | None = None,
                 restart: bool = False, link: Link | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 admit_handshake: Callable[[float], bool] | None = None) -> None:
        self.initiator = initiator
        self.config = config
        self.restart = restart
        self.link = link
        self.clock = clock
        self._static, self._pin, self._lookup = static_key, remote_static, resume_lookup
        self._admit = admit_handshake  #: a responder's admission of key exchanges
        self._totals = SessionStats()  #: of the sessions replaced so far
        self._events: deque[DriverEvent] = deque()
        self._owed = b""  #: what a replaced session still had to write
        self._closing = False
        self.restarts = 0  #: sessions replaced
        self.peer_static: bytes | None = None  #: the remote key of the last Connected
        self.ever_connected = False
        now = clock()
        self.last_heard = now  #: when the peer last sent an authenticated frame
        self.session = self._new_session(now)

    # -- the session's side --------------------------------------------------

    @property
    def connected(self) -> bool:
        """The session is open and data may flow."""
        return self.session.is_open

    @property
    def closed(self) -> bool:
        """The session is closed and was not replaced."""
        return self.session.state == CLOSED

    def send(self, lane: int, data: bytes) -> None:
        self.session.send_message(lane, data)

    def can_send(self, lane: int, size: int) -> bool:
        return self.connected and self.session.can_send(lane, size)

    def stats(self) -> SessionStats:
        """Counters summed over every session this driver ran."""
        return sum_stats(self._totals, self.session.stats)

    def silent_for(self, now: float) -> float:
        """Seconds since the peer's last authenticated frame, across sessions."""
        return now - self.last_heard

    def new_session(self, now: float) -> None:
        """Replace the session by a fresh one (what it still owes is written first)."""
        old = self.session
        self._owed += old.data_to_send(now)
        self._totals = sum_stats(self._totals, old.stats)
        self.restarts += 1
        self.session = self._new_session(now)

    def _new_session(self, now: float) -> Session:
        self._closing = False
        return Session(initiator=self.initiator, config=self.config, static_key=self._static,
                       remote_static=self._pin, resume_lookup=self._lookup,
                       admit_handshake=self._admit, now=now)

    # -- sans-I/O steps ------------------------------------------------------

    def feed(self, data: bytes | None, now: float) -> None:
        """Take what was read from the link; ``None``: the far end closed it."""
        if data is None:
            self._events.append(LinkClosed())
            return
        s = self.session
        heard = s.stats.frames_received
        s.receive_data(data, now)
        if s.stats.frames_received != heard:
            self.last_heard = now
        self._pump(now)

    def output(self, now: float) -> bytes:
        """Bytes to write to the link now (maybe none)."""
        out = self._owed + self.session.data_to_send(now)
        self._owed = b""
        if self._pump(now):  # replaced: the fresh session may speak at once
            out += self._owed + self.session.data_to_send(now)
            self._owed = b""
        return out

    def next_deadline(self) -> float | None:
        """When to call ``output`` again even if nothing arrives."""
        if self._owed or self._events:
            return float("-inf")
        return self.session.next_deadline()

    def events(self) -> list[DriverEvent]:
        out = list(self._events)
        self._events.clear()
        return out

    def _pump(self, now: float) -> bool:
        """Move the session's events to ours; True if the session was replaced."""
        s = self.session
        while (event := s.next_event()) is not None:
            if isinstance(event, Connected):
                self.peer_static = event.remote_static
                self.ever_connected = True
                self.last_heard = now
                self._events.append(event)
            elif isinstance(event, Closed) and self.restart and not self._closing:
                cured = not event.by_peer and event.reason not in ("auth", "unknown-key")
                self._events.append(Restarted(f"{event.reason}: {event.detail}") if cured
                                    else event)
                if cured or not self.initiator:
                    self.new_session(now)
                    return True
            else:
                self._events.append(event)
        return False

    # -- the blocking loop ---------------------------------------------------

    def attach(self, link: Link, now: float | None = None) -> None:
        """Go on over ``link`` (see the module docstring)."""
        now = self.clock() if now is None else now
        self.link = link
        s = self.session
        if self.initiator and s.state != CLOSED and s.session_id is not None:
            self._owed = b""  # meant for the old link (open, or already resuming)
            s.reconnect(now)
        elif s.stats.bytes_sent or s.stats.bytes_received or s.state == CLOSED:
            self.new_session(now)
            self._owed = b""

    def poll(self, max_wait: float = MAX_WAIT) -> list[DriverEvent]:
        """One turn: write what is due, wait for input or the next deadline, read it."""
        link = self.link
        if link is None:
            raise LinkError("no link to poll: attach one first")
        now = self.clock()
        out = self.output(now)
        if out:
            link.write(out)
        deadline = self.next_deadline()
        wait = max_wait if deadline is None else min(max_wait, deadline - now)
        data = link.read(max(0.0, wait))
        if data is None:
            self.link = None
        self.feed(data, self.clock())
        return self.events()

    def flush(self) -> None:
        """Write what is due now to the attached link, if there is one."""
        if self.link is not None and (out := self.output(self.clock())):
            self.link.write(out)

    def close(self, reason: str = "done", detail: str = "", linger: float = 0.0,
              retry_ms: int | None = None) -> None:
        """Say goodbye; over an attached link, write the CLOSE and then keep reading
        (and dropping) for ``linger`` seconds so it can leave. ``retry_ms``: see
        ``Session.close``."""
        self._closing = True
        self.session.close(reason, detail, retry_ms)
        self.flush()
        link = self.link
        if link is None:
            return
        end = self.clock() + linger
        while (left := end - self.clock()) > 0:
            if link.read(min(0.02, left)) is None:
                return
