"""Scopes and garbage collection (issue 14): a door kiosk's files, merge rate, GC's cost.

* A door kiosk's files over ``days`` simulated days of a 10-kiosk site
  (``_door_site``): today's code (every kiosk holds everything) and, once
  the store collects garbage (``Store.collect``), the door kiosk's scope
  with a GC pass at the start of each day.
* Bulk merge of deltas from the hub, persisted and sealed, beside the
  "Python alone" floor and pycrdt, measured in the same run by the store
  benchmark's own code (``_store_workload``).
* Check-in latency during a GC pass beside at rest (the store benchmark's
  ``latency_beside``), and bytes written per check-in, GC included (the
  kiosk benchmark's ``write_bytes`` with simulated writeback, in the
  simulation).
"""

from __future__ import annotations

import inspect
import json
import math
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from device.store.store import Store

from . import Context, Result, archived, benchmark
from . import _door_site as site
from .store import _ensure_peers

ROOT = Path(__file__).resolve().parents[2]
#: The release before issue 14: "today's code", the peer of the door kiosk's figures.
BEFORE = "a84fa97"

MIB = 2**20
GOAL_MIB = 64
GOAL_GROWTH = 0.02
LAST_DAYS = 30


def _row(what: str, value: Any, against: str = "", peer: Any = None, ratio: Any = None,
         goal: str = "", met: bool | None = None, detail: str = "") -> dict[str, Any]:
    return {"what": what, "value": value, "against": against, "peer": peer, "ratio": ratio,
            "goal": goal, "met": met, "detail": detail}


def gc_available() -> bool:
    return hasattr(Store, "collect")


def _figures(sim: site.Sim, last: int) -> dict[str, Any]:
    days = sim.out[-last:]
    start = [d.live_before for d in days]
    per_day = [d.live - d.live_before for d in days]
    held = max(days[-1].patients_held, 1)
    return {"bytes": sim.out[-1].bytes, "growth": site.growth(sim.out, last),
            "per_patient": sum(start) / len(start) / held, "patients_held": held,
            "per_day_queue": sum(per_day) / len(per_day),
            "db": sim.out[-1].store_db, "wal": sim.out[-1].wal,
            "records": sim.out[-1].records, "ops": sim.out[-1].ops,
            "own_per_checkin": sum(d.own_write_bytes for d in days)
            / sum(d.checkins for d in days),
            "staff_per_checkin": sum(d.staff_write_bytes for d in days)
            / sum(d.checkins for d in days),
            "gc_per_checkin": sum(d.gc_write_bytes for d in days)
            / sum(d.checkins for d in days),
            "merge_per_day": sum(d.merge_write_bytes for d in days) / len(days),
            "merged_per_day": sum(d.merged for d in days) / len(days),
            "seconds": sum(d.seconds for d in sim.out)}


def simulation_rows(today: dict[str, Any], new: dict[str, Any] | None, days: int,
                    last: int) -> list[dict[str, Any]]:
    t = today
    label = "today's code" if new is None else "door scope, GC each day"
    r = new or t
    size_ratio = None if new is None else round(new["bytes"] / t["bytes"], 4)
    rows = [
        _row(f"door kiosk's files after {days} days, MiB", round(r["bytes"] / MIB, 1),
             "today's code on the same simulation", round(t["bytes"] / MIB, 1), size_ratio,
             f"<= {GOAL_MIB} MiB", r["bytes"] <= GOAL_MIB * MIB,
             f"{label}; store.db {r['db'] / MIB:.1f} MiB, WAL {r['wal'] / MIB:.1f} MiB; "
             f"{r['records']:,} records, {r['ops']:,} write-log rows"),
        _row(f"growth over the last {last} days", _pct(r["growth"]),
             "today's code", _pct(t["growth"]), None, f"<= {GOAL_GROWTH:.0%}",
             None if math.isnan(r["growth"]) else r["growth"] <= GOAL_GROWTH, label),
        _row("bytes per patient in scope", round(r["per_patient"]), "today's code",
             round(t["per_patient"]), None, "report", None,
             f"{label}: the database's pages in use at the start of a day (after its GC) "
             f"over the {r['patients_held']:,} patients (or verifiers) held, mean of the "
             f"last {last} days"),
        _row("bytes per day of queue", round(r["per_day_queue"]), "today's code",
             round(t["per_day_queue"]), None, "report", None,
             f"{label}: the database's pages in use at the end of a day less at its start "
             f"(after its GC), mean of the last {last} days; the files add the WAL and "
             "free pages"),
        _row("bytes written per check-in, GC included, KiB",
             round((r["own_per_checkin"] + r["gc_per_checkin"]) / 1024, 1), "today's code",
             round(t["own_per_checkin"] / 1024, 1), None, "<= 32",
             (r["own_per_checkin"] + r["gc_per_checkin"]) <= 32 * 1024,
             f"{label}: write_bytes of the door's own check-ins, "
             f"{r['own_per_checkin'] / 1024:.1f} KiB, and of its GC passes, "
             f"{r['gc_per_checkin'] / 1024:.1f} KiB, per check-in, last {last} days; "
             f"besides, its staff's two status writes and the outbox's acknowledgement "
             f"{r['staff_per_checkin'] / 1024:.1f} KiB"),
        _row("bytes written merging the site's deltas, MiB a day",
             round(r["merge_per_day"] / MIB, 2), "today's code",
             round(t["merge_per_day"] / MIB, 2), None, "report", None,
             f"{label}: {r['merged_per_day']:,.0f} deltas merged a day (today's code "
             f"{t['merged_per_day']:,.0f})"),
    ]
    return rows


def _pct(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:.2%}"


def merge_rows(ctx: Context, records: int, runs: int) -> tuple[list[dict[str, Any]],
                                                                dict[str, Any]]:
    """Bulk merge of ``records`` x 10 deltas from the hub, beside the floors and pycrdt."""
    from . import _store_workload as bench

    from_hub = ({"cursor": 1} if "cursor" in inspect.signature(Store.merge).parameters
                else {})
    rows, raw = [], {}
    for shape, label in (("fields", "10 fields per record"),
                         ("rewrites", "1 field written 10 times per record")):
        updates = bench.field_updates(records, 10, shape)
        deltas = bench.store_deltas(updates, shape)
        ctx.log(f"merge, {shape}: peers, store, Python alone")
        m = bench.peer_rates(updates, runs)
        m.update({f"store_{k}": v for k, v in bench.store_merge_rate(
            ctx.workdir, deltas, runs, **from_hub).items()})
        m["python_only_per_s"] = bench.python_only_rate(deltas, runs)
        raw[shape] = m
        floor = round(m["store_per_s"] / m["python_only_per_s"], 2)
        rows += [
            _row(f"bulk merge of {len(deltas):,} deltas from the hub, {label}, per s",
                 m["store_per_s"], "Python alone (decode, check, seal)",
                 m["python_only_per_s"], floor, ">= 0.6x", floor >= 0.6,
                 f"persisted and sealed; best of {runs}"
                 + ("; with the page's cursor" if from_hub else "")),
            _row(f"bulk merge of {len(deltas):,} deltas from the hub, {label}, per s",
                 m["store_per_s"], "pycrdt, one at a time, in memory", m["pycrdt_per_s"],
                 round(m["store_per_s"] / m["pycrdt_per_s"], 2), "report", None,
                 f"pycrdt as one merged update: {m['pycrdt_merged_per_s']:,}/s"),
        ]
    return rows, raw


GAP_S = 0.05  #: between check-ins while measuring latency beside GC: 20 a second
GC_NOTE = (
    f"GC latency: check-ins (new patients, {GAP_S * 1000:.0f} ms apart: a GC pass yields "
    "to a waiting check-in, so back to back they would starve it) beside GC passes "
    "(`Store.collect`, 1 s budget each, again until done, or for 2 minutes at most, 20 s "
    "with --quick) in another thread, after 300 check-ins at rest in the same store: "
    "(day) on a copy of the door kiosk's files taken at the start of the simulation's "
    "last day, before that day's first pass, which "
    "drops the day before's queue; (switch) on today's code's door kiosk after the "
    "simulation, opened by this code and turned door: its first pass drops nearly "
    "everything it held.")


def gc_latency(ctx: Context, data: Path, now_ms: int, stable: int, limit_s: float,
               rest: int = 300) -> dict[str, Any]:
    """Check-in latency beside GC passes on the store in ``data`` (the store
    benchmark's ``latency_beside``, check-ins ``GAP_S`` apart), and what the passes
    did: passes one after another until done, or ``limit_s``."""
    from protocol.sync.scope import Scope

    from . import _store_workload as bench

    store = Store(data)
    scope = Scope("door", site.SITE, site.day_of(now_ms))
    passes: list[Any] = []

    def collect() -> None:
        end = time.monotonic() + limit_s
        while (not passes or not passes[-1].done) and time.monotonic() < end:
            passes.append(store.collect(scope, stable, site.Door.GC_BUDGET_S))

    before = site.files_bytes(data)
    try:
        r = bench.latency_beside(store, collect, rest, now_ms=now_ms, gap_s=GAP_S)
        after = site.files_bytes(data)  # closing the store checkpoints its WAL away
    finally:
        store.close()
    r.update(passes=len(passes), done=passes[-1].done, bytes_before=before, bytes_after=after,
             report={k: sum(getattr(p, k) for p in passes) for k in vars(passes[0])
                     if isinstance(getattr(passes[0], k), int)
                     and not isinstance(getattr(passes[0], k), bool)})
    ctx.log(f"GC latency: {r}")
    return r


def _counts(report: dict[str, int]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in report.items())


def gc_rows(raw: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for key, what in (("day", "the day's first GC pass (yesterday's queue leaves)"),
                      ("switch", "the first GC pass of today's code's kiosk turned door")):
        r = raw[key]
        rows.append(_row(
            f"check-in p99 during {what}, ms", r["p99_ms_busy"], "p99 at rest",
            r["p99_ms_at_rest"], r["p99_ratio"], "<= 2x", r["p99_ratio"] <= 2,
            f"{r['checkins_busy']:,} check-ins during {r['passes']} passes over "
            f"{r['seconds']:.2f} s{'' if r['done'] else ' (stopped unfinished)'} "
            f"({_counts(r['report'])}); p50 {r['p50_ms_busy']} ms, at rest "
            f"{r['p50_ms_at_rest']} ms; files {r['bytes_before'] / MIB:.1f} MiB, after "
            f"{r['bytes_after'] / MIB:.1f} MiB (with the check-ins)"))
    return rows


def simulate(ctx: Context, name: str, args: dict[str, int], scope: str,
             tree: Path = ROOT, gc_copy: Path | None = None) -> site.Sim:
    """Run ``_door_site`` in a child process on the code in ``tree``; its days."""
    sim = site.Sim(args["days"], args["patients"], 10, args["per_kiosk"])
    cmd = [sys.executable, "-m", "tools.benchmarks._door_site", "--data",
           str(ctx.workdir / name), "--days", str(sim.days), "--patients",
           str(sim.patients), "--per-kiosk", str(sim.per_kiosk), "--scope", scope,
           "--measured-days", str(args["last"])]
    if gc_copy is not None:
        cmd += ["--gc-copy", str(gc_copy)]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    with subprocess.Popen(cmd, cwd=tree, env=env, stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            d = site.Day(**json.loads(line))
            sim.out.append(d)
            ctx.log(f"{name}, day {d.day}: {d.bytes / MIB:.1f} MiB, {d.records:,} records, "
                    f"{d.merged:,} deltas merged, {d.seconds:.1f} s")
    if proc.returncode != 0 or len(sim.out) != sim.days:
        raise RuntimeError(f"the {name} simulation exited with {proc.returncode} after "
                           f"{len(sim.out)} of {sim.days} days")
    return sim


def release_before(ctx: Context) -> Path:
    """The code of the release before issue 14 (``git archive``), with the simulation
    copied in (it uses nothing that release lacks)."""
    return archived(ctx, BEFORE, Path(site.__file__))


@benchmark("scopes", "Scopes and garbage collection: a door kiosk's files, merge rate, GC")
def scopes_benchmark(ctx: Context) -> Result:
    _ensure_peers(ctx)
    if ctx.quick:
        sim_args = {"days": 12, "patients": 2000, "per_kiosk": 60, "last": 4}
        records, runs = 2000, 1
    else:
        sim_args = {"days": 90, "patients": 20_000, "per_kiosk": 500, "last": LAST_DAYS}
        records, runs = 10_000, 3
    last = sim_args["last"]
    sims: dict[str, Any] = {}
    gc_copy = ctx.workdir / "door-before-gc"
    ctx.log(f"the site's simulation: today's code ({BEFORE})"
            + (", and the door kiosk's scope with GC beside it" if gc_available() else ""))
    with ThreadPoolExecutor(2) as pool:  # child processes: one core each
        today_run = pool.submit(simulate, ctx, "today", sim_args, "everything",
                                release_before(ctx))
        door_run = (pool.submit(simulate, ctx, "door", sim_args, "door", gc_copy=gc_copy)
                    if gc_available() else None)
        sims["today"] = today = today_run.result()
        if door_run is not None:
            sims["door"] = door_run.result()
    new = _figures(sims["door"], last) if "door" in sims else None
    rows = simulation_rows(_figures(today, last), new, sim_args["days"], last)
    merge, merge_raw = merge_rows(ctx, records, runs)
    rows += merge
    gc_raw: dict[str, Any] = {}
    if gc_available():
        days = sim_args["days"]
        limit = 20 if ctx.quick else 120
        gc_raw["day"] = gc_latency(ctx, gc_copy, site.T0 + (days - 1) * site.DAY_MS,
                                   site.stable_before(today, days - 1), limit)
        gc_raw["switch"] = gc_latency(ctx, ctx.workdir / "today", site.T0 + days * site.DAY_MS,
                                      site.stable_before(today, days), limit)
        rows += gc_rows(gc_raw)
    else:
        rows += [_row("check-in p99 during a GC pass, ms", None, "p99 at rest", None, None,
                      "<= 2x", None, "the store has no collect yet")]
    notes = [
        f"Simulation ({'quick sizes: ' if ctx.quick else ''}{sim_args['days']} days, 10 "
        f"kiosks at one site, {sim_args['per_kiosk']} check-ins per kiosk a day, "
        f"{sim_args['patients']:,} patients): only the door kiosk is real, a `Store` on "
        "disk with a simulated clock; the other 9 kiosks, 3 clinician stations and the hub "
        "are a seeded generator writing with the real writers (`build_put` on each node's "
        "HLC, `delta.encode`). Each check-in is a returning patient (passport and year "
        "typed); staff call it 24 minutes later and see it 36 minutes later (two status "
        "writes by the kiosk that took it; the door's own through its staff screen); a "
        "clinician then writes a note, for 60 % a prescription, for 30 % a lab result. "
        "One turn per door check-in over 10 opening hours: the door kiosk checks in, "
        "its staff write, its outbox is acknowledged, and what the hub sends of the "
        "turn's writes of the others goes in through `Store.merge`. Files: every file "
        "under the data directory after each day (store.db, its WAL, keys). Today's code "
        f"is the release before issue 14 ({BEFORE}, `git archive`d and run in a child "
        "process): the hub sends the door kiosk every other node's delta, as it does "
        "every kiosk. Door scope (this code, child process): what the hub's own filter "
        "(`host.hub.scopes.changes_in_scope`, on a hub database holding every delta of "
        "the site, committed a turn at a time with their records' facts) sends a door "
        "kiosk of the site, pulled in pages after each turn; the hub writes a verifier "
        "record for each patient when first checked in at the site; the door kiosk's "
        "acks carry arrival numbers and the pages their cursors; and it runs "
        "`Store.collect` (1 s budget, again until done) at the start of each day, at "
        "the stable point of the day before's last turn (every replica of the scope "
        "synced since). A kiosk runs a pass after every round; one a day is what a "
        "simulation of this size can afford, and it gathers a day's work into one pass.",
        "Between the steps of a turn the store's WAL checkpoint, if one was asked for, is "
        "let finish (a turn is over a minute of a kiosk's time: run back to back, a "
        "checkpoint would race the next step's commits and the WAL would never start "
        "over); the kernel's writeback is simulated "
        "as in the kiosk benchmark (every file fsynced after each turn), so write_bytes of "
        "/proc/self/io counts what reaches the card.",
        f"Merge: {records:,} records x 10 single-field deltas from one seeded generator "
        "(the store benchmark's), merged into a new store in one call, durable when it "
        "returns; the floors and pycrdt are measured in the same run by the same code "
        "as `./tools/bench store`.",
    ]
    if gc_available():
        notes.append(GC_NOTE)
    columns = ["what", "value", "against", "peer", "ratio", "goal", "met", "detail"]
    return Result(rows, columns, notes, {
        "sim": sim_args, "last_days": last, "merge": merge_raw,
        "gc": gc_raw, "days": {name: [vars(d) for d in s.out] for name, s in sims.items()}})
