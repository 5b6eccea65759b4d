"""The debug bundle benchmark's child processes (``bundle.py``).

``python -m tools.benchmarks._bundle fill DIR DAYS``: an enrolled kiosk store in
DIR, its Journal filled with DAYS days of entries (up to the Journal's 8 MiB
bound: the oldest go) and its metrics with DAYS days of minutes, rounds and
check-ins through ``device.metrics.collector.Metrics``.

``python -m tools.benchmarks._bundle build DIR OUT``: a fresh process that builds
the bundle as the kiosk's ``bundle`` command does (``device.bundle.build``), and
prints one JSON line: its size, wall and CPU seconds, RSS after the imports and
the peak (``VmHWM``) during the build.
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path
from typing import Any

T0 = 1_767_225_600_000
DAY_S = 86_400
#: A busy kiosk's hour of log: a round's entry most minutes, check-ins, warnings, an
#: error: about 6 MiB in 30 days, near the Journal's 8 MiB bound.
PER_HOUR = (("haven.sync", "sync round done", 1, {"deltas_up": 3, "deltas_down": 2,
                                                    "bytes_sent": 4210, "ms": 812,
                                                    "outcome": "ok"}, 48),
            ("haven.ui", "check-in taken", 1, {"count": 1, "ms": 41_000}, 12),
            ("haven.link", "modem absent; retrying", 2, {"code": "no-modem"}, 4),
            ("haven.sync", "hub unreachable", 3, {"code": "no-route", "ms": 30_000}, 1))


def status(key: str) -> dict[str, int]:
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        fields[name] = value
    return {"kib": int(fields[key].split()[0])}


def fill(directory: Path, days: int) -> None:
    from device import enrol
    from device.logs.journal import Journal
    from device.metrics.collector import Metrics
    from device.metrics.samples import Sample
    from device.store import init_store
    from device.sync.engine import Summary
    from host.hub.hub import Hub, init_hub

    init_hub(directory / "hub")
    with Hub(directory / "hub") as hub:
        store = init_store(directory / "kiosk", "North", "A")
        enrol.install(store, hub.enroll(enrol.write_request(store).read_bytes(), now_ms=T0))
        store.close()
    rng = random.Random(16)
    clock = {"s": 0.0}
    journal = Journal(directory / "kiosk" / "logs", clock=lambda: T0 / 1000 + clock["s"])
    metrics = Metrics(directory / "kiosk", start_ms=T0, clock=lambda: clock["s"])
    for hour in range(days * 24):
        for mod, ev, lvl, fields, n in PER_HOUR:
            for _ in range(n):
                clock["s"] = hour * 3600 + rng.random() * 3600
                journal.append({"lvl": lvl, "mod": mod, "ev": ev, **fields}, lvl)
        for minute in range(60):
            clock["s"] = hour * 3600 + minute * 60
            metrics.sample(Sample(rng.randint(70, 90) << 20, 300 << 20,
                                  (20_000 - hour) << 20, 51.5, "ok", 0.4),
                           {"storage": "ok", "memory": "ok"})
            if minute % 5 == 0:
                ok = rng.random() > 0.1
                metrics.round("synced" if ok else "offline",
                              Summary(pushed=rng.randint(0, 2), bytes_sent=4210,
                                      bytes_received=1900, frames_sent=30,
                                      frames_lost=rng.randint(0, 2), rtt_ms=140.0) if ok
                              else None, 0.8)
        for _ in range(6):
            metrics.checkin(rng.choice(("en", "fr", "sw")), 40.0)
        metrics.abandoned("s-year", "en")
    metrics.flush()
    journal.close()


def build(directory: Path, out: Path) -> dict[str, Any]:
    from device.bundle.build import Sources, build, metric_hours
    from device.logs.journal import Journal
    from device.metrics.ring import MetricsFile
    from device.store import Store

    kiosk = directory / "kiosk"
    Path("/proc/self/clear_refs").write_text("5")
    before = status("VmRSS")["kib"]
    wall, cpu = time.perf_counter(), time.process_time()
    store = Store(kiosk)
    journal = Journal(kiosk / "logs")
    src = Sources(data=kiosk, store=lambda: store, log_lines=lambda: journal.lines(0),
                  metric_hours=lambda: metric_hours(_File(MetricsFile(kiosk))),
                  wall_ms=lambda: T0 + 30 * DAY_S * 1000)
    with out.open("w+b") as f:
        manifest = build(f, src, nonce="ab" * 16)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    store.close()
    return {"bytes": out.stat().st_size, "wall_s": wall, "cpu_s": cpu, "rss_kib": before,
            "peak_kib": status("VmHWM")["kib"], "log_entries": manifest["logs"]["entries"],
            "hours": manifest["metric_hours"],
            "log_bytes": sum(p.stat().st_size for p in (kiosk / "logs").iterdir()),
            "metric_bytes": sum(p.stat().st_size for p in (kiosk / "metrics").iterdir())}


class _File:
    """A kiosk that is not running: only the card's metrics (no hour in memory)."""

    def __init__(self, file: Any) -> None:
        self.file = file


if __name__ == "__main__":
    what, where = sys.argv[1], Path(sys.argv[2])
    if what == "fill":
        fill(where, int(sys.argv[3]))
    else:
        import device.bundle.build  # noqa: F401  (the imports, before the measured part)
        import device.store  # noqa: F401

        print(json.dumps(build(where, Path(sys.argv[3]))))
