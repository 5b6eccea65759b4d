"""Trusted time: what a kiosk believes the time is, without its own wall clock.

Theory of operation
-------------------
A Pi has no battery clock, so the kiosk's wall clock proves nothing: a kiosk
that booted into 2099 would judge every credential expired. Trusted time is
the later of two sources, each an ``Anchor``: the hub's time at the kiosk's
last sync (its ``sync-welcome``, over the authenticated session) and a
hub-signed time that a technician's tool brought, bound to a nonce the kiosk
chose (``device.tech.smp_group``). Each anchor is that time and a reading of
``CLOCK_BOOTTIME`` at the moment it was learnt (with the boot's id,
``/proc/sys/kernel/random/boot_id``). BOOTTIME counts suspended time too and
no one can set it, so within one boot the anchor plus the BOOTTIME elapsed
since is the hub's clock, to the link's delay.

A reboot loses BOOTTIME: the anchor of another boot gives only its own time,
which has certainly passed, as a lower bound (``Trusted.exact`` False). That
still refuses a credential that expired before the kiosk's last knowledge,
and a kiosk off for a while accepts one expired since (it cannot know better,
and the credential is hub-signed, scoped and not revoked as far as it knows):
the audit says the time was a lower bound. ``checkpoint`` moves each anchor
forward within the boot (at most once an hour: the SD card), so a reboot
loses at most that much.

Each source is its own small file (written whole: temporary file, fsync,
rename), so the sync thread and the console never write the same file. An
anchor is written again only when a boot began since or the estimate moved
more than ``SLACK_MS``: a kiosk syncing every minute writes once per boot.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from device.tech.files import stamp, write_whole

log = logging.getLogger("haven.tech")

SYNC, SIGNED = "sync", "signed"  #: the sources, and their files' suffixes
FILE = "hub_time.{}.json"
SLACK_MS = 2000
CHECKPOINT_MS = 3600 * 1000
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


@dataclass(frozen=True)
class Boot:
    """One reading of CLOCK_BOOTTIME, in the boot ``id`` ("" if unknown)."""

    id: str
    ms: int


def read_boot() -> Boot:
    try:
        boot_id = BOOT_ID.read_text().strip()
    except OSError:
        boot_id = ""
    return Boot(boot_id, int(time.clock_gettime(time.CLOCK_BOOTTIME) * 1000))


@dataclass(frozen=True)
class Anchor:
    """The hub's time ``hub_ms`` (ms since 1970) when BOOTTIME read ``boot``."""

    hub_ms: int
    boot: Boot

    def at(self, now: Boot) -> tuple[int, bool]:
        """The time at ``now``, and whether it is exact (same boot) or a lower bound."""
        if self.boot.id and now.id == self.boot.id and now.ms >= self.boot.ms:
            return self.hub_ms + now.ms - self.boot.ms, True
        return self.hub_ms, False


@dataclass(frozen=True)
class Trusted:
    ms: int
    source: str  #: SYNC or SIGNED
    exact: bool  #: False: a lower bound only (the kiosk rebooted since it learnt it)

    def describe(self) -> str:
        return (f"{self.source} time" + ("" if self.exact else
                                          ", a lower bound (rebooted since)"))


class TrustedClock:
    """The kiosk's trusted time, kept in ``data``. ``boot`` reads BOOTTIME (tests pass
    their own)."""

    def __init__(self, data: Path, boot: Callable[[], Boot] = read_boot) -> None:
        self.data = Path(data)
        self.boot = boot
        self._lock = threading.Lock()
        #: each source's file as last read: (inode, mtime, size), and its anchor
        self._seen: dict[str, tuple[tuple[int, int, int] | None, Anchor | None]] = {}

    def now(self) -> Trusted | None:
        """The later of the two sources now; None if the kiosk has neither."""
        boot = self.boot()
        best: Trusted | None = None
        for source in (SYNC, SIGNED):
            anchor = self.anchor(source)
            if anchor is None:
                continue
            ms, exact = anchor.at(boot)
            if best is None or (ms, exact) > (best.ms, best.exact):
                best = Trusted(ms, source, exact)
        return best

    def note(self, source: str, hub_ms: int) -> None:
        """The hub's time is ``hub_ms`` now (from a welcome, or a signed statement)."""
        boot = self.boot()
        held = self.anchor(source)
        if held is not None:
            ms, exact = held.at(boot)
            if exact and abs(ms - hub_ms) <= SLACK_MS:
                return  # the same clock as the one saved: nothing to write
        self._save(source, Anchor(hub_ms, boot))

    def note_at_least(self, source: str, hub_ms: int) -> None:
        """The hub's time was ``hub_ms`` at some moment before now (a relay answer's
        signed time: SPEC.md "Relay bundles"): kept as a lower bound, when it is later
        than what the source gives now."""
        held = self.anchor(source)
        if held is None or held.at(self.boot())[0] < hub_ms:
            self._save(source, Anchor(hub_ms, Boot("", 0)))

    def checkpoint(self) -> bool:
        """Move each anchor of this boot forward if it is ``CHECKPOINT_MS`` old, so a
        reboot loses less; True if one was written."""
        boot = self.boot()
        wrote = False
        for source in (SYNC, SIGNED):
            anchor = self.anchor(source)
            if anchor is None:
                continue
            ms, exact = anchor.at(boot)
            if exact and boot.ms - anchor.boot.ms >= CHECKPOINT_MS:
                self._save(source, Anchor(ms, boot))
                wrote = True
        return wrote

    def anchor(self, source: str) -> Anchor | None:
        """The source's saved anchor (read again when its file changed)."""
        path = self._path(source)
        now = stamp(path)
        with self._lock:
            seen = self._seen.get(source)
            if seen is not None and seen[0] == now:
                return seen[1]
            anchor = None if now is None else _read(path)
            self._seen[source] = (now, anchor)
            return anchor

    def _path(self, source: str) -> Path:
        if source not in (SYNC, SIGNED):
            raise ValueError(f"no time source {source!r}")
        return self.data / FILE.format(source)

    def _save(self, source: str, anchor: Anchor) -> None:
        text = json.dumps({"hub_ms": anchor.hub_ms, "boot_id": anchor.boot.id,
                           "boot_ms": anchor.boot.ms})
        with self._lock:
            write_whole(self._path(source), text.encode())
            self._seen.pop(source, None)


def _read(path: Path) -> Anchor | None:
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        anchor = Anchor(int(saved["hub_ms"]), Boot(str(saved["boot_id"]),
                                                   int(saved["boot_ms"])))
    except (OSError, ValueError, TypeError, KeyError) as exc:
        log.warning("ignoring %s: %s", path, exc)
        return None
    return anchor if anchor.hub_ms >= 0 else None
