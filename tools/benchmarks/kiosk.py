"""The kiosk runtime's own figures (issue 6): page, memory, start-up, bytes on the card.

Everything is measured against the real ``haven-kiosk run`` (the console
script, gpiozero's mock pins), enrolled with a hub that ``haven hub serve``
runs on 127.0.0.1, so the runtime syncs as a kiosk in a clinic does. Its
data directory is on a disk-backed filesystem (under bench-out/; the
filesystem is named in the notes), never tmpfs, where nothing is written
to a block device.

* ``page interactive``: Debian's Chromium, headless, driven by Playwright,
  opens the page; the page's script marks ``haven-ready``
  (``performance.mark``) once its handlers are attached. The figure is that
  mark's time from the start of navigation, median of several loads.
* ``RSS``: ``VmRSS`` of the runtime sampled every 0.1 s for a few seconds
  after the check-ins below (and their sync rounds); the maximum of the
  samples, beside ``VmHWM``.
* ``cold start``: from starting the process to the page answering
  ``GET /``; median of several starts, one after the other, with the store
  holding every check-in of the run and the hub up. The OS's file cache is
  warm (the disk is not cold), as on a kiosk restarted by systemd.
* ``bytes written per check-in``: ``write_bytes`` of ``/proc/<pid>/io`` over
  N new patients checked in through ``POST /api/checkin``, divided by N.
  Online, each check-in waits for its own sync round to end (the page's
  event stream says it left the outbox) before the next, so the round's
  own writes (batch saved before sending, outbox cleared, checkpoint) count
  too: one patient at a time is how a kiosk is used. Offline (hub
  stopped), check-ins come back to back. ``write_bytes`` counts the pages a
  process dirties, 4 KiB each time a page is dirtied again after it was
  written out (every fsync), which is what reaches the card, less the
  filesystem's journal and the card's own amplification. ``wchar`` counts
  every byte passed to write calls, sockets and the log included. fsyncs
  are counted by ``strace -f -c`` attached to the runtime for the same
  phase.
* ``bytes written, simulated day``: ``write_bytes`` of the runtime over a
  day of 8,640 sync rounds, one per 10 s of simulated time, idle and with
  500 check-ins spread over it; how the day is simulated is in ``_runtime`` (``simulated_day``).
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from device.store.acks import FLUSH_AFTER_S as ACK_FLUSH_S
from device.sync.state import FLUSH_AFTER_S as STATE_FLUSH_S

from . import Context, Result, benchmark
from . import _runtime as rt
from ._page_paths import every_path
from .sync import ROOT, free_port, kiosk_and_hub, wait_port

CHROMIUM = Path("/usr/bin/chromium")
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync"]
FSYNCS = "fsync,fdatasync"
READY = """() => {
  const mark = performance.getEntriesByName("haven-ready")[0];
  const nav = performance.getEntriesByType("navigation")[0];
  return {ready: mark.startTime, interactive: nav.domInteractive, load: nav.loadEventEnd};
}"""
MIB = 1024
DAY_ROUNDS = 8640  #: a day of rounds at the default interval, 10 s
DAY_CHECKINS = 500
INTERVAL = 10.0  #: the runtime's default interval between rounds


def page_loads(url: str, loads: int) -> tuple[list[dict[str, float]], list[dict[str, Any]]]:
    """Navigation timings (ms) of ``loads`` loads of the page, each in a new tab; then the
    taps and screens of each way to check in (``_page_paths``)."""
    from playwright.sync_api import sync_playwright

    out = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=BROWSER_ARGS,
                                     headless=True)
        try:
            for _ in range(loads):
                page = browser.new_page(viewport={"width": 800, "height": 480})
                page.goto(url, timeout=30_000)
                page.wait_for_function(
                    "() => performance.getEntriesByName('haven-ready').length > 0", timeout=30_000)
                out.append(dict(page.evaluate(READY)))
                page.close()
            paths = every_path(url, browser, "TP000001", "1984")
        finally:
            browser.close()
    return out, [asdict(f) for f in paths]


def written(pid: int, count: int, one: Any, trace: Path, data: Path) -> dict[str, float]:
    """Bytes written and fsyncs per call of ``one(i)``, over ``count`` calls, and the
    bytes of log lines among them."""
    strace = rt.SyscallCount(pid, FSYNCS, trace)
    before, logged = rt.proc_io(pid), rt.log_size(data)
    for i in range(count):
        one(i)
    after = rt.proc_io(pid)
    fsyncs = sum(strace.finish().values())
    return {"write_bytes": (after["write_bytes"] - before["write_bytes"]) / count,
            "wchar": (after["wchar"] - before["wchar"]) / count, "fsyncs": fsyncs / count,
            "log": (rt.log_size(data) - logged) / count}


def rss_samples(pid: int, seconds: float) -> list[int]:
    samples = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        samples.append(rt.status_kib(pid, "VmRSS"))
        time.sleep(0.1)
    return samples


def cold_starts(data: Path, hub: str, port: int, count: int, log: Any) -> list[float]:
    times = []
    for _ in range(count):
        t0 = time.monotonic()
        proc = rt.start(data, hub, port, log)
        try:
            rt.wait_page(f"http://127.0.0.1:{port}", proc)
            times.append(time.monotonic() - t0)
        finally:
            rt.stop(proc)
    return times


def start_hub(hub_dir: Path, url: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "host.cli", "hub", "serve", "--data",
                                 str(hub_dir), "--listen", url], cwd=ROOT, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    wait_port(int(url.rsplit(":", 1)[1]), proc)
    return proc


def measure(ctx: Context, work: Path, checkins: int, loads: int, starts: int,
            rounds: int, day_rounds: int) -> dict[str, Any]:
    hub_dir, store, state, _ = kiosk_and_hub(work, [])
    state.close()
    store.close()
    kiosk_dir, hub_url = work / "kiosk", f"tcp://127.0.0.1:{free_port()}"
    ui_port = free_port()
    url = f"http://127.0.0.1:{ui_port}"
    r: dict[str, Any] = {"fs": rt.fstype(kiosk_dir)}
    log_path = work / "kiosk.log"
    hub = start_hub(hub_dir, hub_url, work / "hub.log")
    try:
        with log_path.open("ab") as log:
            with rt.running(kiosk_dir, hub_url, ui_port, log) as kiosk:
                ctx.log(f"page interactive: {loads} loads in Chromium")
                r["loads"], r["paths"] = page_loads(url, loads)
                ctx.log(f"{checkins} check-ins, each synced before the next")
                events = rt.LiveEvents(url)

                def synced(i: int) -> None:
                    events.wait_sent(rt.checkin(url, *rt.patient("ON", i))["ticket"])

                try:
                    r["online"] = written(kiosk.pid, checkins, synced, work / "fsync-online.txt",
                                           kiosk_dir)
                finally:
                    events.close()
                ctx.log("RSS, steady")
                r["rss_kib"] = rss_samples(kiosk.pid, 3.0)
                r["hwm_kib"] = rt.status_kib(kiosk.pid, "VmHWM")
                ctx.log(f"{rounds} idle sync rounds, after the deferred writes")
                # What the last check-ins' rounds left in memory (acknowledgements, the
                # cursor) is written within a minute: that belongs to them, not to idling.
                time.sleep(max(ACK_FLUSH_S, STATE_FLUSH_S) + 1)
                # An idle round logs nothing (DEBUG): each is the interval's time.
                r["idle"] = written(kiosk.pid, rounds, lambda i: time.sleep(INTERVAL),
                                    work / "fsync-idle.txt", kiosk_dir)
                rt.stop(hub)
                ctx.log(f"{checkins} check-ins with the hub down")
                r["offline"] = written(kiosk.pid, checkins,
                                       lambda i: rt.checkin(url, *rt.patient("OFF", i)),
                                       work / "fsync-offline.txt", kiosk_dir)
            hub = start_hub(hub_dir, hub_url, work / "hub.log")
            ctx.log(f"cold start: {starts} starts")
            r["starts"] = cold_starts(kiosk_dir, hub_url, ui_port, starts, log)
            ctx.log(f"a simulated day, idle: {day_rounds} rounds")
            r["day_idle"] = rt.simulated_day(kiosk_dir, hub_url, ui_port, log,
                                             rounds=day_rounds)
            busy = round(DAY_CHECKINS * day_rounds / DAY_ROUNDS)
            ctx.log(f"a simulated day with check-ins: {day_rounds} rounds, {busy} check-ins")
            r["day_busy"] = rt.simulated_day(kiosk_dir, hub_url, ui_port, log,
                                             rounds=day_rounds, checkins=busy, tag="DAY")
    finally:
        rt.stop(hub)
    return r


def _row(what: str, value: Any, detail: str, goal: str, met: bool | None) -> dict[str, Any]:
    return {"what": what, "value": value, "detail": detail, "goal": goal, "met": met}


def _day_rows(r: dict[str, Any], day_rounds: int) -> list[dict[str, Any]]:
    scale = DAY_ROUNDS / day_rounds
    idle, busy = r["day_idle"], r["day_busy"]
    idle_mib = idle["io"]["write_bytes"] * scale / MIB / MIB
    busy_mib = busy["io"]["write_bytes"] * scale / MIB / MIB
    how = (f"{day_rounds:,} rounds of 10 s simulated" +
           (f", x {scale:g} to a day" if scale != 1 else "") +
           f"; {idle['seconds']:.0f} s real")
    return [
        _row("bytes written, idle simulated day, MiB", round(idle_mib, 2),
             f"{how}; wchar {idle['io']['wchar'] * scale / MIB / MIB:.2f} MiB; journal lines "
             f"{idle['log_bytes'] * scale / MIB:.1f} KiB",
             "<= 1", idle_mib <= 1),
        _row(f"bytes written, simulated day with {DAY_CHECKINS} check-ins, MiB",
             round(busy_mib, 2),
             f"{busy['checkins']} check-ins in {day_rounds:,} rounds" +
             (f", x {scale:g}" if scale != 1 else "") +
             f"; wchar {busy['io']['wchar'] * scale / MIB / MIB:.2f} MiB; journal lines "
             f"{busy['log_bytes'] * scale / MIB:.1f} KiB", "report", None),
    ]


@benchmark("kiosk", "Kiosk runtime: page interactive, memory, cold start, bytes per check-in")
def kiosk_benchmark(ctx: Context) -> Result:
    checkins, loads, starts, rounds = (30, 5, 3, 1) if ctx.quick else (512, 9, 7, 3)
    day_rounds = DAY_ROUNDS  # a whole day even with --quick: idle rounds take milliseconds
    work = ROOT / "bench-out" / "kiosk-run"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        r = measure(ctx, work, checkins, loads, starts, rounds, day_rounds)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ready = [x["ready"] for x in r["loads"]]
    interactive = [x["interactive"] for x in r["loads"]]
    page_ms = statistics.median(ready)
    rss_mib, hwm_mib = max(r["rss_kib"]) / MIB, r["hwm_kib"] / MIB
    start_s = statistics.median(r["starts"])
    on, off, idle = r["online"], r["offline"], r["idle"]
    rows = [
        _row("page interactive after load, ms", round(page_ms, 1),
             f"max {max(ready):.0f} ms; DOM interactive median "
             f"{statistics.median(interactive):.0f} ms; {loads} loads",
             "<= 1000", page_ms <= 1000),
        _row("runtime RSS, steady, MiB", round(rss_mib, 1),
             f"VmHWM {hwm_mib:.1f} MiB; max of {len(r['rss_kib'])} samples over 3 s",
             "<= 80", rss_mib <= 80 and hwm_mib <= 80),
        _row("cold start to page ready, s", round(start_s, 3),
             f"max {max(r['starts']):.3f} s; {starts} starts", "<= 3", start_s <= 3),
        _row("bytes written per check-in, synced one by one, KiB",
             round(on["write_bytes"] / 1024, 1),
             f"wchar {on['wchar'] / 1024:.1f} KiB; {on['fsyncs']:.2f} fsyncs; log lines "
             f"{on['log']:.0f} B", "<= 32", on["write_bytes"] <= 32 * 1024),
        _row("bytes written per check-in, hub down, KiB", round(off["write_bytes"] / 1024, 1),
             f"wchar {off['wchar'] / 1024:.1f} KiB; {off['fsyncs']:.2f} fsyncs; log lines "
             f"{off['log']:.0f} B", "<= 32", off["write_bytes"] <= 32 * 1024),
        _row("log bytes per check-in (device.logs journal lines), synced / hub down, B",
             f"{on['log']:.0f} / {off['log']:.0f}",
             "counted in the two rows above (the same write calls); an idle round: "
             f"{idle['log']:.0f} B", "in the <= 32 KiB", on["log"] + off["log"] < 8 * 1024),
        _row("bytes written per idle sync round, KiB", round(idle["write_bytes"] / 1024, 1),
             f"wchar {idle['wchar'] / 1024:.1f} KiB; {idle['fsyncs']:.2f} fsyncs; "
             f"{rounds} rounds, one every 10 s (the default interval)", "report", None),
        *_day_rows(r, day_rounds),
        *(_row(f"taps and screens to the ticket: {f['path']}",
               f"{f['taps']} taps, {f['screens']} screens",
               " > ".join(x.removeprefix("s-") for x in f["trail"]), "report", None)
          for f in r["paths"]),
    ]
    notes = [
        f"The kiosk is enrolled and syncs with `haven hub serve` over TCP on 127.0.0.1; "
        f"{checkins} new patients are checked in synced one by one, then {checkins} with the "
        f"hub stopped; then the runtime is started {starts} times in a row. Its data "
        f"directory is on {r['fs']}. Each check-in is a new patient (a patient record and a "
        "check-in record). Python's and Chromium's files are in the OS cache: cold start "
        "is a cold process, not a cold disk. Page timings are Chromium's, from the start of "
        "navigation to the page script's `haven-ready` mark (handlers attached).",
        "Bytes written are `write_bytes` of `/proc/<pid>/io` over the phase divided by its "
        "check-ins: the pages the runtime dirties, 4 KiB each time a page is dirtied again "
        "after an fsync wrote it out, so SQLite's WAL checkpoints count too; the "
        "filesystem's journal and the card's own amplification do not. Synced one by one: "
        "each check-in waits until the page's event stream says it left the outbox, so its "
        "sync round's writes count too. An idle round has nothing to send; it is measured "
        "as 10 s (the interval) of the running runtime's life, once what "
        "the last check-ins' rounds left in memory has been written (a minute later). "
        "`wchar` "
        "counts every byte passed to a write call, sockets and log included; fsyncs are "
        "fsync + fdatasync counted by `strace -f -c` attached to the runtime. The store "
        "checkpoints its WAL every 256 check-ins (device/store/store.py, "
        "CHECKPOINT_WEIGHT), so 512 check-ins a phase take in two checkpoints. The "
        "kiosk's own log (device.logs: JSON lines in logs/ of the data directory, an "
        "fsync at an error or once a minute at most) is written by the same process, so "
        "its bytes are in these figures; log lines: the growth of its files over the "
        "phase, per check-in.",
        "A simulated day: the real runtime (device/runtime.py's `Runtime`, in a child "
        "process, simulated hardware) syncs with the same hub over TCP, with its clock and "
        "its wait between rounds injected: each wait adds the interval (10 s) to the "
        "simulated clock and returns at once, so the next round starts as soon as the last "
        "ended, and the sync state's once-a-minute deferred writes follow the simulated "
        "clock. A day is 8,640 rounds, with `--quick` too. Because `write_bytes` counts a "
        "page when a clean page is dirtied, the kernel's writeback is simulated too: every "
        "30 s of simulated time (vm.dirty_expire_centisecs) each file of the data "
        "directory and the log is fsynced, so a page written again later counts again, as "
        "on a real day. The log (INFO: stderr to one file, and the journal in logs/) "
        "counts. The 500 check-ins are posted to "
        "the page during the waits, spread evenly over the day; the store's 30-s timer for "
        "acknowledged outbox entries runs in real time, so in the simulation they leave "
        "with the next check-in's write rather than in a commit of their own. The session "
        "stays open between rounds (keepalive 120 s, the default); its keepalives run in "
        "real time and write nothing to disk.",
        "Taps and screens: the page in Chromium at 800x480, each tap a click on the page's "
        "own keys and buttons (tools/benchmarks/_page_paths.py); an 8-character passport "
        "(TP000001), the year 1984, a new patient named Ada Lin, and the short code that "
        "patient was given (9 characters with its dash). Scanned: the scanner types into the "
        "field, so only the buttons count. A screen counts each time another is shown, the "
        "start screen and the ticket included.",
    ]
    columns = ["what", "value", "detail", "goal", "met"]
    return Result(rows, columns, notes, {"checkins": checkins, "loads": loads,
                                         "starts": starts, "rounds": rounds, "raw": r})
