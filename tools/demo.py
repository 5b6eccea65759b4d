"""What ``./tools/run`` shows: ``haven send`` / ``haven receive`` through a noisy link.

Theory of operation
-------------------
The link emulator (``tools/linkemu.py``, serial mode) stands between two
ptys at 115200 baud, with byte errors, error bursts, lost and duplicated
frames and a short outage. A random file is generated, and the two real
commands run on the two ptys, as a technician would run them:

1. ``haven receive`` and ``haven send --baud 115200``; when about 40% of the
   file is in, both are killed with SIGKILL;
2. the same two commands again: they continue where they stopped, and only
   the missing chunks cross.

The live progress line is drawn from the receiver's own durable index
(``DIR/.haven/index.db``), so it shows what is safely on disk. It is redrawn
in place on a terminal, printed every few seconds otherwise. At the end the
received file is compared with the original, and the runs' ``--json``
summaries and the emulator's own account are printed. It ends by itself in
about half a minute, or on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tools.benchmarks._link import ROOT, emulator

RUN_TIMEOUT = 60.0


def haven(*args: str | Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "host.cli", *map(str, args)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def stored(out: Path, name: str, size: int) -> int:
    """Bytes of the file durably received so far."""
    if (out / name).exists():
        return size
    try:
        with sqlite3.connect(out / ".haven" / "index.db", timeout=1) as db:
            row = db.execute("SELECT sum(length) FROM chunks WHERE path LIKE '.haven/%'")
            return int(row.fetchone()[0] or 0)
    except sqlite3.Error:
        return 0


class Watch:
    def __init__(self, out: Path, name: str, size: int) -> None:
        self.out, self.name, self.size = out, name, size
        self.tty = sys.stdout.isatty()
        self.t0 = time.monotonic()
        self.last = 0.0

    def show(self, label: str, force: bool = False) -> int:
        done = stored(self.out, self.name, self.size)
        now = time.monotonic()
        if force or now - self.last >= (0.25 if self.tty else 3.0):
            self.last = now
            frac = done / self.size
            bar = "#" * int(frac * 30)
            line = (f"{label} {now - self.t0:5.1f}s [{bar:30}] {frac * 100:5.1f}%"
                    f"  {done:,} of {self.size:,} B on the receiver's disk")
            print(("\r\033[K" + line) if self.tty else line, end="" if self.tty else "\n",
                  flush=True)
        return done

    def end(self) -> None:
        if self.tty:
            print(flush=True)


def start(emu: dict[str, str], src: Path, out: Path, baud: int) -> list[subprocess.Popen[str]]:
    common = ("--json", "--timeout", "30", "--baud", str(baud))
    return [haven("receive", emu["b"], out, *common), haven("send", emu["a"], src, *common)]


def results(procs: list[subprocess.Popen[str]]) -> list[tuple[int, dict[str, Any], str]]:
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=RUN_TIMEOUT)
        out.append((p.returncode, json.loads(stdout) if stdout.startswith("{") else {},
                    stderr.strip()))
    return out


def run(args: argparse.Namespace, workdir: Path) -> int:
    src = workdir / "xray-0001.dcm"
    src.write_bytes(random.Random(args.seed).randbytes(args.size))
    out = workdir / "received"
    out.mkdir()
    rate = args.baud // 10
    emu_args = ["--rate", str(rate), "--corrupt", str(args.corrupt), "--burst", "2e-5",
                "--burst-len", "12", "--loss", "0.01", "--dup", "0.005",
                "--outage", "12:2", "--seed", str(args.seed)]
    print(f"haven send / haven receive of a {args.size:,} B file over an emulated serial line:"
          f" {args.baud} baud ({rate:,} B/s), byte errors {args.corrupt}, bursts, 1% frame"
          f" loss, 0.5% duplicates, a 2 s outage at 12 s", flush=True)
    watch = Watch(out, src.name, args.size)
    with emulator("serial", emu_args, workdir / "linkemu-stats.json") as emu:
        procs = start(emu.endpoints, src, out, args.baud)
        deadline = time.monotonic() + RUN_TIMEOUT
        while watch.show("run 1") < args.size * args.kill_at and time.monotonic() < deadline:
            if any(p.poll() is not None for p in procs):
                break
            time.sleep(0.1)
        watch.show("run 1", force=True)
        watch.end()
        for p in reversed(procs):  # the sender first, then the receiver
            p.send_signal(signal.SIGKILL)
            p.wait(10)
        print(f"killed both sides (SIGKILL) with {stored(out, src.name, args.size):,} B in;"
              " running the same two commands again", flush=True)
        procs = start(emu.endpoints, src, out, args.baud)
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline + 30:
            watch.show("run 2")
            time.sleep(0.1)
        watch.show("run 2", force=True)
        watch.end()
        for p in procs:
            if p.poll() is None:
                p.kill()
        (r_rc, r, r_err), (s_rc, s, s_err) = results(procs)
    return report(src, out, (r_rc, r, r_err), (s_rc, s, s_err), emu.stats)


def report(src: Path, out: Path, recv: tuple[int, dict[str, Any], str],
           send: tuple[int, dict[str, Any], str], stats: dict[str, Any]) -> int:
    (r_rc, r, r_err), (s_rc, s, s_err) = recv, send
    intact = (out / src.name).exists() and (out / src.name).read_bytes() == src.read_bytes()
    print(f"receive exited {r_rc}, send exited {s_rc}; the file arrived "
          + ("intact (same SHA-256)" if intact else "WRONG OR MISSING"))
    for label, rc, err in (("receive", r_rc, r_err), ("send", s_rc, s_err)):
        if rc and err:
            print(f"  {label}: {err}")
    if r and s:
        print(f"run 2 moved {r['chunks_moved']} of {r['chunks']} chunks"
              f" ({r['chunks_reused']} were already on disk): {s['chunk_bytes_moved']:,} B of"
              f" file data in {s['wire_bytes_sent']:,} B on the wire"
              f" ({s['retransmitted_bytes']:,} B retransmitted), {s['wire_bytes_received']:,} B"
              f" back, in {s['seconds']:.1f} s")
    ab = stats.get("ab", {})
    if ab:
        print(f"the link says (sender to receiver): {ab['bytes_in']:,} B in,"
              f" {ab['corrupted']:,} bytes corrupted ({ab['bursts']} bursts),"
              f" {ab['lost_units']} frames lost, {ab['dup_units']} duplicated,"
              f" {ab['outage_bytes']:,} B dropped in {ab.get('outages', 0)} outage(s)")
    return 0 if intact and r_rc == s_rc == 0 else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="run", description=__doc__.split("\n")[0] if __doc__
                                else None)
    p.add_argument("--size", type=int, default=192 * 1024, help="file size, bytes")
    p.add_argument("--baud", type=int, default=115200, help="line speed (8N1)")
    p.add_argument("--corrupt", type=float, default=1e-4, help="byte error rate")
    p.add_argument("--kill-at", type=float, default=0.4,
                   help="fraction of the file in when both sides are killed")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="haven-run-") as tmp:
        try:
            return run(args, Path(tmp))
        except KeyboardInterrupt:
            print("\ninterrupted", file=sys.stderr)
            return 130


if __name__ == "__main__":
    sys.exit(main())
