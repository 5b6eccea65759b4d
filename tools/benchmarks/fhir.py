"""``./tools/bench fhir``: the FHIR R4 export of 100,000 records (``_fhir_export``).

The export is timed alone (wall and CPU), without validation; every resource is then
validated with fhir.resources' R4 models, outside the timing. The hub is filled first
through ``HubStore.commit_batch``, which keeps the current records the export reads: that
rate is reported too.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from . import Context, Result, benchmark

ROOT = Path(__file__).resolve().parents[2]
GOAL = 10_000  #: resources a second, timed without validation


def rows(r: dict[str, Any]) -> list[dict[str, Any]]:
    """The figures as table rows (``hub-scale`` may show them too)."""
    rate = r["resources"] / r["export_wall_s"]
    return [
        {"what": f"FHIR export of {r['records']:,} records: resources a second (wall)",
         "value": round(rate), "detail": f"{r['resources']:,} resources, "
         f"{r['export_wall_s']:.2f} s wall, {r['export_cpu_s']:.2f} s CPU, "
         f"{r['bytes'] / 1e6:.0f} MB of NDJSON", "goal": f">= {GOAL:,}/s",
         "met": "yes" if rate >= GOAL else "NO"},
        {"what": "  every resource validated as R4 (fhir.resources 6.4.0), untimed",
         "value": r["validated"], "detail": f"{r['validate_s']:.0f} s; {r['held']} held for "
         "review, exported once, tagged unconfirmed", "goal": "all",
         "met": "yes" if r["validated"] == r["resources"] else "NO"},
        {"what": "  the hub filled by commit_batch (current records kept): deltas a second",
         "value": round(r["deltas"] / r["fill_wall_s"]),
         "detail": f"{r['deltas']:,} deltas, {r['fill_wall_s']:.1f} s wall, "
         f"{r['fill_cpu_s']:.1f} s CPU", "goal": "report", "met": "-"},
    ]


def measure(ctx: Context, count: int) -> dict[str, Any]:
    """The figures, from a child process (a fresh interpreter, nothing else in it)."""
    out = subprocess.run([sys.executable, "-m", "tools.benchmarks._fhir_export",
                          str(ctx.workdir / "fhir"), str(count)], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    return dict(json.loads(out.splitlines()[-1]))


@benchmark("fhir", "FHIR R4 export of the hub's records, every resource validated")
def fhir(ctx: Context) -> Result:
    count = 10_000 if ctx.quick else 100_000
    ctx.log(f"{count:,} records")
    r = measure(ctx, count)
    return Result(rows(r), ["what", "value", "detail", "goal", "met"], notes=[
        "`haven hub export --fhir` (`host.hub.fhir.export`) of a hub (SQLite, on disk) "
        f"holding {count:,} records written as two kiosks would, one in seven patients, "
        "then check-ins (two in seven), prescriptions (one in fifty held for review), lab results, "
        "appointments, documents (one in ten small and held: inline): "
        "`tools/benchmarks/_fhir_export.py`. The export alone is timed; every line is then "
        "read back and validated, outside the timing."],
        params={"records": count, **{k: v for k, v in r.items() if k != "files"}})
