"""What ``./tools/run`` shows: a hub and a kiosk joined by a noisy serial line.

Theory of operation
-------------------
Everything lives in a temporary directory and is made with the real
commands, as a technician would make it: ``haven hub init``, ``haven-kiosk
init``, ``haven hub enroll``, ``haven-kiosk enroll``. The link emulator
(``tools/linkemu.py``, serial mode) stands between two ptys at 115200 baud
(11,520 B/s) with byte errors and an outage. ``haven hub serve --serial``
runs on one pty and the kiosk's runtime, ``haven-kiosk run``, on the other:
its check-in page on 127.0.0.1 and its sync engine in one process, on
simulated hardware (gpiozero's mock pins). Check-ins are then made through
the page's own API, as the page makes them, a few seconds apart, some of
them during the outage.

The status line is drawn from the hub's own store (what it has committed)
and from the kiosk: check-ins made, how many the hub holds, the line's
state, the sync rounds the runtime logs and its status LED. It is redrawn in place on
a terminal and printed as plain lines every few seconds otherwise. At the
end each check-in's arrival time is listed and the kiosk's and the hub's
dumps are compared. It ends by itself once every check-in is on the hub
(or after ``--seconds``), and cleanly on Ctrl-C; every process it started
runs in its own process group and is stopped with it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import IO, Any

from tools.benchmarks._link import ROOT

RATE = 11520
CMD_TIMEOUT = 30.0
NAMES = ["Amina Diallo", "Kofi Mensah", "Leila Haddad", "Tomas Silva", "Nadia Rahman",
         "Jonas Berg", "Mei Chen", "Ravi Patel", "Sara Okafor", "Ivan Petrov"]
REASONS = ["sick", "injury", "child", "pregnancy", "medicine", "results"]


def _bin(name: str) -> str:
    path = Path(sys.executable).parent / name
    return str(path) if path.exists() else name


def run(*args: str | Path) -> str:
    """One command, to completion; its stdout (raises with its stderr if it fails)."""
    done = subprocess.run([str(a) for a in args], cwd=ROOT, capture_output=True, text=True,
                          timeout=CMD_TIMEOUT)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, args))} failed: {done.stderr.strip()}")
    return done.stdout


class Procs:
    """Background processes, each in its own process group; stopped together."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[str]] = []

    def start(self, args: list[str], stdout: Any = subprocess.PIPE,
              stderr: Any = subprocess.PIPE,
              env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        p = subprocess.Popen(args, cwd=ROOT, stdout=stdout, stderr=stderr, text=True,
                             start_new_session=True, env=env)
        self.procs.append(p)
        return p

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        for p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)


def lines(stream: IO[str] | None, into: queue.Queue[str]) -> None:
    """Copy a pipe's lines into a queue (in a thread: the pipe may block)."""
    if stream is None:
        return
    for line in stream:
        into.put(line.rstrip("\n"))


def page_api(url: str, path: str, body: dict[str, Any] | None = None) -> Any:
    """Call the kiosk page's API as the page does (JSON in, JSON out)."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url + path, data=data, method="POST" if data else "GET",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=CMD_TIMEOUT) as resp:
        return json.loads(resp.read())


def free_ui(wanted: str) -> str:
    """``wanted`` (HOST:PORT) if that port is free, else the same host on a free port."""
    import socket

    host, _, port = wanted.rpartition(":")
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will
        try:
            sock.bind((host, int(port)))
            return wanted
        except OSError:
            sock.bind((host, 0))
            return f"{host}:{sock.getsockname()[1]}"


class HubView:
    """The hub's committed check-ins, read from its store."""

    def __init__(self, data: Path) -> None:
        from host.hub.hub import Hub

        self.hub = Hub(data)

    def checkins(self) -> set[str]:
        """The queue numbers of the check-ins the hub holds."""
        try:
            records = json.loads(self.hub.dump())["records"]
            return {r["fields"].get("queueNumber", "") for r in records
                    if r["type"] == "checkin"}
        except Exception:  # noqa: BLE001 - the serving process may hold a lock a moment
            return set()

    def close(self) -> None:
        self.hub.close()


class Status:
    def __init__(self, outage: tuple[float, float], emu_t0: float) -> None:
        self.tty = sys.stdout.isatty()
        self.t0 = time.monotonic()
        self.outage, self.emu_t0 = outage, emu_t0
        self.last = 0.0
        self.rounds = 0
        self.led = "?"
        self.note = "starting"

    def line_state(self, now: float) -> str:
        start, dur = self.outage
        t = now - self.emu_t0
        return "DOWN" if start <= t < start + dur else "up"

    def show(self, made: int, arrived: int, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < (0.25 if self.tty else 3.0):
            return
        self.last = now
        text = (f"{now - self.t0:5.1f}s  line {self.line_state(now):4}  check-ins made {made}"
                f"  on hub {arrived}  sync rounds {self.rounds}  LED {self.led}  {self.note}")
        if self.tty:
            width = os.get_terminal_size().columns if sys.stdout.isatty() else 120
            print("\r\033[K" + text[: width - 1], end="", flush=True)
        else:
            print(text, flush=True)

    def say(self, text: str) -> None:
        print(("\r\033[K" if self.tty else "") + text, flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="./tools/run", description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=60.0,
                   help="stop after this long at most (default 60)")
    p.add_argument("--checkins", type=int, default=6, help="check-ins to make (default 6)")
    p.add_argument("--corrupt", type=float, default=1e-4, help="byte error rate (1e-4)")
    p.add_argument("--outage", default="12:6", metavar="START:DUR",
                   help="the line is down DUR seconds from START (default 12:6)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--ui", default="127.0.0.1:8080", metavar="HOST:PORT",
                   help="where the kiosk serves its page (another port if this one is taken)")
    args = p.parse_args(argv)
    start, dur = (float(x) for x in args.outage.split(":"))
    interrupted = False

    def on_sigint(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_sigint)
    signal.signal(signal.SIGTERM, on_sigint)
    procs = Procs()
    t_end = time.monotonic() + args.seconds
    with tempfile.TemporaryDirectory(prefix="haven-run-") as tmp:
        work = Path(tmp)
        hub_dir, kiosk_dir = work / "hub", work / "kiosk"
        haven, kiosk = _bin("haven"), _bin("haven-kiosk")
        view: HubView | None = None
        try:
            print(f"haven hub init --data {hub_dir}")
            run(haven, "hub", "init", "--data", hub_dir)
            print(f"haven-kiosk init --data {kiosk_dir} --site Riverside --letter A")
            run(kiosk, "init", "--data", kiosk_dir, "--site", "Riverside", "--letter", "A")
            print("haven hub enroll ... ; haven-kiosk enroll ...")
            run(haven, "hub", "enroll", "--data", hub_dir, kiosk_dir / "enrolment.req",
                "--out", work / "kiosk.cert")
            print("  " + run(kiosk, "enroll", "--data", kiosk_dir, work / "kiosk.cert").strip())
            emu = procs.start([sys.executable, "-m", "tools.linkemu", "serial",
                               "--rate", str(RATE), "--corrupt", str(args.corrupt),
                               "--outage", f"{start}:{dur}", "--seed", str(args.seed),
                               "--stats", str(work / "emu.json")],
                              stderr=subprocess.DEVNULL)
            assert emu.stdout is not None
            ends = json.loads(emu.stdout.readline())
            emu_t0 = time.monotonic()
            print(f"link emulator: {ends['a']} <-> {ends['b']}, {RATE:,} B/s, "
                  f"{args.corrupt:g} byte errors, outage {dur:g} s from {start:g} s")
            hub_out: queue.Queue[str] = queue.Queue()
            hub = procs.start([haven, "hub", "serve", "--data", str(hub_dir),
                               "--serial", ends["a"], "--baud", "115200"])
            threading.Thread(target=lines, args=(hub.stdout, hub_out), daemon=True).start()
            print(f"haven hub serve --data {hub_dir} --serial {ends['a']} --baud 115200")
            ui = free_ui(args.ui)
            kiosk_out: queue.Queue[str] = queue.Queue()
            kiosk_log: queue.Queue[str] = queue.Queue()
            runtime = procs.start([kiosk, "run", "--data", str(kiosk_dir), "--hub", ends["b"],
                                   "--baud", "115200", "--ui", ui, "--interval", "1",
                                   "--retry-max", "2"],
                                  env={**os.environ, "GPIOZERO_PIN_FACTORY": "mock"})
            threading.Thread(target=lines, args=(runtime.stdout, kiosk_out), daemon=True).start()
            threading.Thread(target=lines, args=(runtime.stderr, kiosk_log), daemon=True).start()
            print(f"haven-kiosk run --data {kiosk_dir} --hub {ends['b']} --baud 115200 "
                  f"--ui {ui}   (GPIOZERO_PIN_FACTORY=mock)")
            page = f"http://{ui}"
            ready_by = time.monotonic() + CMD_TIMEOUT
            while time.monotonic() < ready_by:
                with contextlib.suppress(OSError):
                    page_api(page, "/api/config")
                    break
                if runtime.poll() is not None:
                    raise RuntimeError("haven-kiosk run stopped: " + " | ".join(
                        list(kiosk_log.queue)[-3:]))
                time.sleep(0.2)
            print(f"the kiosk's page: {page}  (open it in a browser while this runs)")
            view = HubView(hub_dir)
            status = Status((start, dur), emu_t0)
            made: dict[str, tuple[str, float]] = {}  # record id -> (queue number, made at)
            seen: dict[str, float] = {}
            gap = max(1.0, (start + dur + 2) / max(args.checkins, 1))
            next_at = time.monotonic() + 1.0
            while time.monotonic() < t_end:
                now = time.monotonic()
                if len(made) < args.checkins and now >= next_at:
                    i = len(made)
                    name, reason = NAMES[i % len(NAMES)], REASONS[i % len(REASONS)]
                    typed = time.monotonic()  # the moment the patient presses the reason
                    out = page_api(page, "/api/checkin", {
                        "passport": f"RV{args.seed:02d}{i:05d}", "year": 1970 + 3 * i,
                        "name": name, "reason": reason, "consent": True})
                    made[out["queue_number"]] = (out["queue_number"], typed)
                    line = status.line_state(time.monotonic())
                    status.say(f"check-in on the page: {name}, reason {reason}: queue number "
                               f"{out['queue_number']} (line {line})")
                    next_at = now + gap
                while not kiosk_log.empty():
                    entry = kiosk_log.get()
                    if "synced via" in entry:
                        status.rounds += 1
                        status.note = "last round: " + entry.split(": ", 2)[-1][:50]
                    elif "no hub answered" in entry:
                        status.note = "retrying: no hub answered"
                with contextlib.suppress(OSError, ValueError):
                    status.led = str(page_api(page, "/api/hw").get("led", "?"))
                arrived = view.checkins()
                for rid in made:
                    if rid in arrived and rid not in seen:
                        seen[rid] = time.monotonic()
                        number, at = made[rid]
                        status.say(f"  {number} is on the hub, {seen[rid] - at:.1f} s after "
                                   "the check-in")
                status.show(len(made), len(seen))
                if len(made) == args.checkins and len(seen) == len(made):
                    break
                if runtime.poll() is not None or hub.poll() is not None:
                    status.say("a process stopped unexpectedly")
                    break
                time.sleep(0.2)
            status.show(len(made), len(seen), force=True)
            if status.tty:
                print()
            print(f"{len(seen)} of {len(made)} check-ins on the hub")
            for rid, (number, at) in made.items():
                when = f"after {seen[rid] - at:.1f} s" if rid in seen else "NOT YET"
                print(f"  {number} {when}")
            same = run(kiosk, "dump", "--data", kiosk_dir) == run(haven, "hub", "dump",
                                                                   "--data", hub_dir)
            print(f"kiosk dump == hub dump: {'yes' if same else 'no (a round is in flight)'}")
            print(run(haven, "hub", "status", "--data", hub_dir).rstrip())
            ok = len(seen) == len(made) == args.checkins
            if status.tty and ok and time.monotonic() < t_end:
                print(f"the kiosk's page stays up at {page} for {t_end - time.monotonic():.0f} s "
                      "more (--seconds); Ctrl-C stops everything")
                while time.monotonic() < t_end and runtime.poll() is None:
                    time.sleep(0.5)
        except KeyboardInterrupt:
            interrupted = True
            ok = False
            print("\ninterrupted: stopping everything", flush=True)
        finally:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            if view is not None:
                view.close()
            procs.stop()
            signal.signal(signal.SIGINT, signal.SIG_DFL)
        stats = work / "emu.json"
        if stats.exists() and not interrupted:
            with contextlib.suppress(ValueError, KeyError):
                s = json.loads(stats.read_text())
                print(f"the line: {s['ba']['bytes_in']:,} B kiosk to hub, {s['ab']['bytes_in']:,}"
                      f" B hub to kiosk; {s['ab']['corrupted'] + s['ba']['corrupted']} bytes "
                      f"corrupted, {s['ab']['outage_bytes'] + s['ba']['outage_bytes']:,} B "
                      "lost in the outage")
    return 130 if interrupted else (0 if ok else 1)


if __name__ == "__main__":
    sys.exit(main())
