"""A sync refusal names the side that refused: a kiosk that turns away a hub whose key is
not the one its certificate names says so, and does not blame the hub; a hub that turns
away a revoked kiosk is named as the one that refused. Real hubs over TCP on 127.0.0.1."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .test_ui_helpers import ROOT

BOUND = 20.0


def cli(module: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=BOUND)


@contextmanager
def serving(hub: Path) -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"tcp://127.0.0.1:{port}"
    p = subprocess.Popen([sys.executable, "-m", "host.cli", "hub", "serve", "--data", str(hub),
                          "--listen", url], cwd=ROOT, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    try:
        for _ in range(int(BOUND / 0.1)):  # until it accepts connections
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert p.poll() is None, "the hub stopped"
                time.sleep(0.1)
        yield url
    finally:
        p.terminate()
        p.wait(BOUND)


def test_each_refusal_names_the_side_that_refused(tmp_path: Path) -> None:
    a, b, k = tmp_path / "a", tmp_path / "b", tmp_path / "k"
    assert cli("host.cli", "hub", "init", "--data", a).returncode == 0
    assert cli("host.cli", "hub", "init", "--data", b).returncode == 0
    assert cli("device.cli", "init", "--data", k, "--site", "N", "--letter", "B").returncode == 0
    assert cli("host.cli", "hub", "enroll", "--data", a, k / "enrolment.req", "--out",
               tmp_path / "k.cert").returncode == 0
    assert cli("device.cli", "enroll", "--data", k, tmp_path / "k.cert").returncode == 0

    with serving(b) as url:  # another hub: its key is not the one the certificate names
        r = cli("device.cli", "sync", "--data", k, "--hub", url, "--once")
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "this kiosk refused the hub" in r.stderr and "hub refused" not in r.stderr, r.stderr

    device = re.search(r"([0-9a-f]{8}) 'N' B", cli("host.cli", "hub", "status", "--data",
                                                   a).stdout)
    assert device is not None
    assert cli("host.cli", "hub", "revoke", "--data", a, device.group(1)).returncode == 0
    with serving(a) as url:
        r = cli("device.cli", "sync", "--data", k, "--hub", url, "--once")
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "the hub refused this kiosk (revoked" in r.stderr, r.stderr
