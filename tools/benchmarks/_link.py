"""Start the link emulator as a subprocess and read its stats when it stops."""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Emulator:
    endpoints: dict[str, str]
    stats_path: Path
    proc: subprocess.Popen[str]
    stats: dict[str, Any] = field(default_factory=dict)


@contextmanager
def emulator(mode: str, args: list[str], stats_path: Path,
             start_timeout: float = 10.0) -> Iterator[Emulator]:
    """Run ``python -m tools.linkemu MODE ARGS``; on exit, stop it and load its stats."""
    stats_path.unlink(missing_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tools.linkemu", mode, *args, "--stats", str(stats_path)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
        start_new_session=True,  # Ctrl-C reaches us; we stop it with SIGTERM
    )
    try:
        assert proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(start_timeout):
            raise RuntimeError("link emulator did not print its endpoints")
        emu = Emulator(json.loads(proc.stdout.readline()), stats_path, proc)
        yield emu
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    deadline = time.monotonic() + 5
    while not stats_path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    if stats_path.exists():
        emu.stats = json.loads(stats_path.read_text())


def open_tty(path: str) -> int:
    return os.open(path, os.O_RDWR | os.O_NOCTTY)
