"""`haven send`/`haven receive` against ZMODEM, side by side on one emulator.

Each case makes one seeded random file and sends it twice through
``tools/linkemu`` with the same faults and seed: once with ``haven send
--baud 115200`` / ``haven receive``, once with lrzsz ``sz -w 8192`` / ``rz``
(ZMODEM's best setting on a noisy line). Efficiency is file bytes /
(seconds x 11,520 B/s); seconds run from starting the commands to both
exiting, so start-up, hashing and the final confirmation all count.

A last case sends a large file over an unthrottled pty and reports each
side's peak resident memory (``ru_maxrss`` from ``wait4``).
"""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from . import Context, Result, benchmark
from ._link import ROOT, emulator
from .zmodem import run_case as run_zmodem

RATE = 11520
BAUD = 115200
GOALS = {"clean": 0.97, "1e-5": 0.93, "1e-4": 0.85, "1e-3": 0.5}


def _cases(quick: bool) -> list[tuple[str, int, list[str]]]:
    big = 128 << 10 if quick else 1 << 20
    small = 64 << 10 if quick else 256 << 10
    outage_every = 3 if quick else 9
    outages: list[str] = []
    for i in range(10):
        outages += ["--outage", f"{6 + i * outage_every}:2"]
    return [
        ("clean", big, []),
        ("1e-5", big, ["--corrupt", "1e-5"]),
        ("1e-4", big, ["--corrupt", "1e-4"]),
        ("1e-3", small, ["--corrupt", "1e-3"]),
        ("10 outages of 2 s", big, outages),
    ]


def _make_file(path: Path, size: int, seed: int) -> Path:
    rng = random.Random(seed)
    with path.open("wb") as f:
        for start in range(0, size, 1 << 20):
            f.write(rng.randbytes(min(1 << 20, size - start)))
    return path


def _haven(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "host.cli", *args]


def _peak_rss(pid: int) -> int:
    """The process's resident high-water mark in KiB (VmHWM; 0 once it is gone).

    ``ru_maxrss`` from ``wait4`` would not do: it keeps the parent's size
    from before ``exec``, so a child of a big benchmark process looks big."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _wait_all(procs: list[subprocess.Popen[bytes]], deadline: float,
              grace: float = 10.0) -> tuple[list[int | None], list[int], float]:
    """Wait for every process, sampling each one's peak RSS (KiB) while it runs.

    Returns the exit codes (None: killed at the deadline), the peaks and the
    time at which the first process (the sender) ended."""
    peaks = [0] * len(procs)
    first_end: float | None = None
    while True:
        now = time.monotonic()
        for i, proc in enumerate(procs):
            if proc.returncode is None:
                peaks[i] = max(peaks[i], _peak_rss(proc.pid))  # before reaping
                proc.poll()
        if procs[0].returncode is not None and first_end is None:
            first_end = now
            deadline = max(deadline, now + grace)
        if all(p.returncode is not None for p in procs) or now > deadline:
            break
        time.sleep(0.02)
    codes: list[int | None] = []
    for proc in procs:
        if proc.returncode is None:
            proc.kill()
            proc.wait()
            codes.append(None)
        else:
            codes.append(proc.returncode)
    return codes, peaks, first_end if first_end is not None else time.monotonic()


def run_haven(ctx: Context, src: Path, emu_args: list[str], seed: int, limit: float,
              baud: int | None = BAUD) -> dict[str, Any]:
    tag = f"haven-{seed}-{len(ctx.workdir.name)}-{abs(hash(tuple(emu_args)))}"
    recv = ctx.workdir / f"recv-{tag}"
    recv.mkdir()
    rate = ["--rate", str(RATE)] if baud else ["--rate", "0"]
    baud_args = ["--baud", str(baud)] if baud else []
    with emulator("serial", [*rate, "--seed", str(seed), *emu_args],
                  ctx.workdir / f"stats-{tag}.json") as emu:
        t0 = time.monotonic()
        receiver = subprocess.Popen(
            _haven(["receive", emu.endpoints["b"], str(recv), *baud_args, "--json"]),
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )
        sender = subprocess.Popen(
            _haven(["send", emu.endpoints["a"], str(src), *baud_args, "--json"]),
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )
        (send_rc, recv_rc), (send_rss, recv_rss), ended = _wait_all(
            [sender, receiver], t0 + limit)
        seconds = ended - t0
    assert sender.stdout is not None
    out = sender.stdout.read().decode()
    summary = json.loads(out) if send_rc == 0 and out.strip() else {}
    got = recv / src.name
    intact = got.exists() and _sha(got) == _sha(src)
    size = src.stat().st_size
    ok = send_rc == 0 and recv_rc == 0 and intact
    return {
        "outcome": "ok" if ok else ("TIMEOUT" if send_rc is None else f"exit {send_rc}"),
        "seconds": round(seconds, 1) if ok else None,
        "efficiency": round(size / (seconds * RATE), 3) if ok and baud else None,
        "wire_bytes": summary.get("wire_bytes_sent"),
        "retransmitted": summary.get("retransmitted_bytes"),
        "rss_send_MiB": round(send_rss / 1024, 1),
        "rss_recv_MiB": round(recv_rss / 1024, 1),
        "intact": "yes" if intact else "NO",
    }


def _sha(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


@benchmark("transfer", "haven send/receive against ZMODEM on the emulated serial line")
def transfer(ctx: Context) -> Result:
    rows: list[dict[str, Any]] = []
    clean: dict[str, Any] = {}
    for seed, (label, size, emu_args) in enumerate(_cases(ctx.quick), start=11):
        src = _make_file(ctx.workdir / f"file-{seed}.bin", size, seed)
        limit = 3.0 * size / RATE + 60
        ctx.log(f"transfer {label}: haven")
        ours = run_haven(ctx, src, emu_args, seed, limit)
        ctx.log(f"transfer {label}: sz -w 8192")
        corrupt = float(emu_args[1]) if emu_args[:1] == ["--corrupt"] else 0.0
        extra = tuple(emu_args) if emu_args[:1] == ["--outage"] else ()
        peer = run_zmodem(ctx, src, corrupt, 8192, seed, limit, extra)
        if label == "clean":
            clean = ours
        row = {
            "case": label, "file_KiB": size // 1024,
            "haven": ours["outcome"], "haven_s": ours["seconds"],
            "haven_eff": ours["efficiency"], "haven_wire": ours["wire_bytes"],
            "haven_retx": ours["retransmitted"],
            "zmodem": peer.get("outcome"), "zmodem_s": peer.get("seconds"),
            "zmodem_eff": peer.get("efficiency"),
            "goal": GOALS.get(label, "see notes"),
        }
        if label.startswith("10 outages") and clean.get("wire_bytes") and ours["wire_bytes"]:
            row["goal"] = (f"bytes {ours['wire_bytes'] / clean['wire_bytes']:.3f}x clean "
                           f"(<=1.05), +{ours['seconds'] - clean['seconds']:.1f} s (<=30)")
        rows.append(row)
    big = (10 if ctx.quick else 100) << 20
    src = _make_file(ctx.workdir / "big.bin", big, 99)
    ctx.log(f"transfer: {big >> 20} MiB over an unthrottled pty")
    mem = run_haven(ctx, src, [], 99, 600, baud=None)
    rows.append({
        "case": f"{big >> 20} MiB unthrottled, peak RSS", "file_KiB": big // 1024,
        "haven": mem["outcome"], "haven_s": mem["seconds"],
        "goal": f"RSS send {mem['rss_send_MiB']} MiB, receive {mem['rss_recv_MiB']} MiB (<=40)",
    })
    return Result(
        rows,
        ["case", "file_KiB", "haven", "haven_s", "haven_eff", "haven_wire", "haven_retx",
         "zmodem", "zmodem_s", "zmodem_eff", "goal"],
        notes=[
            "Same file, emulator, faults and seed for both; line 11,520 B/s each way "
            "(115200 baud 8N1); efficiency = file bytes / (seconds x 11,520).",
            "haven_wire: bytes the sender put on the line; haven_retx: data bytes sent again.",
            "ZMODEM here is sz -w 8192 (its best setting on noise); see the zmodem table "
            "for plain sz.",
        ],
    )
