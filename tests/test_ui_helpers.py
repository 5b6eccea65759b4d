"""Helpers (no tests): an enrolled kiosk, its hub's directory, ``haven-kiosk run`` as a child."""

from __future__ import annotations

import asyncio
import os
import queue
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from device import enrol
from device.runtime import Runtime
from device.store import init_store
from host.hub.hub import Hub, init_hub

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proc:
    """A child process whose output lines are read into a queue."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True, env={**os.environ, **(env or {})}, cwd=ROOT)
        self.lines: queue.Queue[str] = queue.Queue()
        self.log: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            self.log.append(line)
            self.lines.put(line)

    def wait_for(self, pattern: str, bound: float = 20.0) -> re.Match[str]:
        while True:
            try:
                line = self.lines.get(timeout=bound)
            except queue.Empty:
                raise AssertionError(f"no {pattern!r} in: {''.join(self.log)}") from None
            if m := re.search(pattern, line):
                return m

    def stop(self) -> int:
        if self.p.poll() is None:
            self.p.terminate()
        try:
            return self.p.wait(15)
        except subprocess.TimeoutExpired:
            self.p.kill()
            return self.p.wait(5)


def make_kiosk(tmp: Path) -> tuple[Path, Path]:
    """An enrolled kiosk and its hub's data directory (hub not serving yet)."""
    hub_dir, kiosk_dir = tmp / "hub", tmp / "kiosk"
    init_hub(hub_dir)
    hub = Hub(hub_dir)
    with init_store(kiosk_dir, "North", "B") as store:
        enrol.install(store, hub.enroll(enrol.write_request(store).read_bytes()))
    hub.close()
    return hub_dir, kiosk_dir


def run_kiosk(kiosk_dir: Path, hub_url: str, idle: float,
              env: dict[str, str] | None = None, args: tuple[str, ...] = (),
              prefix: tuple[str, ...] = ()) -> tuple[Proc, str]:
    """``haven-kiosk run`` on simulated hardware; ``args`` come after the usual flags,
    ``prefix`` before the interpreter (a tracer such as ``strace``)."""
    proc = Proc([*prefix, sys.executable, "-m", "device.cli", "run", "--data", str(kiosk_dir),
                 "--hub", hub_url, "--ui", "127.0.0.1:0", "--idle-seconds", str(idle),
                 "--retry-max", "0.5", "--interval", "0.5", "--staff-pin", "246810",
                 "--hardware", "simulated", *args], env=env or {})
    url = proc.wait_for(r"page at (http://\S+)").group(1)
    return proc, url


@contextmanager
def runtime_in_thread(rt: Runtime, before: Callable[[], None] | None = None,
                      bound: float = 20.0) -> Iterator[None]:
    """``rt`` started and stopped on an event loop in a thread of its own; ``before``
    runs first in that thread (the threads the runtime starts inherit what it set)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def first() -> None:
        if before is not None:
            before()

    try:
        asyncio.run_coroutine_threadsafe(first(), loop).result(bound)
        asyncio.run_coroutine_threadsafe(rt.start(), loop).result(bound)
        yield
    finally:
        asyncio.run_coroutine_threadsafe(rt.stop(), loop).result(bound)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(bound)
        loop.close()
