"""Kiosks syncing to a hub on a pg_auto_failover formation while its primary is killed.

Theory of operation
-------------------
Each kiosk is driven as its runtime drives it (``device.runtime``): a desk
thread writes a check-in every ``CHECKIN_EVERY`` s and wakes the sync thread,
which runs the shared ``SyncLoop`` (its kept-open session, its breakers and its
backoff) and waits between rounds on the session. Nothing in the kiosk knows
about the failover: it sees a hub that is slow, or a round that fails.

``through_failover`` lets every kiosk push a few rounds, notes the check-ins
acknowledged so far (written, and gone from the outbox: a read of the kiosk's
SQLite file), kills the primary, waits for the standby's promotion, reads the
acknowledged check-ins on the new primary's ``ops`` at once (before a kiosk
could send anything again), then waits until every kiosk has pushed again and
every outbox is empty. The caller counts the check-ins on the hub
(``checkins_on_hub``): each must be there exactly once. The test
(``tests/test_failover.py``) and ``./tools/bench hub-scale`` share it.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any

import psycopg

from device.store.store import DB_NAME
from device.sync.engine import SyncFailed
from device.sync.loop import ROUND_LIMIT, SyncLoop
from device.sync.wake import Wake
from host.hub.hub import Hub
from protocol.crdt.delta import decode
from protocol.crdt.schema import type_by_name
from tests.failover_cluster import DBNAME, Formation
from tests.test_sync_helpers import Kiosk

CHECKIN_EVERY = 0.3  #: seconds between two check-ins at a kiosk's desk
ROUNDS_BEFORE_KILL = 3  #: rounds that pushed, at every kiosk, before the primary dies
#: What the kiosk's runtime counts as a failed round (device.runtime), not a crash.
RUNTIME_FAILED = (SyncFailed, ValueError, OSError, RuntimeError)


@dataclass
class Round:
    start: float
    end: float
    pushed: int


class Desk:
    """One kiosk at work (see above); its threads end by ``limit`` s at the latest."""

    def __init__(self, kiosk: Kiosk, url: str, limit: float) -> None:
        self.kiosk = kiosk
        self.loop = SyncLoop(kiosk.store, kiosk.state, kiosk.ident, [url],
                             failed=RUNTIME_FAILED)
        self.wake = Wake()
        self.deadline = time.monotonic() + limit
        self.writing, self.syncing = threading.Event(), threading.Event()
        self.written: list[bytes] = []
        self.rounds: list[Round] = []
        self.failed: list[float] = []
        self.error: BaseException | None = None
        self.threads = [threading.Thread(target=self._guard, args=(f,), daemon=True)
                        for f in (self._desk, self._sync)]

    def start(self) -> None:
        self.writing.set()
        self.syncing.set()
        for t in self.threads:
            t.start()

    def _guard(self, body: Callable[[], None]) -> None:
        try:
            body()
        except BaseException as e:  # surfaced by the caller, not lost in the thread
            self.error = e

    def _desk(self) -> None:
        while self.writing.is_set() and time.monotonic() < self.deadline:
            rid = self.kiosk.store.put("checkin", values={"status": "arrived",
                                                          "location": "North"})
            self.written.append(bytes.fromhex(rid.replace("-", "")))
            self.wake.set()
            time.sleep(CHECKIN_EVERY)

    def _sync(self) -> None:
        while self.syncing.is_set() and time.monotonic() < self.deadline:
            self.wake.clear()
            start = time.monotonic()
            out = self.loop.round(lambda: ROUND_LIMIT if self.syncing.is_set() else 0.0)
            if out.summary is not None:
                self.rounds.append(Round(start, time.monotonic(), out.summary.pushed))
            elif out.failures:
                self.failed.append(time.monotonic())
            if self.syncing.is_set():
                self.loop.idle(out.wait, self.wake)

    def pushed_rounds(self) -> int:
        return sum(1 for r in self.rounds if r.pushed)

    def first_push_after(self, t: float) -> float | None:
        return next((r.end for r in self.rounds if r.pushed and r.end > t), None)

    def acknowledged(self) -> set[bytes]:
        """The check-ins the hub acknowledged: written, and out of the outbox (a
        real read of the kiosk's SQLite file, after the acknowledged entries left)."""
        written = set(self.written)
        self.kiosk.store.flush_acks()
        path = self.kiosk.store.data / DB_NAME
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10.0)) as db:
            queued = {bytes(r) for (r,) in db.execute("SELECT DISTINCT rid FROM outbox")}
        return written - queued

    def outbox_empty(self) -> bool:
        return not any(self.kiosk.store.status()["outbox"].values())

    def stop(self) -> None:
        self.writing.clear()
        self.syncing.clear()
        self.wake.set()
        for t in self.threads:
            t.join(timeout=ROUND_LIMIT)
        self.loop.close()
        self.wake.close()


def wait_for(what: str, ok: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ok():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what}: not within {timeout:.0f} s")


@dataclass
class FailoverRun:
    """What ``through_failover`` saw; times on ``time.monotonic``."""

    desks: list[Desk]
    killed_at: float = 0.0
    promoted_at: float = 0.0
    before: set[bytes] = field(default_factory=set)  #: acknowledged before the kill
    on_new: set[bytes] = field(default_factory=set)  #: record ids on the new primary then

    @property
    def lost(self) -> set[bytes]:
        """Check-ins acknowledged before the kill and not on the new primary."""
        return self.before - self.on_new

    @property
    def errors(self) -> list[BaseException]:
        return [d.error for d in self.desks if d.error is not None]

    def resumed(self) -> list[float]:
        """Seconds from the promotion to each kiosk's first round that pushed."""
        return [t - self.promoted_at for d in self.desks
                if (t := d.first_push_after(self.promoted_at)) is not None]

    def written(self) -> list[bytes]:
        return [c for d in self.desks for c in d.written]

    def figures(self) -> dict[str, Any]:
        resumed = self.resumed()
        return {"kiosks": len(self.desks), "kill_to_promotion_s":
                round(self.promoted_at - self.killed_at, 2),
                "promotion_to_first_commit_s": round(min(resumed), 2) if resumed else None,
                "promotion_to_last_commit_s": round(max(resumed), 2)
                if len(resumed) == len(self.desks) else None,
                "acknowledged_before_kill": len(self.before), "lost": len(self.lost),
                "checkins": len(self.written()),
                "failed_rounds": sum(len(d.failed) for d in self.desks)}


def through_failover(formation: Formation, kiosks: list[Kiosk], url: str, *,
                     resume_wait: float, limit: float) -> FailoverRun:
    """The kiosks at work against the hub at ``url`` while its primary is killed (see
    above). Stops the desks before it returns; bounded by ``limit`` s."""
    run = FailoverRun([Desk(k, url, limit) for k in kiosks])
    try:
        for d in run.desks:
            d.start()
        wait_for("kiosks syncing", lambda: all(d.pushed_rounds() >= ROUNDS_BEFORE_KILL
                                               or d.error for d in run.desks), 120.0)
        run.before = set().union(*(d.acknowledged() for d in run.desks))
        run.killed_at = time.monotonic()
        old = formation.kill_primary()
        new = formation.wait_for_promotion(old)
        run.promoted_at = time.monotonic()
        with psycopg.connect(new.url(DBNAME)) as conn:
            run.on_new = {bytes(r) for (r,) in conn.execute("SELECT DISTINCT rid FROM ops")}
        wait_for("every kiosk pushing again", lambda: all(
            d.first_push_after(run.promoted_at) is not None or d.error for d in run.desks),
            resume_wait)
        for d in run.desks:
            d.writing.clear()
        wait_for("every outbox empty",
                 lambda: all(d.outbox_empty() or d.error for d in run.desks), 60.0)
    finally:
        for d in run.desks:
            d.stop()
    return run


def checkins_on_hub(hub: Hub) -> dict[bytes, int]:
    """Each check-in record on the hub, with how many writes to it the hub holds."""
    checkin = type_by_name("checkin").number
    counts: dict[bytes, int] = {}
    cursor, more = 0, True
    while more:
        page, cursor, more = hub.store.changes_since(cursor, None, 256 * 1024)
        for raw in page:
            d = decode(raw)
            if d.type == checkin:
                counts[d.record_id] = counts.get(d.record_id, 0) + 1
    return counts
