"""What ``./tools/run`` shows today: frames through the emulated noisy serial link.

Theory of operation
-------------------
The most complete end-to-end path that exists so far: the link emulator
(``tools/linkemu.py``, serial mode) between two ptys, opened through pyserial
as a kiosk and a hub would open their serial ports. The kiosk side sends
numbered frames (``protocol.framing``) at about 90% of the line rate; the
line corrupts bytes, has error bursts, loses and duplicates frames, and goes
out for a few seconds. The hub side decodes with ``FrameDecoder`` and counts
what arrived, what was a duplicate, and what the decoder dropped and why.

A progress line is redrawn in place on a terminal (plain lines every few
seconds otherwise). It ends by itself after ``--seconds`` (and a short drain)
or on Ctrl-C, stops the emulator, and prints the emulator's own account.
There is no retransmission yet: that is the reliable session's job, and
this demo will become a hub-and-kiosk demo once that exists.
"""

from __future__ import annotations

import argparse
import random
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import serial

from protocol.framing import FrameDecoder, encode_frame
from tools.benchmarks._link import emulator

DRAIN_S = 1.5


def progress(t: float, sent: int, sent_bytes: int, dec: FrameDecoder, good: set[int],
             dups: int, bad: int) -> str:
    s = dec.stats
    return (f"{t:5.1f}s  sent {sent} frames ({sent_bytes:,} B)  received {len(good)}"
            f" (+{dups} dup)  dropped crc {s.bad_crc} cobs {s.bad_cobs} runt {s.runts}"
            f" oversized {s.oversized}  bytes in {s.bytes_in:,}"
            + (f"  WRONG {bad}" if bad else ""))


def run(args: argparse.Namespace, workdir: Path) -> int:
    emu_args = ["--rate", str(args.rate), "--corrupt", str(args.corrupt),
                "--burst", "2e-5", "--burst-len", "12", "--loss", "0.01", "--dup", "0.005",
                "--outage", f"{args.seconds * 0.4:.1f}:{args.outage}", "--seed", str(args.seed)]
    tty = sys.stdout.isatty()
    rng = random.Random(args.seed)
    dec = FrameDecoder()
    good: set[int] = set()
    dups = bad = sent = sent_bytes = 0
    sent_payloads: dict[int, bytes] = {}
    interrupted = False
    print(f"frames over an emulated serial link: {args.rate} B/s, byte errors {args.corrupt},"
          f" bursts, 1% frame loss, 0.5% duplicates, a {args.outage:g} s outage;"
          f" {args.seconds:g} s", flush=True)
    with emulator("serial", emu_args, workdir / "linkemu-stats.json") as emu:
        kiosk = serial.Serial(emu.endpoints["a"], timeout=0, write_timeout=2)
        hub = serial.Serial(emu.endpoints["b"], timeout=0)
        t0 = time.monotonic()
        budget = 0.0  # bytes we may still send, refilled at 90% of the line rate
        last_tick = t0
        last_print = 0.0
        try:
            while True:
                now = time.monotonic()
                t = now - t0
                if t >= args.seconds + DRAIN_S:
                    break
                budget = min(budget + (now - last_tick) * args.rate * 0.9, 2048.0)
                last_tick = now
                while t < args.seconds and budget > 0:
                    body = rng.randbytes(rng.randrange(16, 400))
                    payload = struct.pack(">I", sent) + body
                    wire = encode_frame(payload)
                    kiosk.write(wire)
                    sent_payloads[sent] = payload
                    sent += 1
                    sent_bytes += len(wire)
                    budget -= len(wire)
                for payload in dec.feed(hub.read(65536)):
                    (seq,) = struct.unpack_from(">I", payload)
                    if sent_payloads.get(seq) != payload:
                        bad += 1
                    elif seq in good:
                        dups += 1
                    else:
                        good.add(seq)
                if now - last_print >= (0.25 if tty else 5.0):
                    last_print = now
                    line = progress(t, sent, sent_bytes, dec, good, dups, bad)
                    print(("\r\033[K" + line) if tty else line, end="" if tty else "\n",
                          flush=True)
                time.sleep(0.02)
        except (KeyboardInterrupt, serial.SerialException):
            interrupted = True
        final = progress(time.monotonic() - t0, sent, sent_bytes, dec, good, dups, bad)
        print(("\r\033[K" if tty else "") + final, flush=True)
        kiosk.close()
        hub.close()
    summary(emu.stats, sent, len(good), interrupted)
    return 1 if bad else 0


def summary(stats: dict[str, Any], sent: int, received: int, interrupted: bool) -> None:
    ab = stats.get("ab", {})
    lost = sent - received
    print(f"{'interrupted; ' if interrupted else ''}delivered {received} of {sent} frames"
          f" ({lost} lost: no retransmission yet).")
    if ab:
        print(f"the link says: {ab['bytes_in']:,} B in, {ab['corrupted']:,} bytes corrupted"
              f" ({ab['bursts']} bursts), {ab['lost_units']} frames lost,"
              f" {ab['dup_units']} duplicated, {ab['outage_bytes']:,} B dropped in"
              f" {ab.get('outages', 0)} outage(s).")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="run", description=__doc__.split("\n")[0] if __doc__
                                else None)
    p.add_argument("--seconds", type=float, default=20.0, help="how long to send (default 20)")
    p.add_argument("--rate", type=int, default=11520, help="line rate, bytes/s")
    p.add_argument("--corrupt", type=float, default=2e-4, help="byte error rate")
    p.add_argument("--outage", type=float, default=3.0, help="outage length, seconds")
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
