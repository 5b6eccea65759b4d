"""Byte links for the kiosk's sync engine: a TCP socket or a pyserial URL.

``open_link("tcp://host:port")`` connects a TCP socket; anything else is
opened with ``serial.serial_for_url`` (a device path, a pty, ``socket://``,
``rfc2217://``, ``loop://``). Both read without blocking, ``wait`` sleeps
until input or a timeout, and ``read`` returns ``None`` once the far end
closed.
"""

from __future__ import annotations

import contextlib
import select
import socket
import time
from urllib.parse import urlsplit

import serial


class LinkError(OSError):
    """A link could not be opened, or broke."""


class TcpLink:
    stream = True

    def __init__(self, host: str, port: int, timeout: float = 5.0) -> None:
        try:
            self.sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as exc:
            raise LinkError(f"cannot connect to {host}:{port}: {exc}") from None
        self.sock.setblocking(False)

    def read(self) -> bytes | None:
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return b""
        except OSError as exc:
            raise LinkError(f"reading failed: {exc}") from None
        return data or None

    def write(self, data: bytes) -> None:
        try:
            self.sock.setblocking(True)
            self.sock.sendall(data)
            self.sock.setblocking(False)
        except OSError as exc:
            raise LinkError(f"writing failed: {exc}") from None

    def wait(self, seconds: float) -> None:
        if seconds > 0:
            select.select([self.sock], [], [], seconds)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


class SerialLink:
    stream = False

    def __init__(self, url: str, baud: int | None) -> None:
        try:
            self.port = serial.serial_for_url(url, baudrate=baud or 115200, timeout=0,
                                              write_timeout=10)
        except (serial.SerialException, ValueError, OSError) as exc:
            raise LinkError(f"cannot open {url}: {exc}") from None
        try:
            self.fd: int | None = self.port.fileno()
        except (AttributeError, OSError, serial.SerialException):
            self.fd = None

    def read(self) -> bytes | None:
        try:
            return bytes(self.port.read(65536))
        except (serial.SerialException, OSError) as exc:
            raise LinkError(f"reading failed: {exc}") from None

    def write(self, data: bytes) -> None:
        try:
            self.port.write(data)
        except serial.SerialTimeoutException:
            pass  # a stalled line: the session retransmits
        except (serial.SerialException, OSError) as exc:
            raise LinkError(f"writing failed: {exc}") from None

    def wait(self, seconds: float) -> None:
        if seconds <= 0:
            return
        if self.fd is not None:
            select.select([self.fd], [], [], seconds)
        else:
            time.sleep(min(seconds, 0.01))

    def close(self) -> None:
        with contextlib.suppress(serial.SerialException, OSError):
            self.port.close()


def open_link(url: str, baud: int | None = None) -> TcpLink | SerialLink:
    parts = urlsplit(url)
    if parts.scheme == "tcp":
        if not parts.hostname or parts.port is None:
            raise LinkError(f"a TCP hub URL is tcp://HOST:PORT, not {url!r}")
        return TcpLink(parts.hostname, parts.port)
    return SerialLink(url, baud)
