"""``./tools/run``'s main job: a hub and a kiosk through the emulated serial line, kept up
until Ctrl-C or ``--seconds``, its made-up check-ins all valid, its flags never a crash.

The runs are paced short (``--every``, ``--outage``, ``--drain``) so each takes seconds."""

from __future__ import annotations

import json
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from device.ui.checkin import clean_name, clean_passport, clean_reason, clean_year
from tools.demo_sync import made_up

ROOT = Path(__file__).resolve().parents[1]
BOUND = 60.0


class Demo:
    """``python -m tools.demo_sync`` with its stdout read line by line."""

    def __init__(self, *args: str) -> None:
        self.p = subprocess.Popen([sys.executable, "-m", "tools.demo_sync", *args], cwd=ROOT,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.out: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            self.out.append(line)
            self.lines.put(line)

    def wait_for(self, pattern: str) -> re.Match[str]:
        deadline = time.monotonic() + BOUND
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                break
            if m := re.search(pattern, line):
                return m
        self.p.kill()
        raise AssertionError(f"no {pattern!r} in: {''.join(self.out)}")

    def end(self) -> tuple[int, str, str]:
        rc = self.p.wait(BOUND)
        assert self.p.stderr is not None
        time.sleep(0.1)  # the pump's last lines
        return rc, "".join(self.out), self.p.stderr.read()


def test_runs_until_ctrl_c_and_a_checkin_made_on_the_page_reaches_the_hub() -> None:
    demo = Demo("--every", "0.7", "--outage", "2:1", "--seed", "3", "--ui", "127.0.0.1:0",
                "--drain", "8")
    try:
        work = Path(demo.wait_for(r"haven hub init --data (\S+)/hub").group(1))
        page = demo.wait_for(r"the kiosk's page: (http://\S+)").group(1)
        assert demo.wait_for(r"the staff PIN: (\d+)").group(1) == "246810"
        req = urllib.request.Request(page + "/api/checkin", method="POST", data=json.dumps({
            "passport": "ZZ998877", "year": "1984", "name": "Page Visitor",
            "reason": "medicine", "consent": True}).encode(),
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=BOUND) as resp:
            number = json.loads(resp.read())["queue_number"]
        demo.wait_for(rf"{number} \(made on the page\) is on the hub")
        demo.wait_for(r"A-\d+ is on the hub, [\d.]+ s after")  # a made-up one arrives too
        demo.p.send_signal(signal.SIGINT)
        rc, out, err = demo.end()
    finally:
        if demo.p.poll() is None:
            demo.p.kill()
    assert "stopping (Ctrl-C)" in out and "Traceback" not in out + err, out + err
    tally = re.search(r"(\d+) of (\d+) made-up check-ins on the hub", out)
    assert tally is not None and int(tally.group(2)) >= 1, out
    assert rc == (0 if "NOT YET" not in out else 1), out
    assert "1 made on the page" in out
    assert not work.exists()  # its temporary directory, and every process, are gone


def test_seconds_ends_the_run_with_every_checkin_on_the_hub() -> None:
    demo = Demo("--seconds", "4", "--every", "0.5", "--checkins", "3", "--outage", "0:0",
                "--ui", "127.0.0.1:0", "--drain", "15")
    rc, out, err = demo.end()
    assert rc == 0, out + err
    assert "3 of 3 made-up check-ins on the hub" in out
    assert "kiosk dump == hub dump: yes" in out and "backlog 0" in out


def test_every_made_up_checkin_is_valid_whatever_its_number() -> None:
    for seed in (0, 1, 99, 12345):
        for i in range(2000):
            body = made_up(i, seed, 2026)
            clean_passport(body["passport"])
            assert 1900 <= clean_year(str(body["year"]), now=time.mktime(
                (2026, 6, 1, 0, 0, 0, 0, 0, 0))) <= 2026
            clean_name(body["name"])
            clean_reason(body["reason"])
    assert made_up(19, 1, 2026)["year"] <= 2026  # the 20th: 2027 once
    assert len({made_up(i, 1, 2026)["passport"] for i in range(2000)}) == 2000


@pytest.mark.parametrize("flags", [
    ["--seconds", "-1"], ["--seconds", "soon"], ["--seconds", "nan"], ["--every", "0"],
    ["--checkins", "-2"], ["--checkins", "1.5"], ["--corrupt", "2"], ["--outage", "x"],
    ["--outage", "5"], ["--outage", "-1:3"], ["--seed", "-4"], ["--ui", "nohost"],
    ["--ui", "127.0.0.1:99999"], ["--pin", "12"], ["--pin", "abcdef"], ["--drain", "-3"],
])
def test_no_flag_value_crashes_it(flags: list[str]) -> None:
    r = subprocess.run([sys.executable, "-m", "tools.demo_sync", *flags], cwd=ROOT,
                       capture_output=True, text=True, timeout=BOUND)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_a_page_port_in_use_is_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "tools.demo_sync", "--ui",
                            f"127.0.0.1:{port}"], cwd=ROOT, capture_output=True, text=True,
                           timeout=BOUND)
    assert r.returncode == 2 and r.stderr.strip() == (
        f"./tools/run: --ui 127.0.0.1:{port} is in use: give another port, or leave --ui out"
    ), r.stderr


def test_help_is_plain_text() -> None:
    r = subprocess.run([sys.executable, "-m", "tools.demo_sync", "--help"], cwd=ROOT,
                       capture_output=True, text=True, timeout=BOUND)
    assert r.returncode == 0 and r.stdout.startswith("usage: ./tools/run")
    assert "``" not in r.stdout and ":ref:" not in r.stdout and "Ctrl-C" in r.stdout
