"""Bytes a kiosk writes for one vaccine fridge's day, batched and committed one by one.

Each variant is a child process (``_fridge_day``: how the day is simulated) on
a kiosk store of its own, enrolled with a hub of its own that ``haven hub
serve`` runs on 127.0.0.1 (its writes are not counted). ``write_bytes`` and
``wchar`` come from the child's ``/proc/self/io`` over the day; fsyncs from
``strace -f -c`` attached to it for the day, less the write-backs' own. The
kiosk's data folder is on a disk-backed filesystem (under bench-out/), named
in the notes.
"""

from __future__ import annotations

import contextlib
import json
import re
import select
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from device.fridges.link import COMMIT_EVERY, COMMIT_READINGS
from device.store.acks import FLUSH_AFTER_S as ACK_FLUSH_S
from device.sync.state import FLUSH_AFTER_S as STATE_FLUSH_S

from . import Context, Result, benchmark
from . import _runtime as rt
from ._fridge_day import READINGS
from .sync import ROOT, free_port, hub_serving, kiosk_and_hub, wait_port

MIB = 1024 * 1024
FSYNCS = "fsync,fdatasync"
IDLE_DAY_GOAL = 1.0  #: MiB, ``kiosk``'s goal for an idle kiosk's whole simulated day
BOUND = 600.0


def fridge_day(ctx: Context, work: Path, commit_every: float) -> dict[str, Any]:
    hub_dir, store, state, _ = kiosk_and_hub(work, [])
    state.close()
    store.close()
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    with hub_serving(hub_dir, ["--listen", url], work / "hub.log") as hub:
        wait_port(port, hub)
        cmd = [sys.executable, "-m", "tools.benchmarks._fridge_day", "--data",
               str(work / "kiosk"), "--hub", url, "--commit-every", str(commit_every)]
        with (work / "kiosk.log").open("wb") as log:
            child = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=log, text=True)
            assert child.stdin is not None and child.stdout is not None
            try:
                if not _line(child, BOUND).startswith("ready "):
                    raise RuntimeError(f"the fridge day did not start (see {work}/kiosk.log)")
                strace = rt.SyscallCount(child.pid, FSYNCS, work / "fsyncs.txt")
                child.stdin.write("go\n")
                child.stdin.flush()
                try:
                    line = _line(child, BOUND)
                finally:
                    fsyncs = strace.finish()
                child.wait(BOUND)
            finally:
                if child.poll() is None:
                    child.kill()
                    child.wait()
    if child.returncode != 0 or not line:
        raise RuntimeError(f"the fridge day exited with {child.returncode} "
                           f"(see {work}/kiosk.log)")
    r = dict(json.loads(line))
    r["fsyncs"] = sum(fsyncs.values()) - r["writeback_fsyncs"]
    r["log_bytes"] = (work / "kiosk.log").stat().st_size
    ctx.log(f"commit_every {commit_every:g}: {r['io']['write_bytes'] / MIB:.2f} MiB, "
            f"{r['fsyncs']} fsyncs, {r['seconds']:.0f} s")
    return r


def _line(child: subprocess.Popen[str], bound: float) -> str:
    """The child's next line on stdout, within ``bound`` seconds ("" if none came)."""
    assert child.stdout is not None
    if not select.select([child.stdout], [], [], bound)[0]:
        return ""
    return child.stdout.readline()


def idle_day_mib() -> float | None:
    """``kiosk``'s idle simulated day, MiB, as BENCHMARKS.md has it (None: not there)."""
    with contextlib.suppress(OSError):
        found = re.search(r"bytes written, idle simulated day, MiB \| ([\d.]+)",
                          (ROOT / "BENCHMARKS.md").read_text())
        if found:
            return float(found.group(1))
    return None


def _where(r: dict[str, Any]) -> str:
    """write_bytes a reading by file, by what ran, and the WAL's pages by table or index."""
    total = r["io"]["write_bytes"]
    files = {k: v for k, v in r["by_file"].items() if v}
    files["SQLite's own fsyncs (the WAL at commit, the database at checkpoints)"] = max(
        0, total - sum(files.values()))

    def per(parts: dict[str, int]) -> str:
        return ", ".join(f"{name} {v / READINGS:,.0f} B ({100 * v / max(1, total):.0f} %)"
                         for name, v in sorted(parts.items(), key=lambda kv: -kv[1]))

    tables = "; ".join(_pages(db, frames, r["page_size"]) for db, frames in r["frames"].items())
    return (f"a reading's bytes by file: {per(files)}; by what wrote them: "
            f"{per({k: v['write_bytes'] for k, v in r['by'].items() if v['write_bytes']})}; "
            f"{tables}")


def _pages(db: str, frames: dict[str, int], page_size: int) -> str:
    top = sorted(frames.items(), key=lambda kv: -kv[1])[:6]
    return (f"{db} WAL pages ({page_size:,} B) a reading {sum(frames.values()) / READINGS:.2f}"
            f", by table or index: " + ", ".join(f"{n} {c / READINGS:.2f}" for n, c in top))


def _row(what: str, r: dict[str, Any], goal: str, met: bool | None) -> dict[str, Any]:
    day = r["io"]["write_bytes"]
    collected = ", ".join(f"{k} {v}" for k, v in r["collected"].items() if v)
    return {"what": what, "MiB a fridge-day": round(day / MIB, 2),
            "B a reading": round(day / READINGS), "wchar MiB": round(r["io"]["wchar"] / MIB, 2),
            "fsyncs a day": r["fsyncs"], "fsyncs a reading": round(r["fsyncs"] / READINGS, 3),
            "commits": r["commits"], "sync rounds": r["rounds"],
            "checkpoints": r["checkpoints"],
            "detail": (f"{r['readings']:,} readings stored, {r['acked']:,} acknowledged to "
                       f"the node; {r['collect_passes']} collection passes "
                       f"({collected or 'nothing collected'}); " + _where(r)
                       + f"; journal {r['log_bytes'] / 1024:.1f} KiB; {r['seconds']:.0f} s "
                       f"real, {r['cpu_s']:.0f} s CPU"
                       + (f"; rounds failed: {r['round_failures']}" if r["round_failures"]
                          else "")),
            "goal": goal, "met": met}


def _fit(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """The bytes of a commit with what follows it (its round, collection, flushes) and
    of a reading on top, from two runs of the same readings with different commits."""
    per_commit = (b["io"]["write_bytes"] - a["io"]["write_bytes"]) / max(
        1, b["commits"] - a["commits"])
    per_reading = (a["io"]["write_bytes"] - per_commit * a["commits"]) / READINGS
    hourly = (24 * per_commit + READINGS * per_reading) / MIB
    return {"what": "fitted: a commit (with its round, collection, flushes) / a reading",
            "B a reading": round(per_reading),
            "detail": f"{per_commit:,.0f} B a commit with what follows it, {per_reading:,.0f} B "
                      f"a reading on top (from the two rows above: bytes = commits x a + "
                      f"readings x b); an hour's readings a commit would give {hourly:.1f} "
                      f"MiB a day, and the readings alone "
                      f"{READINGS * per_reading / MIB:.1f} MiB whatever the batching",
            "goal": "report", "met": None}


@benchmark("fridge", "SD-card bytes a kiosk writes for one fridge's day of readings")
def fridge_benchmark(ctx: Context) -> Result:
    base = ROOT / "bench-out" / "fridge-run"
    shutil.rmtree(base, ignore_errors=True)
    try:
        runs = {}
        for name, every in (("batched", COMMIT_EVERY), ("one by one", 0.0)):
            work = base / name.replace(" ", "-")
            work.mkdir(parents=True)
            ctx.log(f"a fridge's day, commit_every {every:g}")
            runs[name] = fridge_day(ctx, work, every)
        fs = rt.fstype(base)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    batched, single = runs["batched"], runs["one by one"]
    mib = batched["io"]["write_bytes"] / MIB
    idle = idle_day_mib()
    idle_text = "not in BENCHMARKS.md" if idle is None else f"{idle:g} MiB"
    goal = f"<= {IDLE_DAY_GOAL:g}: a whole idle kiosk's day (`kiosk`: {idle_text})"
    rows = [
        _row(f"batched: commit_every {COMMIT_EVERY:g} s or {COMMIT_READINGS} readings",
             batched, goal, mib <= IDLE_DAY_GOAL),
        _row("one by one: commit_every 0 (each message committed as it comes)", single,
             "report", None),
        _fit(batched, single),
        {"what": "one by one / batched", "MiB a fridge-day": round(
            single["io"]["write_bytes"] / max(1, batched["io"]["write_bytes"]), 1),
         "fsyncs a day": round(single["fsyncs"] / max(1, batched["fsyncs"]), 1),
         "detail": "ratios of the two rows above (one run)", "goal": "report", "met": None},
    ]
    notes = [
        f"A kiosk store (WAL SQLite, as `haven-kiosk run` opens it) on {fs}, its fridge "
        f"line's `FridgeLink` joined to a CPython node stand-in (`tests/fridge_helpers.py`) "
        "through `tools/linksim` at 115200 baud on a simulated clock: "
        f"{READINGS:,} readings, one a minute, one a message, as the node sends them. "
        "After each commit a sync round on a kept-open TCP session to `haven hub serve` "
        "(another process) takes the readings to the hub (as a kiosk whose rounds come at "
        "least as often as commits: one polling, or busy with check-ins; the runtime starts "
        "no round of its own for a readings commit), and garbage collection follows it "
        "(`device.sync.collect`, on the simulated clock); acknowledged outbox entries leave "
        f"{ACK_FLUSH_S:g} s after the round, `SyncState` flushes after {STATE_FLUSH_S:g} s; "
        "the documents database stays open, as in the runtime; every "
        f"{rt.dirty_expire_s():g} s of simulated time the data folder's files are written "
        "back, as the kernel would. After the last reading the day runs on until the last "
        "batch is committed, synced and collected. How: `tools/benchmarks/_fridge_day.py`.",
        "Bytes: `write_bytes` of the kiosk's process (`/proc/self/io`: 4 KiB each time a page "
        "is dirtied after it was written out, mmap'd pages too: SQLite's WAL index, the "
        "`-shm` files), `wchar` every byte passed to write calls (sockets, the journal). "
        "fsyncs: `strace -f -c` attached for the day, less the write-backs' own. The detail "
        "splits `write_bytes` by file (the dirty pages each file had at each write-back, "
        "`cachestat(2)`; what SQLite's own fsyncs wrote is the rest), by what ran (the "
        "checkpoint thread's from `/proc/self/task/TID/io`), and counts the WAL frames each "
        "table or index of the store took (their pages named by `dbstat`). `pruned`: "
        "readings the collection dropped once the hub held them (out of the kiosk's scope).",
        f"Beside it: an idle kiosk's whole simulated day wrote {idle_text} (`./tools/bench "
        f"kiosk`, as BENCHMARKS.md has it), goal <= {IDLE_DAY_GOAL:g} MiB.",
    ]
    columns = ["what", "MiB a fridge-day", "B a reading", "wchar MiB", "fsyncs a day",
               "fsyncs a reading", "commits", "sync rounds", "checkpoints", "detail", "goal",
               "met"]
    return Result(rows=rows, columns=columns, notes=notes,
                  params={"readings": READINGS, "commit_every": COMMIT_EVERY})
