"""``haven tech`` in the runtime: the ``TechEnv`` made of what ``Runtime`` shows.

``tech_service_for(runtime, console_env)`` builds the console's Haven endpoint: its
status view (the runtime's sync state, outbox by lane, link, health and the last
warnings and errors of the console's log), the configuration file the runtime was
started with, the panel, and the kiosk's X25519 key as the session's static key
(an ephemeral one before the kiosk has keys: the technician's certificate, not the
kiosk's key, is what these sessions check).
"""

from __future__ import annotations

import contextlib
import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from device import config
from device.bundle.build import for_runtime as bundle_sources
from device.console.env import ConsoleEnv
from device.store.keys import read_key
from device.tech.service import TechEnv, TechService

if TYPE_CHECKING:
    from device.runtime import Runtime

LAST_ERRORS = 5
WARNING = 2  #: ``MemoryLog``'s level of a warning (Mynewt's)


def _iso(seconds: float | None) -> str | None:
    if not seconds:
        return None
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).isoformat(timespec="seconds")


def runtime_status(runtime: Runtime, console: ConsoleEnv) -> dict[str, Any]:
    """What ``haven tech status`` shows beyond the process's own numbers; any thread."""
    snap = runtime.live.snapshot()
    out: dict[str, Any] = {
        "sync": {"state": runtime.status(), "last_sync": _iso(snap["last_sync"]),
                 "unsent": max(0, snap["committed"] - snap["sent_upto"]),
                 "contact_min": snap["contact_min"], "detail": snap["detail"]},
        "link": {"state": snap["link"], "events": getattr(runtime, "_link_events", 0)},
        "health": runtime.health(),
    }
    if runtime.store is not None:
        with contextlib.suppress(Exception):  # a store closing under us: left out
            lanes = runtime.store.status()["outbox"]["lanes"]
            out["outbox"] = {str(lane): dict(v) for lane, v in lanes.items()}
    server = runtime.console
    if server is not None and isinstance(server.haven, TechService):
        stats = server.haven.driver.stats()
        out["console_link"] = {"retransmitted_bytes": stats.retransmitted_bytes,
                               "lost_frames": stats.lost_frames, "bytes_sent": stats.bytes_sent}
    recent = getattr(console.log, "recent", None)  # the journal: its last entries only
    if recent is not None:
        out["last_errors"] = [
            {"at": _iso(d.get("t", 0) / 1e6), "level": d.get("lvl"),
             "msg": f"{d.get('mod')}: {d.get('ev')}" + (f" ({d['exc']})" if "exc" in d else "")}
            for d in recent(LAST_ERRORS, WARNING)]
        return out
    out["last_errors"] = [
        {"at": _iso(e.ts_us / 1e6), "level": e.level, "msg": e.msg}
        for e in [e for e in console.log.entries(0) if e.level >= WARNING][-LAST_ERRORS:]]
    return out


def config_file(runtime: Runtime) -> Path | None:
    if runtime.config_file is not None:
        return runtime.config_file
    return config.DEFAULT_PATH if config.DEFAULT_PATH.exists() else None


def certificate(data: Path) -> bytes | None:
    """The kiosk's certificate as the hub signed it; None before enrolment."""
    from device.enrol import CERT

    try:
        return (data / CERT).read_bytes()
    except OSError:
        return None


def static_key(data: Path) -> X25519PrivateKey:
    from device.enrol import X_KEY

    path = data / X_KEY
    if path.exists():
        with contextlib.suppress(Exception):
            return X25519PrivateKey.from_private_bytes(read_key(path, "kiosk key"))
    return X25519PrivateKey.generate()


def tech_service_for(runtime: Runtime, console: ConsoleEnv) -> TechService:
    env = TechEnv(console=console, status=lambda: runtime_status(runtime, console),
                  config_file=config_file(runtime), hardware=lambda: runtime.hardware,
                  kiosk_certificate=lambda: certificate(runtime.data),
                  extra={"config": runtime.cfg, "runtime": runtime,
                         "bundle": bundle_sources(runtime)})
    return TechService(env, static_key=static_key(runtime.data), baud=runtime.cfg.console_baud)
