"""Debug bundle tests' kiosk content: distinctive fake patient data pushed through every
flow that feeds a bundle (check-ins in the store, log calls, a rogue journal line, an
exception, the status view, the metrics), and the kiosk's ``Sources``."""

from __future__ import annotations

import io
import logging
import re
import zipfile
from pathlib import Path
from typing import Any

from device.bundle.build import Sources, metric_hours
from device.logs import crash
from device.logs.handler import JournalHandler
from device.logs.journal import Journal
from device.metrics.collector import Metrics
from device.metrics.samples import Sample
from device.store import Store
from device.sync.engine import Summary

T0 = 1_767_225_600_000
NAME, PASSPORT, YEAR, NOTE = ("Zanele Qwabe-Mthembu", "ZQ7741923", 1937,
                              "allergic to quinceberries")
#: What must never be found in a bundle or a report.
PHI = [NAME, "Qwabe", PASSPORT, NOTE, "quinceberries"]
YEAR_RE = re.compile(rb"(?<![0-9A-Za-z])1937(?![0-9A-Za-z])")


class _Clock:
    def __init__(self) -> None:
        self.s = 0.0

    def __call__(self) -> float:
        return self.s


def fill(store: Store, logs: Path, hours: int = 3) -> Sources:
    """The kiosk's content (see the module docstring); its ``Sources``."""
    store.checkin(name=NAME, passport=PASSPORT, reason=NOTE, birth_year=YEAR, now_ms=T0)
    journal = Journal(logs, clock=lambda: T0 / 1000 + (hours - 0.5) * 3600)  # offline then
    log = logging.getLogger("haven.test-bundle")
    handler = JournalHandler(journal)
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        log.info("sync round done", extra={"haven_fields": {"deltas_up": 3, "outcome": "ok"}})
        log.warning("check-in refused for %s (passport %s, born %d)", NAME, PASSPORT, YEAR)
        try:
            raise ValueError(f"bad claim {NAME} {PASSPORT}")
        except ValueError:
            log.exception("claim failed: %s", NOTE)
        log.error("hub unreachable", extra={"haven_fields": {"code": "no-route"}})
    finally:
        log.removeHandler(handler)
    # A writer that went around the handler: the bundle still keeps only allowlisted fields.
    journal.append({"lvl": 3, "mod": "rogue", "ev": "rogue entry", "name": NAME,
                    "passport": PASSPORT, "code": PASSPORT, "year": YEAR}, 3)
    try:
        raise RuntimeError(NOTE)
    except RuntimeError as exc:
        crash.record(journal, "thread", type(exc), exc.__traceback__)
    journal.sync()
    # A line written around the Journal, naming a key twice: its second value never leaves.
    with (logs / "haven.log").open("ab") as f:
        f.write(b'{"i":%d,"t":1,"lvl":3,"mod":"rogue","ev":"x","ev":"%s"}\n'
                % (journal.next_index, NAME.encode()))

    clock = _Clock()
    metrics = Metrics(store.data, start_ms=T0, clock=clock)
    for h in range(hours):
        for minute in range(0, 60, 10):
            clock.s = h * 3600 + minute * 60
            metrics.sample(Sample(80 << 20, 300 << 20, (900 - h) << 20, None, "absent", 0.3),
                           {"storage": "ok", "memory": "ok"})
            ok = h < hours - 1
            metrics.round("synced" if ok else "offline",
                          Summary(bytes_sent=2000, bytes_received=900, frames_sent=20,
                                  frames_lost=1, rtt_ms=120.0 + h, pushed=2) if ok else None, 1.5)
        metrics.checkin("en", 42.0)
        metrics.checkin(NAME, 30.0)  # a value where a language goes: counted as "other"
        metrics.abandoned("s-year", "fr")
        metrics.abandoned(PASSPORT, "fr")
    metrics.flush()

    def status() -> dict[str, Any]:
        return {"sync": {"state": "offline", "detail": f"refused {NAME}"},
                "last_errors": [{"msg": f"bad {PASSPORT}"}], "link": {"state": "down"}}

    return Sources(data=store.data, store=lambda: store, log_lines=lambda: journal.lines(0),
                   metric_hours=lambda: metric_hours(metrics), status=status,
                   wall_ms=lambda: T0 + hours * 3600_000,
                   hub_time=lambda: (T0 + hours * 3600_000 - 4000, True, "sync"))


def leaks(data: bytes) -> list[str]:
    """The fake patient's values found in ``data`` (a bundle's members opened too)."""
    texts = [data]
    if data.startswith(b"PK"):
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            texts += [zf.read(n) for n in zf.namelist()]
    found = []
    for text in texts:
        found += [s for s in PHI if s.encode() in text or s.lower().encode() in text.lower()]
        if YEAR_RE.search(text):
            found.append(str(YEAR))
    return found
