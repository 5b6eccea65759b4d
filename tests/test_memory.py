"""The memory monitor: levels from injected readings, hysteresis, this process's real /proc,
and a running kiosk that reports a hard limit to its staff."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from device.health import memory
from device.health.memory import MIB, MemoryLimits, MemoryMonitor, Reading
from device.store import init_store

from .test_runtime import call
from .test_ui_helpers import free_port, run_kiosk

LIMITS = MemoryLimits(soft_mib=64, hard_mib=80, available_soft_mib=64, available_hard_mib=32)
PLENTY = 400 * MIB


class Scripted:
    """Readings given by the test, one per ``check``."""

    def __init__(self) -> None:
        self.next = Reading(0, PLENTY)

    def __call__(self) -> Reading:
        return self.next


def monitor() -> tuple[MemoryMonitor, Scripted, list[str]]:
    readings = Scripted()
    mon = MemoryMonitor(LIMITS, read=readings)
    ran: list[str] = []
    mon.add_cleanup(lambda: ran.append("soft"))
    mon.add_cleanup(lambda: ran.append("hard"), memory.HARD)
    return mon, readings, ran


def feed(mon: MemoryMonitor, readings: Scripted, rss_mib: float,
         available_mib: float = PLENTY / MIB) -> str:
    readings.next = Reading(int(rss_mib * MIB), int(available_mib * MIB))
    mon.check()
    return str(mon.status()["level"])


def test_rss_crossings_run_each_clean_up_once() -> None:
    mon, readings, ran = monitor()
    steps = [  # (RSS MiB, level after, clean-ups run so far)
        (50, "ok", []),
        (65, "soft", ["soft"]),
        (70, "soft", ["soft"]),          # still past: nothing runs again
        (62, "soft", ["soft"]),          # under the limit, but not by 10 %: stays
        (65, "soft", ["soft"]),          # hovering at the limit does not flap
        (55, "ok", ["soft"]),            # back by more than 10 %: re-armed
        (66, "soft", ["soft", "soft"]),  # a second crossing runs it again
        (85, "hard", ["soft", "soft", "hard"]),
        (75, "hard", ["soft", "soft", "hard"]),
        (71, "soft", ["soft", "soft", "hard"]),  # falling runs nothing
        (81, "hard", ["soft", "soft", "hard", "hard"]),
    ]
    for rss, level, so_far in steps:
        assert (feed(mon, readings, rss), ran) == (level, so_far), rss


def test_straight_to_hard_runs_soft_and_hard_clean_ups() -> None:
    mon, readings, ran = monitor()
    assert feed(mon, readings, 200) == "hard"
    assert ran == ["soft", "hard"]
    assert mon.status() == {"level": "hard", "rss_mib": 200.0, "available_mib": PLENTY / MIB}


def test_system_memory_counts_as_much_as_ours() -> None:
    mon, readings, ran = monitor()
    assert feed(mon, readings, 10, available_mib=100) == "ok"
    assert feed(mon, readings, 10, available_mib=60) == "soft"
    assert feed(mon, readings, 10, available_mib=30) == "hard"
    assert feed(mon, readings, 10, available_mib=34) == "hard"  # within 10 % of 32
    assert feed(mon, readings, 10, available_mib=40) == "soft"
    assert feed(mon, readings, 70, available_mib=200) == "soft"  # RSS holds it at soft
    assert feed(mon, readings, 10, available_mib=200) == "ok"
    assert ran == ["soft", "hard"]


def test_zero_turns_a_limit_off() -> None:
    mon = MemoryMonitor(MemoryLimits(0, 0, 0, 0), read=lambda: Reading(10**12, 0))
    mon.check()
    assert mon.status()["level"] == "ok"


def test_hard_limit_is_logged_and_a_failing_clean_up_stops_no_other(
        caplog: pytest.LogCaptureFixture) -> None:
    mon, readings, ran = monitor()

    def broken() -> None:
        raise RuntimeError("no luck")
    mon.add_cleanup(broken)
    mon.add_cleanup(lambda: ran.append("after"))
    with caplog.at_level(logging.INFO, logger="haven.kiosk"):
        assert feed(mon, readings, 90) == "hard"
    assert ran == ["soft", "after", "hard"]
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("broken failed: no luck" in m for m in errors)
    assert any(m.startswith("memory hard limit: RSS 90.0 MiB") for m in errors)


def test_bad_proc_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(memory.MemoryReadError, match="cannot read memory use"):
        memory.read_proc(tmp_path)
    (tmp_path / "self").mkdir()
    (tmp_path / "self" / "statm").write_text("100 50 10 1 0 20 0\n")
    (tmp_path / "meminfo").write_text("MemTotal: 1000 kB\n")
    with pytest.raises(memory.MemoryReadError, match="no MemAvailable"):
        memory.read_proc(tmp_path)
    (tmp_path / "meminfo").write_text("MemTotal: 1000 kB\nMemAvailable: 300 kB\n")
    page = memory.os.sysconf("SC_PAGE_SIZE")
    assert memory.read_proc(tmp_path) == Reading(50 * page, 300 * 1024)


def test_real_proc_of_this_process() -> None:
    before = memory.read_proc()
    assert before.rss > 1 * MIB
    total = memory.os.sysconf("SC_PHYS_PAGES") * memory.os.sysconf("SC_PAGE_SIZE")
    assert 0 < before.available <= total
    block = b"x" * (48 * MIB)  # written, so resident
    grown = memory.read_proc()
    assert grown.rss - before.rss >= 40 * MIB
    del block
    assert memory.read_proc().rss < grown.rss - 40 * MIB
    # the monitor on the real reader, with limits under what this process holds
    ran: list[str] = []
    mon = MemoryMonitor(MemoryLimits(soft_mib=before.rss / MIB / 2, hard_mib=0,
                                     available_soft_mib=0, available_hard_mib=0))
    mon.add_cleanup(memory.collect_garbage)
    mon.add_cleanup(lambda: ran.append("soft"))
    mon.check()
    assert mon.status()["level"] == "soft" and len(ran) == 1


def test_running_kiosk_tells_its_staff(tmp_path: Path) -> None:
    """A kiosk whose limits are under what it holds: the staff overview says ``hard``."""
    init_store(tmp_path / "k", "North", "B").close()
    proc, url = run_kiosk(tmp_path / "k", f"tcp://127.0.0.1:{free_port()}", idle=60,
                          args=("--memory-soft-mib", "1", "--memory-hard-mib", "2"))
    try:
        proc.wait_for(r"memory hard limit: RSS [\d.]+ MiB")
        status, _, answer = call(url, "/api/staff/login", {"pin": "246810"})
        assert status == 200
        _, _, view = call(url, "/api/staff/overview", headers={"X-Staff-Token": answer["token"]})
        health = view["health"]["memory"]
        assert health["level"] == "hard" and health["rss_mib"] > 2
        status, _, body = call(url, "/api/checkin", {  # the kiosk goes on checking in
            "passport": "AB123456", "year": "1970", "name": "Mem Ory", "reason": "sick",
            "consent": True})
        assert status == 200 and body["queue_number"] == "B-001"
        assert not [line for line in proc.log if "clean-up" in line]  # each clean-up worked
    finally:
        assert proc.stop() == 0, "".join(proc.log)
