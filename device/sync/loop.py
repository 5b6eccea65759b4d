"""The loop of sync rounds that ``haven-kiosk sync`` and the runtime share.

Theory of operation
-------------------
``SyncLoop`` holds what lives from one round to the next: each hub URL's
circuit breaker (``circuit``), the kept-open sessions (``connection``;
``keepalive`` 0: a new link and session every round; serial lines keep a
new session per round) and how many rounds in a row no URL worked.
``round(limit)`` runs one round over the first URL that works
(``engine.sync_first``) and says how long to wait before the next: the
interval after a round that worked, else the backoff with jitter, never
longer than until a resting URL may be probed (``engine.retry_wait``).
``idle(seconds, wake)`` is that wait, servicing the open session and ending
at once when ``wake`` is set. A link that comes back (``link_returned``)
lets its breaker probe at once. ``SyncRefused`` passes through: retrying
will not help.

``run_sync`` is ``haven-kiosk sync``'s loop on top of it: it returns the
summary of the round that synced (``once``) or runs until interrupted, and
raises ``SyncRefused`` or ``SyncGaveUp``; the CLI prints and picks the exit
status. The runtime (``device.runtime``) drives the same ``SyncLoop`` from
its sync thread.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from device.enrol import Identity, load
from device.store import Store, StoreError
from device.sync.circuit import hub_breakers
from device.sync.connection import KEEPALIVE, HubConnections
from device.sync.document_store import DocumentStore
from device.sync.engine import (
    BACKOFF_CAP,
    Summary,
    SyncFailed,
    retry_wait,
    run_round,
    sync_first,
)
from device.sync.link_monitor import link_monitor_for
from device.sync.state import SyncState
from protocol.driver.wall_clock import wall_ms

ROUND_LIMIT = 60.0


class SyncGaveUp(SyncFailed, TimeoutError):
    """``once``: the time ran out before everything was acknowledged."""


@dataclass
class Outcome:
    summary: Summary | None  #: the round that worked, or None
    failures: list[str]  #: what each URL that failed said
    wait: float  #: seconds until the next round


class SyncLoop:
    def __init__(self, store: Store, state: SyncState, ident: Identity, urls: list[str], *,
                 baud: int | None = None, keepalive: float = KEEPALIVE,
                 interval: float = 10.0, retry_cap: float = BACKOFF_CAP,
                 docs: DocumentStore | None = None,
                 failed: tuple[type[BaseException], ...] = (SyncFailed, StoreError, ValueError),
                 clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None) -> None:
        self.store, self.state, self.ident, self.docs = store, state, ident, docs
        self.baud, self.interval, self.retry_cap, self.failed = baud, interval, retry_cap, failed
        self.rng = rng or random.Random()
        self.breakers = hub_breakers(urls, retry_cap, clock=clock, rng=self.rng)
        self.conns = (HubConnections(ident, baud=baud, keepalive=keepalive, clock=clock)
                      if keepalive > 0 else None)
        self.attempt = 0  #: rounds in a row in which a URL was tried and none worked

    def round(self, limit: Callable[[], float]) -> Outcome:
        """One round; raises ``SyncRefused``."""
        summary, failures = sync_first(self.store, self.state, self.ident, self.breakers,
                                       baud=self.baud, limit=limit, failed=self.failed,
                                       docs=self.docs,
                                       run=None if self.conns is None else self._round)
        if summary is not None:
            self.attempt = 0
            return Outcome(summary, failures, self.interval)
        self.attempt += bool(failures)
        return Outcome(None, failures, retry_wait(self.attempt, self.breakers, self.rng,
                                                  cap=self.retry_cap))

    def _round(self, url: str, limit: float) -> Summary:
        """A round on ``url``'s kept-open session over TCP; a serial line keeps a new
        session per round, as before (a port whose device node went away stays open
        underneath a kept session, and the hub's serial loop restarts its own)."""
        assert self.conns is not None
        if not url.startswith("tcp://"):
            self.conns.close()
            return run_round(self.store, self.state, self.ident, url, baud=self.baud,
                             limit=limit, docs=self.docs)
        return self.conns.round(url, self.store, self.state, limit=limit, docs=self.docs)

    def link_returned(self, url: str) -> None:
        self.breakers[url].allow_probe()

    def idle(self, seconds: float, wake: threading.Event) -> bool:
        """Wait ``seconds`` or until ``wake`` is set (True), servicing an open session."""
        if self.conns is not None:
            return self.conns.idle(seconds, wake)
        return wake.wait(seconds)

    def next_probe(self) -> float | None:
        return self.breakers.next_probe()

    def close(self) -> None:
        if self.conns is not None:
            self.conns.close()


def run_sync(data: Path, hubs: list[str], *, once: bool = False, timeout: float = 120.0,
             interval: float = 10.0, baud: int | None = None, link_interval: float = 1.0,
             keepalive: float = KEEPALIVE, report: Callable[[Summary], None] | None = None,
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
                    interval=interval, docs=docs, clock=lambda: time.monotonic())
    links = link_monitor_for(hubs, link_interval, clock=lambda: time.monotonic())
    if links is not None:
        links.poll()  # how the links are before the first round
    give_up = time.monotonic() + timeout

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
            if links is not None:
                for url in links.pause(wait, lambda s: _pause(loop, s)):
                    loop.link_returned(url)
            else:
                _pause(loop, wait)
    finally:
        loop.close()
        docs.close()
        store.close()
        state.close()


def _pause(loop: SyncLoop, seconds: float) -> None:
    """Sleep, servicing the kept-open session if one is open."""
    if loop.conns is not None and loop.conns.open:
        loop.idle(seconds, threading.Event())
    else:
        time.sleep(seconds)
