"""Helpers (no tests): the real ``haven hub serve`` and ``haven-kiosk sync`` processes
around the link emulator, with a deadline on every wait."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parents[1]
DEADLINE = 60.0  #: the longest any one wait may take before the test fails


def start(args: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, bufsize=0, start_new_session=True)


class Lines:
    """Lines from a pipe, read straight from its descriptor (no hidden buffer)."""

    def __init__(self, stream: IO[bytes] | None) -> None:
        assert stream is not None
        self.fd = stream.fileno()
        self.buf = b""
        self.eof = False

    def next(self, end: float) -> str | None:
        while b"\n" not in self.buf:
            if self.eof:
                return None
            ready, _, _ = select.select([self.fd], [], [], max(0.0, end - time.monotonic()))
            if not ready:
                return None
            data = os.read(self.fd, 65536)
            self.eof = not data
            self.buf += data
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode(errors="replace")

    def wait_for(self, want: str, count: int = 1, limit: float = DEADLINE) -> list[str]:
        """``count`` lines containing ``want``, within ``limit`` seconds."""
        found: list[str] = []
        end = time.monotonic() + limit
        while len(found) < count:
            line = self.next(end)
            if line is None:
                raise AssertionError(f"{len(found)} of {count} lines with {want!r}")
            if want in line:
                found.append(line)
        return found


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


@contextmanager
def hub_serving(data: Path, serial: list[str] = (), listen: list[str] = (),  # type: ignore[assignment]
                baud: int = 115200) -> Iterator[subprocess.Popen[bytes]]:
    args = ["-m", "host.cli", "hub", "serve", "--data", str(data), "--baud", str(baud)]
    for url in serial:
        args += ["--serial", url]
    for url in listen:
        args += ["--listen", url]
    proc = start(args)
    try:
        Lines(proc.stdout).wait_for("ready")
        yield proc
    finally:
        stop(proc)


def kiosk_sync(data: Path, hub: str, *extra: str) -> subprocess.Popen[bytes]:
    return start(["-m", "device.cli", "sync", "--data", str(data), "--hub", hub, *extra])


def finish(proc: subprocess.Popen[bytes], limit: float = 2 * DEADLINE) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        stop(proc, signal.SIGKILL)
        raise AssertionError(f"{proc.args!r} did not finish") from None
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")
