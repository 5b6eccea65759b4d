"""``haven-kiosk run`` as a measured subprocess: its /proc counters and its live status.

Used by the kiosk benchmark: the runtime is started exactly as a kiosk
starts it (the console script, simulated hardware), and watched from
outside through ``/proc/<pid>`` and the page's own API.

``simulated_day`` runs a day of the runtime in a child process
(``python -m tools.benchmarks._runtime day``): the real ``Runtime`` (page,
sync thread, store, ``sync.db``) syncing with a real hub, with two hooks
injected. Its clock (breakers, the sync state's deferred writes) is
simulated, and its wait between rounds advances that clock by the wait
(``interval``, 10 s) and returns at once; so one round follows another as
fast as the hub answers, and each is 10 s of simulated time. Check-ins, if
any, are posted to the child's own page during those waits, spread evenly
over the day. The child reads its own ``/proc/self/io`` (every thread of
the process) after a warm-up of a few rounds and two simulated minutes, and
at the end of the day, and prints the difference as JSON.

``write_bytes`` counts a page when a clean page is dirtied; a page dirtied
again before the kernel wrote it out is not counted again. A day run in
minutes would hide most of the writes a real day makes, so the kernel's
writeback is simulated too: whenever ``vm.dirty_expire_centisecs`` (30 s)
of simulated time has passed, every file of the data directory and the
log the child writes to is fsynced, as the kernel's flusher would have
written them out by then. The wall time the sync state keeps as the last
sync (``SyncState.note_synced``) is simulated the same way; the store's
30-s timer for acknowledged outbox entries (``device.store.acks``) runs in
real time, so in a simulated day they leave with the next check-in instead.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

BOUND = 30.0  #: every wait on the runtime ends by then


def kiosk_command(data: Path, hub: str, port: int, extra: tuple[str, ...] = ()) -> list[str]:
    script = Path(sys.executable).parent / "haven-kiosk"
    return [str(script), "run", "--data", str(data), "--hub", hub, "--ui", f"127.0.0.1:{port}",
            "--hardware", "simulated", *extra]


def start(data: Path, hub: str, port: int, log: IO[bytes],
          extra: tuple[str, ...] = ()) -> subprocess.Popen[bytes]:
    return subprocess.Popen(kiosk_command(data, hub, port, extra), stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(BOUND)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(BOUND)


@contextmanager
def running(data: Path, hub: str, port: int, log: IO[bytes],
            extra: tuple[str, ...] = ()) -> Iterator[subprocess.Popen[bytes]]:
    proc = start(data, hub, port, log, extra)
    try:
        wait_page(f"http://127.0.0.1:{port}", proc)
        yield proc
    finally:
        stop(proc)


def wait_page(url: str, proc: subprocess.Popen[bytes]) -> None:
    """Return as soon as the page answers ``GET /`` with 200."""
    end = time.monotonic() + BOUND
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"haven-kiosk run exited with {proc.returncode}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url + "/", timeout=BOUND) as r:
            if r.status == 200 and r.read().lstrip().startswith(b"<!"):
                return
        time.sleep(0.005)
    raise RuntimeError(f"the page at {url} did not answer in {BOUND:.0f} s")


def patient(tag: str, i: int) -> tuple[str, str]:
    """A passport number and a name, unique per (``tag``, ``i``); ``tag`` is capital letters."""
    letters = "".join("ABCDEFGHIJ"[int(d)] for d in f"{i:04d}")
    return f"{tag}{i:06d}", f"{tag.title()} {letters.title()}"


def checkin(url: str, passport: str, name: str) -> dict[str, Any]:
    """A new patient checked in through the page's API, as the page does it."""
    body = {"passport": passport, "year": 1970, "name": name, "reason": "sick", "consent": True}
    req = urllib.request.Request(url + "/api/checkin", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=BOUND) as resp:
        return dict(json.loads(resp.read()))


class LiveEvents:
    """The page's server-sent events (``/api/events``): how far check-ins reached the hub."""

    def __init__(self, url: str) -> None:
        self.resp = urllib.request.urlopen(url + "/api/events", timeout=BOUND)
        self.last: dict[str, Any] = {}

    def wait_sent(self, ordinal: int) -> None:
        """Until the check-in numbered ``ordinal`` left the outbox with the hub's ack."""
        end = time.monotonic() + BOUND
        while self.last.get("sent_upto", 0) < ordinal:
            if time.monotonic() > end:
                raise RuntimeError(f"check-in {ordinal} not synced in {BOUND:.0f} s")
            line = self.resp.readline()
            if not line:
                raise RuntimeError("the event stream ended")
            if line.startswith(b"data: "):
                self.last = json.loads(line[6:])

    def close(self) -> None:
        self.resp.close()


def wait_log(log: Path, text: str, count: int) -> None:
    """Until ``text`` appears ``count`` more times in the runtime's log."""
    seen = log.read_text(errors="replace").count(text)
    end = time.monotonic() + BOUND * count
    while log.read_text(errors="replace").count(text) < seen + count:
        if time.monotonic() > end:
            raise RuntimeError(f"no {count} x {text!r} in {log} in time")
        time.sleep(0.05)


def proc_io(pid: int) -> dict[str, int]:
    """``/proc/<pid>/io``: rchar, wchar, syscr, syscw, read_bytes, write_bytes, ..."""
    out = {}
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        key, _, value = line.partition(":")
        out[key] = int(value)
    return out


def status_kib(pid: int, key: str) -> int:
    """A ``/proc/<pid>/status`` figure in KiB (``VmRSS``, ``VmHWM``); 0 once it is gone."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


class SyscallCount:
    """``strace -f -c`` attached to a running process for a while: calls per syscall."""

    def __init__(self, pid: int, calls: str, out: Path) -> None:
        self.out = out
        self.proc = subprocess.Popen(["strace", "-f", "-c", "-e", f"trace={calls}", "-p",
                                      str(pid), "-o", str(out)],
                                     stderr=subprocess.PIPE, text=True)
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline()  # "Process N attached with K threads"
        if "attached" not in line:
            raise RuntimeError(f"strace did not attach: {line.strip()}")

    def finish(self) -> dict[str, int]:
        self.proc.send_signal(signal.SIGINT)
        self.proc.communicate(timeout=BOUND)
        counts = {}
        for line in self.out.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 5 and parts[3].isdigit() and parts[-1] != "total":
                counts[parts[-1]] = int(parts[3])
        return counts


def fstype(path: Path) -> str:
    """The filesystem that backs ``path`` (ext4, tmpfs, ...)."""
    done = subprocess.run(["df", "--output=fstype,source", str(path)], capture_output=True,
                          text=True, check=True)
    return " on ".join(done.stdout.splitlines()[-1].split())


# A simulated day ---------------------------------------------------------------------------

DAY_S = 86_400.0
WARMUP_ROUNDS = 8
WARMUP_S = 120.0  #: simulated, so that what the first rounds left waiting is written


def simulated_day(data: Path, hub: str, port: int, log: IO[bytes], *, rounds: int,
                  checkins: int = 0, tag: str = "DAY") -> dict[str, Any]:
    """Run ``rounds`` sync rounds of the runtime, 10 s of simulated time apart, with
    ``checkins`` new patients spread over them, in a child process; its figures."""
    cmd = [sys.executable, "-m", "tools.benchmarks._runtime", "day", "--data", str(data),
           "--hub", hub, "--port", str(port), "--rounds", str(rounds),
           "--checkins", str(checkins), "--tag", tag]
    done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=log, check=False,
                          timeout=BOUND * 100 + rounds)
    if done.returncode != 0:
        raise RuntimeError(f"the simulated day exited with {done.returncode}")
    return dict(json.loads(done.stdout.decode().strip().splitlines()[-1]))


def log_size(data: Path) -> int:
    """The size of the kiosk's own log (``device.logs``: ``logs/`` in its data folder)."""
    return sum(p.stat().st_size for p in (data / "logs").glob("haven.log*"))


def dirty_expire_s() -> float:
    with contextlib.suppress(OSError, ValueError):
        return int(Path("/proc/sys/vm/dirty_expire_centisecs").read_text()) / 100
    return 30.0


def write_back(data: Path) -> int:
    """Write out every dirty page of the data directory's files, the kiosk's own log
    (``logs/``), its metrics (``metrics/``) and our log; how many fsyncs that took."""
    paths = [p for d in (data, data / "logs", data / "metrics") if d.is_dir()
             for p in d.iterdir() if p.is_file()]
    fsyncs = 0
    for path in paths:
        with contextlib.suppress(OSError):
            fd = os.open(path, os.O_RDONLY)
            try:
                fsyncs += 1
                os.fsync(fd)
            finally:
                os.close(fd)
    with contextlib.suppress(OSError):
        fsyncs += 1
        os.fsync(2)  # stderr: the runtime's log, a file in the benchmark
    return fsyncs


class SimDay:
    """The runtime's clock and its wait between rounds, for a day simulated fast."""

    def __init__(self, url: str, data: Path, rounds: int, checkins: int, tag: str) -> None:
        self.url, self.data, self.rounds, self.tag = url, data, rounds, tag
        self.start = self.now = 1_000_000.0
        self.wall0 = time.time_ns() // 1_000_000
        self.expire = dirty_expire_s()
        self.written_out = self.now
        self.done = 0  #: rounds ended (waits begun) since the warm-up
        self.warm = -WARMUP_ROUNDS
        every = rounds / checkins if checkins else 0
        self.checkin_at = {int(i * every) for i in range(checkins)}
        self.checked_in = 0
        self.before: dict[str, int] = {}
        self.after: dict[str, int] = {}
        self.t0 = self.t1 = 0.0
        self.log0 = self.log1 = 0  #: the kiosk's journal (``logs/``), bytes
        self.finished = threading.Event()

    def clock(self) -> float:
        return self.now

    def wall_ms(self) -> int:
        return self.wall0 + int((self.now - self.start) * 1000)

    def pause(self, wake: threading.Event, seconds: float) -> bool:
        if self.finished.is_set():
            return wake.wait(seconds)  # the day is over: wait for the stop in real time
        self.now += seconds
        if self.now - self.written_out >= self.expire:
            write_back(self.data)
            self.written_out = self.now
        if self.warm < 0:
            self.warm += 1
            if self.warm == 0:
                self.now += WARMUP_S
                self.before, self.t0 = proc_io(os.getpid()), time.monotonic()
                self.log0 = log_size(self.data)
            return wake.is_set()
        if self.done in self.checkin_at:
            checkin(self.url, *patient(self.tag, self.checked_in))
            self.checked_in += 1
        self.done += 1
        if self.done >= self.rounds:
            self.after, self.t1 = proc_io(os.getpid()), time.monotonic()
            self.log1 = log_size(self.data)
            self.finished.set()
        return wake.is_set()


async def _day(ns: argparse.Namespace) -> dict[str, Any]:
    from device.config import KioskConfig
    from device.runtime import Runtime
    from device.sync.state import SyncState

    # A round every 10 s of simulated time: on a kept-open TCP session that means a
    # polling kiosk (without polling it waits for a reason, an endless wait that would
    # move the simulated clock to infinity), as many rounds as a serial line makes.
    cfg = KioskConfig(data=Path(ns.data), hub=[ns.hub], ui=f"127.0.0.1:{ns.port}",
                      link_interval=0.0, poll_interval=10.0, hardware="simulated")
    day = SimDay(f"http://127.0.0.1:{ns.port}", Path(ns.data), ns.rounds, ns.checkins, ns.tag)
    noted = SyncState.note_synced  # the last sync's wall time, simulated

    def note_synced(self: Any, now_ms: int, moved: bool) -> None:
        noted(self, day.wall_ms(), moved)

    SyncState.note_synced = note_synced  # type: ignore[method-assign]
    runtime = Runtime(cfg, clock=day.clock, pause=day.pause)
    await runtime.start()
    try:
        if not await asyncio.to_thread(day.finished.wait, BOUND * 100 + ns.rounds):
            raise RuntimeError("the simulated day did not end in time")
    finally:
        await runtime.stop()
    diff = {k: day.after[k] - day.before[k] for k in day.before}
    return {"rounds": day.done, "checkins": day.checked_in, "seconds": day.t1 - day.t0,
            "simulated_s": ns.rounds * cfg.interval, "io": diff,
            "log_bytes": day.log1 - day.log0}


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.benchmarks._runtime")
    sub = parser.add_subparsers(dest="cmd", required=True)
    day = sub.add_parser("day", help="a simulated day of the runtime; prints JSON")
    day.add_argument("--data", required=True)
    day.add_argument("--hub", required=True)
    day.add_argument("--port", type=int, required=True)
    day.add_argument("--rounds", type=int, default=int(DAY_S / 10))
    day.add_argument("--checkins", type=int, default=0)
    day.add_argument("--tag", default="DAY")
    ns = parser.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    print(json.dumps(asyncio.run(_day(ns))), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
