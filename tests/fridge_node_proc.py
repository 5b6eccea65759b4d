"""The fridge node as a subprocess on a simulated clock, with a Session's surface.

``NodeProcess`` starts ``device.fridge_node.unix --step`` under MicroPython
(or CPython) and speaks the step protocol of device/fridge_node/stepper.py
over its stdin and stdout. It offers what ``tools.linksim.LinkSim`` drives:
``receive_data(data, now)``, ``data_to_send(now)``, ``next_event()`` (the
node's session opening and closing, as ``Connected`` and ``Closed``) and
``next_deadline()`` (the node's own: its next reading, commit or session
timer). ``console(line, now)`` runs a technician's command; ``status(now)``
returns the node's counters; ``kill()`` cuts its power (SIGKILL: nothing is
committed); ``start(now)`` boots it again on the same files.
"""

from __future__ import annotations

import json
import os
import select
import struct
import subprocess
import sys
from collections import deque
from pathlib import Path
from typing import Any

from protocol import strict_cbor
from protocol.crypto import X25519PrivateKey
from protocol.session.events import Closed, Connected, Event
from tests import micropython_port

US = 1_000_000
TIMEOUT = 60.0  #: seconds a node may take to answer one request before the test fails


def provision(folder: Path, kiosk_public: bytes, node_key: bytes, name: str = "fridge-1",
              **values: int) -> bytes:
    """Write the files a technician's console would (keys, name, limits); the node's
    public key. ``values`` in the units config.json holds (hundredths of °C, seconds)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "node.key").write_bytes(node_key)
    config = {"name": name, "kiosk_public": kiosk_public.hex(), "values": values}
    (folder / "config.json").write_text(json.dumps(config))
    return X25519PrivateKey.from_private_bytes(node_key).public_key().public_bytes_raw()


class NodeProcess:
    """One fridge node under the step protocol (module doc)."""

    def __init__(self, folder: Path, *, profile: str = "steady:5.0", now: float = 0.0,
                 micropython: bool = True) -> None:
        self.folder, self.profile, self.micropython = folder, profile, micropython
        self._events: deque[Event] = deque()
        self._deadline: float | None = None
        self._quiet_until: float | None = None  #: no bytes to take before this (see take)
        self.proc: subprocess.Popen[bytes] | None = None
        self.start(now)

    def start(self, now: float) -> None:
        """Boot the node (again) on its files; ``now``: the simulated clock."""
        args = ["-m", "device.fridge_node.unix", "--data", str(self.folder), "--step",
                "--profile", self.profile, "--start", str(round(now * US))]
        if self.micropython:
            cmd = [micropython_port.interpreter(), "-X", "heapsize=2M", *args]
            env = dict(os.environ, MICROPYPATH=micropython_port.path())
        else:
            cmd = [sys.executable, *args]
            env = dict(os.environ, PYTHONPATH=str(micropython_port.ROOT))
        self.proc = subprocess.Popen(cmd, cwd=micropython_port.ROOT, env=env, bufsize=0,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        self._ask("feed", now, b"")

    def kill(self) -> None:
        """Cut the power: nothing more is committed."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self._close_pipes()
            self.proc = None
        self._deadline = self._quiet_until = None

    def close(self, now: float) -> None:
        """Shut the node down cleanly (it commits first)."""
        if self.proc is not None:
            self._ask("quit", now)
            self.proc.wait(timeout=TIMEOUT)
            self._close_pipes()
            self.proc = None

    def __enter__(self) -> NodeProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()

    # -- the Session surface -----------------------------------------------------

    def receive_data(self, data: bytes, now: float) -> None:
        if self.proc is not None:
            self._ask("feed", now, data)

    def data_to_send(self, now: float) -> bytes:
        if self.proc is None or self._quiet_until is not None and now < self._quiet_until:
            return b""  # nothing arrived and nothing is due: the node would say nothing
        out: bytes = self._ask("take", now)[0]
        self._quiet_until = self._deadline
        return out

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def next_deadline(self) -> float | None:
        return self._deadline

    # -- the rest ----------------------------------------------------------------

    def console(self, line: str, now: float) -> str:
        text: str = self._ask("console", now, line)[0]
        return text

    def status(self, now: float) -> dict[str, Any]:
        status: dict[str, Any] = self._ask("status", now)[0]
        return status

    def _ask(self, op: str, now: float, *args: Any) -> list[Any]:
        proc = self.proc
        assert proc is not None and proc.stdin is not None and proc.stdout is not None
        body = strict_cbor.dumps([op, round(now * US), *args])
        self._quiet_until = None
        try:
            proc.stdin.write(struct.pack(">I", len(body)) + body)
            size = struct.unpack(">I", self._read(4))[0]
            answer = strict_cbor.loads(self._read(size))
        except (BrokenPipeError, EOFError, TimeoutError) as exc:
            raise RuntimeError(f"the node failed ({exc!r}): {self._stderr()}") from exc
        if answer[0] == "error":
            raise RuntimeError(f"the node refused {op}: {answer[1]}")
        self._deadline = answer[0] / US
        for event in answer[1]:
            if event[0] == "connected":
                self._events.append(Connected(b"", None, False))
            else:
                self._events.append(Closed(event[1]))
        return list(answer[2:])

    def _read(self, n: int) -> bytes:
        """``n`` bytes of the node's answer, waiting at most ``TIMEOUT``."""
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        data = b""
        while len(data) < n:
            ready, _, _ = select.select([fd], [], [], TIMEOUT)
            if not ready:
                raise TimeoutError(f"no answer in {TIMEOUT} s")
            chunk = os.read(fd, n - len(data))
            if not chunk:
                raise EOFError("the node closed its output")
            data += chunk
        return data

    def _stderr(self) -> str:
        proc = self.proc
        if proc is None or proc.stderr is None:
            return ""
        proc.kill()
        return proc.stderr.read().decode(errors="replace")

    def _close_pipes(self) -> None:
        assert self.proc is not None
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()
