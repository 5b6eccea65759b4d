"""Check-ins while a client floods the technician's console with garbage at line rate.

The real ``haven-kiosk run`` (the console script, simulated hardware, enrolled
with ``haven hub serve`` on 127.0.0.1, as the kiosk benchmark runs it) serves its
console (``--console``) on one end of ``tools/linkemu.py``'s emulated serial line
at 11,520 B/s each way (115200 baud 8N1). New patients are checked in through the
page's API (``POST /api/checkin`` over 127.0.0.1), one after another, each timed
from before the request to its answer, in blocks that alternate between the
console quiet and a flooder writing into the other end of the line for the whole
block (quiet-flood, then flood-quiet, and so on: both states see the same machine,
shared with other work, and the same store). The flood is random bytes (0x00,
newlines and markers included) mixed with a log's text lines, false SMP lines and
runs too long for a frame, written at line rate a little ahead of the line, so the
console receives a full line's worth and the line is quiet again soon after.

Beside each state: the runtime's CPU share (``utime + stime`` of
``/proc/<pid>/stat`` over the blocks' wall time; 1.0 is one core), the bytes the
emulator delivered to the console, and the console's own counters (its Stat group
``console``, read over the same line with smpclient before and after). The
issue's goal: p99 with the flood at most twice p99 with the console quiet.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import shutil
import signal
import statistics
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from protocol.smp import console

from . import Context, Result, benchmark
from . import _runtime as rt
from ._link import Emulator, emulator, open_tty
from .checkin_latency import quantile
from .console import RATE
from .kiosk import start_hub
from .sync import ROOT, free_port, kiosk_and_hub

GOAL = 2.0  #: p99 with the flood over p99 quiet, at most
WARMUP = 10  #: check-ins before the quiet phase (imports, caches, the first sync)
LEAD = 2048  #: bytes the flooder may be ahead of the line (under 0.2 s of it)
SETTLE = 0.3  #: seconds of flood before a block's first timed check-in
DRAIN = 0.5  #: seconds after a flood stops before a quiet block: what it left is through
IDLE = 2.0  #: seconds of CPU measured with no check-ins, in each console state
LONG_RUN = 9000  #: longer than the demux keeps (8 KiB)
LONG_RUN_BYTES = bytes(b for b in range(1, 256) if b != 0x0A)
COUNTERS = ("demux_text_bytes", "demux_smp_lines", "demux_haven_frames", "demux_oversized",
            "demux_oversized_bytes", "lines_bad_crc", "lines_bad_base64", "lines_bad_length",
            "lines_orphans", "lines_abandoned", "smp_requests", "smp_errors",
            "smp_not_requests", "haven_dropped")


class Flooder:
    """Writes garbage mixed with text lines into a tty at line rate, ``LEAD`` bytes ahead
    of the line at most: the line never idles, and once stopped it is quiet again within
    a fraction of a second (a writer left to block would fill the kernel's pty buffers
    too, seconds of line time)."""

    def __init__(self, path: str, rng: random.Random) -> None:
        self.fd = open_tty(path)
        self.rng = rng
        self.written = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="flooder", daemon=True)

    def _chunk(self) -> bytes:
        rng, roll = self.rng, self.rng.random()
        if roll < 0.25:  # a log's line
            return f"[{time.monotonic():.3f}] app: {rng.random()} ok\r\n".encode()
        if roll < 0.35:  # an SMP line that is not one: bad CRC, length or continuation
            marker = console.START if rng.random() < 0.7 else console.CONTINUE
            return marker + base64.b64encode(rng.randbytes(rng.randint(6, 90))) + b"\n"
        if roll < 0.37:  # a run too long for a frame or a line: no 0x00, no newline
            return bytes(rng.choice(LONG_RUN_BYTES) for _ in range(LONG_RUN))
        return rng.randbytes(rng.randint(16, 400))

    def _run(self) -> None:
        pending, t0 = b"", time.monotonic()
        try:
            while not self.stop.is_set():
                room = int(RATE * (time.monotonic() - t0)) + LEAD - self.written
                if room <= 0:
                    self.stop.wait(min(0.01, -room / RATE + 0.001))
                    continue
                pending = pending or self._chunk()
                n = os.write(self.fd, pending[:room])
                pending, self.written = pending[n:], self.written + n
        except OSError:
            pass

    def __enter__(self) -> Flooder:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(rt.BOUND)
        os.close(self.fd)


def line_snapshot(emu: Emulator) -> tuple[float, int]:
    """The emulator's clock and the bytes it has delivered to the console so far."""
    emu.stats_path.unlink(missing_ok=True)
    emu.proc.send_signal(signal.SIGUSR1)
    end = time.monotonic() + rt.BOUND
    while not emu.stats_path.exists():
        if time.monotonic() > end:
            raise RuntimeError("the link emulator wrote no stats")
        time.sleep(0.01)
    stats = json.loads(emu.stats_path.read_text())
    return float(stats["elapsed_s"]), int(stats["ba"]["bytes_delivered"])  # b -> a


def cpu_ticks(pid: int) -> int:
    """``utime + stime`` of ``/proc/<pid>/stat``, every thread of the process, in ticks."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)


def console_counters(port: str) -> dict[str, int]:
    """The runtime's console counters (Stat group ``console``), read with smpclient."""
    from smpclient import SMPClient
    from smpclient.generics import success
    from smpclient.requests import statistics_management as stat
    from smpclient.transport.serial import SMPSerialTransport

    async def run() -> dict[str, int]:
        client = SMPClient(SMPSerialTransport(), port, timeout_s=10.0)
        await client.connect()
        try:
            got = await client.request(stat.GroupData(name="console"))
        finally:
            await client.disconnect()
        if not success(got):
            raise RuntimeError(f"the console's counters: {got}")
        return {str(k): int(v) for k, v in got.fields.items()}
    return asyncio.run(run())


def idle_cpu(pid: int, seconds: float) -> float:
    """The runtime's CPU share over ``seconds`` with nothing checked in."""
    c0, t0 = cpu_ticks(pid), time.monotonic()
    time.sleep(seconds)
    return (cpu_ticks(pid) - c0) / os.sysconf("SC_CLK_TCK") / (time.monotonic() - t0)


@dataclass
class Phase:
    """One console state's check-ins, over all its blocks."""

    times: list[float] = field(default_factory=list)
    ticks: int = 0  #: the runtime's CPU over the blocks, in clock ticks
    seconds: float = 0.0  #: the blocks' wall time
    line_bytes: int = 0  #: delivered to the console during the blocks
    line_seconds: float = 0.0


def block(url: str, pid: int, emu: Emulator, count: int, tag: str, into: Phase) -> None:
    """``count`` check-ins one after another, each one's seconds, the runtime's CPU and
    the bytes the line delivered to the console meanwhile, added to ``into``."""
    e0, b0 = line_snapshot(emu)
    c0, t0 = cpu_ticks(pid), time.monotonic()
    first = len(into.times)
    for i in range(first, first + count):
        s = time.monotonic()
        rt.checkin(url, *rt.patient(tag, i))
        into.times.append(time.monotonic() - s)
    into.seconds += time.monotonic() - t0
    into.ticks += cpu_ticks(pid) - c0
    e1, b1 = line_snapshot(emu)
    into.line_bytes += b1 - b0
    into.line_seconds += e1 - e0


def measure(ctx: Context, work: Path, count: int, size: int) -> dict[str, Any]:
    hub_dir, store, state, _ = kiosk_and_hub(work, [])
    state.close()
    store.close()
    hub_url, ui = f"tcp://127.0.0.1:{free_port()}", free_port()
    url = f"http://127.0.0.1:{ui}"
    out: dict[str, Any] = {"fs": rt.fstype(work)}
    rng = random.Random(13)
    hub = start_hub(hub_dir, hub_url, work / "hub.log")
    try:
        args = ["--rate", str(RATE), "--seed", "13"]
        with emulator("serial", args, work / "emu.json") as emu, \
                (work / "kiosk.log").open("ab") as log, \
                rt.running(work / "kiosk", hub_url, ui, log,
                           ("--console", emu.endpoints["a"])) as kiosk:
            tool = emu.endpoints["b"]
            for i in range(WARMUP):
                rt.checkin(url, *rt.patient("WARM", i))
            before = console_counters(tool)
            out["idle_cpu"] = {"quiet": idle_cpu(kiosk.pid, IDLE)}
            with Flooder(tool, rng):
                out["idle_cpu"]["flood"] = idle_cpu(kiosk.pid, IDLE)
            time.sleep(DRAIN)
            phases = {"quiet": Phase(), "flood": Phase()}
            blocks = count // size
            ctx.log(f"{blocks} blocks of {size} check-ins per console state, alternating")
            for b in range(blocks):
                for kind in ("quiet", "flood") if b % 2 == 0 else ("flood", "quiet"):
                    if kind == "quiet":
                        block(url, kiosk.pid, emu, size, "QUIET", phases["quiet"])
                        continue
                    with Flooder(tool, rng):
                        time.sleep(SETTLE)
                        block(url, kiosk.pid, emu, size, "FLOOD", phases["flood"])
                    time.sleep(DRAIN)
            after = console_counters(tool)
            out["phases"] = {k: asdict(v) for k, v in phases.items()}
            out["counters"] = {k: after.get(k, 0) - before.get(k, 0) for k in COUNTERS}
            out["alive"] = kiosk.poll() is None
        out["emu"] = emu.stats
    finally:
        rt.stop(hub)
    return out


@benchmark("console-flood", "Check-ins while the console is flooded with garbage at "
           "115200 baud, beside a quiet console")
def console_flood(ctx: Context) -> Result:
    count, size = (500, 100) if ctx.quick else (3000, 250)
    work = ROOT / "bench-out" / "console-flood"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        r = measure(ctx, work, count, size)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ph = r["phases"]
    p99 = {name: quantile(ph[name]["times"], 99) for name in ("quiet", "flood")}
    ratio = p99["flood"] / p99["quiet"]
    tick = os.sysconf("SC_CLK_TCK")
    c = r["counters"]
    rows = []
    for name in ("quiet", "flood"):
        x, flood = ph[name], name == "flood"
        rows.append({
            "console": name, "check-ins": len(x["times"]),
            "p50 ms": round(statistics.median(x["times"]) * 1000, 1),
            "p99 ms": round(p99[name] * 1000, 1), "max ms": round(max(x["times"]) * 1000, 1),
            "line B/s": round(x["line_bytes"] / x["line_seconds"]),
            "runtime CPU": round(x["ticks"] / tick / x["seconds"], 3),
            "CPU, no check-ins": round(r["idle_cpu"][name], 3),
            "oversized": c["demux_oversized"] if flood else None,
            "SMP lines dropped": sum(c[k] for k in COUNTERS if k.startswith("lines_"))
            if flood else None,
            "frames": c["demux_haven_frames"] if flood else None,
            "p99 / quiet p99": round(p99[name] / p99["quiet"], 2),
            "goal": f"<= {GOAL:g}" if flood else "",
            "met": ratio <= GOAL if flood else None,
        })
    blocks = count // size
    notes = [
        f"`haven-kiosk run --console` (simulated hardware, enrolled, syncing with `haven hub "
        f"serve` over TCP on 127.0.0.1) on one end of tools/linkemu.py's serial line (two pty "
        f"pairs) at {RATE:,} B/s each way (115200 baud 8N1); its data directory on {r['fs']}. "
        f"New patients are checked in through `POST /api/checkin`, one after another, after "
        f"{WARMUP} warm-up check-ins; latency is the request's round trip. The two console "
        f"states alternate in blocks of {size} check-ins ({blocks} blocks each, quiet-flood "
        "then flood-quiet), so that both see the same machine (2 cores, shared with other "
        "work) and the same store. During a flood block a flooder writes into the line's "
        f"other end, from {SETTLE:g} s before the block's first check-in to its last, in "
        "pieces: 63 % random bytes (16 to 400), 25 % a log's text lines, 10 % lines with an "
        "SMP marker and random base64, 2 % runs of 9,000 bytes with no 0x00 or newline. It "
        f"writes at line rate and at most {LEAD:,} bytes ahead of the line; a quiet block "
        f"starts {DRAIN:g} s after a flood stops. line B/s: bytes the emulator delivered to "
        "the console during the state's blocks over their time (its own counters).",
        "runtime CPU: utime + stime of /proc/<pid>/stat over the blocks' wall time (1.0 is "
        "one of the machine's 2 cores; the hub, the emulator and this client run beside "
        f"it); CPU, no check-ins: the same over {IDLE:g} s with nothing checked in, before "
        "the blocks. The console's counters (flood row) are its Stat group `console`, read "
        "with smpclient over the same line before and after the blocks: oversized: runs "
        "longer than 8 KiB dropped; SMP lines dropped: bad CRC, base64 or length, orphaned "
        "or abandoned continuations; frames: COBS runs that decoded and went to the "
        "console's Haven endpoint. p99 is interpolated between samples. "
        f"The runtime {'was' if r['alive'] else 'was NOT'} still running at the end.",
    ]
    columns = ["console", "check-ins", "p50 ms", "p99 ms", "max ms", "line B/s",
               "runtime CPU", "CPU, no check-ins", "oversized", "SMP lines dropped", "frames",
               "p99 / quiet p99", "goal", "met"]
    raw = {k: v for k, v in r.items() if k != "phases"}
    return Result(rows, columns, notes, {"count": count, "block": size, "rate": RATE,
                                         "ratio": ratio, "raw": raw})
