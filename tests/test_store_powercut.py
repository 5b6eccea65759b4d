"""Power loss: only what was fsynced survives, and every confirmed check-in is in it.

``kill -9`` keeps the page cache, so it says nothing about fsync. Here the
child's system calls are traced, and the disk is rebuilt as it would be
after a power cut right after each line the child printed: a write counts
only if an fsync of its file came after it. The same test run with fsync
turned off (``synchronous=OFF``) loses confirmed check-ins, which shows that
the test can fail.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from device.store import Store, init_store

from .powercut import Replay, restore

ROOT = Path(__file__).resolve().parent.parent
STRACE = shutil.which("strace")
CALLS = "openat,pwrite64,write,ftruncate,fsync,fdatasync,unlink,close"


def traced_run(data: Path, count: int, *extra: str) -> str:
    trace = data.parent / "trace.txt"
    subprocess.run(
        [STRACE or "strace", "-f", "-xx", "-s", "1000000", "-e", f"trace={CALLS}",
         "-o", str(trace), sys.executable, "-m", "tests.crash_child", str(data), str(count),
         *extra],
        cwd=ROOT, check=True, capture_output=True, timeout=120)
    return trace.read_text()


def lost_after_cuts(tmp_path: Path, *extra: str) -> tuple[int, int]:
    data = tmp_path / "kiosk"
    init_store(data, "Power Site", "P").close()
    initial = {p.name: p.read_bytes() for p in data.iterdir()}
    replay = Replay(data.resolve(), initial)
    cuts = replay.run(traced_run(data, 12, *extra))
    assert len(cuts) == 12
    lost = checked = 0
    for i, cut in enumerate(cuts):
        into = tmp_path / f"cut{i}"
        restore(cut, into, {k: v for k, v in initial.items() if k.endswith(".key")})
        with Store(into) as store:
            dump = store.dump().decode()
        for line in cut.printed:
            checked += 1
            lost += f'"id":"{line.split()[1]}"' not in dump
    return lost, checked


@pytest.mark.usefixtures("strace")
def test_power_cut_after_any_confirmation_loses_nothing(tmp_path: Path) -> None:
    lost, checked = lost_after_cuts(tmp_path)
    assert checked == sum(range(1, 13))
    assert lost == 0


@pytest.mark.usefixtures("strace")
def test_without_fsync_the_same_test_fails(tmp_path: Path) -> None:
    lost, checked = lost_after_cuts(tmp_path, "--no-sync")
    assert lost > 0
