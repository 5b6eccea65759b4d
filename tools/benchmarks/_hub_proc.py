"""The hub as a real subprocess for the load benchmark, and its kiosks enrolled in bulk.

Theory of operation
-------------------
``haven hub serve`` runs as its own process (``python -m host.cli``), as in
production; the benchmark reads its memory from ``/proc/PID/status`` and its
health from ``haven hub status --json`` when the hub offers it. Flags the
server may or may not have (the caps it gained with its event loop) are read
from ``haven hub serve --help``, so the benchmark runs against the server on
main whatever its age, and says what it passed.

Thousands of kiosks are enrolled straight into the hub's store through its
API before the server starts: each gets its own keys, a request signed by
them and a certificate the hub issues, as ``Hub.enroll`` does, without its
check of every enrolled kiosk against the new one (which makes enrolling
thousands quadratic). Each kiosk has its own site, so letters never clash.
"""

from __future__ import annotations

import contextlib
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from .sync import ROOT, free_port, wait_port

NOFILE = 1 << 17  #: the descriptor limit the benchmark gives itself and the hub


def raise_nofile(want: int = NOFILE) -> int:
    """Raise this process's descriptor limit (children inherit it); returns the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), max(hard, want)))
    except (ValueError, OSError):  # not root: as far as the hard limit allows
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def haven(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "host.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def serve_flags() -> set[str]:
    """The long options ``haven hub serve`` has on this checkout."""
    text = haven("hub", "serve", "--help").stdout
    return {w.rstrip(",") for w in text.split() if w.startswith("--")}


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def open_fds(pid: int) -> int:
    try:
        return len(list(Path(f"/proc/{pid}/fd").iterdir()))
    except OSError:
        return -1


def health(hub_dir: Path) -> dict[str, Any] | None:
    """What the running server's health socket says, where the server has one."""
    try:
        from host.hub.health import read_health
    except ImportError:
        return None
    with contextlib.suppress(OSError, ValueError):
        found = read_health(hub_dir)
        return dict(found) if found else None
    return None


@dataclass
class Kiosk:
    device_id: str
    x_key: X25519PrivateKey
    cert: bytes
    ed_key: Ed25519PrivateKey | None = None  #: signs its batches
    node: int = 0


def enrol_many(hub_dir: Path, count: int, first_node: int = 0x40000000) -> list[Kiosk]:
    from host.hub.hub import APPROVED, Hub
    from host.hub.storage import Device
    from protocol.driver.wall_clock import wall_ms
    from protocol.sync import certificate as sync_cert

    out = []
    now = wall_ms()
    with Hub(hub_dir) as hub:
        for i in range(count):
            x, ed = X25519PrivateKey.generate(), Ed25519PrivateKey.generate()
            req = sync_cert.read_request(sync_cert.make_request(
                first_node + i, f"bench-{i}", "A", x, ed))
            cert = sync_cert.issue(req, hub.ed_key, hub.x_public, hub.fleet_key, "A", now,
                                   i + 1)
            hub.store.add_device(Device(req.device_id, req.node, req.site, "A", req.x25519,
                                        req.ed25519, APPROVED, 0, b"\x00" * 32, 0, None), now)
            out.append(Kiosk(req.device_id, x, cert, ed, req.node))
        hub.store.set_meta("serial", count)
    return out


@dataclass
class HubProcess:
    proc: subprocess.Popen[bytes]
    host: str
    port: int
    key: bytes
    args: list[str]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss_kib(self) -> int:
        return rss_kib(self.proc.pid)


@contextmanager
def hub_serving(hub_dir: Path, log: Path, extra: list[str] | None = None
                ) -> Iterator[HubProcess]:
    """``haven hub serve`` on a free port of 127.0.0.1, stopped (SIGTERM) on exit."""
    from host.hub.hub import Hub

    with Hub(hub_dir) as hub:
        key = hub.x_public
    port = free_port()
    args = ["hub", "serve", "--data", str(hub_dir), "--listen", f"tcp://127.0.0.1:{port}",
            *(extra or [])]
    with log.open("ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "host.cli", *args], cwd=ROOT,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_port(port, proc)
        yield HubProcess(proc, "127.0.0.1", port, key, args)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(15)


def settle(seconds: float) -> None:
    time.sleep(seconds)
