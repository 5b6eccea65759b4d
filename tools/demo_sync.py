"""What ``./tools/run`` shows: a hub and a kiosk joined by a noisy serial line.

Theory of operation
-------------------
Everything lives in a temporary directory and is made with the real
commands, as a technician would make it: ``haven hub init``, ``haven-kiosk
init``, ``haven hub enroll``, ``haven-kiosk enroll``, ``haven-kiosk
staff-pin set``. The link emulator (``tools/linkemu.py``, serial mode) stands
between two ptys at 115200 baud (11,520 B/s) with byte errors and an outage.
``haven hub serve --serial`` runs on one pty and the kiosk's runtime,
``haven-kiosk run``, on the other: its check-in page on 127.0.0.1 and its
sync engine in one process, on simulated hardware (gpiozero's mock pins).

It runs until Ctrl-C, or until ``--seconds`` have passed, with the page up
the whole time: its URL and the staff PIN are printed first. Every
``--every`` seconds it makes a check-in through the page's own API, as the
page makes it, from made-up data that is valid whatever its number
(``made_up``). Each check-in that reaches the hub's store is shown as it
arrives, the ones typed on the page by a person too. At the end it waits up
to ``--drain`` seconds for check-ins still in flight (a second Ctrl-C skips
that), lists each one's arrival, compares the kiosk's and the hub's dumps and
stops every process it started (each runs in its own process group). The
status line (the line's state, check-ins made and on the hub, sync rounds,
the LED) is redrawn in place on a terminal, a plain line every few seconds
otherwise. A bad flag value or a port in use is one line and status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import IO, Any

from protocol.driver.command_line import TerseParser
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
        raise Refused(f"{' '.join(map(str, args))} failed: {done.stderr.strip()}")
    return done.stdout


def run_with_input(text: str, *args: str | Path) -> str:
    """``run``, with ``text`` on the command's standard input."""
    done = subprocess.run([str(a) for a in args], cwd=ROOT, capture_output=True, text=True,
                          timeout=CMD_TIMEOUT, input=text)
    if done.returncode != 0:
        raise Refused(f"{' '.join(map(str, args))} failed: {done.stderr.strip()}")
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


class Refused(RuntimeError):
    """What the run cannot do, said in one line (a port in use, a command that failed)."""


def free_ui(wanted: str, given: bool) -> str:
    """``wanted`` (HOST:PORT) if that port is free. When taken: refused if the user
    ``given`` it, else the same host on a free port."""
    host, _, port = wanted.rpartition(":")
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will
        try:
            sock.bind((host, int(port)))
            return wanted
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise Refused(f"--ui {wanted}: cannot serve there ({exc.strerror})") from None
            if given:
                raise Refused(f"--ui {wanted} is in use: give another port, or leave --ui "
                              "out") from None
            sock.bind((host, 0))
            return f"{host}:{sock.getsockname()[1]}"


def made_up(i: int, seed: int, this_year: int) -> dict[str, Any]:
    """The ``i``-th made-up check-in: valid for every ``i`` (a passport of 10 or more
    characters, a year of birth from 1935 to 2019 and never past ``this_year``)."""
    return {"passport": f"RV{seed % 100:02d}{i:06d}",
            "year": min(1935 + (7 * i + seed) % 85, this_year),
            "name": NAMES[i % len(NAMES)], "reason": REASONS[i % len(REASONS)],
            "consent": True}


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


DESCRIPTION = """\
Runs the main job: a hub and a kiosk joined by an emulated noisy serial line.
The kiosk's check-in page stays up until Ctrl-C (or --seconds); open the URL it
prints in a browser. A made-up patient checks in every few seconds, and each
check-in is shown as it reaches the hub, those made on the page by hand too."""

EPILOG = """\
Everything lives in a temporary directory, removed at the end. The exit
status is 0 when every check-in made reached the hub, 1 when one did not
(or a process stopped), 2 for a bad flag or a port in use."""


def _number(kind: type, low: float, what: str, high: float | None = None) -> Any:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if value != value or value < low or (high is not None and value >= high):
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
        return value
    return parse


def _window(text: str) -> tuple[float, float]:
    start, sep, dur = text.partition(":")
    try:
        window = (float(start), float(dur))
    except ValueError:
        window = (-1.0, -1.0)
    if not sep or not all(0 <= x < 1e6 for x in window):
        raise argparse.ArgumentTypeError(f"{text!r} is not START:DUR in seconds (0:0: none)")
    return window


def _address(text: str) -> str:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return text


def _pin(text: str) -> str:
    if not (text.isascii() and text.isdigit() and 6 <= len(text) <= 12):
        raise argparse.ArgumentTypeError("the staff PIN is 6 to 12 digits")
    return text


def parser() -> argparse.ArgumentParser:
    p = TerseParser(prog="./tools/run", description=DESCRIPTION, epilog=EPILOG,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=_number(float, 0, "a number of seconds, 0 or more", 1e9),
                   default=0.0, help="stop after this long (default 0: run until Ctrl-C)")
    p.add_argument("--every", type=_number(float, 0.1, "a number of seconds, 0.1 or more", 1e6),
                   default=8.0, metavar="S",
                   help="seconds between made-up check-ins (default 8)")
    p.add_argument("--checkins", type=_number(int, 0, "a whole number, 0 or more"), default=0,
                   metavar="N", help="make at most N check-ins (default 0: no limit)")
    p.add_argument("--corrupt", type=_number(float, 0, "a byte error rate from 0 to 0.1",
                                             0.1000001),
                   default=1e-4, metavar="RATE", help="byte error rate (default 1e-4)")
    p.add_argument("--outage", type=_window, default=(12.0, 6.0), metavar="START:DUR",
                   help="the line is down DUR seconds from START (default 12:6; 0:0 none)")
    p.add_argument("--seed", type=_number(int, 0, "a whole number, 0 or more"), default=1,
                   help="seed of the line's errors and the made-up patients (default 1)")
    p.add_argument("--ui", type=_address, metavar="HOST:PORT",
                   help="where the kiosk serves its page (default 127.0.0.1:8080, or a free "
                        "port if that one is taken)")
    p.add_argument("--pin", type=_pin, default="246810",
                   help="the demo kiosk's staff PIN (default 246810)")
    p.add_argument("--drain", type=_number(float, 0, "a number of seconds, 0 or more", 1e6),
                   default=10.0, metavar="S",
                   help="at the end, wait this long at most for check-ins in flight "
                        "(default 10)")
    return p


class _Stop(Exception):
    """Ctrl-C, or SIGTERM."""


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        ui = free_ui(args.ui or "127.0.0.1:8080", given=args.ui is not None)
    except Refused as exc:
        print(f"./tools/run: {exc}", file=sys.stderr)
        return 2

    def on_signal(signum: int, frame: object) -> None:
        raise _Stop

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    procs = Procs()
    try:
        with tempfile.TemporaryDirectory(prefix="haven-run-") as tmp:
            return Demo(args, Path(tmp), procs).run(ui)
    except _Stop:
        print("\ninterrupted: everything stopped", flush=True)
        return 130
    except Refused as exc:
        print(f"./tools/run: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        procs.stop()
        signal.signal(signal.SIGINT, signal.SIG_DFL)


class Demo:
    """One run: setup, the main loop, the end."""

    def __init__(self, args: argparse.Namespace, work: Path, procs: Procs) -> None:
        self.args, self.work, self.procs = args, work, procs
        self.hub_dir, self.kiosk_dir = work / "hub", work / "kiosk"
        self.haven, self.kiosk = _bin("haven"), _bin("haven-kiosk")
        self.kiosk_log: queue.Queue[str] = queue.Queue()
        self.made: dict[str, float] = {}  # queue number -> made at (made-up check-ins)
        self.seen: dict[str, float] = {}  # queue number -> on the hub at (any check-in)

    def setup(self, ui: str) -> tuple[str, subprocess.Popen[str], subprocess.Popen[str], float]:
        """Make the hub and the kiosk, start the line, the hub and the runtime; the page's
        URL, the two processes and when the line started."""
        a, hub_dir, kiosk_dir, work = self.args, self.hub_dir, self.kiosk_dir, self.work
        print(f"haven hub init --data {hub_dir}")
        run(self.haven, "hub", "init", "--data", hub_dir)
        print(f"haven-kiosk init --data {kiosk_dir} --site Riverside --letter A")
        run(self.kiosk, "init", "--data", kiosk_dir, "--site", "Riverside", "--letter", "A")
        print("haven hub enroll ... ; haven-kiosk enroll ...")
        run(self.haven, "hub", "enroll", "--data", hub_dir, kiosk_dir / "enrolment.req",
            "--out", work / "kiosk.cert")
        print("  " + run(self.kiosk, "enroll", "--data", kiosk_dir, work / "kiosk.cert").strip())
        print(f"haven-kiosk staff-pin set --data {kiosk_dir}   (PIN on standard input)")
        run_with_input(a.pin + "\n", self.kiosk, "staff-pin", "set", "--data", kiosk_dir)
        start, dur = a.outage
        emu_args = [sys.executable, "-m", "tools.linkemu", "serial", "--rate", str(RATE),
                    "--corrupt", str(a.corrupt), "--seed", str(a.seed),
                    "--stats", str(work / "emu.json")]
        if dur > 0:
            emu_args += ["--outage", f"{start}:{dur}"]
        emu = self.procs.start(emu_args, stderr=subprocess.DEVNULL)
        assert emu.stdout is not None
        ends = json.loads(emu.stdout.readline() or "{}")
        if "a" not in ends:
            raise Refused("the link emulator did not start")
        emu_t0 = time.monotonic()
        print(f"link emulator: {ends['a']} <-> {ends['b']}, {RATE:,} B/s, "
              f"{a.corrupt:g} byte errors, "
              + (f"outage {dur:g} s from {start:g} s" if dur > 0 else "no outage"))
        hub = self.procs.start([self.haven, "hub", "serve", "--data", str(hub_dir),
                                "--serial", ends["a"], "--baud", "115200"])
        threading.Thread(target=lines, args=(hub.stdout, queue.Queue()), daemon=True).start()
        print(f"haven hub serve --data {hub_dir} --serial {ends['a']} --baud 115200")
        kiosk_out: queue.Queue[str] = queue.Queue()
        runtime = self.procs.start(
            [self.kiosk, "run", "--data", str(kiosk_dir), "--hub", ends["b"], "--baud",
             "115200", "--ui", ui, "--interval", "1", "--retry-max", "2",
             "--hardware", "simulated"])
        threading.Thread(target=lines, args=(runtime.stdout, kiosk_out), daemon=True).start()
        threading.Thread(target=lines, args=(runtime.stderr, self.kiosk_log),
                         daemon=True).start()
        print(f"haven-kiosk run --data {kiosk_dir} --hub {ends['b']} --baud 115200 "
              f"--ui {ui} --hardware simulated")
        page = ""
        ready_by = time.monotonic() + CMD_TIMEOUT
        while not page and time.monotonic() < ready_by:  # the runtime says where it serves
            with contextlib.suppress(queue.Empty):
                line = kiosk_out.get(timeout=0.2)
                if "page at " in line:
                    page = line.split("page at ", 1)[1].strip()
            if runtime.poll() is not None:
                time.sleep(0.2)  # its last words
                raise Refused("haven-kiosk run stopped: " + " | ".join(
                    list(self.kiosk_log.queue)[-2:]))
        if not page:
            raise Refused("haven-kiosk run did not serve its page")
        return page, hub, runtime, emu_t0

    def run(self, ui: str) -> int:
        a = self.args
        page, hub, runtime, emu_t0 = self.setup(ui)
        print(f"the kiosk's page: {page}   (open it in a browser while this runs)")
        print(f"the staff PIN: {a.pin}   (the page's Staff button)")
        print("Ctrl-C stops everything" + (f"; it stops by itself after {a.seconds:g} s"
                                           if a.seconds else ""), flush=True)
        view = HubView(self.hub_dir)
        status = Status(a.outage, emu_t0)
        try:
            interrupted = self.loop(page, view, status, hub, runtime)
            if not interrupted:
                self.drain(view, status, hub, runtime)
        finally:
            view.close()
        return self.report(status)

    def loop(self, page: str, view: HubView, status: Status,
             hub: subprocess.Popen[str], runtime: subprocess.Popen[str]) -> bool:
        """Until Ctrl-C (True) or ``--seconds`` or a process stopping (False)."""
        a = self.args
        t_end = time.monotonic() + a.seconds if a.seconds else None
        next_at = time.monotonic() + 1.0
        count = 0
        try:
            while t_end is None or time.monotonic() < t_end:
                now = time.monotonic()
                if (not a.checkins or count < a.checkins) and now >= next_at:
                    body = made_up(count, a.seed, time.gmtime().tm_year)
                    typed = time.monotonic()  # the moment the patient presses the reason
                    out = page_api(page, "/api/checkin", body)
                    count += 1
                    self.made[out["queue_number"]] = typed
                    status.say(f"check-in on the page: {body['name']}, born {body['year']}, "
                               f"reason {body['reason']}: queue number {out['queue_number']}"
                               f" (line {status.line_state(time.monotonic())})")
                    next_at = max(next_at + a.every, now)
                self.look(page, view, status)
                if runtime.poll() is not None or hub.poll() is not None:
                    status.say("a process stopped unexpectedly")
                    return False
                time.sleep(0.2)
        except _Stop:
            status.say("stopping (Ctrl-C)")
            return True
        return False

    def drain(self, view: HubView, status: Status, hub: subprocess.Popen[str],
              runtime: subprocess.Popen[str]) -> None:
        """Wait up to ``--drain`` s for the check-ins in flight; Ctrl-C ends the wait."""
        end = time.monotonic() + self.args.drain
        try:
            while any(n not in self.seen for n in self.made) and time.monotonic() < end:
                if runtime.poll() is not None or hub.poll() is not None:
                    return
                self.look(None, view, status)
                time.sleep(0.2)
        except _Stop:
            pass

    def look(self, page: str | None, view: HubView, status: Status) -> None:
        """The kiosk's log, its LED and the hub's store: what arrived since."""
        while not self.kiosk_log.empty():
            entry = self.kiosk_log.get()
            if "synced via" in entry:
                status.rounds += 1
                status.note = "last round: " + entry.split(": ", 2)[-1][:50]
            elif "no hub answered" in entry:
                status.note = "retrying: no hub answered"
        if page is not None:
            with contextlib.suppress(OSError, ValueError):
                status.led = str(page_api(page, "/api/hw").get("led", "?"))
        for number in sorted(view.checkins() - set(self.seen)):
            self.seen[number] = now = time.monotonic()
            if number in self.made:
                status.say(f"  {number} is on the hub, {now - self.made[number]:.1f} s after "
                           "the check-in")
            else:
                status.say(f"  {number} (made on the page) is on the hub")
        status.show(len(self.made), sum(1 for n in self.made if n in self.seen))

    def report(self, status: Status) -> int:
        arrived = [n for n in self.made if n in self.seen]
        status.show(len(self.made), len(arrived), force=True)
        if status.tty:
            print()
        print(f"{len(arrived)} of {len(self.made)} made-up check-ins on the hub; "
              f"{len(self.seen) - len(arrived)} made on the page")
        for number, at in self.made.items():
            when = f"after {self.seen[number] - at:.1f} s" if number in self.seen else "NOT YET"
            print(f"  {number} {when}")
        with contextlib.suppress(Refused, subprocess.TimeoutExpired):
            same = run(self.kiosk, "dump", "--data", self.kiosk_dir) == run(
                self.haven, "hub", "dump", "--data", self.hub_dir)
            print(f"kiosk dump == hub dump: {'yes' if same else 'no (a round is in flight)'}")
            print(run(self.haven, "hub", "status", "--data", self.hub_dir).rstrip())
        self.procs.stop()
        stats = self.work / "emu.json"
        with contextlib.suppress(OSError, ValueError, KeyError):
            s = json.loads(stats.read_text())
            print(f"the line: {s['ba']['bytes_in']:,} B kiosk to hub, {s['ab']['bytes_in']:,}"
                  f" B hub to kiosk; {s['ab']['corrupted'] + s['ba']['corrupted']} bytes "
                  f"corrupted, {s['ab']['outage_bytes'] + s['ba']['outage_bytes']:,} B "
                  "lost in the outage")
        return 0 if len(arrived) == len(self.made) else 1


if __name__ == "__main__":
    sys.exit(main())
