"""Free space on the disk holding the kiosk's data: retention when low, refusal when critical.

Theory of operation
-------------------
``StorageGuard.check`` reads the free space (``os.statvfs``, what an
unprivileged process may use) of the filesystem holding ``--data`` and
turns it into a level: ``ok``, ``low`` (under ``low_mib``) or ``critical``
(under ``critical_mib``), with the hysteresis of ``levels``. On reaching
``low`` it applies the retention policy: the reclaimers registered with
``add_reclaimer``, each of which frees only what is already safe elsewhere.
Today that is the write-ahead logs (``PRAGMA wal_checkpoint(TRUNCATE)``:
their pages are in the databases already); the kiosk's log and metrics
files in ``--data`` (``device.logs``, ``device.metrics``) are bounded by
their own limits and left as they are, and records and outbox entries are
never touched: an unsynced one is the only copy. The runtime shows an
error on the LED and a warning on the staff screen while the level is not
``ok``; ``haven-kiosk status`` shows it too (``space_status``).

``admit`` reads the space afresh before each check-in and refuses with
``StorageFull`` under the critical threshold, so a check-in is refused
whole rather than written half. A disk that fills faster than that still
loses nothing: SQLite's ``SQLITE_FULL`` rolls the transaction back and the
store raises the same ``StorageFull``.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from device.health.levels import LevelWatch, past
from device.store import StorageFull

OK, LOW, CRITICAL = 0, 1, 2
NAMES = ("ok", "low", "critical")
MIB = 1024 * 1024
log = logging.getLogger("haven.kiosk")


@dataclass(frozen=True)
class StorageLimits:
    """Free-space thresholds in MiB; 0 turns one off."""

    low_mib: float = 128.0
    critical_mib: float = 32.0


@dataclass(frozen=True)
class Space:
    free: int  #: bytes this process may still write
    total: int


def space_of(path: Path, statvfs: Callable[[Path], Any] = os.statvfs) -> Space:
    st = statvfs(path)
    return Space(st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize)


def space_status(space: Space, level: int, limits: StorageLimits) -> dict[str, Any]:
    """What the staff screen and ``haven-kiosk status`` show."""
    return {"level": NAMES[level], "free_mib": round(space.free / MIB, 2),
            "total_mib": round(space.total / MIB, 2), "low_mib": limits.low_mib,
            "critical_mib": limits.critical_mib}


def look(data: Path, limits: StorageLimits) -> dict[str, Any]:
    """``space_status`` from one look, without hysteresis (``haven-kiosk status``)."""
    space = space_of(data)
    level = past(space.free / MIB, (limits.low_mib, limits.critical_mib), high_is_bad=False)[0]
    return space_status(space, level, limits)


def truncate_wal_file(path: Path) -> None:
    """A reclaimer for a WAL database this process does not write through a writer
    thread (``sync.db``): a short connection of its own checkpoints and truncates it."""
    if not path.exists():
        return
    conn = sqlite3.connect(path, timeout=2.0)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    finally:
        conn.close()


class StorageGuard:
    def __init__(self, data: Path, limits: StorageLimits | None = None, *,
                 statvfs: Callable[[Path], Any] = os.statvfs) -> None:
        self.data = Path(data)
        self.limits = limits or StorageLimits()
        self.statvfs = statvfs
        self.watch = LevelWatch(NAMES)
        self.last: Space | None = None
        #: Called with the new level whenever it changes (the runtime updates the LED).
        self.when_changed: Callable[[int], None] | None = None

    @property
    def level(self) -> int:
        return self.watch.level

    def space(self) -> Space:
        return space_of(self.data, self.statvfs)

    def add_reclaimer(self, fn: Callable[[], None]) -> None:
        """Part of the retention policy, run on reaching ``low``: ``fn`` frees only data
        that is safe elsewhere. A failing one is logged and stops no other."""
        self.watch.add_callback(LOW, fn)

    def check(self) -> Space:
        """Read, move the level, apply retention on reaching ``low`` (blocking)."""
        space = self.space()
        old, new = self.watch.observe(*past(
            space.free / MIB, (self.limits.low_mib, self.limits.critical_mib),
            high_is_bad=False))
        if old < LOW <= new:
            after = self.space()
            log.warning("retention freed %.2f MiB", (after.free - space.free) / MIB)
            space = after
        self.last = space
        if new != old:
            say = {OK: log.info, LOW: log.warning, CRITICAL: log.error}[new]
            say("disk space %s: %.2f MiB free in %s", NAMES[new], space.free / MIB, self.data)
            if self.when_changed is not None:
                self.when_changed(new)
        return space

    def admit(self) -> None:
        """Raise ``StorageFull`` when a check-in must be refused (under the critical limit)."""
        if self.limits.critical_mib <= 0:
            return
        space = self.space()
        if space.free < self.limits.critical_mib * MIB:
            raise StorageFull(f"only {space.free / MIB:.2f} MiB free on the disk holding "
                              f"{self.data} (critical under {self.limits.critical_mib:g} MiB): "
                              "new check-ins are refused until space is freed")

    def status(self) -> dict[str, Any]:
        return space_status(self.last or self.space(), self.level, self.limits)
