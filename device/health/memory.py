"""The runtime's memory: its RSS and the system's MemAvailable, with clean-ups at thresholds.

Theory of operation
-------------------
A Pi Zero 2 W has 512 MB, shared by the kernel, the GPU, Chromium and this
runtime (its goal is at most 80 MiB; BENCHMARKS.md has what it uses).
``MemoryMonitor.check`` reads the process's resident size (``/proc/self/statm``) and the system's
``MemAvailable`` (``/proc/meminfo``) and turns them into a level: ``ok``,
``soft`` (the RSS at ``soft_mib`` or the system's available memory under
``available_soft_mib``) or ``hard``. Levels have hysteresis (``levels``).
Clean-ups registered with ``add_cleanup`` run once each time their level is
reached: the runtime drops SQLite's caches and runs the garbage collector at
``soft``; at ``hard`` the monitor also logs an error, and ``status`` (which
the staff screen shows) says so. The reader is a function, so tests give
readings of their own.
"""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from device.exc import DeviceError
from device.health.levels import LevelWatch, past
from device.logs.fields import fields

OK, SOFT, HARD = 0, 1, 2
NAMES = ("ok", "soft", "hard")
MIB = 1024 * 1024
log = logging.getLogger("haven.kiosk")


class MemoryReadError(DeviceError, OSError):
    """``/proc`` did not say what the monitor needs."""


@dataclass(frozen=True)
class Reading:
    rss: int  #: bytes resident in this process
    available: int  #: bytes the system could give without swapping (MemAvailable)


@dataclass(frozen=True)
class MemoryLimits:
    """Thresholds in MiB; 0 turns one off. Defaults for a 512 MB Pi Zero 2 W."""

    soft_mib: float = 64.0
    hard_mib: float = 80.0
    available_soft_mib: float = 64.0
    available_hard_mib: float = 32.0


def read_proc(proc: Path = Path("/proc")) -> Reading:
    """This process's RSS and the system's MemAvailable, from ``proc``."""
    try:
        statm = (proc / "self" / "statm").read_text()
        meminfo = (proc / "meminfo").read_text()
    except OSError as exc:
        raise MemoryReadError(f"cannot read memory use from {proc}: {exc}") from None
    try:
        resident = int(statm.split()[1])
        available_kib = next(int(line.split()[1]) for line in meminfo.splitlines()
                             if line.startswith("MemAvailable:"))
    except (IndexError, ValueError, StopIteration):
        raise MemoryReadError(f"{proc}: no resident size or no MemAvailable") from None
    return Reading(resident * os.sysconf("SC_PAGE_SIZE"), available_kib * 1024)


def collect_garbage() -> None:
    """A clean-up: a full collection, for the cycles reference counting leaves behind."""
    gc.collect()


class MemoryMonitor:
    def __init__(self, limits: MemoryLimits | None = None, *,
                 read: Callable[[], Reading] = read_proc) -> None:
        self.limits = limits or MemoryLimits()
        self.read = read
        self.watch = LevelWatch(NAMES)
        self.last: Reading | None = None
        self.watch.add_callback(HARD, self._hard)

    def add_cleanup(self, fn: Callable[[], None], level: int = SOFT) -> None:
        """Run ``fn`` each time the level rises to ``level`` (or past it)."""
        self.watch.add_callback(level, fn)

    def check(self) -> Reading:
        """Read, move the level, run what the crossing calls for (blocking)."""
        reading = self.last = self.read()
        lim = self.limits
        rss = past(reading.rss / MIB, (lim.soft_mib, lim.hard_mib), high_is_bad=True)
        free = past(reading.available / MIB, (lim.available_soft_mib, lim.available_hard_mib),
                    high_is_bad=False)
        old, new = self.watch.observe(max(rss[0], free[0]), max(rss[1], free[1]))
        if new < old:
            log.info("memory back to %s: RSS %.1f MiB, system available %.1f MiB",
                     NAMES[new], *self._mib(reading), extra=self._fields(reading, new))
        elif new == SOFT and old == OK:
            log.warning("memory %s: RSS %.1f MiB, system available %.1f MiB; caches dropped",
                        NAMES[new], *self._mib(reading), extra=self._fields(reading, new))
        return reading

    def _hard(self) -> None:
        assert self.last is not None
        log.error("memory hard limit: RSS %.1f MiB, system available %.1f MiB",
                  *self._mib(self.last), extra=self._fields(self.last, HARD))

    @staticmethod
    def _fields(r: Reading, level: int) -> dict[str, Any]:
        return fields(level=NAMES[level], rss_kib=r.rss // 1024,
                      available_kib=r.available // 1024)

    @staticmethod
    def _mib(r: Reading) -> tuple[float, float]:
        """RSS and the system's available memory, in MiB (numbers: stderr shows them)."""
        return r.rss / MIB, r.available / MIB

    @property
    def level(self) -> int:
        return self.watch.level

    def status(self) -> dict[str, Any]:
        """What the staff screen shows: the level and the last reading, in MiB."""
        out: dict[str, Any] = {"level": self.watch.name}
        if self.last is not None:
            out["rss_mib"] = round(self.last.rss / MIB, 1)
            out["available_mib"] = round(self.last.available / MIB, 1)
        return out
