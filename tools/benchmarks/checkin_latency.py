"""A check-in's way to the hub over a slow link: a new session per round, or one kept open.

The real ``haven-kiosk run`` (simulated hardware) syncs with ``haven hub
serve`` through ``tools/linkemu`` in TCP mode with 300 ms of latency each
way (600 ms round trip), as over a cellular modem. New patients are checked
in through the page's API one at a time, a seeded random pause of 0 to 3 s
apart, so they land anywhere in the runtime's 10-s interval (an idle round
may be under way). A check-in's latency is from just before ``POST
/api/checkin`` to the page's event stream saying it left the outbox: the
runtime has the hub's acknowledgement, which the hub sends only after its
commit, so the time to the hub's disk is shorter by about one one-way
latency (300 ms) at most. Each mode is a configuration file for the
runtime (``--config``):

* ``new link per round``: ``keepalive = 0``, the behaviour before sessions
  were kept open: every round connects, runs the handshake, says hello,
  pushes and pulls, and closes;
* ``kept-open session``: ``keepalive = 120`` (the default): the session
  stays open between rounds; a check-in's round is a pull and a batch on it.

A mode the runtime does not know (an older release) is reported as such.
"""

from __future__ import annotations

import random
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

from . import Context, Result, benchmark
from . import _runtime as rt
from ._link import emulator
from .kiosk import start_hub
from .sync import ROOT, free_port, kiosk_and_hub

LATENCY = 0.3  #: seconds each way
GOAL_S = 1.5
MODES = {"new link per round": "keepalive = 0\n",
         "kept-open session": "keepalive = 120\n"}


def quantile(values: list[float], q: int) -> float:
    """The ``q``-th percentile (linear interpolation; the maximum for few samples)."""
    if len(values) < 2:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def checkins(url: str, count: int, tag: str, rng: random.Random) -> list[float]:
    events = rt.LiveEvents(url)
    try:
        events.wait_sent(rt.checkin(url, *rt.patient(tag, 0))["ticket"])  # warm-up
        out = []
        for i in range(1, count + 1):
            time.sleep(rng.uniform(0.0, 3.0))
            t0 = time.monotonic()
            ticket = rt.checkin(url, *rt.patient(tag, i))["ticket"]
            events.wait_sent(ticket)
            out.append(time.monotonic() - t0)
        return out
    finally:
        events.close()


def measure(ctx: Context, work: Path, count: int) -> dict[str, Any]:
    hub_dir, store, state, _ = kiosk_and_hub(work, [])
    state.close()
    store.close()
    port = free_port()
    hub = start_hub(hub_dir, f"tcp://127.0.0.1:{port}", work / "hub.log")
    out: dict[str, Any] = {}
    try:
        args = ["--target", f"127.0.0.1:{port}", "--latency", str(LATENCY)]
        with emulator("tcp", args, work / "emu.json") as emu, \
                (work / "kiosk.log").open("ab") as log:
            hub_url = "tcp://" + emu.endpoints["listen"]
            for n, (mode, toml) in enumerate(MODES.items()):
                config = work / f"mode{n}.toml"
                config.write_text(toml)
                ui = free_port()
                ctx.log(f"{mode}: {count} check-ins")
                try:
                    with rt.running(work / "kiosk", hub_url, ui, log,
                                    ("--config", str(config))):
                        out[mode] = checkins(f"http://127.0.0.1:{ui}", count, "LAT" + "AB"[n],
                                             random.Random(n))
                except RuntimeError as exc:  # an older runtime refuses the key
                    out[mode] = str(exc)
    finally:
        rt.stop(hub)
    return out


@benchmark("checkin-latency", "A check-in's time to the hub over a 600 ms round trip "
           "(tools/linkemu TCP)")
def checkin_latency(ctx: Context) -> Result:
    count = 12 if ctx.quick else 60
    work = ROOT / "bench-out" / "checkin-latency"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        r = measure(ctx, work, count)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows: list[dict[str, Any]] = []
    for mode, times in r.items():
        if isinstance(times, str):
            rows.append({"mode": mode, "median s": None, "p99 s": None, "max s": None,
                         "check-ins": 0, "goal": f"<= {GOAL_S}", "met": None,
                         "note": times})
            continue
        med, p99 = statistics.median(times), quantile(times, 99)
        kept = mode == "kept-open session"
        rows.append({"mode": mode, "median s": round(med, 3), "p99 s": round(p99, 3),
                     "max s": round(max(times), 3), "check-ins": len(times),
                     "goal": f"<= {GOAL_S}" if kept else "report",
                     "met": p99 <= GOAL_S if kept else None, "note": ""})
    notes = [
        f"`haven-kiosk run` syncs with `haven hub serve` through `tools/linkemu tcp "
        f"--latency {LATENCY}` (600 ms round trip, no rate limit) on 127.0.0.1. {count} new "
        "patients per mode are checked in through the page's API, one at a time, 0-3 s "
        "apart (seeded), after one warm-up check-in. Latency is from before the POST to the "
        "page's event stream saying the check-in left the outbox with the hub's "
        "acknowledgement, which the hub sends after its commit: the hub's disk has it up to "
        "one one-way latency (0.3 s) earlier. p99 is interpolated between samples (with "
        "few check-ins it is close to the maximum).",
    ]
    return Result(rows, ["mode", "median s", "p99 s", "max s", "check-ins", "goal", "met",
                         "note"], notes, {"count": count, "latency": LATENCY, "raw": r})
