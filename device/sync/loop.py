"""The loop of sync rounds that ``haven-kiosk sync`` and the runtime share.

Theory of operation
-------------------
``SyncLoop`` holds what lives from one round to the next: each hub URL's
circuit breaker (``circuit``: a URL that keeps failing is skipped for a
cool-down, then probed), the kept-open session (``connection``, one URL's
at a time; ``keepalive`` 0: a new link and session every round; serial
lines keep a new session per round) and how many rounds in a row no URL
worked. ``round(limit)`` runs one round over the first URL that works
(``sync_first``) and says how long to wait before the next: after a round
that worked, ``interval`` on a serial line (a session per round), and on a
kept-open TCP session ``poll`` (a slow fallback; 0, the default, waits
for a reason: a check-in, the hub's ``sync-notify``, a link back), else
the backoff with jitter, never longer than until a resting URL may be
probed (``retry_wait``). ``idle(seconds, wake)`` is that wait, servicing
the open session and ending at once when ``wake`` is set or the hub
speaks. A link that comes back (``link_returned``) lets its breaker probe
at once. The hub's busy answer (``SyncBusy``, SPEC.md "Busy") is no failure:
no breaker counts it and no other URL is tried (it is the same hub); the
loop waits what the hub asked times a jitter of its own (``busy_wait``:
1 to 1.5 times, so a herd told alike does not come back at one instant),
and a round asked for sooner (a check-in) only says how long is left.
After a round that worked, garbage is collected at the hub's stable point
(``device.sync.collect``), off the round: the round's acknowledgements are
in, and a pass is bounded in time. ``SyncRefused`` passes through: retrying
will not help. A revocation is kept in ``sync.db`` (``SyncState.mark_revoked``), so that the
loop refuses to run again for this certificate, even after a restart.

``run_sync`` is ``haven-kiosk sync``'s loop on top of it; the runtime
(``device.runtime``) drives the same ``SyncLoop`` from its sync thread.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from device.enrol import CERT, Identity, load
from device.store import Store, StoreError
from device.sync.circuit import Breakers, hub_breakers
from device.sync.collect import Collector
from device.sync.connection import KEEPALIVE, HubConnection, Waiter, wait_readable
from device.sync.document_store import DocumentStore
from device.sync.engine import (
    REPLY_TIMEOUT,
    Summary,
    SyncBusy,
    SyncFailed,
    SyncRefused,
    run_round,
)
from device.sync.link_monitor import LinkMonitor, link_monitor_for
from device.sync.state import SyncState
from device.sync.wake import Wake
from protocol.driver.wall_clock import wall_ms

log = logging.getLogger("haven.sync")

ROUND_LIMIT = 60.0
BACKOFF_BASE, BACKOFF_CAP = 0.5, 60.0
#: After the hub gave our session to another connection with our key, seconds before we
#: connect again without a reason of our own (see ``device.sync.connection``).
SUPERSEDED_WAIT = 300.0
REVOKED = "revoked"  #: the close reason of a revoked kiosk's session
#: The hub's busy answer: its wait times 1 to 1 + BUSY_JITTER, and never more than
#: BUSY_CAP seconds whatever a hub asks.
BUSY_JITTER, BUSY_CAP = 0.5, 900.0


class SyncGaveUp(SyncFailed, TimeoutError):
    """``once``: the time ran out before everything was acknowledged."""


@dataclass
class Outcome:
    summary: Summary | None  #: the round that worked, or None
    failures: list[str]  #: what each URL that failed said
    wait: float  #: seconds until the next round
    busy: float | None = None  #: the hub was busy and asked for this many seconds


def sync_first(breakers: Breakers, run: Callable[[str, float], Summary],
               limit: Callable[[], float],
               failed: tuple[type[BaseException], ...] = (SyncFailed, StoreError, ValueError),
               ) -> tuple[Summary | None, list[str]]:
    """One round, ``run(url, limit)``, over the first hub URL that works, of those its
    breaker lets through. ``limit()`` is the time a round may take; at or below 0 no
    more URLs are tried. Returns the round's summary (None if no URL worked) and what
    each URL that failed said."""
    failures: list[str] = []
    for url in breakers.allowed():
        left = limit()
        if left <= 0:
            break
        try:
            summary = run(url, left)
        except (SyncRefused, SyncBusy):
            raise
        except failed as exc:
            breakers[url].failure()
            failures.append(f"{url}: {exc}")
            continue
        breakers[url].success()
        return summary, failures
    return None, failures


def retry_wait(attempt: int, breakers: Breakers, rng: random.Random,
               cap: float = BACKOFF_CAP) -> float:
    """How long to wait after ``attempt`` rounds in a row in which no URL worked: the
    exponential backoff with jitter (at most ``cap``), but no longer than until an open
    URL may be probed; with every URL open, until then."""
    probe = breakers.next_probe()
    if probe is not None and not breakers.allowed():
        return probe
    ceiling = min(BACKOFF_CAP, BACKOFF_BASE * 2.0 ** min(attempt, 20))
    wait = min(cap, ceiling / 2 + rng.random() * ceiling / 2)
    return wait if probe is None else min(wait, probe)


def busy_wait(asked: float, rng: random.Random, cap: float = BUSY_CAP) -> float:
    """Seconds to wait after the hub asked for ``asked``: never less, up to half more
    at random, at most ``cap``."""
    return min(cap, max(0.0, asked) * (1.0 + BUSY_JITTER * rng.random()))


class SyncLoop:
    def __init__(self, store: Store, state: SyncState, ident: Identity, urls: list[str], *,
                 baud: int | None = None, keepalive: float = KEEPALIVE,
                 interval: float = 10.0, poll: float = 0.0, retry_cap: float | None = None,
                 reply_timeout: float = REPLY_TIMEOUT,
                 superseded_wait: float = SUPERSEDED_WAIT,
                 docs: DocumentStore | None = None,
                 failed: tuple[type[BaseException], ...] = (SyncFailed, StoreError, ValueError),
                 clock: Callable[[], float] = time.monotonic,
                 wait: Waiter = wait_readable,
                 rng: random.Random | None = None) -> None:
        """``interval``: seconds between rounds that worked, on a serial line or with
        no kept-open session (``keepalive`` 0); ``poll``: the same on a kept-open TCP
        session (0: none, the hub pushes). ``reply_timeout``, ``wait``: see
        ``HubConnection``; ``superseded_wait``: see ``SUPERSEDED_WAIT``."""
        self.store, self.state, self.ident, self.docs = store, state, ident, docs
        self.superseded_wait = superseded_wait
        self.baud, self.keepalive, self.clock = baud, keepalive, clock
        self.interval, self.poll, self.failed = interval, poll, failed
        self.reply_timeout, self.wait = reply_timeout, wait
        self.retry_cap = BACKOFF_CAP if retry_cap is None else retry_cap
        self.rng = rng or random.Random()
        self.breakers = hub_breakers(urls, self.retry_cap, clock=clock, rng=self.rng)
        self.conn: HubConnection | None = None  #: the kept-open session
        self.attempt = 0  #: rounds in a row in which a URL was tried and none worked
        self.contact: float | None = None  #: ``clock`` at the end of the last round that worked
        #: ``clock`` before which the hub's busy answer keeps rounds off it, and its ask
        self.busy_until, self.busy_asked = -math.inf, 0.0
        self.collector = Collector()

    @property
    def revoked(self) -> str | None:
        """Why the hub revoked this kiosk, if it did (kept in ``sync.db``)."""
        return self.state.revoked(self.ident.cert.raw)

    def last_contact(self) -> float | None:
        """``clock`` when the hub was last heard: a round that worked, or a frame on
        the kept-open session (its keepalives' answers)."""
        heard = self.conn.last_heard if self.conn is not None else None
        times = [t for t in (self.contact, heard) if t is not None]
        return max(times) if times else None

    def round(self, limit: Callable[[], float]) -> Outcome:
        """One round; raises ``SyncRefused`` (with reason ``revoked``: kept, and every
        later round raises it at once)."""
        if (why := self.revoked) is not None:
            raise SyncRefused(f"this kiosk was revoked ({why})", REVOKED)
        self._enrolled()  # a round that failed after its welcome may have enrolled it
        if (left := self.busy_until - self.clock()) > 0:
            return Outcome(None, [], left, self.busy_asked)
        try:
            summary, failures = sync_first(self.breakers, self._round, limit, self.failed)
        except SyncRefused as exc:
            if exc.reason == REVOKED:
                self.close()
                self.state.mark_revoked(self.ident.cert.raw, str(exc))
            raise
        except SyncBusy as exc:
            wait = busy_wait(exc.retry_after, self.rng)
            self.busy_until, self.busy_asked = self.clock() + wait, exc.retry_after
            log.info("%s: the next round in %.1f s", exc, wait)
            return Outcome(None, [], wait, exc.retry_after)
        if summary is not None:
            self._enrolled()
            self.attempt = 0
            self.contact = self.clock()
            self._collect(summary)
            pushed = self.conn is not None and self.conn.open
            wait = self.interval if not pushed else self.poll if self.poll > 0 else math.inf
            return Outcome(summary, failures, wait)
        self.attempt += bool(failures)
        return Outcome(None, failures, retry_wait(self.attempt, self.breakers, self.rng,
                                                  cap=self.retry_cap))

    def _collect(self, summary: Summary) -> None:
        """Garbage collection after a round that worked; a failure is logged and the
        loop goes on (nothing was dropped by a slice that failed)."""
        moved = bool(summary.pushed or summary.pulled or summary.rebased or summary.refreshed)
        try:
            self.collector.after_round(self.store, self.state, moved)
        except StoreError as exc:
            log.warning("garbage collection failed, tried again after the next round: %s",
                        exc)

    def _enrolled(self) -> None:
        """A kiosk provisioned offline that its first sync enrolled: from now on its
        identity is its certificate (the session kept open was the approval's)."""
        if self.ident.enrol is not None and (self.store.data / CERT).exists():
            self.close()
            self.ident = load(self.store.data)

    def _round(self, url: str, limit: float) -> Summary:
        """A round on ``url``'s kept-open session over TCP (a round over one URL closes
        another's); a serial line keeps a new session per round (a port whose device
        node went away stays open underneath a kept session, and the hub's serial loop
        restarts its own)."""
        if self.conn is not None and self.conn.url != url:
            self.close()
        if self.keepalive <= 0 or not url.startswith("tcp://"):
            return run_round(self.store, self.state, self.ident, url, baud=self.baud,
                             limit=limit, docs=self.docs)
        if self.conn is None:
            self.conn = HubConnection(url, self.ident, baud=self.baud,
                                      keepalive=self.keepalive, clock=self.clock,
                                      reply_timeout=self.reply_timeout, wait=self.wait)
        return self.conn.round(self.store, self.state, limit=limit, docs=self.docs)

    def link_returned(self, url: str) -> None:
        self.breakers[url].allow_probe()

    def idle(self, seconds: float, wake: threading.Event) -> bool:
        """Wait ``seconds`` (``math.inf``: for a reason) or until ``wake`` is set or the
        hub speaks (True), servicing an open session. With no session open, an endless
        wait ends at once: a round opens one, so that pushes reach us."""
        conn = self.conn
        if conn is not None and conn.open:
            return conn.idle(seconds, wake)
        if conn is not None and conn.superseded:  # another holder of our key: no tug of war
            return wake.wait(min(seconds, self.superseded_wait))
        if conn is not None and (conn.driver is not None or conn.pending or conn.refused):
            return True  # the session or its link ended since the round: a round now
        if math.isinf(seconds):
            return True
        return wake.wait(seconds)

    def next_probe(self) -> float | None:
        return self.breakers.next_probe()

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def run_sync(data: Path, hubs: list[str], *, once: bool = False, timeout: float = 120.0,
             interval: float = 10.0, baud: int | None = None, link_interval: float = 1.0,
             keepalive: float = KEEPALIVE, poll: float = 0.0,
             report: Callable[[Summary], None] | None = None,
             warn: Callable[[str], None] | None = None) -> Summary:
    """``haven-kiosk sync``: rounds until interrupted, or with ``once`` until one round
    leaves everything acknowledged both ways (its summary is returned) or ``timeout``
    runs out (``SyncGaveUp``). ``report`` gets each round's summary, ``warn`` what the
    URLs that failed said. Raises ``SyncRefused`` when the hub turns this kiosk away."""
    ident = load(data)
    state = SyncState(data, clock=lambda: time.monotonic())
    offset = state.clock_offset
    store = Store(data, clock=lambda: wall_ms() + offset)
    docs = DocumentStore(store.data, store.cipher)
    loop = SyncLoop(store, state, ident, hubs, baud=baud, keepalive=keepalive,
                    interval=interval, poll=poll, docs=docs, clock=lambda: time.monotonic())
    links = link_monitor_for(hubs, link_interval, clock=lambda: time.monotonic())
    if links is not None:
        links.poll()  # how the links are before the first round
    give_up = time.monotonic() + timeout
    wake = Wake()  # nothing sets it: the hub's messages end a wait here

    def limit() -> float:
        return min(give_up - time.monotonic(), ROUND_LIMIT) if once else ROUND_LIMIT

    try:
        while True:
            out = loop.round(limit)
            if out.failures and warn is not None:
                warn("; ".join(out.failures))
            if out.summary is not None:
                if report is not None:
                    report(out.summary)
                if once:
                    return out.summary
            wait = out.wait
            if once:
                wait = min(wait, give_up - time.monotonic())
                if wait <= 0:
                    raise SyncGaveUp("gave up: not everything was acknowledged")
            _pause(loop, wait, links, wake)
    finally:
        loop.close()
        docs.close()
        store.close()
        state.close()
        wake.close()


def _pause(loop: SyncLoop, seconds: float, links: LinkMonitor | None, wake: Wake) -> None:
    """Wait ``seconds``, servicing the kept-open session; ends early when the hub speaks
    or the session ends (``SyncLoop.idle``), or a link returns (``links``)."""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        step = left if links is None else min(left, links.interval)
        if loop.conn is not None and loop.conn.open:
            if loop.idle(step, wake):
                return
        elif math.isinf(step):
            return  # no session to wait on: a round opens one
        else:
            time.sleep(step)
        if links is not None and (back := links.poll()):
            for url in back:
                loop.link_returned(url)
            return
