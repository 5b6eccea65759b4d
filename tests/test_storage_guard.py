"""The storage guard, and a kiosk whose data disk really fills up.

The full-disk tests mount a small tmpfs (we run as root) and put ``--data``
on it: check-ins through the store's API and through the page until the
disk is full, a clear error, nothing confirmed lost, and check-ins again
once space is freed.
"""

from __future__ import annotations

import asyncio
import errno
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from device import config as kconfig
from device.cli import main
from device.health.storage_guard import (
    MIB,
    StorageGuard,
    StorageLimits,
    space_of,
    truncate_wal_file,
)
from device.store import StorageFull, Store, init_store
from device.store.db import connect
from device.ui.app import KioskApp
from device.ui.http import HttpError
from device.ui.live import LiveStatus
from protocol.driver.database import immediate
from tests.conftest import small_disk

from .test_hw import wait_until
from .test_runtime import call
from .test_ui_helpers import ROOT, free_port, make_kiosk, run_kiosk

BOUND = 20.0
LIMITS = StorageLimits(low_mib=10, critical_mib=2)


class Disk:
    """``os.statvfs`` of a disk whose free space the test sets."""

    def __init__(self, free_mib: float, total_mib: float = 100) -> None:
        self.free, self.total = free_mib, total_mib

    def __call__(self, path: Path) -> Any:
        return SimpleNamespace(f_bavail=int(self.free * MIB), f_frsize=1,
                               f_blocks=int(self.total * MIB))


def guard(disk: Disk, limits: StorageLimits = LIMITS) -> tuple[StorageGuard, list[str]]:
    g = StorageGuard(Path("/nowhere"), limits, statvfs=disk)
    ran: list[str] = []
    g.add_reclaimer(lambda: ran.append("reclaim"))
    g.when_changed = lambda level: ran.append(f"level {level}")
    return g, ran


def test_retention_runs_once_per_crossing_into_low() -> None:
    disk = Disk(50)
    g, ran = guard(disk)
    steps = [  # (free MiB, level after, what ran so far)
        (50, "ok", []),
        (9, "low", ["reclaim", "level 1"]),
        (8, "low", ["reclaim", "level 1"]),
        (10.5, "low", ["reclaim", "level 1"]),  # back over 10 MiB, not by 10 %: stays
        (12, "ok", ["reclaim", "level 1", "level 0"]),
        (1, "critical", ["reclaim", "level 1", "level 0", "reclaim", "level 2"]),
        (2.1, "critical", ["reclaim", "level 1", "level 0", "reclaim", "level 2"]),
        (3, "low", ["reclaim", "level 1", "level 0", "reclaim", "level 2", "level 1"]),
    ]
    for free, level, so_far in steps:
        disk.free = free
        g.check()
        assert (g.status()["level"], ran) == (level, so_far), free
    assert g.status() == {"level": "low", "free_mib": 3.0, "total_mib": 100.0,
                          "low_mib": 10, "critical_mib": 2}


def test_check_ins_refused_under_critical_only() -> None:
    disk = Disk(2.5)
    g, _ = guard(disk)
    g.admit()  # low is not critical: check-ins go on
    disk.free = 1.5
    with pytest.raises(StorageFull, match=r"only 1\.50 MiB free .* new check-ins are refused"):
        g.admit()
    with pytest.raises(OSError):  # also the matching built-in
        g.admit()
    disk.free = 2.5
    g.admit()  # read afresh at each check-in, no waiting for the next look
    off, _ = guard(Disk(0), StorageLimits(low_mib=0, critical_mib=0))
    off.admit()
    off.check()
    assert off.status()["level"] == "ok"


def test_config_thresholds(tmp_path: Path) -> None:
    f = tmp_path / "kiosk.toml"
    f.write_text('data = "/srv/k"\nstorage_low_mib = 64\nstorage_critical_mib = 0\n')
    assert kconfig.storage_limits(kconfig.load(f, {})) == StorageLimits(64, 0)
    f.write_text('data = "/srv/k"\nstorage_critical_mib = -1\n')
    with pytest.raises(kconfig.ConfigError, match="storage_critical_mib must be 0"):
        kconfig.load(f, {})


def wal_size(path: Path) -> int:
    wal = path.with_name(path.name + "-wal")
    return wal.stat().st_size if wal.exists() else 0


def test_truncating_the_wals_keeps_every_record(tmp_path: Path) -> None:
    with init_store(tmp_path / "k", "North", "B") as store:
        for i in range(20):
            store.checkin(name="Wal Trunc", passport=f"WT{i:06d}", birth_year=1970)
        before = store.dump()
        assert wal_size(store.path) > 0
        store.truncate_wal()
        assert wal_size(store.path) == 0
        assert store.dump() == before
    other = tmp_path / "other.db"
    conn = sqlite3.connect(other)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE t (x)")
    conn.executemany("INSERT INTO t VALUES (?)", [(os.urandom(500),) for _ in range(100)])
    conn.commit()
    assert wal_size(other) > 0
    truncate_wal_file(other)
    assert wal_size(other) == 0
    assert conn.execute("SELECT COUNT(*) FROM t").fetchone() == (100,)
    conn.close()
    truncate_wal_file(tmp_path / "absent.db")  # nothing to do, and nothing created
    assert not (tmp_path / "absent.db").exists()


# A real disk that fills up ------------------------------------------------------------------


def fill(disk: Path, leave_mib: float = 0.0) -> Path:
    """Write a filler file until about ``leave_mib`` is free (none: until ENOSPC)."""
    path = disk / "filler"
    with open(path, "ab", buffering=0) as f:
        for chunk in (64 * 1024, 4096):
            try:
                while space_of(disk).free - chunk >= leave_mib * MIB:
                    f.write(b"\xa5" * chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
    return path


def test_a_transaction_that_spills_onto_a_full_disk_fails_clearly(tmp_path: Path) -> None:
    """A statement (not only the commit) can find the disk full, and SQLite may roll the
    transaction back itself: ``immediate`` must raise SQLITE_FULL, not "cannot rollback"."""
    with small_disk(tmp_path / "disk", "1m") as disk:
        db = connect(disk / "x.db")
        try:
            db.execute("PRAGMA cache_size = 10")  # spill to the WAL mid-transaction
            db.execute("CREATE TABLE t (x)")
            fill(disk)
            with pytest.raises(sqlite3.OperationalError) as failed, immediate(db):
                for _ in range(1000):
                    db.execute("INSERT INTO t VALUES (?)", [os.urandom(3000)])
            assert failed.value.sqlite_errorcode == sqlite3.SQLITE_FULL
            assert not db.conn.in_transaction
            (disk / "filler").unlink()
            with immediate(db):  # the connection goes on
                db.execute("INSERT INTO t VALUES (1)")
            assert db.execute("SELECT COUNT(*) FROM t").fetchone() == (1,)
        finally:
            db.conn.close()


def person(i: int) -> dict[str, Any]:
    return {"name": "Full Disk", "passport": f"FD{i:06d}", "birth_year": 1980,
            "reason": "sick"}


def intact(data: Path, numbers: list[str]) -> None:
    """Reopened: every confirmed check-in is there, and SQLite finds nothing wrong."""
    with Store(data) as store:
        assert store.reader.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        dump = store.dump().decode()
    for number in numbers:
        assert f'"{number}"' in dump, number


def test_full_disk_store_and_page_refuse_clearly_and_lose_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "kiosk.toml"
    cfg.write_text("storage_low_mib = 1\nstorage_critical_mib = 0.5\n")
    with small_disk(tmp_path / "disk") as disk:
        data = disk / "k"
        store = init_store(data, "North", "B")
        try:
            numbers = [store.checkin(**person(i)).queue_number for i in range(3)]
            assert main(["status", "--data", str(data), "--config", str(cfg)]) == 0
            assert "WARNING" not in capsys.readouterr().out
            filler = fill(disk)
            assert main(["status", "--data", str(data), "--config", str(cfg)]) == 0
            out = capsys.readouterr().out
            assert re.search(r"storage: 0\.00 MiB free of 4\.00 MiB\n  CRITICAL: under 0\.5 "
                             r"MiB: new check-ins are refused", out), out
            # the guard refuses before the store is touched ...
            refusing = StorageGuard(data, StorageLimits(low_mib=1, critical_mib=0.5))
            app = KioskApp(store, LiveStatus(), admit_checkin=refusing.admit)
            body = {"name": "Page Full", "year": "1981", "reason": "sick", "consent": True}
            with pytest.raises(HttpError) as refused:
                asyncio.run(app.checkin(body))
            assert (refused.value.status, refused.value.code) == (507, "storage-full")
            # ... and without it the store writes until SQLite finds no room
            error = None
            for i in range(3, 500):
                try:
                    numbers.append(store.checkin(**person(i)).queue_number)
                except StorageFull as exc:
                    error = exc
                    break
            assert error is not None and error.code == "storage-full"
            assert f"the disk holding {data} is full: this write was not saved" in str(error)
            with pytest.raises(StorageFull):  # again: the same clear error, nothing wedged
                store.checkin(**person(999))
            with pytest.raises(HttpError) as full:  # the page, without a guard
                asyncio.run(KioskApp(store, LiveStatus()).checkin(body))
            assert (full.value.status, full.value.code) == (507, "storage-full")
        finally:
            store.close()
        intact(data, numbers)
        filler.unlink()
        with Store(data) as store:
            after = store.checkin(**person(1000)).queue_number
        assert after == f"B-{len(numbers) + 1:03d}"  # refused check-ins took no number
        intact(data, [*numbers, after])


def test_runtime_on_a_filling_disk(tmp_path: Path) -> None:
    """``haven-kiosk run`` with ``--data`` on a 6 MiB tmpfs, the guard's critical limit
    off: low space clears the WALs, shows on the LED and to the staff; a full disk
    answers ``storage-full`` from SQLite itself; freed space lets check-ins in again."""
    with small_disk(tmp_path / "disk", "6m") as disk:
        _, data = make_kiosk(disk)
        proc, url = run_kiosk(data, f"tcp://127.0.0.1:{free_port()}", idle=60, args=(
            "--storage-low-mib", "1", "--storage-critical-mib", "0",
            "--health-interval", "0.1"))
        try:
            def checkin(i: int) -> tuple[int, dict[str, Any]]:
                status, _, body = call(url, "/api/checkin", {
                    "passport": f"RT{i:06d}", "year": "1975", "name": "Run Time",
                    "reason": "injury", "consent": True})
                return status, body

            def led() -> str:
                return str(call(url, "/api/hw")[2]["led"])

            def storage() -> dict[str, Any]:
                token = call(url, "/api/staff/login", {"pin": "246810"})[2]["token"]
                view = call(url, "/api/staff/overview", headers={"X-Staff-Token": token})[2]
                return dict(view["health"]["storage"])

            numbers = []
            for i in range(5):
                status, body = checkin(i)
                assert status == 200, body
                numbers.append(body["queue_number"])
            assert wait_until(lambda: led() == "offline", BOUND)
            assert storage()["level"] == "ok" and wal_size(data / "store.db") > 0

            filler = fill(disk, leave_mib=0.5)
            proc.wait_for(r"retention freed [\d.]+ MiB")
            assert wal_size(data / "store.db") == 0
            assert wait_until(lambda: led() == "error", BOUND)
            assert storage()["level"] == "low"
            cfg = tmp_path / "kiosk.toml"
            cfg.write_text("storage_low_mib = 1\nstorage_critical_mib = 0\n")
            status_cmd = subprocess.run(
                [sys.executable, "-m", "device.cli", "status", "--data", str(data),
                 "--config", str(cfg)], capture_output=True, text=True, timeout=BOUND, cwd=ROOT)
            assert status_cmd.returncode == 0, status_cmd.stderr
            assert "\n  WARNING: under 1 MiB: free space on this disk" in status_cmd.stdout

            fill(disk)
            for i in range(5, 500):
                status, body = checkin(i)
                if status != 200:
                    break
                numbers.append(body["queue_number"])
            assert (status, body["error"]) == (507, "storage-full")
            # the kiosk logs before it answers, but its log is read by another thread; its
            # stderr names the exception's type, never its message (device.logs.stderr)
            assert wait_until(lambda: any("check-in refused: StorageFull" in line
                                          for line in proc.log), BOUND)

            filler.unlink()
            assert wait_until(lambda: led() == "offline", BOUND)
            assert storage()["level"] == "ok"
            status, body = checkin(1000)
            assert (status, body["queue_number"]) == (200, f"B-{len(numbers) + 1:03d}")
            numbers.append(body["queue_number"])
        finally:
            assert proc.stop() == 0, "".join(proc.log)
        intact(data, numbers)


def test_a_merge_onto_a_full_disk_fails_clearly_and_merges_again(tmp_path: Path) -> None:
    """Deltas from the hub on a full disk: ``StorageFull``; what merged stays merged, and
    the same deltas merge whole once there is room (duplicates are welcome)."""
    source = init_store(tmp_path / "source", "North", "A")
    try:
        for i in range(60):
            source.put("note", values={"text": f"note {i} " + os.urandom(700).hex()})
        deltas = [e.data for e in source.outbox_batch(max_bytes=1 << 20)]
        expected = source.dump()
    finally:
        source.close()
    assert len(deltas) == 60
    with small_disk(tmp_path / "disk", "2m") as disk:
        store = init_store(disk / "k", "North", "B")
        try:
            filler = fill(disk, leave_mib=0.05)
            with pytest.raises(StorageFull) as full:
                store.merge(deltas)
            assert full.value.code == "storage-full"
            filler.unlink()
            report = store.merge(deltas)
            assert report.applied + report.duplicates == len(deltas)
            assert report.quarantined == 0
            assert store.dump() == expected
            assert store.reader.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        finally:
            store.close()
