"""``haven-kiosk hw``: the simulated button and LED of a running runtime, from another process.

Theory of operation
-------------------
The simulated pins (gpiozero's ``MockFactory``) live inside ``haven-kiosk
run``, and only its page server can reach them: it answers ``GET /api/hw``
and ``POST /api/hw/press`` when, and only when, the hardware is simulated
(``device.ui.app``). So the runtime says where its page is: ``announce``
writes ``runtime.json`` (its pid and the page's URL) into ``--data`` once
the page is served, and ``withdraw`` removes it at shutdown. ``state`` and
``press`` find the runtime through that file and call the page's API on
127.0.0.1. They refuse with ``NotRunning`` when no runtime serves that
directory (no file, a dead pid, nobody answering) and with ``NotSimulated``
when the runtime's hardware is real.

``sync_status`` asks the same runtime for its status as the LED and the
page show it, and its last sync, kept in memory (``GET /api/status``, on
real hardware too): ``haven-kiosk status`` prints them.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from device.exc import DeviceError

RUNTIME_FILE = "runtime.json"
LONGEST_PRESS = 30.0  #: what ``/api/hw/press`` accepts
TIMEOUT = 10.0
STATUS_TIMEOUT = 3.0  #: ``haven-kiosk status`` does not wait longer for a runtime


class HwRemoteError(DeviceError):
    """Root of the errors of ``haven-kiosk hw``."""


class NotRunning(HwRemoteError, ConnectionError):
    """No kiosk runtime serves this data directory."""


class NotSimulated(HwRemoteError, PermissionError):
    """The runtime drives real pins: software may not press its button."""


def page_url(host: str, port: int) -> str:
    """Where this machine reaches a page served on ``host``: the wildcard is loopback."""
    host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def announce(data: Path, host: str, port: int) -> None:
    """Say, in ``data``, that this process serves the page at ``host:port``."""
    path = Path(data) / RUNTIME_FILE
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"pid": os.getpid(), "url": page_url(host, port)}, f)
    os.replace(tmp, path)


def withdraw(data: Path) -> None:
    """Remove what ``announce`` wrote, if this process wrote it."""
    path = Path(data) / RUNTIME_FILE
    try:
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError):
        pass


def _alive(pid: int) -> bool:
    if pid <= 0:  # 0 and -1 name groups of processes, never a runtime
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process, but alive
        pass
    return True


def locate(data: Path) -> str:
    """The page URL of the runtime serving ``data``."""
    path = Path(data) / RUNTIME_FILE
    try:
        doc = json.loads(path.read_text())
        pid, url = int(doc["pid"]), str(doc["url"])
    except FileNotFoundError:
        raise NotRunning(f"no kiosk runtime is running on {data} "
                         f"(start one with: haven-kiosk run --data {data})") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise NotRunning(f"cannot read {path}: {exc}") from None
    if not _alive(pid):
        raise NotRunning(f"the kiosk runtime that served {data} (pid {pid}) is no longer "
                         "running")
    return url


def _call(url: str, path: str, body: dict[str, Any] | None = None,
          timeout: float = TIMEOUT) -> dict[str, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data=data,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            answer = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raise HwRemoteError(f"the kiosk runtime at {url} answered {exc.code} to {path}") \
            from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise NotRunning(f"no kiosk runtime answers at {url}: {reason}") from None
    except ValueError:
        raise HwRemoteError(f"the kiosk runtime at {url} sent no JSON for {path}") from None
    if not isinstance(answer, dict):
        raise HwRemoteError(f"the kiosk runtime at {url} sent no JSON object for {path}")
    return answer


def _simulated(data: Path) -> str:
    url = locate(data)
    if not _call(url, "/api/config").get("simulated"):
        raise NotSimulated(f"the kiosk runtime on {data} drives real hardware (or none): "
                           "its button and LED can be driven from software only in "
                           "simulation, with hardware = simulated")
    return url


def sync_status(data: Path, timeout: float = STATUS_TIMEOUT) -> dict[str, Any]:
    """The running runtime's status, link and last sync (``LiveStatus.status``)."""
    return _call(locate(data), "/api/status", timeout=timeout)


def state(data: Path) -> dict[str, Any]:
    """The LED's pattern, whether it is lit, the button, the hold time."""
    return _call(_simulated(data), "/api/hw")


def press(data: Path, seconds: float) -> dict[str, Any]:
    """Hold the button down for ``seconds`` (blocks), then the state."""
    if not 0 < seconds <= LONGEST_PRESS:
        raise ValueError(f"a press lasts more than 0 and at most {LONGEST_PRESS:g} seconds")
    return _call(_simulated(data), "/api/hw/press", {"seconds": seconds},
                 timeout=seconds + TIMEOUT)
