"""Console tests' helpers: a serial cable made of two ptys, a console server on one end."""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import threading
import time
import tty
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from device.console.env import ConsoleEnv
from device.console.server import ConsoleServer

MAX_PENDING = 1 << 16


class Cable:
    """Two pty pairs whose masters a thread joins: ``a`` and ``b`` are the two ends, each a
    /dev/pts path that pyserial opens like any serial device (the kiosk opens ``a``, the
    technician's tool ``b``). ``inject(data)`` adds noise on the way to ``a``."""

    def __init__(self) -> None:
        self._fds: list[tuple[int, int]] = []
        for _ in range(2):
            m, s = os.openpty()
            tty.setraw(m)
            tty.setraw(s)
            self._fds.append((m, s))  # the slaves stay open here: no EIO between opens
        self.a, self.b = (os.ttyname(s) for _, s in self._fds)
        self._lock = threading.Lock()
        self._mid_line = False  #: the tool's last bytes to ``a`` did not end a line
        self._pending = bytearray()
        self.injected = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def inject(self, data: bytes) -> None:
        """Noise for ``a``, put between the lines the tool sends, never inside one (a line
        cut by noise is lost on any cable); at most ``MAX_PENDING`` bytes wait."""
        with self._lock:
            if self._mid_line:
                if len(self._pending) < MAX_PENDING:
                    self._pending += data
                return
            self._to_a(data)

    def _to_a(self, data: bytes) -> None:
        os.write(self._fds[0][0], data)

    def _run(self) -> None:
        ma, mb = self._fds[0][0], self._fds[1][0]
        while not self._stop.is_set():
            ready, _, _ = select.select([ma, mb], [], [], 0.02)
            for fd in ready:
                try:
                    data = os.read(fd, 65536)
                except OSError:
                    continue
                with self._lock:
                    if fd == mb:  # the tool wrote: on to the kiosk
                        self._to_a(data)
                        self._mid_line = not data.endswith((b"\n", b"\x00"))
                        if not self._mid_line and self._pending:
                            self._to_a(bytes(self._pending))
                            self._pending.clear()
                    else:
                        os.write(mb, data)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        for m, s in self._fds:
            os.close(m)
            os.close(s)


@dataclass
class Kiosk:
    """A console server on end ``a`` of a cable, with an environment tests look into."""

    cable: Cable
    server: ConsoleServer
    env: ConsoleEnv
    resets: list[int] = field(default_factory=list)
    clock_set: list[float] = field(default_factory=list)

    @property
    def port(self) -> str:
        return self.cable.b


def fake_stats() -> dict[str, dict[str, int]]:
    return {"sync": {"committed": 3, "sent_upto": 2, "unsent": 1},
            "link": {"up": 1, "events": 0},
            "store": {"outbox": 4},
            "health": {"rss_kib": 30000, "free_kib": 1000000}}


@contextlib.contextmanager
def console_kiosk(tmp: Path, **server_kw: object) -> Iterator[Kiosk]:
    cable = Cable()
    export, imports = tmp / "export", tmp / "import"
    export.mkdir()
    resets: list[int] = []
    clock_set: list[float] = []
    env = ConsoleEnv(export_dir=export, import_dir=imports, stats=fake_stats,
                     restart=lambda: resets.append(1), version="0.1.0", node="kiosk-A",
                     set_wall=clock_set.append,
                     shell={"version": lambda: "haven-kiosk 0.1.0\n"})
    server = ConsoleServer(cable.a, env, **server_kw)  # type: ignore[arg-type]
    server.start()
    try:
        yield Kiosk(cable, server, env, resets, clock_set)
    finally:
        server.stop()
        cable.close()


def run_beside_technician(rt: Any, technician: Callable[[], dict[str, Any]],
                          bound: float) -> dict[str, Any]:
    """Run ``rt.run()`` (a real ``Runtime`` with a console) while ``technician()`` works at
    the console's other end, from a thread, once the console is up. Whatever it returns
    is the result; an exception it raises is the result's ``failed`` and restarts the
    runtime, so ``run()`` ends either way (a technician's restart ends it too)."""
    got: dict[str, Any] = {}

    def at_the_port() -> None:
        end = time.monotonic() + bound
        while rt.console is None and time.monotonic() < end:
            time.sleep(0.02)
        try:
            got.update(technician())
        except BaseException as exc:  # seen by the caller's assertions
            got["failed"] = exc
            rt.restart()

    thread = threading.Thread(target=at_the_port, daemon=True)
    thread.start()
    try:
        asyncio.run(asyncio.wait_for(rt.run(), bound))
    finally:
        thread.join(bound)
    return got


def wait_for_reset(kiosk: Kiosk, bound: float = 5.0) -> list[int]:
    """The console's resets once one is done: a reset is answered first and done after
    (``Call.later``), so a client that has its answer may look before it is done."""
    end = time.monotonic() + bound
    while not kiosk.resets and time.monotonic() < end:
        time.sleep(0.01)
    return list(kiosk.resets)


def console_runtime(kiosk_dir: Path, cable: Cable, **extra: Any) -> Any:
    """A kiosk runtime with simulated hardware whose console is ``cable``'s kiosk end,
    its hub a closed port (``extra``: more of its ``KioskConfig``)."""
    from gpiozero.pins.mock import MockFactory

    from device.config import KioskConfig
    from device.hardware import panel as hw
    from device.runtime import Runtime

    from .test_ui_helpers import free_port

    cfg = KioskConfig(data=kiosk_dir, hub=[f"tcp://127.0.0.1:{free_port()}"],
                      ui="127.0.0.1:0", retry_max=0.5, interval=0.5, hardware="simulated",
                      console=cable.a, console_baud=1_000_000, **extra)
    return Runtime(cfg, hardware=hw.Hardware(pin_factory=MockFactory()))
