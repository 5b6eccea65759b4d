"""``haven-kiosk run``: one runtime per data folder, and its errors as one line each."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from device.run_lock import RunLockError, RunLockHeld, hold
from device.store import init_store

from .test_ui_helpers import ROOT, free_port, run_kiosk

BOUND = 20.0


def kiosk_run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "device.cli", "run", "--hardware",
                           "simulated", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=BOUND)


def one_line(text: str) -> str:
    lines = [x for x in text.splitlines() if x.startswith("haven-kiosk")]
    assert "Traceback" not in text, text
    assert len(lines) == 1, text
    return lines[0]


def test_the_lock_is_exclusive_and_dropped_with_its_holder(tmp_path: Path) -> None:
    with hold(tmp_path), pytest.raises(RunLockHeld, match=f"pid {os.getpid()}"), \
            hold(tmp_path):
        pass
    with hold(tmp_path):  # released: a new runtime may start
        pass
    with pytest.raises(RunLockError, match="no data folder"), hold(tmp_path / "missing"):
        pass


def test_a_second_runtime_on_the_same_data_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "k"
    init_store(data, "North", "B").close()
    first, url = run_kiosk(data, f"tcp://127.0.0.1:{free_port()}", idle=60)
    try:
        announced = json.loads((data / "runtime.json").read_text())
        assert announced["pid"] == first.p.pid
        second = kiosk_run("--data", str(data), "--hub", f"tcp://127.0.0.1:{free_port()}",
                           "--ui", "127.0.0.1:0")
        assert second.returncode == 1
        line = one_line(second.stderr)
        assert f"another haven-kiosk run (pid {first.p.pid})" in line
        assert "page at" not in second.stdout  # it never served a page
        # the first one's announcement is untouched, and it still serves
        assert json.loads((data / "runtime.json").read_text()) == announced
        assert first.p.poll() is None
    finally:
        first.p.send_signal(signal.SIGTERM)
        first.p.wait(BOUND)
    assert not (data / "runtime.json").exists()  # withdrawn by its own runtime


def test_a_port_in_use_and_a_missing_folder_are_one_line(tmp_path: Path) -> None:
    data = tmp_path / "k"
    init_store(data, "North", "B").close()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = kiosk_run("--data", str(data), "--hub", "tcp://127.0.0.1:1",
                      "--ui", f"127.0.0.1:{port}")
    assert r.returncode == 1
    assert f"127.0.0.1:{port} is in use" in one_line(r.stderr)
    r = kiosk_run("--data", str(tmp_path / "nowhere"), "--hub", "tcp://127.0.0.1:1",
                  "--ui", "127.0.0.1:0")
    assert r.returncode == 1
    assert "no data folder" in one_line(r.stderr)


def test_a_data_folder_that_cannot_be_made_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    for argv, prog in ((["device.cli", "init", "--data", str(blocker / "k"), "--site", "S",
                         "--letter", "A"], "haven-kiosk init"),
                       (["host.cli", "hub", "init", "--data", str(blocker / "h")], "haven hub")):
        r = subprocess.run([sys.executable, "-m", *argv], cwd=ROOT, capture_output=True,
                           text=True, timeout=BOUND)
        assert r.returncode == 1, r.stderr
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
        assert r.stderr.startswith(f"{prog}: Not a directory ({blocker}"), r.stderr
