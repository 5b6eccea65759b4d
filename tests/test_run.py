"""``./tools/run``'s demo: a hub and a kiosk through the emulated serial line, end to end."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_run_demo_brings_every_checkin_to_the_hub() -> None:
    done = subprocess.run([sys.executable, "-m", "tools.demo_sync", "--seconds", "60",
                           "--checkins", "3", "--outage", "4:2", "--seed", "3"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 of 3 check-ins on the hub" in done.stdout
    assert "kiosk dump == hub dump: yes" in done.stdout
    assert "backlog 0" in done.stdout
