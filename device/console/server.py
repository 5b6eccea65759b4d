"""The console's port loop: one thread reads the port, demultiplexes it, answers.

``ConsoleServer(url, env)`` opens ``url`` (a serial device, a USB gadget's ttyGS0,
a pty, any pyserial URL) with ``protocol.driver.link``. Each turn it reads what
arrived, feeds ``protocol.smp.demux.Demux`` and handles the events in stream order:

* an SMP packet goes to ``SmpService``; its answer is written in console lines;
* a Haven frame goes to ``haven``, a sans-I/O endpoint (``feed``/``output``/
  ``next_deadline``/``events``: ``protocol.driver.session_driver.SessionDriver``'s
  own methods), whose output is written on the same port, and whose events go to
  ``on_haven_events``. Without one, frames are counted and dropped;
* text is counted (``text_bytes``) and otherwise ignored.

One thread writes, so an SMP answer and a session's frames never interleave
mid-packet. The port's credential binding (``Port.access``) and open files end
when the port has been quiet for ``idle`` seconds, or breaks; a broken port is
opened again after ``reopen`` seconds until the server stops.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any, Protocol

from device.console.groups import OpenOnly, Port
from device.console.service import SmpService
from protocol.driver.errors import LinkError
from protocol.driver.link import SerialLink
from protocol.smp import console
from protocol.smp.demux import Demux, HavenFrame, SmpPacket, Text

log = logging.getLogger(__name__)

DEFAULT_IDLE = 300.0  #: seconds of quiet after which a port's binding ends
REOPEN = 1.0
TURN = 0.05  #: the longest wait for input in one turn


class HavenEndpoint(Protocol):
    """Where Haven frames go: a ``SessionDriver`` (responder) fits as it is."""

    def feed(self, data: bytes | None, now: float) -> None: ...

    def output(self, now: float) -> bytes: ...

    def next_deadline(self) -> float | None: ...

    def events(self) -> list[Any]: ...


class ConsoleServer:
    def __init__(self, url: str, env: Any, *, baud: int | None = None,
                 haven: HavenEndpoint | None = None,
                 on_haven_events: Callable[[list[Any]], None] | None = None,
                 idle: float = DEFAULT_IDLE, line_length: int = console.LINE_LENGTH,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.url = url
        self.baud = baud
        self.service = SmpService(env)
        self.haven = haven
        self.on_haven_events = on_haven_events
        self.idle = idle
        self.line_length = line_length
        self.clock = clock
        self.port = Port()
        self.demux = Demux()
        self.haven_dropped = 0  #: Haven frames with no endpoint to take them
        self.idle_unbinds = 0
        self.reopens = 0
        self._link: SerialLink | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._heard = clock()
        self._warned = False

    # -- start and stop ------------------------------------------------------------

    def open(self) -> None:
        """Open the port now (``LinkError`` if it will not open)."""
        self._link = SerialLink(self.url, self.baud)

    def start(self) -> None:
        """Serve from a thread. A port that will not open yet (a USB gadget before the
        host enumerates it) is logged and tried again every ``REOPEN`` seconds."""
        if self._link is None:
            try:
                self.open()
            except LinkError as exc:
                log.warning("console: %s; trying again every %g s", exc, REOPEN)
        self._thread = threading.Thread(target=self._run, name="console", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        stop = getattr(self.haven, "stop", None)  # an endpoint's own threads (haven tech)
        if callable(stop):
            stop()
        self.port.unbind()
        if self._link is not None:
            self._link.close()
            self._link = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stats(self) -> dict[str, int]:
        """Every counter, flat (the Stat group's ``console`` group, tests)."""
        out: dict[str, int] = {}
        out.update({f"smp_{k}": v for k, v in asdict(self.service.stats).items()})
        out.update({f"demux_{k}": v for k, v in asdict(self.demux.stats).items()})
        out.update({f"lines_{k}": v for k, v in asdict(self.demux.line_stats).items()})
        out.update(haven_dropped=self.haven_dropped, idle_unbinds=self.idle_unbinds,
                   reopens=self.reopens)
        return out

    # -- the loop ------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self._link is None:
                    self._link = SerialLink(self.url, self.baud)
                    self.reopens += 1
                    log.info("console: %s open", self.url)
                    self._warned = False
                self._turn(self._link)
            except LinkError as exc:
                if not self._warned:  # once per outage, not every second
                    log.warning("console %s: %s; opening it again", self.url, exc)
                    self._warned = True
                self._broken()
                self._stop.wait(REOPEN)
            except Exception:  # never let one bad turn end the console
                log.exception("console %s: unexpected error", self.url)
                self._stop.wait(REOPEN)

    def _broken(self) -> None:
        self.port.unbind()
        self.demux = Demux()
        if self._link is not None:
            self._link.close()
            self._link = None

    def _turn(self, link: SerialLink) -> None:
        now = self.clock()
        wait = TURN
        if self.haven is not None:
            self._write(link, self.haven.output(now))
            self._haven_events()
            deadline = self.haven.next_deadline()
            if deadline is not None:
                wait = max(0.0, min(wait, deadline - now))
        data = link.read(wait)
        now = self.clock()
        if data is None:
            raise LinkError("the port closed")
        if not data:
            bound = self.port.state or not isinstance(self.port.access, OpenOnly)
            if bound and now - self._heard > self.idle:
                self.idle_unbinds += 1
                self.port.unbind()
            return
        for event in self.demux.feed(data):
            if isinstance(event, SmpPacket):
                self._heard = now
                self._smp(link, event.data)
            elif isinstance(event, HavenFrame):
                self._heard = now
                self._frame(link, event.wire, now)
            elif isinstance(event, Text):
                pass  # counted by the demux; a shell's or a log's line is not for us

    def _smp(self, link: SerialLink, packet: bytes) -> None:
        response, later = self.service.handle(packet, self.port)
        if response is None:
            return
        self._write(link, console.encode(response, line_length=self.line_length))
        for action in later:
            try:
                action()
            except Exception:
                log.exception("console: an action after an answer failed")

    def _frame(self, link: SerialLink, wire: bytes, now: float) -> None:
        if self.haven is None:
            self.haven_dropped += 1
            return
        self.haven.feed(wire, now)
        self._write(link, self.haven.output(now))
        self._haven_events()

    def _haven_events(self) -> None:
        assert self.haven is not None
        events = self.haven.events()
        if events and self.on_haven_events is not None:
            self.on_haven_events(events)

    @staticmethod
    def _write(link: SerialLink, data: bytes) -> None:
        if data:
            link.write(data)
