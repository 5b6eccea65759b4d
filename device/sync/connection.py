"""A hub URL's session, kept open between sync rounds.

Theory of operation
-------------------
``HubConnection`` holds one URL's link and its ``SessionDriver`` for as
long as the link stays up: the first round opens the link and runs the
handshake; every later round is messages on the open session
(``engine.drive_round``). Between rounds ``idle`` services the session
(keepalives, the hub's pings) until the wait ends or a check-in sets the
wake event, so a check-in leaves at once.

When the link breaks, the next use (or ``drive_round``'s ``reopen``, within
a round) opens it again and ``SessionDriver.attach`` resumes the session
there: nothing either side acknowledged is sent again. If the hub no longer
knows the session (a restarted hub) a fresh session takes its place and the
round runs again from its hello (a saved, unacknowledged batch is sent again
from ``sync.db``; the hub keeps each once).

``keepalive``: seconds of silence before the kiosk pings. On TCP it is sized
for a cellular NAT's idle timeout (minutes); a serial line, which nothing in
between drops, pings every ``SERIAL_KEEPALIVE`` so that a restarted hub is
noticed by the session's dead timeout.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable

from device.enrol import Identity
from device.store import Store
from device.sync.document_store import DocumentStore
from device.sync.engine import (
    STALL,
    Summary,
    SyncFailed,
    SyncRefused,
    drive_round,
    kiosk_driver,
    open_hub_link,
)
from device.sync.state import SyncState
from protocol.driver.errors import LinkError
from protocol.driver.link import Link
from protocol.driver.session_driver import LinkClosed, SessionDriver
from protocol.session.events import CLOSED, Closed

log = logging.getLogger("haven.sync")

KEEPALIVE = 120.0  #: default seconds between pings on an idle TCP session
SERIAL_KEEPALIVE = 5.0
IDLE_STEP = 0.05  #: longest wait between two looks at the wake event while idle


class HubConnection:
    def __init__(self, url: str, ident: Identity, *, baud: int | None = None,
                 keepalive: float = KEEPALIVE, stall: float = STALL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """``stall``: seconds of the hub's silence within a round after which the link
        is taken for dead and opened again (``drive_round``)."""
        self.url, self.ident, self.baud, self.keepalive = url, ident, baud, keepalive
        self.stall = stall
        self.clock = clock
        self.link: Link | None = None
        self.driver: SessionDriver | None = None
        self.handshakes = 0  #: links opened with a new session (not resumed)
        self.resumes = 0  #: links opened to resume the session

    @property
    def open(self) -> bool:
        return self.driver is not None and self.driver.connected and self.link is not None

    def round(self, store: Store, state: SyncState, *, limit: float,
              docs: DocumentStore | None = None) -> Summary:
        """One round on the kept-open session (opened, resumed or started afresh as
        needed); raises ``SyncFailed`` or ``SyncRefused`` as ``drive_round`` does."""
        start = self.clock()
        for attempt in (1, 2):
            driver = self._ready()
            try:
                return drive_round(driver, store, state, self.ident, url=self.url,
                                   limit=max(0.0, limit - (self.clock() - start)), docs=docs,
                                   reopen=self._reopen, stall=self.stall)
            except SyncRefused:
                self.close()
                raise
            except SyncFailed as exc:
                if self.driver is None or not self.driver.closed or attempt == 2:
                    self.close()
                    raise
                log.warning("the session over %s ended (%s); a fresh one", self.url, exc)
        raise AssertionError("unreachable")

    def idle(self, seconds: float, wake: threading.Event) -> bool:
        """Wait ``seconds`` or until ``wake`` is set (True), servicing the session."""
        end = self.clock() + seconds
        while not wake.is_set():
            left = end - self.clock()
            if left <= 0:
                return False
            driver = self.driver
            if driver is None or driver.link is None or driver.closed:
                return wake.wait(left)
            try:
                events = driver.poll(min(IDLE_STEP, left))
            except LinkError as exc:
                log.info("the link to %s broke while idle: %s", self.url, exc)
                self._drop_link()
                continue
            for event in events:
                if isinstance(event, LinkClosed):
                    log.info("the hub at %s closed the link; resuming at the next round",
                             self.url)
                    self._drop_link()
                elif isinstance(event, Closed):
                    log.info("the session over %s closed while idle (%s)", self.url,
                             event.reason)
                    self.close()
        return True

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
                                       kept_open=True)
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
