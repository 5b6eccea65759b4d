"""ZMODEM (lrzsz ``sz``/``rz``) through the link emulator: the serial peer.

Each case sends a random file from ``sz -b`` to ``rz -b -y`` across the
emulator in serial mode at 11,520 B/s (115200 baud 8N1), with and without
``sz -w 8192``, on a clean line and at 1e-4 byte errors in both directions.
Efficiency is file bytes / (seconds x line rate); the emulator's own stats
give the bytes on the wire and the byte rate it achieved, which cross-checks
the emulator against the figures PEERS.md took through an independent relay
(0.937 clean, about 0.67 at 1e-4 with -w 8192).
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from . import Context, Result, benchmark
from ._link import emulator, open_tty

RATE = 11520
CASES = [  # (label, byte error rate, sz window)
    ("clean", 0.0, None),
    ("clean -w 8192", 0.0, 8192),
    ("1e-4", 1e-4, None),
    ("1e-4 -w 8192", 1e-4, 8192),
]


def _wait(procs: list[subprocess.Popen[bytes]], deadline: float) -> list[float | None]:
    done: list[float | None] = [None] * len(procs)
    while time.monotonic() < deadline and None in done:
        for i, p in enumerate(procs):
            if done[i] is None and p.poll() is not None:
                done[i] = time.monotonic()
        time.sleep(0.02)
    return done


def run_case(ctx: Context, src: Path, corrupt: float, window: int | None, seed: int,
             limit: float, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    size = src.stat().st_size
    tag = f"{seed}-{corrupt}-{window}{''.join(extra)}"
    recv = ctx.workdir / f"recv-{tag}"
    recv.mkdir()
    log = (ctx.workdir / f"log-{tag}.txt").open("wb")
    args = ["--rate", str(RATE), "--corrupt", str(corrupt), "--seed", str(seed), *extra]
    row: dict[str, Any] = {}
    with emulator("serial", args, ctx.workdir / f"stats-{tag}.json") as emu:
        fa, fb = open_tty(emu.endpoints["a"]), open_tty(emu.endpoints["b"])
        sz_cmd = ["sz", "-b", *(["-w", str(window)] if window else []), str(src)]
        t0 = time.monotonic()
        rz = subprocess.Popen(["rz", "-b", "-y"], stdin=fb, stdout=fb, stderr=log,
                              cwd=recv, start_new_session=True)
        sz = subprocess.Popen(sz_cmd, stdin=fa, stdout=fa, stderr=log, start_new_session=True)
        ends = _wait([sz, rz], t0 + limit)
        for p in (sz, rz):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        os.close(fa)
        os.close(fb)
    log.close()
    got = recv / src.name
    intact = got.exists() and _sha(got) == _sha(src)
    finished = None not in ends and sz.returncode == 0 and rz.returncode == 0
    ab, ba = emu.stats.get("ab", {}), emu.stats.get("ba", {})
    row["outcome"] = "ok" if finished and intact else (
        "TIMEOUT" if None in ends else f"FAILED sz={sz.returncode} rz={rz.returncode}")
    row["intact"] = intact
    if finished:
        seconds = max(e for e in ends if e is not None) - t0
        row["seconds"] = round(seconds, 1)
        row["efficiency"] = round(size / (seconds * RATE), 3)
        row["e2e_rate"] = round(ab.get("bytes_in", 0) / seconds)
    else:
        row["seconds"] = None
        row["efficiency"] = None
        row["e2e_rate"] = None
    row["wire_per_byte"] = round(ab.get("bytes_in", 0) / size, 3)
    row["wire_back"] = ba.get("bytes_in", 0)
    row["corrupted"] = ab.get("corrupted", 0) + ba.get("corrupted", 0)
    row["achieved_rate"] = ab.get("achieved_rate")
    row["max_late_ms"] = round(1000 * ab.get("max_late_s", 0.0), 1)
    # When sz->rz bytes first and last reached rz, on the emulator's clock: a long
    # quiet stretch at either end is a protocol timeout, not the line.
    row["first_byte_s"] = ab.get("first_write_s")
    row["last_byte_s"] = ab.get("last_write_s")
    shutil.rmtree(recv)
    return row


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@benchmark("zmodem", "ZMODEM (lrzsz) file transfer through the emulated serial line")
def zmodem(ctx: Context) -> Result:
    size = (128 if ctx.quick else 1024) * 1024
    ideal = size / RATE
    limit = max(60.0, 3 * ideal)
    notes = [f"{size:,}-byte random file, {RATE:,} B/s each way, time limit {limit:.0f} s "
             "per case, one seeded run each; efficiency = file bytes / (seconds x rate); "
             "wire_per_byte counts sz->rz bytes; achieved_rate is the emulator's own measure "
             "of its delivery rate sz->rz; e2e_rate is sz->rz wire bytes over the transfer "
             "time on the benchmark's clock; corrupted counts both directions.",
             "Reference (PEERS.md, an independent relay): 0.937 clean, 1.033 wire bytes "
             "per file byte; about 0.67 at 1e-4 with -w 8192.",
             "Cross-check (2026-11-26): this emulator's rate is exact (achieved_rate and "
             "e2e_rate agree within 0.3% of 11,520), so a clean run comes out at 1/1.033 = "
             "0.967, above PEERS' 0.937, whose relay delivered about 3% under nominal "
             "(1.033 x 1 MiB / 97.2 s = 11,144 B/s). At 1e-4 with -w 8192 it gave 0.53 to "
             "0.55 over seeds 4 and 5, against PEERS' 0.67: the line was busy throughout, "
             "so the difference is ZMODEM's resending (about 4.5 KB lost per error here, "
             "2.7 KB implied by PEERS' figure), and cutting the emulator's transmit buffer "
             "from 4 KB to 1 KB changed nothing (sz's window bounds what is in flight). The "
             "cause of that difference was not found. Without a window, sz keeps the pty's "
             "kernel buffer (about 18 KB) and the emulator's 4 KB full, more than the mean "
             "10 KB between errors at 1e-4, so most of each resend is lost again; that is "
             "the likely (unverified) reason the default case times out.",
             "End-of-session race: lrzsz exits with tcdrain() then tcflush(TCIOFLUSH); on "
             "a pty tcdrain() does not wait for the relay to read, so the flush could "
             "discard sz's final \"OO\" and rz then waited 3 x 10 s (about half of the "
             "runs, 30 s added to a case, before the emulator put its pty masters in packet "
             "mode; with packet mode 8 of 8 short runs ended cleanly, why exactly is not "
             "understood). first_byte_s and last_byte_s in results.json show such waits."]
    if not (shutil.which("sz") and shutil.which("rz")):
        return Result([], [], notes + ["lrzsz not installed: run ./tools/bench (it installs it)"])
    src = ctx.workdir / "file.bin"
    src.write_bytes(random.Random(2026).randbytes(size))
    rows = []
    for seed, (label, corrupt, window) in enumerate(CASES, start=1):
        ctx.log(f"zmodem {label} ({size:,} B, limit {limit:.0f} s)")
        row = {"case": label, **run_case(ctx, src, corrupt, window, seed, limit)}
        ctx.log(str(row))
        rows.append(row)
    columns = ["case", "outcome", "seconds", "efficiency", "wire_per_byte", "achieved_rate",
               "e2e_rate", "corrupted", "intact"]
    return Result(rows, columns, notes, {"file_bytes": size, "rate": RATE, "limit_s": limit})
