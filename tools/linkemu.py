"""A user-space link emulator: two pty pairs (serial) or a TCP relay.

Theory of operation
-------------------
This machine's kernel has no netem, so bad links are made here. The emulator
is one thread and one ``selectors`` loop. Each direction of the link is a
``Direction``: the bytes the sender wrote go through a ``FaultModel`` and a
``Line`` (both pure, in ``tools/linkfaults.py``) and come out at the other
end when the line model says they arrive. The loop sleeps until the next
byte is due (at least ``--tick`` seconds, so at 11,520 B/s it writes a few
dozen bytes per wake-up; every byte's time is still its own).

Serial mode opens two pty pairs in raw mode and relays between the two
masters; the programs under test open the two slave paths. The emulator
keeps its own slave descriptors open, so a program may close and reopen its
end, and it never stops reading a side because the other side is not
reading: bytes a receiver does not take are dropped as a UART overrun would
drop them (counted), so a program that exits while the other keeps talking
(``rz`` at the end of a transfer) never hangs. It stops reading a sender only
while that sender's transmit buffer (``--buffer``, bytes not yet on the line)
is full, as a real serial driver blocks a writer.

TCP mode listens on 127.0.0.1 and forwards each connection to a target.
TCP delivers bytes intact or not at all, so the only faults are rate,
latency, stalls (the stream stops, then resumes) and resets (both sockets
closed with RST). A half-close is forwarded once the bytes before it are.

At start the endpoints go to stdout as one JSON line. SIGINT or SIGTERM
stops it; SIGUSR1 and the end write one JSON stats line to stderr or to
``--stats FILE``.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import random
import selectors
import signal
import socket
import struct
import sys
import termios
import time
import tty
from collections.abc import Callable
from typing import Any

from tools.linkfaults import Direction, FaultModel, Faults, Line, Windows

DIRECTIONS = ("ab", "ba")


# --- command line -------------------------------------------------------------


def pair(kind: Callable[[str], Any]) -> Callable[[str], tuple[Any, Any]]:
    """Parse ``X`` (both directions) or ``AB,BA`` (a->b, then b->a)."""

    def parse(text: str) -> tuple[Any, Any]:
        parts = text.split(",")
        if len(parts) == 1:
            return kind(parts[0]), kind(parts[0])
        if len(parts) == 2:
            return kind(parts[0]), kind(parts[1])
        raise argparse.ArgumentTypeError(f"expected X or AB,BA, got {text!r}")

    return parse


def window(text: str) -> tuple[float, float]:
    """Parse ``START:DURATION`` in seconds."""
    try:
        start, dur = (float(x) for x in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected START:DURATION, got {text!r}") from None
    return start, dur


def rate_value(text: str) -> float | None:
    value = float(text)
    return value if value > 0 else None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="linkemu", description=__doc__.split("\n")[0] if __doc__ else None
    )
    sub = p.add_subparsers(dest="mode", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--seed", type=int, default=0)
    common.add_argument("--rate", type=pair(rate_value), default=(None, None),
                        help="bytes/s on the line, X or AB,BA (0 = unlimited)")
    common.add_argument("--latency", type=pair(float), default=(0.0, 0.0),
                        help="seconds from departure to delivery, X or AB,BA")
    common.add_argument("--buffer", type=int, default=4096,
                        help="sender's transmit buffer in bytes (default 4096)")
    common.add_argument("--tick", type=float, default=0.002,
                        help="shortest sleep between deliveries (default 0.002 s)")
    common.add_argument("--stats", metavar="FILE", help="write the stats JSON here, not stderr")
    serial = sub.add_parser("serial", parents=[common], help="two pty pairs")
    serial.add_argument("--corrupt", type=pair(float), default=(0.0, 0.0),
                        help="byte error rate, X or AB,BA")
    serial.add_argument("--corrupt-mode", choices=("flip", "replace"), default="flip")
    serial.add_argument("--burst", type=pair(float), default=(0.0, 0.0),
                        help="probability per byte that an error burst starts")
    serial.add_argument("--burst-len", type=int, default=8, help="bytes per burst")
    serial.add_argument("--loss", type=pair(float), default=(0.0, 0.0),
                        help="probability per unit (frame) of losing it")
    serial.add_argument("--dup", type=pair(float), default=(0.0, 0.0),
                        help="probability per unit (frame) of sending it twice")
    serial.add_argument("--max-unit", type=int, default=1024,
                        help="a unit with no 0x00 ends after this many bytes")
    serial.add_argument("--unit-gap", type=float, default=0.02,
                        help="an idle line this long ends a unit (0 = never)")
    serial.add_argument("--outage", type=window, action="append", default=[],
                        metavar="START:DUR", help="every byte dropped in this window")
    serial.add_argument("--outage-random", type=window, metavar="MEAN_GAP:DUR",
                        help="random outages: exponential gaps, fixed duration")
    tcp = sub.add_parser("tcp", parents=[common], help="a TCP relay")
    tcp.add_argument("--target", required=True, help="HOST:PORT to forward to")
    tcp.add_argument("--listen", type=int, default=0, help="port on 127.0.0.1 (0 = any)")
    tcp.add_argument("--stall", type=window, action="append", default=[],
                     metavar="START:DUR", help="nothing moves in this window")
    tcp.add_argument("--stall-random", type=window, metavar="MEAN_GAP:DUR")
    tcp.add_argument("--reset-after", type=int, default=0,
                     help="reset each connection after this many bytes relayed (0 = never)")
    tcp.add_argument("--reset-random", type=float, default=0.0, metavar="MEAN_S",
                     help="reset connections after exponential times of this mean")
    return p


def make_windows(fixed: list[tuple[float, float]], rnd: tuple[float, float] | None,
                 seed: int, what: str) -> Windows | None:
    if not fixed and rnd is None:
        return None
    mean_gap, dur = rnd if rnd is not None else (0.0, 0.0)
    return Windows(fixed, mean_gap=mean_gap, duration=dur, rng=random.Random(f"{seed}:{what}"))


# --- the loop -----------------------------------------------------------------


class Emulator:
    """Shared loop plumbing: clock, signals, stats output."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.sel = selectors.DefaultSelector()
        self.t0 = time.monotonic()
        self.stop = False
        self.want_stats = False
        rfd, wfd = os.pipe()
        os.set_blocking(rfd, False)
        os.set_blocking(wfd, False)
        self._wake = rfd
        signal.set_wakeup_fd(wfd)
        self.sel.register(rfd, selectors.EVENT_READ, None)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGUSR1, self._on_usr1)

    def _on_stop(self, signum: int, frame: object) -> None:
        self.stop = True

    def _on_usr1(self, signum: int, frame: object) -> None:
        self.want_stats = True

    def now(self) -> float:
        return time.monotonic() - self.t0

    def sleep_for(self, deadlines: list[float | None]) -> float:
        now = self.now()
        due = [d for d in deadlines if d is not None]
        if not due:
            return 0.25
        tick: float = self.args.tick
        return min(0.25, max(tick, min(due) - now))

    def drain_wakeup(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.read(self._wake, 512)

    def emit_stats(self, report: dict[str, Any]) -> None:
        report["elapsed_s"] = round(self.now(), 3)
        line = json.dumps(report, sort_keys=True)
        if self.args.stats:
            tmp = self.args.stats + ".tmp"
            with open(tmp, "w") as fh:
                fh.write(line + "\n")
            os.replace(tmp, self.args.stats)
        else:
            print(line, file=sys.stderr, flush=True)


def make_direction(args: argparse.Namespace, index: int, name: str) -> Direction:
    serial = args.mode == "serial"
    faults = Faults()
    outages = None
    if serial:
        faults = Faults(
            corrupt=args.corrupt[index], corrupt_mode=args.corrupt_mode,
            burst=args.burst[index], burst_len=args.burst_len,
            loss=args.loss[index], dup=args.dup[index], max_unit=args.max_unit,
        )
        outages = make_windows(args.outage, args.outage_random, args.seed, "outage")
    stalls = None if serial else make_windows(args.stall, args.stall_random, args.seed, "stall")
    line = Line(rate=args.rate[index], latency=args.latency[index], stalls=stalls)
    model = FaultModel(faults, seed=args.seed, direction=name, outages=outages)
    gap = args.unit_gap if serial else 0.0
    return Direction(name, model, line, unit_gap=gap, tx_buffer=args.buffer)


def writer(fd: int) -> Callable[[bytes], int]:
    def write(data: bytes) -> int:
        return os.write(fd, data)

    return write


def run_serial(args: argparse.Namespace) -> int:
    emu = Emulator(args)
    masters, slaves, paths = [], [], []
    for _ in range(2):
        m, s = os.openpty()
        tty.setraw(s)
        os.set_blocking(m, False)
        # Packet mode: each read starts with a status byte, which tells us when
        # the program flushed its queues (tcflush) and the kernel threw bytes away.
        fcntl.ioctl(m, termios.TIOCPKT, struct.pack("i", 1))
        masters.append(m)
        slaves.append(s)
        paths.append(os.ttyname(s))
    dirs = [make_direction(args, 0, "ab"), make_direction(args, 1, "ba")]
    # dirs[i] reads masters[i] and writes masters[1 - i].
    print(json.dumps({"a": paths[0], "b": paths[1]}), flush=True)

    def report() -> dict[str, Any]:
        return {"mode": "serial", "seed": args.seed, "ab": dirs[0].report(),
                "ba": dirs[1].report()}

    registered: set[int] = set()
    while not emu.stop:
        for i, d in enumerate(dirs):
            want = d.wants_read()
            if want and i not in registered:
                emu.sel.register(masters[i], selectors.EVENT_READ, i)
                registered.add(i)
            elif not want and i in registered:
                emu.sel.unregister(masters[i])
                registered.discard(i)
        timeout = emu.sleep_for([d.deadline() for d in dirs])
        if any(d.pending for d in dirs):
            timeout = min(timeout, args.tick)
        for key, _ in emu.sel.select(timeout):
            if key.data is None:
                emu.drain_wakeup()
                continue
            i = key.data
            try:
                data = os.read(masters[i], 65536)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:  # EIO: cannot happen while we hold the slave open
                data = b""
            if data and data[0] != termios.TIOCPKT_DATA:
                if data[0] & termios.TIOCPKT_FLUSHWRITE:
                    dirs[i].sender_flushes += 1
                if data[0] & termios.TIOCPKT_FLUSHREAD:
                    dirs[1 - i].receiver_flushes += 1
                continue
            if len(data) > 1:
                dirs[i].on_data(data[1:], emu.now())
        now = emu.now()
        for i, d in enumerate(dirs):
            d.pump(now, writer(masters[1 - i]))
        if emu.want_stats:
            emu.want_stats = False
            emu.emit_stats(report())
    emu.emit_stats(report())
    return 0


class Connection:
    """One relayed TCP connection: client <-> target."""

    def __init__(self, args: argparse.Namespace, client: socket.socket,
                 upstream: socket.socket, now: float, rng: random.Random) -> None:
        self.socks = [client, upstream]
        for s in self.socks:
            s.setblocking(False)
        self.dirs = [make_direction(args, 0, "ab"), make_direction(args, 1, "ba")]
        self.shut = [False, False]  # we have shut down writing to socks[i]
        self.closed = False
        self.reset_at: float | None = None
        if args.reset_random:
            self.reset_at = now + rng.expovariate(1.0 / args.reset_random)
        self.reset_after = args.reset_after

    def relayed(self) -> int:
        return sum(d.faults.stats.bytes_in for d in self.dirs)

    def due_reset(self, now: float) -> bool:
        if self.reset_after and self.relayed() >= self.reset_after:
            return True
        return self.reset_at is not None and now >= self.reset_at

    def reset(self) -> None:
        for s in self.socks:
            with contextlib.suppress(OSError):
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()
        self.closed = True

    def close(self) -> None:
        for s in self.socks:
            s.close()
        self.closed = True


def run_tcp(args: argparse.Namespace) -> int:
    emu = Emulator(args)
    host, _, port = args.target.rpartition(":")
    target = (host or "127.0.0.1", int(port))
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("127.0.0.1", args.listen))
    lsock.listen(16)
    lsock.setblocking(False)
    emu.sel.register(lsock, selectors.EVENT_READ, "listen")
    endpoints = {"listen": f"127.0.0.1:{lsock.getsockname()[1]}",
                 "target": f"{target[0]}:{target[1]}"}
    print(json.dumps(endpoints), flush=True)
    rng = random.Random(f"{args.seed}:reset")
    conns: list[Connection] = []
    totals: dict[str, Any] = {"connections": 0, "resets": 0, "refused": 0}
    finished: dict[str, dict[str, int]] = {"ab": {}, "ba": {}}

    def fold(conn: Connection) -> None:
        for d in conn.dirs:
            for k, v in d.report().items():
                if isinstance(v, int):
                    finished[d.name][k] = finished[d.name].get(k, 0) + v

    def report() -> dict[str, Any]:
        out: dict[str, Any] = {"mode": "tcp", "seed": args.seed, **totals}
        for name, i in (("ab", 0), ("ba", 1)):
            acc = dict(finished[name])
            for c in conns:
                for k, v in c.dirs[i].report().items():
                    if isinstance(v, int):
                        acc[k] = acc.get(k, 0) + v
            out[name] = acc
        return out

    while not emu.stop:
        for c in conns:
            for i, d in enumerate(c.dirs):
                key = emu.sel.get_map().get(c.socks[i].fileno())
                want = d.wants_read()
                if want and key is None:
                    emu.sel.register(c.socks[i], selectors.EVENT_READ, (c, i))
                elif not want and key is not None:
                    emu.sel.unregister(c.socks[i])
        deadlines = [d.deadline() for c in conns for d in c.dirs]
        deadlines += [c.reset_at for c in conns]
        timeout = emu.sleep_for(deadlines)
        if any(d.pending for c in conns for d in c.dirs):
            timeout = min(timeout, args.tick)
        for key, _ in emu.sel.select(timeout):
            if key.data is None:
                emu.drain_wakeup()
            elif key.data == "listen":
                try:
                    client, _ = lsock.accept()
                except OSError:
                    continue
                try:
                    upstream = socket.create_connection(target, timeout=5)
                except OSError:
                    totals["refused"] += 1
                    client.close()
                    continue
                conns.append(Connection(args, client, upstream, emu.now(), rng))
                totals["connections"] += 1
            else:
                c, i = key.data
                if c.closed:
                    continue
                try:
                    data = c.socks[i].recv(65536)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
                if data:
                    c.dirs[i].on_data(data, emu.now())
                else:
                    c.dirs[i].eof = True
                    emu.sel.unregister(c.socks[i])
        now = emu.now()
        for c in list(conns):
            if not c.closed and c.due_reset(now):
                totals["resets"] += 1
                for s in c.socks:
                    if emu.sel.get_map().get(s.fileno()) is not None:
                        emu.sel.unregister(s)
                c.reset()
            if c.closed:
                fold(c)
                conns.remove(c)
                continue
            for i, d in enumerate(c.dirs):
                out = c.socks[1 - i]
                try:
                    d.pump(now, out.send)
                except OSError:  # the receiver went away: count what it missed
                    d.overrun += len(d.pending)
                    d.pending.clear()
                if d.eof and d.drained() and not c.shut[1 - i]:
                    with contextlib.suppress(OSError):
                        out.shutdown(socket.SHUT_WR)
                    c.shut[1 - i] = True
            if all(c.shut):
                for s in c.socks:
                    if emu.sel.get_map().get(s.fileno()) is not None:
                        emu.sel.unregister(s)
                c.close()
                fold(c)
                conns.remove(c)
        if emu.want_stats:
            emu.want_stats = False
            emu.emit_stats(report())
    emu.emit_stats(report())
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_serial(args) if args.mode == "serial" else run_tcp(args)


if __name__ == "__main__":
    sys.exit(main())
