"""The primary dies under load; pg_auto_failover promotes the standby; nothing acknowledged is lost.

First with a plain writer: it commits numbered rows through the multi-host URL
and records each number whose commit returned. Then with the hub: real kiosks,
run as their runtime runs them (a check-in wakes the sync loop, which keeps its
session open, its breakers and its backoff), sync to a hub whose store is on the
multi-host URL. Each time the primary (its keeper and its postmaster) is
SIGKILLed mid-load and nobody tells the standby: the monitor promotes it. What
was acknowledged must be on the new primary, and the load must carry on by
itself. Lastly the old primary comes back: as a standby, taking no write.

Only in ``./tools/test --long``: a formation takes seconds to build and the
monitor's clocks make each failover last several more. The seconds measured
are printed (``-s``), not asserted.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest

from device.store.store import DB_NAME
from device.sync.engine import SyncFailed
from device.sync.loop import ROUND_LIMIT, SyncLoop
from device.sync.wake import Wake
from host.hub.hub import Hub, init_hub
from host.hub.serve import Server
from protocol.crdt.delta import decode
from protocol.crdt.schema import type_by_name
from tests.conftest import require
from tests.failover_cluster import DBNAME, Formation, failover_available, start_formation
from tests.postgres_cluster import server_root
from tests.test_sync_helpers import Kiosk

pytestmark = pytest.mark.long

ROWS_BEFORE_KILL = 200
ROWS_AFTER_PROMOTION = 200
WRITER_TIMEOUT = 120.0


@pytest.fixture
def formation() -> Iterator[Formation]:
    reason = failover_available()
    require(reason is None, "pg_auto_failover", f"needs pg_auto_failover: {reason}")
    with server_root("haven-failover-") as root, start_formation(root) as f:
        yield f


@dataclass
class Writer:
    """Commits row after row through ``url``; keeps the numbers acknowledged, and when."""

    url: str
    acked: list[tuple[int, float]] = field(default_factory=list)
    failed: list[float] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None

    def run(self) -> None:
        deadline = time.monotonic() + WRITER_TIMEOUT
        n = 0
        try:
            while not self.stop.is_set() and time.monotonic() < deadline:
                try:
                    with psycopg.connect(self.url, autocommit=True) as conn:
                        while not self.stop.is_set() and time.monotonic() < deadline:
                            n += 1
                            conn.execute("INSERT INTO acked (n) VALUES (%s)", (n,))
                            self.acked.append((n, time.monotonic()))
                except psycopg.OperationalError:
                    # The commit of n may or may not have landed: it was not acknowledged.
                    self.failed.append(time.monotonic())
                    time.sleep(0.05)
        except BaseException as e:  # surfaced by the test, not lost in the thread
            self.error = e

    def count_after(self, t: float) -> int:
        return sum(1 for _, at in self.acked if at > t)

    def resumed_after(self, t: float) -> float | None:
        """When the first commit after the first failure past ``t`` was acknowledged.

        (A commit in flight at the kill can still be acknowledged by the old primary.)"""
        failed = next((at for at in self.failed if at > t), None)
        if failed is None:
            return None
        return next((at for _, at in self.acked if at > failed), None)


def wait_for(what: str, ok: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ok():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what}: not within {timeout:.0f} s")


def test_acknowledged_rows_survive_the_primary_dying(formation: Formation) -> None:
    primary = formation.node_in("primary")
    assert primary is not None
    # Synchronous: the monitor made the standby a quorum member, commits wait for it.
    assert formation.synchronous_standby_names(primary).startswith("ANY 1 (")
    with psycopg.connect(primary.url(DBNAME), autocommit=True) as conn:
        conn.execute("CREATE TABLE acked (n BIGINT PRIMARY KEY)")

    writer = Writer(formation.url)
    thread = threading.Thread(target=writer.run, daemon=True)
    thread.start()
    try:
        wait_for("rows before the kill", lambda: len(writer.acked) >= ROWS_BEFORE_KILL
                 or writer.error is not None, 60.0)
        with psycopg.connect(primary.url(DBNAME)) as conn:
            sync = conn.execute("SELECT sync_state FROM pg_stat_replication").fetchall()
        assert sync == [("quorum",)]
        killed_at = time.monotonic()
        assert formation.kill_primary() is primary
        promoted = formation.wait_for_promotion(primary)
        promoted_at = time.monotonic()
        wait_for("rows after the promotion",
                 lambda: writer.count_after(promoted_at) >= ROWS_AFTER_PROMOTION
                 or writer.error is not None, 60.0)
    finally:
        writer.stop.set()
        thread.join(timeout=30.0)
    assert writer.error is None, writer.error
    resumed = writer.resumed_after(killed_at)
    assert resumed is not None

    with psycopg.connect(promoted.url(DBNAME)) as conn:
        present = {n for (n,) in conn.execute("SELECT n FROM acked")}
    acknowledged = {n for n, _ in writer.acked}
    assert acknowledged - present == set(), "acknowledged rows lost in the failover"
    print(f"\nfailover: kill to promotion {promoted_at - killed_at:.2f} s, kill to first "
          f"acknowledged write {resumed - killed_at:.2f} s; {len(acknowledged)} rows "
          f"acknowledged, {len(writer.failed)} failed attempts while no primary took writes")


def test_the_old_primary_rejoins_as_a_standby_and_takes_no_write(formation: Formation) -> None:
    old = formation.node_in("primary")
    assert old is not None
    with psycopg.connect(old.url(DBNAME), autocommit=True) as conn:
        conn.execute("CREATE TABLE acked (n BIGINT PRIMARY KEY)")
        conn.execute("INSERT INTO acked VALUES (1)")
    formation.kill_primary()
    new = formation.wait_for_promotion(old)
    with psycopg.connect(new.url(DBNAME), autocommit=True) as conn:
        conn.execute("INSERT INTO acked VALUES (2)")

    # The old primary's keeper starts again, with its data as it was at the kill. While
    # it rejoins, writes aimed at it alone (no target_session_attrs) must all fail.
    formation.start_node(old)
    taken: list[int] = []
    read_only = 0
    deadline = time.monotonic() + 120.0
    n = 1000
    while time.monotonic() < deadline:
        n += 1
        try:
            with psycopg.connect(old.url(DBNAME), autocommit=True, connect_timeout=2) as conn:
                conn.execute("INSERT INTO acked VALUES (%s)", (n,))
                taken.append(n)
        except psycopg.errors.ReadOnlySqlTransaction:
            read_only += 1
        except psycopg.OperationalError:
            pass
        if formation.states().get(old.name) == ("secondary", "secondary"):
            break
        time.sleep(0.05)
    formation.wait_for_states({old.name: "secondary", new.name: "primary"}, 60.0)
    assert taken == [], "the old primary took writes after the failover (split brain)"
    print(f"\nrejoin: {n - 1000} writes aimed at the old primary, {read_only} refused by it "
          "as read-only, the rest found no server")
    with psycopg.connect(old.url(DBNAME)) as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
        wait_for("the new primary's row on the old one", lambda: conn.execute(
            "SELECT count(*) FROM acked WHERE n = 2").fetchone() == (1,), 30.0)


# The hub on the formation: real kiosks through the failover -------------------------------

KIOSKS = 3
CHECKIN_EVERY = 0.3  #: seconds between two check-ins at a kiosk's desk
ROUNDS_BEFORE_KILL = 3  #: rounds that pushed, at every kiosk, before the primary dies
RESUME_WAIT = 120.0  #: the bound on waiting for every kiosk to push again (the goal: 30 s)
#: What the kiosk's runtime counts as a failed round (device.runtime), not a crash.
RUNTIME_FAILED = (SyncFailed, ValueError, OSError, RuntimeError)


@dataclass
class Round:
    start: float
    end: float
    pushed: int


class Desk:
    """A kiosk as its runtime drives it: the desk writes a check-in every
    ``CHECKIN_EVERY`` s and wakes the sync thread, which runs the shared ``SyncLoop``
    and waits between rounds on its kept-open session."""

    def __init__(self, kiosk: Kiosk, url: str) -> None:
        self.kiosk = kiosk
        self.loop = SyncLoop(kiosk.store, kiosk.state, kiosk.ident, [url],
                             failed=RUNTIME_FAILED)
        self.wake = Wake()
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
        except BaseException as e:  # surfaced by the test, not lost in the thread
            self.error = e

    def _desk(self) -> None:
        deadline = time.monotonic() + WRITER_TIMEOUT
        while self.writing.is_set() and time.monotonic() < deadline:
            rid = self.kiosk.store.put("checkin", values={"status": "arrived",
                                                          "location": "North"})
            self.written.append(bytes.fromhex(rid.replace("-", "")))
            self.wake.set()
            time.sleep(CHECKIN_EVERY)

    def _sync(self) -> None:
        deadline = time.monotonic() + WRITER_TIMEOUT
        while self.syncing.is_set() and time.monotonic() < deadline:
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


def test_kiosks_sync_through_the_failover_and_lose_no_acknowledged_check_in(
        formation: Formation, tmp_path: Path) -> None:
    init_hub(tmp_path / "hub", database=formation.url)
    hub = Hub(tmp_path / "hub")
    server = Server(hub, 5 * 60 * 1000)
    desks: list[Desk] = []
    try:
        host, port = server.listen("tcp://127.0.0.1:0")
        kiosks = [Kiosk(tmp_path, f"k{i}", hub, "ABC"[i]) for i in range(KIOSKS)]
        desks = [Desk(k, f"tcp://{host}:{port}") for k in kiosks]
        for d in desks:
            d.start()
        wait_for("kiosks syncing", lambda: all(d.pushed_rounds() >= ROUNDS_BEFORE_KILL
                                               or d.error for d in desks), 60.0)
        before = set().union(*(d.acknowledged() for d in desks))
        killed_at = time.monotonic()
        old = formation.kill_primary()
        new = formation.wait_for_promotion(old)
        promoted_at = time.monotonic()
        with psycopg.connect(new.url(DBNAME)) as conn:
            on_new = {bytes(r) for (r,) in conn.execute("SELECT DISTINCT rid FROM ops")}
        assert before and before - on_new == set(), "check-ins acknowledged before the kill lost"
        wait_for("every kiosk pushing again", lambda: all(
            d.first_push_after(promoted_at) is not None or d.error for d in desks), RESUME_WAIT)
        for d in desks:
            d.writing.clear()
        wait_for("every outbox empty", lambda: all(d.outbox_empty() or d.error for d in desks),
                 60.0)
    finally:
        for d in desks:
            d.stop()
        server.shutdown()
    try:
        assert [d.error for d in desks if d.error] == []
        resumed = [t for d in desks if (t := d.first_push_after(promoted_at)) is not None]
        assert len(resumed) == len(desks)
        on_hub = checkins_on_hub(hub)
        written = [c for d in desks for c in d.written]
        assert {c: on_hub.get(c) for c in written} == dict.fromkeys(written, 1)
        first, last = min(resumed) - promoted_at, max(resumed) - promoted_at
        print(f"\nfailover under {KIOSKS} kiosks: kill to promotion "
              f"{promoted_at - killed_at:.2f} s; promotion to the first kiosk's commit "
              f"{first:.2f} s, to the last kiosk's {last:.2f} s (goal: within 30 s); "
              f"{len(written)} check-ins, each once on the hub; "
              f"{sum(len(d.failed) for d in desks)} failed rounds")
    finally:
        hub.close()
        for d in desks:
            d.kiosk.close()
