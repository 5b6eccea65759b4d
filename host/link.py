"""Drive a sans-I/O ``Session`` over a pyserial port: the I/O half of the session.

Theory of operation
-------------------
``Link`` opens anything pyserial opens by URL (``/dev/ttyUSB0``, a pty path,
``socket://host:port``, ``rfc2217://...``, ``loop://``) without blocking
reads, and waits for input with ``select`` on the port's descriptor.

``Runner`` owns the current ``Session`` and turns the loop inside out for its
caller: each ``poll()`` writes what the session wants written, sleeps until
input arrives or the session's next deadline (capped), feeds what was read
with ``time.monotonic()``, and returns the session's events. With ``baud``
the session paces itself to ``baud / 10`` bytes/s (8N1).

A process on the other end may die and be started again, and then speaks a
new handshake that an open session ignores. So a session that has heard no
authenticated frame for ``reset_after`` seconds (its ``dead_timeout``) is
replaced by a fresh one, and the caller gets a ``Reset`` event: it restarts
the transfer in progress (its chunks are already durable at the receiver, so
only what is missing crosses again). Only when nothing authenticated has
arrived for ``timeout`` seconds, across sessions, does ``poll`` raise
``PeerSilent``. A handshake refused for its key raises ``PeerRefused``.
Keep-alives every ``KEEPALIVE`` seconds keep an idle but live session from
being reset.
"""

from __future__ import annotations

import contextlib
import select
import time
from dataclasses import dataclass, fields

import serial
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from host.errors import HavenError, PeerRefused, PeerSilent, UsageError
from protocol.session.core import Closed, Connected, Event, Session, SessionConfig, SessionStats

KEEPALIVE = 2.0
RESET_AFTER = 10.0
MAX_WAIT = 0.05  #: longest sleep in one poll, so callers stay responsive


class Link:
    """A pyserial port opened by URL, read without blocking."""

    def __init__(self, url: str, baud: int | None = None) -> None:
        self.url = url
        try:
            self.port = serial.serial_for_url(url, baudrate=baud or 115200, timeout=0,
                                              write_timeout=10)
        except (serial.SerialException, ValueError, OSError) as exc:
            raise UsageError(f"cannot open port {url}: {exc}") from None
        self._fd: int | None
        try:
            self._fd = self.port.fileno()
        except (AttributeError, OSError, serial.SerialException):
            self._fd = None

    def read(self) -> bytes:
        try:
            return bytes(self.port.read(65536))
        except (serial.SerialException, OSError) as exc:
            raise HavenError(f"reading {self.url} failed: {exc}") from None

    def write(self, data: bytes) -> None:
        try:
            self.port.write(data)
        except serial.SerialTimeoutException:
            pass  # a stalled line: the session retransmits what did not go
        except (serial.SerialException, OSError) as exc:
            raise HavenError(f"writing {self.url} failed: {exc}") from None

    def wait(self, seconds: float) -> None:
        """Sleep until input is ready or ``seconds`` pass."""
        if seconds <= 0:
            return
        if self._fd is not None:
            select.select([self._fd], [], [], seconds)
        else:
            time.sleep(min(seconds, 0.01))

    def close(self) -> None:
        with contextlib.suppress(serial.SerialException, OSError):
            self.port.close()


@dataclass(frozen=True)
class Reset:
    """The session was replaced (the peer went silent, maybe restarted)."""

    reason: str


@dataclass
class LinkOptions:
    baud: int | None = None
    tcp: bool = False  #: a reliable byte stream end to end: no retransmission timers
    timeout: float = 120.0  #: give up after this long without an authenticated frame
    key: X25519PrivateKey | None = None
    peer_key: bytes | None = None
    reset_after: float = RESET_AFTER


class Runner:
    """Runs sessions over ``link``; see the module docstring."""

    def __init__(self, link: Link, options: LinkOptions, *, initiator: bool) -> None:
        self.link = link
        self.options = options
        self.initiator = initiator
        self.totals = SessionStats()  # of the sessions replaced so far
        self.resets = 0
        self.peer_static: bytes | None = None
        self.connected = False
        self.ever_connected = False
        now = time.monotonic()
        self.last_heard = now
        self.session = self._new_session(now)

    def _config(self) -> SessionConfig:
        o = self.options
        return SessionConfig(
            pattern="XX" if o.key is not None else "NN",
            stream=o.tcp,
            rate=o.baud / 10 if o.baud else None,
            dead_timeout=min(o.reset_after, o.timeout),
            keepalive=KEEPALIVE,
            send_buffer=256 * 1024,
        )

    def _new_session(self, now: float) -> Session:
        self._heard = 0
        self.connected = False
        return Session(initiator=self.initiator, config=self._config(),
                       static_key=self.options.key, remote_static=self.options.peer_key,
                       now=now)

    def stats(self) -> dict[str, int]:
        """Counters summed over every session this runner ran."""
        return {f.name: getattr(self.totals, f.name) + getattr(self.session.stats, f.name)
                for f in fields(SessionStats) if f.name != "extra"}

    def send(self, lane: int, data: bytes) -> None:
        self.session.send_message(lane, data)

    def can_send(self, lane: int, size: int) -> bool:
        return self.connected and self.session.can_send(lane, size)

    def poll(self, max_wait: float = MAX_WAIT) -> list[Event | Reset]:
        """One turn of the loop: write, wait, read; returns what happened."""
        s = self.session
        now = time.monotonic()
        self._flush(now)
        deadline = s.next_deadline()
        wait = max_wait if deadline is None else min(max_wait, deadline - now)
        self.link.wait(wait)
        data = self.link.read()
        now = time.monotonic()
        s.receive_data(data, now)
        if s.stats.frames_received != self._heard:
            self._heard = s.stats.frames_received
            self.last_heard = now
        events = self._events(now)
        if self.session is s:
            self._flush(now)
        if now - self.last_heard > self.options.timeout:
            raise PeerSilent(
                f"no authenticated frame from the peer for {self.options.timeout:g} s"
                + ("" if self.ever_connected else
                   " (is the other side running, on the right port, with matching "
                   "--key/--peer-key/--tcp?)"))
        return events

    def _flush(self, now: float) -> None:
        out = self.session.data_to_send(now)
        if out:
            self.link.write(out)

    def _events(self, now: float) -> list[Event | Reset]:
        out: list[Event | Reset] = []
        while (event := self.session.next_event()) is not None:
            if isinstance(event, Connected):
                self.connected = self.ever_connected = True
                self.peer_static = event.remote_static
                out.append(event)
            elif isinstance(event, Closed):
                reset = self._on_closed(event, now)
                if reset is None:
                    out.append(event)
                else:
                    out.append(reset)
                    break
            else:
                out.append(event)
        return out

    def _on_closed(self, event: Closed, now: float) -> Reset | None:
        """Raise for what ends the run; return a Reset for what a new session cures."""
        if event.reason == "auth":
            raise PeerRefused(f"handshake refused: {event.detail or 'authentication failed'}"
                              " (wrong --peer-key, or the two sides disagree about --key)")
        if event.by_peer and event.reason in ("version", "protocol") and not self.connected:
            raise PeerRefused(f"the peer refused the session ({event.reason}): {event.detail}"
                              " (do both sides agree on --tcp?)")
        if event.by_peer:
            return None  # the peer said goodbye: the caller decides what that means
        if now - self.last_heard > self.options.timeout:
            raise PeerSilent(f"no authenticated frame from the peer for "
                             f"{self.options.timeout:g} s")
        self._replace(now)
        return Reset(f"{event.reason}: {event.detail}")

    def _replace(self, now: float) -> None:
        old = self.session.stats
        for f in fields(SessionStats):
            if f.name != "extra":
                setattr(self.totals, f.name, getattr(self.totals, f.name) + getattr(old, f.name))
        self.resets += 1
        self.session = self._new_session(now)

    def close(self, linger: float = 0.2) -> None:
        """Say goodbye and give the CLOSE a moment to leave."""
        s = self.session
        now = time.monotonic()
        s.close()
        self._flush(now)
        end = now + linger
        while time.monotonic() < end:
            self.link.wait(min(0.02, end - time.monotonic()))
            self.link.read()
