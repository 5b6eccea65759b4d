"""Helpers (no tests): a serial ESC/POS printer on a pty pair, and a device file that stalls.

``SerialPrinter`` holds a pty's master and behaves as a receipt printer on
the far end of a serial cable: it answers each real-time status query
(``DLE EOT n``) as its ``mode`` says, and keeps every other byte it is sent
in ``received``, walking the stream command by command as a printer does
(an image's data is data, whatever bytes it holds). The kiosk opens the
slave's path (``path``), a tty, so it takes it for a serial printer.
"""

from __future__ import annotations

import fcntl
import os
import select
import threading
import time
import tty
from pathlib import Path

#: mode -> the answers to DLE EOT 1, 2, 3, 4 (None: no answer at all)
ANSWERS: dict[str, bytes | None] = {
    "ok": b"\x12\x12\x12\x12",
    "paper-low": b"\x12\x12\x12\x1e",  # roll paper near end: it still prints
    "paper-out": b"\x1a\x32\x12\x72",  # offline, stopped at paper end, paper end
    "cover-open": b"\x1a\x16\x12\x12",
    "jammed": b"\x1a\x52\x1a\x12",  # offline with an error: the autocutter's
    "garbage": b"\xff\xfeOK",  # not status bytes
    "silence": None,
}
F_SETPIPE_SZ = 1031


class SerialPrinter:
    def __init__(self, mode: str = "ok") -> None:
        self.mode = mode
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        self.path = os.ttyname(self.slave)
        self.received = bytearray()
        self.queries: list[int] = []
        self._buf = bytearray()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self.master], [], [], 0.05)
            if not ready:
                continue
            try:
                self._buf += os.read(self.master, 65536)
            except OSError:
                continue  # no slave open just now
            self._consume()

    def _consume(self) -> None:
        buf = self._buf
        while buf:
            if buf[0] == 0x10:  # DLE EOT n
                if len(buf) < 3:
                    return
                n = buf[2]
                self.queries.append(n)
                answers = ANSWERS[self.mode]
                if answers is not None:
                    os.write(self.master, answers[(n - 1) % 4:(n - 1) % 4 + 1]
                             if self.mode != "garbage" else answers)
                del buf[:3]
            elif buf[:3] == b"\x1dv0":  # GS v 0 m xL xH yL yH data
                if len(buf) < 8:
                    return
                size = 8 + (buf[4] | buf[5] << 8) * (buf[6] | buf[7] << 8)
                if len(buf) < size:
                    return
                self.received += buf[:size]
                del buf[:size]
            elif buf[0] == 0x1D and len(buf) < 3:
                return
            else:
                self.received.append(buf.pop(0))

    def stall(self) -> None:
        """Stop taking bytes, with the line's buffer full: a printer that hangs."""
        self._stop.set()
        self._thread.join(5)
        flags = fcntl.fcntl(self.slave, fcntl.F_GETFL)
        fcntl.fcntl(self.slave, fcntl.F_SETFL, flags | os.O_NONBLOCK)
        for _ in range(1024):  # bounded: 1 MiB, far more than a pty holds
            try:
                os.write(self.slave, b"\0" * 1024)
            except BlockingIOError:
                return
        raise AssertionError("the pty never filled up")

    def wait_received(self, tail: bytes, bound: float = 5.0) -> bytes:
        """What was received once it ends with ``tail`` (a ticket's cut), or after
        ``bound`` seconds: the kiosk's write ends when the pty took the bytes, before
        this end has read them all."""
        for _ in range(int(bound / 0.01)):
            if self.received.endswith(tail):
                break
            time.sleep(0.01)
        return bytes(self.received)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        os.close(self.master)
        os.close(self.slave)


class StalledFifo:
    """A FIFO that a printer reads from once, then stops taking: its buffer is full."""

    def __init__(self, path: Path) -> None:
        os.mkfifo(path)
        self.path = path
        self.reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        writer = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        try:
            size = fcntl.fcntl(writer, F_SETPIPE_SZ, 4096)
            os.write(writer, b"\0" * size)  # full
        finally:
            os.close(writer)

    def close(self) -> None:
        os.close(self.reader)
