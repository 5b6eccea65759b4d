"""The console as the runtime runs it: a ``ConsoleEnv`` made of what ``Runtime`` shows.

The Stat group's counters come from the runtime's own views (``status()``, the live
status's snapshot, ``health()``, the store's outbox), read when asked; a reset is
``Runtime.restart`` (a graceful stop that the service manager follows with a start);
the time is set with ``clock_settime`` where the service may, else refused.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from importlib import metadata
from typing import TYPE_CHECKING, Any

from device.console.env import ConsoleEnv
from device.console.server import ConsoleServer
from device.store import StoreError
from device.tech.access import Technicians, for_kiosk

if TYPE_CHECKING:
    from device.runtime import Runtime

log = logging.getLogger(__name__)

_STATES = {"synced": 0, "pending": 1, "offline": 2, "error": 3}
_LINKS = {"up": 0, "down": 1, "reconnecting": 2}
_LEVELS = {"ok": 0, "soft": 1, "low": 1, "hard": 2, "critical": 2}


def _version() -> str:
    try:
        return metadata.version("haven-kiosk")
    except metadata.PackageNotFoundError:
        return "0"


def _kib(mib: Any) -> int:
    return int(float(mib) * 1024) if isinstance(mib, int | float) else -1


def runtime_stats(runtime: Runtime) -> dict[str, dict[str, int]]:
    """The Stat group's groups, from the runtime's views; any thread."""
    from device.runtime import outbox_entries

    snap = runtime.live.snapshot()
    status = runtime.status()
    health = runtime.health()
    memory: Mapping[str, Any] = health.get("memory", {})
    storage: Mapping[str, Any] = health.get("storage", {})
    outbox = -1
    if runtime.store is not None:
        try:
            outbox = outbox_entries(runtime.store)
        except Exception:  # a store closing under us: the counter says unknown
            outbox = -1
    return {
        "sync": {"state": _STATES.get(status, 9), "committed": snap["committed"],
                 "sent_upto": snap["sent_upto"],
                 "unsent": max(0, snap["committed"] - snap["sent_upto"]),
                 "last_sync": int(snap["last_sync"] or 0),
                 "contact_min": -1 if snap["contact_min"] is None else snap["contact_min"]},
        "link": {"state": _LINKS.get(snap["link"], 9),
                 "events": getattr(runtime, "_link_events", 0)},
        "store": {"outbox": outbox},
        "health": {"memory_level": _LEVELS.get(str(memory.get("level", "")).lower(), 9),
                   "rss_kib": _kib(memory.get("rss_mib")),
                   "available_kib": _kib(memory.get("available_mib")),
                   "storage_level": _LEVELS.get(str(storage.get("level", "")).lower(), 9),
                   "free_kib": _kib(storage.get("free_mib")),
                   "total_kib": _kib(storage.get("total_mib"))},
    }


def _set_wall(when: float) -> None:
    time.clock_settime(time.CLOCK_REALTIME, when)  # PermissionError without CAP_SYS_TIME


def env_for(runtime: Runtime) -> ConsoleEnv:
    cfg = runtime.cfg
    version = _version()
    assert runtime.logs is not None  # the journal on disk (device.logs), open from start
    journal = runtime.logs.journal

    def status_text() -> str:
        s = runtime_stats(runtime)
        return "".join(f"{group} " + " ".join(f"{k}={v}" for k, v in fields.items()) + "\n"
                       for group, fields in s.items())

    return ConsoleEnv(export_dir=runtime.data / cfg.console_export,
                      import_dir=runtime.data / cfg.console_import,
                      stats=lambda: runtime_stats(runtime), restart=runtime.restart,
                      version=version, log=journal, set_wall=_set_wall,
                      log_dir=journal.directory,
                      shell={"status": status_text,
                             "version": lambda: f"haven-kiosk {version}\n"},
                      technicians=technicians_of(runtime))


def technicians_of(runtime: Runtime) -> Callable[[], Technicians | None]:
    """The kiosk's technician checks once it is enrolled (its certificate names the hub's
    key and its site), made once; presence is the service button held now."""
    made: list[Technicians] = []

    def held() -> bool:
        hardware = runtime.hardware
        return hardware is not None and bool(hardware.button.is_held)

    def get() -> Technicians | None:
        if not made and runtime.store is not None:
            with contextlib.suppress(StoreError):  # not enrolled (yet)
                made.append(for_kiosk(runtime.store, presence=held))
        return made[0] if made else None
    return get


def start_console(runtime: Runtime) -> ConsoleServer | None:
    """The console the configuration asks for, serving; None if it asks for none."""
    cfg = runtime.cfg
    if not cfg.console:
        return None
    env = env_for(runtime)
    env.export_dir.mkdir(parents=True, exist_ok=True)
    env.import_dir.mkdir(parents=True, exist_ok=True)
    from device.tech.runtime_tech import tech_service_for

    # Haven sessions on the same port: ``haven tech`` (device.tech.service).
    server = ConsoleServer(cfg.console, env, baud=cfg.console_baud,
                           haven=tech_service_for(runtime, env))
    # The console's own counters (lines dropped, requests refused) are a Stat group too.
    env.stats = lambda: {**runtime_stats(runtime), "console": server.stats()}
    server.start()
    log.info("technician's console on %s", cfg.console)
    return server
