"""Crash torture: kills aimed at the writes and fsyncs of the commit, and at random.

A child process checks patients in and prints each one only after its
commit. ``strace``'s fault injection kills it exactly when it enters its
N-th ``fdatasync`` (a commit whose fsync never ran) or its N-th ``pwrite64``
(a commit torn half-way through the WAL). Afterwards, every check-in it
printed is present exactly once, with its outbox entry, and SQLite's
integrity check passes.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from device.store import Store, init_store

ROOT = Path(__file__).resolve().parent.parent
STRACE = shutil.which("strace")
LONG = os.environ.get("HAVEN_LONG") == "1"


def child(data: Path, count: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "tests.crash_child", str(data), str(count), *extra]


def check_store(data: Path, printed: list[str]) -> None:
    conn = sqlite3.connect(data / "store.db")
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    with Store(data) as store:
        dump = store.dump().decode()
        numbers = []
        for line in printed:
            _, rid, number = line.split()
            assert dump.count(f'"id":"{rid}"') == 1
            numbers.append(number)
            n = store.reader.execute("SELECT COUNT(*) FROM outbox WHERE rid = ?",
                                     [uuid.UUID(rid).bytes]).fetchone()[0]
            assert n == 1
        assert len(set(numbers)) == len(numbers)
        # The store still works after the crash.
        store.checkin(name="After", now_ms=1_790_000_100_000)


def fresh(tmp_path: Path, name: str) -> Path:
    data = tmp_path / name
    init_store(data, "Crash Site", "C").close()
    return data


@pytest.mark.usefixtures("strace")
@pytest.mark.parametrize("syscall,when", [
    ("fdatasync", 1), ("fdatasync", 4), ("fdatasync", 9),
    ("pwrite64", 3), ("pwrite64", 20), ("pwrite64", 41),
])
def test_kill_at_fsync_and_write_points(tmp_path: Path, syscall: str, when: int) -> None:
    _kill_at(tmp_path, syscall, when)


@pytest.mark.long
@pytest.mark.usefixtures("strace")
def test_kill_at_many_points(tmp_path: Path) -> None:
    rng = random.Random(4)
    for k in range(60):
        syscall = rng.choice(["fdatasync", "pwrite64"])
        _kill_at(tmp_path / str(k), syscall, rng.randint(1, 80), must_land=False)


def _kill_at(tmp_path: Path, syscall: str, when: int, must_land: bool = True) -> None:
    data = fresh(tmp_path, "k")
    cmd = [STRACE or "strace", "-f", "-o", os.devnull, "-e", f"trace={syscall}",
           "-e", f"inject={syscall}:signal=KILL:when={when}", *child(data, 30)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    printed = [line for line in proc.stdout.splitlines() if line.startswith("done ")]
    assert len(printed) < 30 or not must_land, "the kill did not land"
    check_store(data, printed)


def test_kill_at_random_instants(tmp_path: Path) -> None:
    rng = random.Random(11)
    for k in range(3 if not LONG else 30):
        data = fresh(tmp_path, f"r{k}")
        proc = subprocess.Popen(child(data, 200), cwd=ROOT, stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        printed = []
        target = rng.randint(1, 40)
        for line in proc.stdout:  # bounded: the child stops after 200 check-ins
            printed.append(line.strip())
            if len(printed) >= target:
                break
        proc.send_signal(signal.SIGKILL)
        rest, _ = proc.communicate(timeout=60)
        printed += [line for line in rest.splitlines() if line.startswith("done ")]
        time.sleep(0)
        check_store(data, printed)
