"""Byte links: TCP and every pyserial URL, behind one interface.

Theory of operation
-------------------
A ``Link`` moves bytes and knows nothing of frames or sessions:

* ``read(timeout)`` waits up to ``timeout`` seconds for input and returns
  what is there (``b""`` if nothing came), or ``None`` once the far end
  closed the link;
* ``write(data)`` hands all of ``data`` to the link;
* ``close()``; ``fileno()`` for an event loop's reader, where there is one;
* ``stream`` is true for a reliable byte stream (TCP), where the session
  drops its retransmission timers.

``open_link(url, baud)`` opens ``tcp://HOST:PORT`` as a TCP connection and
anything else with ``serial.serial_for_url``: a device path, a pty,
``socket://``, ``rfc2217://``, ``loop://`` (the URLs pyserial documents).
``TcpLink(sock)`` wraps a socket a server accepted. Every failure to open,
read or write raises ``LinkError`` with what went wrong, except a serial
write that times out on a stalled line: the session sends again what did
not go. A TCP write that cannot finish within ``WRITE_TIMEOUT`` breaks the
stream (the far end would see half a frame), so it raises.
"""

from __future__ import annotations

import contextlib
import select
import socket
import time
from typing import Any, Protocol
from urllib.parse import urlsplit

import serial

from protocol.driver.errors import LinkError

READ_SIZE = 65536
WRITE_TIMEOUT = 10.0


def wait_readable(fd: int, timeout: float) -> None:
    """Wait up to ``timeout`` seconds for ``fd`` to have input (``poll``: unlike
    ``select``, any descriptor number, however many the process holds)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    poller.poll(max(0, int(timeout * 1000 + 0.999)))


class Link(Protocol):
    url: str
    stream: bool

    def read(self, timeout: float = 0.0) -> bytes | None: ...

    def write(self, data: bytes) -> None: ...

    def close(self) -> None: ...

    def fileno(self) -> int | None: ...


class TcpLink:
    """A connected TCP socket, read without blocking."""

    stream = True

    def __init__(self, sock: socket.socket, url: str = "") -> None:
        self.sock = sock
        if not url:
            with contextlib.suppress(OSError):
                host, port = sock.getpeername()[:2]
                url = f"tcp://{host}:{port}"
        self.url = url
        sock.setblocking(False)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def read(self, timeout: float = 0.0) -> bytes | None:
        try:
            if timeout > 0:
                wait_readable(self.sock.fileno(), timeout)
            data = self.sock.recv(READ_SIZE)
        except BlockingIOError:
            return b""
        except (OSError, ValueError) as exc:  # ValueError: a closed socket (fileno -1)
            raise LinkError(f"reading {self.url} failed: {exc}") from None
        return data or None

    def write(self, data: bytes) -> None:
        try:
            self.sock.settimeout(WRITE_TIMEOUT)
            try:
                self.sock.sendall(data)
            finally:
                self.sock.setblocking(False)
        except OSError as exc:
            raise LinkError(f"writing {self.url} failed: {exc}") from None

    def fileno(self) -> int | None:
        return self.sock.fileno()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


class SerialLink:
    """A pyserial port opened by URL, read without blocking."""

    stream = False

    def __init__(self, url: str, baud: int | None = None, *, exclusive: bool = False) -> None:
        self.url = url
        # exclusive: an advisory lock (flock) on a device path, so that a second program
        # that asks for it too is refused rather than sharing the port's bytes.
        extra = {"exclusive": True} if exclusive else {}
        try:
            self.port: Any = serial.serial_for_url(url, baudrate=baud or 115200, timeout=0,
                                                   write_timeout=WRITE_TIMEOUT, **extra)
        except (serial.SerialException, ValueError, OverflowError, OSError) as exc:
            # OverflowError: a speed past what the driver's C int holds
            if exclusive and "exclusively lock" in str(exc):
                raise LinkError(f"{url} is in use by another program") from None
            raise LinkError(f"cannot open port {url}: {exc}") from None
        #: socket:// is read from its socket: pyserial's own read drops the bytes it
        #: already took when the far end closes within the same call.
        self._sock: socket.socket | None = getattr(self.port, "_socket", None)
        self._fd: int | None
        try:
            self._fd = self._sock.fileno() if self._sock is not None else self.port.fileno()
        except (AttributeError, OSError, serial.SerialException):
            self._fd = None  # loop:// has none to wait on

    def read(self, timeout: float = 0.0) -> bytes | None:
        try:
            if timeout > 0:
                if self._fd is not None:
                    wait_readable(self._fd, timeout)
                elif not self.port.in_waiting:
                    time.sleep(min(timeout, 0.01))
            if self._sock is not None:
                try:
                    return self._sock.recv(READ_SIZE) or None
                except BlockingIOError:
                    return b""
            return bytes(self.port.read(READ_SIZE))
        except (serial.SerialException, OSError, ValueError) as exc:
            raise LinkError(f"reading {self.url} failed: {exc}") from None

    def write(self, data: bytes) -> None:
        try:
            self.port.write(data)
        except serial.SerialTimeoutException:
            pass  # a stalled line: the session sends again what did not go
        except (serial.SerialException, OSError) as exc:
            raise LinkError(f"writing {self.url} failed: {exc}") from None

    def fileno(self) -> int | None:
        return self._fd

    def close(self) -> None:
        with contextlib.suppress(serial.SerialException, OSError):
            self.port.close()


def open_link(url: str, baud: int | None = None, *,
              exclusive: bool = False) -> TcpLink | SerialLink:
    """Open ``tcp://HOST:PORT`` or any pyserial URL; ``LinkError`` if it will not open.
    ``exclusive``: a serial device held by another program that asked for it so too is
    refused."""
    parts = urlsplit(url)
    if parts.scheme == "tcp":
        try:
            port = parts.port
        except ValueError:
            port = None
        if not parts.hostname or port is None:
            raise LinkError(f"a TCP link is tcp://HOST:PORT, not {url!r}")
        try:
            sock = socket.create_connection((parts.hostname, port), timeout=5.0)
        except OSError as exc:
            raise LinkError(f"cannot connect to {parts.hostname}:{port}: {exc}") from None
        return TcpLink(sock, url)
    return SerialLink(url, baud, exclusive=exclusive)
