"""A serial port on the hub's event loop: one reader thread and one writer thread a port.

Theory of operation
-------------------
pyserial's ports (a device, a pty, ``socket://``, ``loop://``) have no
portable non-blocking reader for an event loop, and a port's write blocks
for as long as its line takes: 1 KiB at 9600 baud is a second. Ports are
few, so each gets two small threads: the reader waits on the ``Link`` and
hands what it read to the loop (``call_soon_threadsafe``); the writer takes
what the loop queued and writes it, so no line ever blocks the loop.

``SerialPort`` is the port's transport for its ``Connection`` (the same
state machine as a TCP connection's, persistent: a session that ends is
replaced by a fresh one). A port that breaks (a modem unplugged) is opened
again by its reader every ``REOPEN_WAIT`` seconds; the connection then starts
a fresh session on it.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from typing import TYPE_CHECKING

from protocol.driver.errors import LinkError
from protocol.driver.link import Link, open_link

if TYPE_CHECKING:
    from host.hub.connection import Connection
    from host.hub.serve import Server

READ_WAIT = 0.2  #: longest wait in one read (how soon the reader sees a stop)
REOPEN_WAIT = 1.0


class SerialPort:
    def __init__(self, server: Server, url: str, baud: int | None, link: Link) -> None:
        self.server, self.url, self.baud, self.link = server, url, baud, link
        self.conn: Connection | None = None
        self._out: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._queued = 0
        self._reading = threading.Event()
        self._reading.set()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._read_loop, daemon=True,
                                          name=f"serial-read {url}"),
                         threading.Thread(target=self._write_loop, daemon=True,
                                          name=f"serial-write {url}")]

    def start(self, conn: Connection) -> None:
        self.conn = conn
        for t in self._threads:
            t.start()
        self.server.loop.call_soon_threadsafe(conn.connection_made, self)

    # -- the transport's side (loop thread) ------------------------------------

    def write(self, data: bytes) -> None:
        with self._lock:
            self._queued += len(data)
        self._out.put(data)

    def get_write_buffer_size(self) -> int:
        return self._queued

    def pause_reading(self) -> None:
        self._reading.clear()

    def resume_reading(self) -> None:
        self._reading.set()

    def close(self) -> None:
        """Sessions end; the port stays: nothing to do."""

    def abort(self) -> None:
        """As ``close``."""

    # -- the threads -----------------------------------------------------------

    def _read_loop(self) -> None:
        loop = self.server.loop
        while not self._stop.is_set():
            if not self._reading.wait(READ_WAIT):
                continue
            try:
                data = self.link.read(READ_WAIT)
            except LinkError as exc:
                self._reopen(str(exc))
                continue
            if data and self.conn is not None:
                with contextlib.suppress(RuntimeError):  # the loop closed: we stop too
                    loop.call_soon_threadsafe(self.conn.data_received, data)

    def _reopen(self, why: str) -> None:
        self.server.log_threadsafe("serial", f"{self.url}: {why}; opening it again")
        self.link.close()
        while not self._stop.wait(REOPEN_WAIT):
            try:
                link = open_link(self.url, self.baud)
            except LinkError:
                continue
            self.link = link
            if self.conn is not None:
                with contextlib.suppress(RuntimeError):
                    self.server.loop.call_soon_threadsafe(self.conn.port_reopened)
            return

    def _write_loop(self) -> None:
        while True:
            data = self._out.get()
            if data is None:
                return
            try:
                self.link.write(data)
            except LinkError:
                time.sleep(0.05)  # the reader notices and opens the port again
            finally:
                with self._lock:
                    self._queued -= len(data)

    def stop(self) -> None:
        self._stop.set()
        self._reading.set()
        self._out.put(None)
        for t in self._threads:
            if t.is_alive():
                t.join(timeout=2.0)
        self.link.close()
