"""A merge on the hub with its data sealed at rest, beside the code of the release before.

Both run the same child (``_hub_merge``): kiosk batches committed with
``HubStore.commit_batch`` into a new hub database, once with this tree and
once with a ``git archive`` of the commit before sealing (``BEFORE``), in
turns (before, now, before, now...) so both see the same machine, best of
each. The hub's database is on the work directory's disk, ``synchronous=FULL``
as served, so a commit's fsync counts; CPU time says what the sealing adds.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from . import Context, Result, archived, benchmark
from . import _hub_merge as child

ROOT = Path(__file__).resolve().parents[2]
BEFORE = "26ba9e0"  #: the commit before the hub's data was sealed at rest
BATCH = 100  #: deltas a batch (a kiosk's batch holds at most what fits 64 KiB)


def run(ctx: Context, tree: Path, name: str, count: int, seed: int) -> dict[str, Any]:
    where = ctx.workdir / name
    shutil.rmtree(where, ignore_errors=True)
    where.mkdir()
    out = subprocess.run([sys.executable, "-m", "tools.benchmarks._hub_merge", str(where),
                          str(count), str(BATCH), str(seed)], cwd=tree, check=True,
                         capture_output=True, text=True).stdout
    return dict(json.loads(out.splitlines()[-1]))


@benchmark("hub-merge", "A merge on the hub, sealed at rest, beside the release before")
def hub_merge(ctx: Context) -> Result:
    count, turns = (5_000, 2) if ctx.quick else (30_000, 3)
    before = archived(ctx, BEFORE, Path(child.__file__))
    runs: dict[str, list[dict[str, Any]]] = {"before": [], "sealed": []}
    for turn in range(turns):
        for name, tree in (("before", before), ("sealed", ROOT)):
            r = run(ctx, tree, name, count, seed=1)
            runs[name].append(r)
            ctx.log(f"turn {turn + 1}, {name}: {r['deltas'] / r['wall_s']:,.0f} deltas/s wall, "
                    f"{r['deltas'] / r['cpu_s']:,.0f} per CPU s")
    rows = []
    for what, key in (("wall", "wall_s"), ("CPU", "cpu_s")):
        best = {name: max(r["deltas"] / r[key] for r in rs) for name, rs in runs.items()}
        ratio = best["sealed"] / best["before"]
        rows.append({"what": f"hub merge of {count:,} deltas in batches of {BATCH}, per {what} s",
                     "sealed": round(best["sealed"]), "before": round(best["before"]),
                     "ratio": round(ratio, 3), "goal": ">= 0.8x",
                     "met": "yes" if ratio >= 0.8 else "NO"})
    slices = sorted(t for r in runs["sealed"] for t in r["reseal_slices_s"])
    rows.append({"what": "a rotation's re-seal slice (500 rows, one transaction), ms: median",
                 "sealed": round(slices[len(slices) // 2] * 1000, 1), "before": "-",
                 "ratio": "-", "goal": "report", "met": "-"})
    rows.append({"what": "  the same, slowest (a sync's commit waits at most this)",
                 "sealed": round(slices[-1] * 1000, 1), "before": "-", "ratio": "-",
                 "goal": "report", "met": "-"})
    size = {name: max(r["bytes"] for r in rs) for name, rs in runs.items()}
    rows.append({"what": "hub.db and its log after the merge, bytes", "sealed": size["sealed"],
                 "before": size["before"], "ratio": round(size["sealed"] / size["before"], 3),
                 "goal": "report", "met": "-"})
    return Result(rows, ["what", "sealed", "before", "ratio", "goal", "met"], notes=[
        f"`HubStore.commit_batch` of {count:,} kiosk deltas (patients, check-ins and their "
        "status changes, prescriptions: `tools/benchmarks/_hub_merge.py`), batches of "
        f"{BATCH}, into a new hub database on disk (synchronous=FULL, as `haven hub serve`); "
        f"before: a `git archive` of {BEFORE} (the commit before sealing), run in turns with "
        f"this tree, {turns} turns, best of each. Sealing: AES-256-GCM per delta, bound to "
        "its record and dot, one AES-GCM object, nonces drawn in one call per batch."],
        params={"count": count, "batch": BATCH, "turns": turns, "before": BEFORE})
