"""A hub URL's session, kept open between sync rounds.

Theory of operation
-------------------
``HubConnection`` holds one URL's link and its ``SessionDriver`` for as
long as the link stays up: the first round opens the link and runs the
handshake; every later round is messages on the open session
(``engine.drive_round``). Between rounds ``idle`` services the session
until the wait ends or something calls for a round: a check-in sets the
wake event (``device.sync.wake.Wake``), or the hub speaks. It blocks on the
link and the wake event together, with the session's next deadline (a
keepalive) as its timeout, so an idle kiosk wakes only for that: nothing
polls. What the hub sends meanwhile (a ``sync-notify``: it holds changes
for us) ends the wait and is handed to the next round (``pending``),
which pulls. A session closed while idle ends the wait too, so that the
next round opens a new one and pushes reach us again; a refusal (revoked)
is kept in ``refused`` and the next round raises ``SyncRefused``.

A NAT that forgets an idle flow drops its packets without a word. So a
keepalive not answered within ``reply_timeout`` drops the link and ends the
wait (the next round resumes the session on a new one), as does a round's
first message (``drive_round``): the hub replaces the stale session when
the resumed one authenticates with the same key.

When the link breaks, the next use (or ``drive_round``'s ``reopen``, within
a round) opens it again and ``SessionDriver.attach`` resumes the session
there: nothing either side acknowledged is sent again. If the hub no longer
knows the session (a restarted hub) a fresh session takes its place and the
round runs again from its hello (a saved, unacknowledged batch is sent again
from ``sync.db``; the hub keeps each once).

The hub holds one session per kiosk key: a newer connection with our key
ends ours with reason ``superseded``. Heard on a live session, that means
another holder of our key (a copied data folder) took it over, since our
own reconnection would have come from us. Connecting again at once would
take it back and end theirs, and the two would trade the session for ever:
so ``superseded`` is kept, and ``SyncLoop.idle`` connects again only for a
reason (a check-in) or after ``SUPERSEDED_WAIT``.

``keepalive``: seconds of silence before the kiosk pings. On TCP it is sized
for a cellular NAT's idle timeout (minutes), and only the kiosk pings (the
hub's keepalive is longer than its idle limit); a serial line, which
nothing in between drops, pings every ``SERIAL_KEEPALIVE`` so that a
restarted hub is noticed by the session's dead timeout.
"""

from __future__ import annotations

import contextlib
import logging
import math
import select
import threading
import time
from collections.abc import Callable

from device.enrol import Identity
from device.store import Store
from device.sync.document_store import DocumentStore
from device.sync.engine import (
    REFUSALS,
    REPLY_TIMEOUT,
    STALL,
    Summary,
    SyncBusy,
    SyncFailed,
    SyncRefused,
    drive_round,
    kiosk_driver,
    open_hub_link,
    refuser,
)
from device.sync.state import SyncState
from protocol.driver.errors import LinkError
from protocol.driver.link import Link
from protocol.driver.session_driver import DriverEvent, LinkClosed, SessionDriver
from protocol.session.events import CLOSED, Closed, MessageReceived

log = logging.getLogger("haven.sync")

KEEPALIVE = 240.0  #: default seconds between pings on an idle TCP session
SERIAL_KEEPALIVE = 5.0
#: Longest wait between two looks at a wake event that cannot be waited on with the
#: link (a plain ``threading.Event``; ``Wake`` needs none).
SUPERSEDED = "superseded"  #: the hub's close reason when a newer connection holds our key
IDLE_STEP = 0.05

#: ``wait(fds, timeout)``: the descriptors of ``fds`` that are readable, after at most
#: ``timeout`` seconds.
Waiter = Callable[[list[int], float], list[int]]


def wait_readable(fds: list[int], timeout: float) -> list[int]:
    """Block until one of ``fds`` is readable or ``timeout`` seconds pass."""
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    ms = max(0, math.ceil(timeout * 1000)) if math.isfinite(timeout) else -1
    return [fd for fd, _ in poller.poll(ms)]


class HubConnection:
    def __init__(self, url: str, ident: Identity, *, baud: int | None = None,
                 keepalive: float = KEEPALIVE, stall: float = STALL,
                 reply_timeout: float = REPLY_TIMEOUT,
                 clock: Callable[[], float] = time.monotonic,
                 wait: Waiter = wait_readable) -> None:
        """``stall``: seconds of the hub's silence within a round after which the link
        is taken for dead and opened again (``drive_round``); ``reply_timeout``: the
        same for the first answer to a round on a session kept open, and for the
        answer to a keepalive while idle (0: no such check). ``clock`` times the
        session too; ``wait`` is ``idle``'s blocking wait (``wait_readable``)."""
        self.url, self.ident, self.baud, self.keepalive = url, ident, baud, keepalive
        self.stall, self.reply_timeout = stall, reply_timeout
        self.clock, self.wait = clock, wait
        self.link: Link | None = None
        self.driver: SessionDriver | None = None
        self.handshakes = 0  #: links opened with a new session (not resumed)
        self.resumes = 0  #: links opened to resume the session
        self.wakeups = 0  #: waits ``idle`` made (each one blocking call)
        self.pending: list[bytes] = []  #: messages the hub sent while idle
        self.refused: SyncRefused | None = None  #: the hub turned us away while idle
        self.superseded = False  #: another connection with our key took the session

    @property
    def last_heard(self) -> float | None:
        """When the hub last sent an authenticated frame (``clock``), if it ever did."""
        driver = self.driver
        return driver.last_heard if driver is not None and driver.ever_connected else None

    @property
    def open(self) -> bool:
        return self.driver is not None and self.driver.connected and self.link is not None

    def round(self, store: Store, state: SyncState, *, limit: float,
              docs: DocumentStore | None = None) -> Summary:
        """One round on the kept-open session (opened, resumed or started afresh as
        needed); raises ``SyncFailed`` or ``SyncRefused`` as ``drive_round`` does."""
        if self.refused is not None:
            raise self.refused
        self.superseded = False  # a round of ours takes the session back
        start = self.clock()
        for attempt in (1, 2):
            driver = self._ready()
            pending, self.pending = self.pending, []
            try:
                return drive_round(driver, store, state, self.ident, url=self.url,
                                   limit=max(0.0, limit - (self.clock() - start)), docs=docs,
                                   reopen=self._reopen, stall=self.stall,
                                   reply_timeout=self.reply_timeout, pending=pending)
            except (SyncRefused, SyncBusy):  # a busy hub is not asked again at once
                self.close()
                raise
            except SyncFailed as exc:
                if self.driver is None or not self.driver.closed or attempt == 2:
                    self.close()
                    raise
                log.warning("the session over %s ended (%s); a fresh one", self.url, exc)
        raise AssertionError("unreachable")

    def idle(self, seconds: float, wake: threading.Event) -> bool:
        """Wait ``seconds`` (``math.inf``: until something happens), servicing the
        session; True when the wait ended early for a round: ``wake`` was set, the hub
        sent a message (kept in ``pending``), or the session or its link ended."""
        end = self.clock() + seconds
        fileno = getattr(wake, "fileno", None)
        while not wake.is_set():
            now = self.clock()
            left = end - now
            if left <= 0:
                return False
            driver, link = self.driver, self.link
            if driver is None or link is None or driver.link is None or driver.closed:
                return wake.wait(None if math.isinf(left) else left)
            fd = link.fileno()
            events: list[DriverEvent] | None
            try:
                if fileno is None or fd is None:  # a plain Event: look at it in steps
                    events = driver.poll(min(IDLE_STEP, left))
                    self.wakeups += 1
                else:
                    events = self._wait_once(driver, link, fd, fileno(), wake, now, left)
            except LinkError as exc:
                log.info("the link to %s broke while idle: %s", self.url, exc)
                self._drop_link()
                return True
            if events is None or self._idle_events(events):
                return True
        return True

    def _wait_once(self, driver: SessionDriver, link: Link, fd: int, wake_fd: int,
                   wake: threading.Event, now: float, left: float) -> list[DriverEvent] | None:
        """One blocking wait on the link and the wake event, until the session's next
        deadline; the session's events, or None when a keepalive went unanswered."""
        out = driver.output(now)
        if out:
            link.write(out)
        deadline = driver.next_deadline()
        wait = left if deadline is None else min(left, deadline - now)
        ping = driver.session.last_ping
        if self.reply_timeout > 0 and ping is not None and driver.last_heard < ping:
            if now - ping >= self.reply_timeout:
                log.info("no answer to a keepalive over %s within %g s: the link is taken "
                         "for dropped", self.url, self.reply_timeout)
                self._drop_link()
                return None
            wait = min(wait, ping + self.reply_timeout - now)
        self.wakeups += 1
        ready = self.wait([fd, wake_fd], max(0.0, wait))
        if wake_fd in ready and not wake.is_set():
            drain = getattr(wake, "drain", None)
            if drain is not None:
                drain()
        if fd in ready:
            data = link.read(0)
            if data is None:
                self.link = driver.link = None
            driver.feed(data, self.clock())
        return driver.events()

    def _idle_events(self, events: list[DriverEvent]) -> bool:
        """Take what happened while idle; True when it calls for a round."""
        wanted = False
        for event in events:
            if isinstance(event, MessageReceived):
                self.pending.append(event.data)
                wanted = True
            elif isinstance(event, LinkClosed):
                log.info("the hub at %s closed the link; a round opens a new one", self.url)
                self._drop_link()
                wanted = True
            elif isinstance(event, Closed):
                what = f"{event.reason}: {event.detail}" if event.detail else event.reason
                log.info("the session over %s closed while idle (%s)", self.url, what)
                self.superseded = event.reason == SUPERSEDED
                if event.reason in REFUSALS:
                    self.refused = SyncRefused(f"{refuser(event.by_peer)} ({what})",
                                               event.reason)
                self.close()
                wanted = True
        return wanted

    def close(self) -> None:
        """Say goodbye (if the session is open) and close the link."""
        driver, link = self.driver, self.link
        self.driver = self.link = None
        if driver is not None and link is not None:
            with contextlib.suppress(LinkError):
                driver.close("done")
        if link is not None:
            link.close()

    # -- links ------------------------------------------------------------------------

    def _open_link(self) -> Link:
        self.link = open_hub_link(self.url, self.baud)
        return self.link

    def _ready(self) -> SessionDriver:
        """The driver with a link: a new one, the old session resumed on a new link, or
        a fresh session where the old one ended."""
        if self.driver is None:
            link = self._open_link()
            keepalive = self.keepalive if link.stream else min(self.keepalive,
                                                                SERIAL_KEEPALIVE)
            self.driver = kiosk_driver(self.ident, link, baud=self.baud, keepalive=keepalive,
                                       kept_open=True, clock=self.clock)
            self.handshakes += 1
        elif self.driver.closed:
            self.driver.new_session(self.clock())
            self.handshakes += 1
            if self.link is None:
                self.driver.attach(self._open_link())
        elif self.link is None or self.driver.link is None:
            self._reopen()
        return self.driver

    def _reopen(self) -> Link:
        """A new link for the session, resumed on it (``SessionDriver.attach``)."""
        assert self.driver is not None
        self._drop_link()
        link = self._open_link()
        session = self.driver.session
        resumes = session.state != CLOSED and session.session_id is not None
        self.driver.attach(link)
        if resumes:
            self.resumes += 1
        else:
            self.handshakes += 1
        return link

    def _drop_link(self) -> None:
        if self.link is not None:
            self.link.close()
        self.link = None
        if self.driver is not None:
            self.driver.link = None
