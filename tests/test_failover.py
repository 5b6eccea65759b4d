"""The primary dies under load; pg_auto_failover promotes the standby; nothing acknowledged is lost.

- A plain writer commits numbered rows through the multi-host URL and records
  each number whose commit returned; the primary (its keeper and its
  postmaster) is SIGKILLed mid-load and nobody tells the standby: the monitor
  promotes it, and every acknowledged number is on it.
- The old primary comes back: as a standby, taking no write.
- The standby dies instead: the primary goes on committing alone, and waits
  for the standby again once it is back.
- Real kiosks, run as their runtime runs them (``tests/failover_kiosks.py``),
  sync to a hub whose store is on the multi-host URL while the primary is
  killed: what was acknowledged is on the new primary, every kiosk pushes
  again, and each check-in is on the hub once.

Only in ``./tools/test --long``: a formation takes seconds to build and the
monitor's clocks make each failover last several more. The seconds measured
are printed (``-s``), not asserted.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest

from host.hub.hub import Hub, init_hub
from host.hub.serve import Server
from tests.conftest import require
from tests.failover_cluster import DBNAME, Formation, failover_available, start_formation
from tests.failover_kiosks import checkins_on_hub, through_failover, wait_for
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


def test_acknowledged_rows_survive_the_primary_dying(formation: Formation) -> None:
    primary = formation.node_in("primary")
    assert primary is not None
    # Synchronous: the monitor made the standby a quorum member, commits wait for it.
    assert formation.setting(primary, "synchronous_standby_names").startswith("ANY 1 (")
    assert formation.setting(primary, "synchronous_commit") == "on"
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


def test_the_primary_keeps_committing_while_its_standby_is_down(formation: Formation) -> None:
    """A primary waiting for its only synchronous standby would stop committing: the
    monitor moves it to wait_primary and clears the standby list. The standby, back,
    catches up and commits wait for it again."""
    primary, standby = formation.node_in("primary"), formation.node_in("secondary")
    assert primary is not None and standby is not None
    with psycopg.connect(primary.url(DBNAME), autocommit=True) as conn:
        conn.execute("CREATE TABLE acked (n BIGINT PRIMARY KEY)")
        formation.kill(standby)
        # This commit waits for the standby until the monitor gives up on it: bounded.
        conn.execute("SET statement_timeout = '120s'")
        started = time.monotonic()
        conn.execute("INSERT INTO acked VALUES (1)")
        waited = time.monotonic() - started
    formation.wait_for_states({primary.name: "wait_primary"}, 60.0)
    assert formation.setting(primary, "synchronous_standby_names") == ""
    with psycopg.connect(primary.url(DBNAME), autocommit=True) as conn:
        conn.execute("INSERT INTO acked VALUES (2)")  # alone, at once

    formation.start_node(standby)
    formation.wait_for_states({primary.name: "primary", standby.name: "secondary"}, 120.0)
    assert formation.setting(primary, "synchronous_standby_names").startswith("ANY 1 (")
    with psycopg.connect(standby.url(DBNAME)) as conn:
        wait_for("the rows on the standby", lambda: conn.execute(
            "SELECT count(*) FROM acked").fetchone() == (2,), 30.0)
    print(f"\nstandby lost: the commit that waited for it returned after {waited:.2f} s")


# The hub on the formation: real kiosks through the failover -------------------------------

KIOSKS = 3
RESUME_WAIT = 120.0  #: the bound on waiting for every kiosk to push again (the goal: 30 s)


def test_kiosks_sync_through_the_failover_and_lose_no_acknowledged_check_in(
        formation: Formation, tmp_path: Path) -> None:
    init_hub(tmp_path / "hub", database=formation.url)
    hub = Hub(tmp_path / "hub")
    server = Server(hub, 5 * 60 * 1000)
    kiosks: list[Kiosk] = []
    try:
        host, port = server.listen("tcp://127.0.0.1:0")
        kiosks = [Kiosk(tmp_path, f"k{i}", hub, "ABC"[i]) for i in range(KIOSKS)]
        run = through_failover(formation, kiosks, f"tcp://{host}:{port}",
                               resume_wait=RESUME_WAIT, limit=WRITER_TIMEOUT)
        assert run.errors == []
        assert run.before and run.lost == set(), "check-ins acknowledged before the kill lost"
        assert len(run.resumed()) == KIOSKS
        on_hub = checkins_on_hub(hub)
        written = run.written()
        assert {c: on_hub.get(c) for c in written} == dict.fromkeys(written, 1)
        f = run.figures()
        print(f"\nfailover under {KIOSKS} kiosks: kill to promotion {f['kill_to_promotion_s']} s;"
              f" promotion to the first kiosk's commit {f['promotion_to_first_commit_s']} s, "
              f"to the last kiosk's {f['promotion_to_last_commit_s']} s (goal: within 30 s); "
              f"{f['checkins']} check-ins, each once on the hub; {f['failed_rounds']} failed "
              "rounds")
    finally:
        server.shutdown()
        hub.close()
        for k in kiosks:
            k.close()
