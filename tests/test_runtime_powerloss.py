"""Power loss at the kiosk: every check-in the page confirmed survives (issue 6).

The real ``haven-kiosk run`` serves the page and syncs with ``haven hub
serve``; the test checks patients in through the page's API as the page
does, from two clients at once.

* ``kill -9``: the runtime is killed at seeded random instants during the
  check-ins (and whatever sync round is running), then started again, for
  several rounds. Afterwards each check-in whose response carried a queue
  number is in the kiosk's dump exactly once, no queue number was handed out
  twice, SQLite's integrity checks pass, and the hub ends up with every one
  of them exactly once (no outbox entry lost or sent twice).
* Power cut: ``kill -9`` keeps the page cache, so it says nothing about
  fsync. So the runtime also runs under ``strace`` and the disk is rebuilt
  (``tests/powercut.py``) as a power cut would leave it right after each
  confirmation left the runtime on its socket: only writes an fsync of
  their file covered. Every check-in confirmed up to that instant must be
  in it. The same run with the runtime's fsyncs turned into no-ops (strace's
  fault injection, as eatmydata does) loses confirmed check-ins: the test
  can fail.
"""

from __future__ import annotations

import http.client
import json
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
from pathlib import Path
from typing import Any

import pytest

from device.store import Store
from tools.benchmarks._runtime import checkin, patient

from .powercut import _STRING, Cut, Replay, _hex, restore
from .test_ui_helpers import ROOT, Proc, free_port, make_kiosk, run_kiosk

BOUND = 20.0
STRACE = shutil.which("strace")
CLIENTS = 2
CALLS = "openat,pwrite64,write,ftruncate,fsync,fdatasync,unlink,close,sendto"
DATABASES = ("store.db", "sync.db")  #: and their -wal and -shm files
CONFIRMED = re.compile(rb'"queue_number": "([^"]+)"')


def start_hub(hub_dir: Path) -> tuple[Proc, str]:
    url = f"tcp://127.0.0.1:{free_port()}"
    hub = Proc([sys.executable, "-m", "host.cli", "hub", "serve", "--data", str(hub_dir),
                "--listen", url])
    hub.wait_for(r"hub \w+ ready", BOUND)
    return hub, url


def letters(n: int) -> str:
    return "".join("ABCDEFGHIJ"[int(d)] for d in f"{n:02d}")


class Clients:
    """Threads checking patients in back to back until the runtime stops answering."""

    def __init__(self, url: str, tag: str) -> None:
        self.url, self.tag = url, tag
        self.confirmed: dict[str, str] = {}  #: patient name -> queue number
        self.unexpected: list[str] = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(c,), daemon=True)
                        for c in range(CLIENTS)]
        for t in self.threads:
            t.start()

    def _run(self, client: int) -> None:
        for i in range(10_000):
            passport, name = patient(self.tag + "ABCD"[client], i)
            try:
                answer = checkin(self.url, passport, name)
            except urllib.error.HTTPError as exc:  # an answer, but not a confirmation
                with self.lock:
                    self.unexpected.append(f"{exc.code} {exc.read()!r}")
                return
            except (OSError, http.client.HTTPException):  # the runtime is gone
                return
            with self.lock:
                self.confirmed[name] = answer["queue_number"]

    def join(self) -> None:
        for t in self.threads:
            t.join(BOUND)
            assert not t.is_alive(), "a client is still waiting for the killed runtime"


def dump(*argv: str) -> list[dict[str, Any]]:
    done = subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout)["records"])


def checkins_by_name(records: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Each patient's name -> the check-in records whose subject is that patient (the
    name the patient typed, a claim on the check-in, where the kiosk holds no record)."""
    names = {r["id"]: r["fields"].get("name") for r in records if r["type"] == "patient"}
    out: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        if r["type"] == "checkin":
            f = r["fields"]
            name = names.get(f.get("subject")) or f.get("claimName") or "?"
            out.setdefault(name, []).append(f)
    return out


def assert_once(records: list[dict[str, Any]], confirmed: dict[str, str]) -> None:
    found = checkins_by_name(records)
    for name, number in confirmed.items():
        got = [c["queueNumber"] for c in found.get(name, [])]
        assert got == [number], f"{name}: confirmed {number}, found {got}"


def integrity_ok(path: Path) -> None:
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok", path
    finally:
        conn.close()


# kill -9 ------------------------------------------------------------------------------


def kill_rounds(tmp_path: Path, seed: int, rounds: int) -> None:
    rng = random.Random(seed)
    hub_dir, kiosk_dir = make_kiosk(tmp_path)
    hub, hub_url = start_hub(hub_dir)
    confirmed: dict[str, str] = {}
    try:
        for r in range(rounds):
            kiosk, url = run_kiosk(kiosk_dir, hub_url, idle=60)
            try:
                clients = Clients(url, "K" + letters(r))
                time.sleep(rng.uniform(0.05, 1.5))
                kiosk.p.send_signal(signal.SIGKILL)
                assert kiosk.p.wait(BOUND) == -signal.SIGKILL
                clients.join()
            finally:
                kiosk.stop()
            assert clients.unexpected == [], "".join(kiosk.log)
            confirmed.update(clients.confirmed)
        # Started once more: it checks in, and its outbox drains to the hub.
        kiosk, url = run_kiosk(kiosk_dir, hub_url, idle=60)
        try:
            passport, name = patient("LAST", 0)
            confirmed[name] = checkin(url, passport, name)["queue_number"]
            end = time.monotonic() + BOUND
            while not confirmed.keys() <= set(checkins_by_name(dump(
                    "host.cli", "hub", "dump", "--data", str(hub_dir)))):
                assert time.monotonic() < end, "the hub never got every confirmed check-in"
                time.sleep(0.2)
        finally:
            assert kiosk.stop() == 0, "".join(kiosk.log)
    finally:
        hub.stop()
    assert len(confirmed) > rounds  # the rounds did check patients in
    records = dump("device.cli", "dump", "--data", str(kiosk_dir))
    assert_once(records, confirmed)
    numbers = [(c["periodStart"][:10], c["queueNumber"]) for c in
               (r["fields"] for r in records if r["type"] == "checkin")]
    assert len(numbers) == len(set(numbers)), "a queue number was handed out twice"
    assert_once(dump("host.cli", "hub", "dump", "--data", str(hub_dir)), confirmed)
    integrity_ok(kiosk_dir / "store.db")
    integrity_ok(kiosk_dir / "sync.db")


def test_kill9_at_random_instants_keeps_every_confirmed_checkin(tmp_path: Path) -> None:
    kill_rounds(tmp_path, seed=6, rounds=6)


@pytest.mark.long
def test_kill9_many_rounds(tmp_path: Path) -> None:
    kill_rounds(tmp_path, seed=7, rounds=40)


# Power cut ----------------------------------------------------------------------------


class ConfirmationReplay(Replay):
    """Cuts the power right after each confirmation the runtime sends to the page.

    Only the databases are followed: the runtime's other files (``runtime.json``,
    written whole and renamed into place) hold no check-in."""

    def _name(self, path: bytes) -> str | None:
        name = super()._name(path)
        return name if name is not None and name.startswith(DATABASES) else None

    def _event(self, name: str, args: str) -> None:
        if name in ("fsync", "fdatasync") and "(INJECTED)" in args:
            return  # turned into a no-op: nothing reached the disk
        strings = _STRING.findall(args)
        if name == "sendto" and strings and (m := CONFIRMED.search(_hex(strings[0]))):
            self.cuts.append(Cut([m.group(1).decode()],
                                 {k: bytes(v) for k, v in self.durable.items()}))
            return
        super()._event(name, args)

    def _print(self, data: bytes) -> None:
        pass  # the runtime's own output confirms nothing


def traced_checkins(tmp_path: Path, count: int, *strace_args: str) -> tuple[list[Cut], Path]:
    """``count`` check-ins through the page of a runtime under strace, then ``kill -9``."""
    hub_dir, kiosk_dir = make_kiosk(tmp_path)
    initial = {p.name: p.read_bytes() for p in kiosk_dir.iterdir()}
    trace = tmp_path / "trace.txt"
    hub, hub_url = start_hub(hub_dir)
    try:
        kiosk, url = run_kiosk(kiosk_dir, hub_url, idle=60, prefix=(
            STRACE or "strace", "-f", "--seccomp-bpf", "-xx", "-s", "1000000",
            "-e", f"trace={CALLS}", *strace_args, "-o", str(trace)))
        for i in range(count):
            checkin(url, *patient("CUT", i))
        # The runtime is strace's child: kill it, and strace ends with it.
        tracer = kiosk.p.pid
        [child] = Path(f"/proc/{tracer}/task/{tracer}/children").read_text().split()
        subprocess.run(["kill", "-KILL", child], check=True, timeout=BOUND)
        kiosk.p.wait(BOUND)
    finally:
        hub.stop()
    cuts = ConfirmationReplay(kiosk_dir.resolve(), initial).run(trace.read_text())
    assert len(cuts) == count  # every confirmation was seen leaving the runtime
    return cuts, kiosk_dir


def lost_after_cuts(tmp_path: Path, count: int, *strace_args: str) -> int:
    """Confirmed check-ins missing after a power cut right after each confirmation."""
    cuts, kiosk_dir = traced_checkins(tmp_path, count, *strace_args)
    lost = 0
    for i, cut in enumerate(cuts):
        into = tmp_path / f"cut{i}"
        restore(cut, into, {})
        for db in DATABASES:
            if (into / db).exists():
                integrity_ok(into / db)
        with Store(into) as store:
            found = checkins_by_name(json.loads(store.dump())["records"])
        for k in range(i + 1):
            name = patient("CUT", k)[1]
            got = [c["queueNumber"] for c in found.get(name, [])]
            assert len(got) <= 1, f"{name} twice after cut {i}"
            lost += got != [cuts[k].printed[0]]
    return lost


@pytest.mark.usefixtures("strace")
def test_power_cut_after_any_confirmation_loses_nothing(tmp_path: Path) -> None:
    assert lost_after_cuts(tmp_path, 10) == 0


@pytest.mark.usefixtures("strace")
def test_power_cut_with_fsync_turned_off_loses_confirmed_checkins(tmp_path: Path) -> None:
    assert lost_after_cuts(tmp_path, 10, "-e", "inject=fsync,fdatasync:retval=0") > 0
