"""``haven-kiosk run`` as a measured subprocess: its /proc counters and its live status.

Used by the kiosk benchmark: the runtime is started exactly as a kiosk
starts it (the console script, simulated hardware), and watched from
outside through ``/proc/<pid>`` and the page's own API.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

BOUND = 30.0  #: every wait on the runtime ends by then


def kiosk_command(data: Path, hub: str, port: int) -> list[str]:
    script = Path(sys.executable).parent / "haven-kiosk"
    return [str(script), "run", "--data", str(data), "--hub", hub, "--ui", f"127.0.0.1:{port}"]


def start(data: Path, hub: str, port: int, log: IO[bytes]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(kiosk_command(data, hub, port), stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "GPIOZERO_PIN_FACTORY": "mock"},
                            start_new_session=True)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(BOUND)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(BOUND)


@contextmanager
def running(data: Path, hub: str, port: int, log: IO[bytes]) -> Iterator[subprocess.Popen[bytes]]:
    proc = start(data, hub, port, log)
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
