"""The hub's TCP listeners: its own accept loop, which survives running out of descriptors.

Theory of operation
-------------------
A ``Listener`` is a non-blocking listening socket with a reader on the event
loop; each wakeup accepts at most ``accept_batch`` connections, so a flood of
connects cannot hold the loop, and hands each to the server.

When accept fails for lack of resources (``EMFILE``, ``ENFILE``, ``ENOBUFS``,
``ENOMEM``), the kernel still holds the waiting connections, so the reader
would wake at once, again and again: the listener removes its reader, logs
once for the whole burst, and looks again after a backoff (doubling up to
``MAX_BACKOFF``). When descriptors come back it accepts again, and says how
long the burst lasted. An error that only concerns the connection being
accepted (it was reset before we took it) is skipped. Any other error means
the listening socket itself is broken: it is closed and opened again on the
same address; after ``listener_retries`` failed tries the server gives up
(``Server.fatal``), and the process exits non-zero so that systemd restarts it.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from host.hub.serve import Server

#: No descriptor, buffer or memory for one more connection: wait and try again.
EXHAUSTED = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
#: The connection died before we took it: take the next.
SKIP = {errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.ECONNRESET, errno.ENETDOWN,
        errno.ENOPROTOOPT, errno.EHOSTDOWN, errno.ENONET, errno.EHOSTUNREACH,
        errno.EOPNOTSUPP, errno.ENETUNREACH, errno.ETIMEDOUT}
FIRST_BACKOFF, MAX_BACKOFF = 0.05, 1.0
REOPEN_WAIT = 0.5


def bind(host: str, port: int) -> socket.socket:
    sock = socket.create_server((host, port), backlog=1024)
    sock.setblocking(False)
    return sock


class Listener:
    def __init__(self, server: Server, sock: socket.socket) -> None:
        self.server = server
        self.sock: socket.socket | None = sock
        self.address: tuple[str, int] = sock.getsockname()[:2]
        self.backoff = FIRST_BACKOFF
        self.exhausted_since: float | None = None  #: the current burst's start
        self.refused_in_burst = 0
        self.reopen_tries = 0
        self.closed = False
        server.loop.add_reader(sock.fileno(), self._ready)

    def _ready(self) -> None:
        sock = self.sock
        if sock is None:
            return
        for _ in range(self.server.limits.accept_batch):
            try:
                conn, addr = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in EXHAUSTED:
                    self._exhausted(exc)
                elif exc.errno not in SKIP:
                    self._broken(exc)
                if exc.errno not in SKIP:
                    return
                continue
            if self.exhausted_since is not None:
                lasted = time.monotonic() - self.exhausted_since
                self.server.log("descriptors", f"accepting again on {self._url()} after "
                                f"{lasted:.1f} s without descriptors")
                self.exhausted_since = None
            self.backoff = FIRST_BACKOFF
            self.server.accepted(conn, addr)

    def _exhausted(self, exc: OSError) -> None:
        loop = self.server.loop
        assert self.sock is not None
        loop.remove_reader(self.sock.fileno())
        self.server.refused("descriptors", f"accept on {self._url()}: {exc.strerror}")
        if self.exhausted_since is None:
            self.exhausted_since = time.monotonic()
            self.server.log("descriptors", f"accept on {self._url()} failed: {exc.strerror}; "
                            "backing off until descriptors return")
        loop.call_later(self.backoff, self._resume)
        self.backoff = min(self.backoff * 2, MAX_BACKOFF)

    def _resume(self) -> None:
        if self.sock is not None and not self.closed:
            self.server.loop.add_reader(self.sock.fileno(), self._ready)
            self._ready()

    def _broken(self, exc: OSError) -> None:
        self.server.log("listener", f"{self._url()} failed ({exc}); opening it again")
        self._drop()
        self._reopen()

    def _reopen(self) -> None:
        if self.closed:
            return
        try:
            self.sock = bind(*self.address)
        except OSError as exc:
            self.reopen_tries += 1
            if self.reopen_tries >= self.server.limits.listener_retries:
                self.server.fatal(f"cannot listen on {self._url()} again: {exc}")
                return
            self.server.loop.call_later(REOPEN_WAIT, self._reopen)
            return
        self.reopen_tries = 0
        self.server.loop.add_reader(self.sock.fileno(), self._ready)

    def _drop(self) -> None:
        sock, self.sock = self.sock, None
        if sock is not None:
            with contextlib.suppress(ValueError, OSError):
                self.server.loop.remove_reader(sock.fileno())
            sock.close()

    def close(self) -> None:
        self.closed = True
        self._drop()

    def _url(self) -> str:
        return f"tcp://{self.address[0]}:{self.address[1]}"
