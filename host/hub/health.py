"""The server's health, on a unix socket in the hub's data folder.

Theory of operation
-------------------
``haven hub serve`` answers on ``<data>/serve.sock`` (owner only; each of
several processes sharing a port, on ``<data>/serve-PID.sock``): whoever
connects gets one JSON object and the end of the stream (``Server.health``:
connections by state and link, descriptors in use against the limit, the
worker pool, refusals by reason since start, uptime). ``read_health`` is the
other end, for ``haven hub status`` and the benchmark; it returns None when
no server answers there.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

SOCKET = "serve.sock"


def descriptors() -> int:
    """Descriptors this process holds (Linux), or -1 when it cannot tell."""
    try:
        return len(os.listdir("/proc/self/fd")) - 1  # the listing's own
    except OSError:
        return -1


class _Answer(asyncio.Protocol):
    def __init__(self, report: Callable[[], dict[str, Any]]) -> None:
        self.report = report

    def connection_made(self, transport: Any) -> None:
        try:
            body = json.dumps(self.report(), sort_keys=True).encode() + b"\n"
        except Exception as exc:  # noqa: BLE001 - the report must never break the server
            body = json.dumps({"error": f"{type(exc).__name__}: {exc}"}).encode() + b"\n"
        transport.write(body)
        transport.close()


async def open_health(loop: asyncio.AbstractEventLoop, path: Path,
                      report: Callable[[], dict[str, Any]]) -> asyncio.AbstractServer | None:
    """Answer on ``path``; None when it cannot be bound (too long)."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # a server that died left it behind, or we take over from one
    old = os.umask(0o177)
    try:
        server = await loop.create_unix_server(lambda: _Answer(report), str(path))
    except OSError:
        return None
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    return server


def sweep(data: Path) -> None:
    """Remove the sockets of serving processes that are gone (killed, they leave them)."""
    for path in Path(data).glob("serve-*.sock"):
        pid = path.name[len("serve-"):-len(".sock")]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            with contextlib.suppress(OSError):
                path.unlink()


def read_all(data: Path, timeout: float = 2.0) -> list[dict[str, Any]]:
    """Every running server's health report: the lone one's, or each process's when
    several share their ports (``serve-PID.sock``; one that does not answer is left
    out: a process that died)."""
    names = [SOCKET, *sorted(p.name for p in Path(data).glob("serve-*.sock"))]
    return [r for name in names if (r := read_health(data, timeout, name)) is not None]


def read_health(data: Path, timeout: float = 2.0, name: str = SOCKET) -> dict[str, Any] | None:
    """The running server's health report (``name``: that process's), or None when none
    answers."""
    path = Path(data) / name
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(path))
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
    except OSError:
        return None
    try:
        report = json.loads(b"".join(chunks))
    except ValueError:
        return None
    return report if isinstance(report, dict) else None
