"""An accept loop that survives running out of descriptors.

Theory of operation
-------------------
``AcceptLoop`` reads a non-blocking listening socket from an asyncio event
loop's reader: each wakeup accepts at most ``batch`` connections, so a flood
of connects cannot hold the loop, and hands each one to ``accepted``.

When accept fails for lack of resources (``EMFILE``, ``ENFILE``,
``ENOBUFS``, ``ENOMEM``) the kernel still holds the waiting connections, so
the reader would wake at once, again and again, and the loop would spin
while every other connection starves. Instead the loop removes its reader,
says so once for the whole burst (``note``), and looks again after a
backoff that doubles from ``first_backoff`` up to ``max_backoff``. When
descriptors come back it accepts again and says how long the burst lasted.
Bursts that follow one another closely are told at most once per
``note_interval`` seconds (each one's end only if its start was told), so a
flood at the limit is not a log line a second.
Connections already open keep being served the whole time, and as they
end (or a read deadline ends them) their descriptors return.

An error that concerns only the connection being taken (reset before we
took it) is skipped. Any other error (the listening socket itself broken)
goes to ``broken`` when the owner gives one (the loop stops reading, and the
owner may open the address again); without it, it is treated like
exhaustion: back off, say so once, try again (``failures`` counts the
errors of the burst). ``failed`` hears every failure of a burst, for an
owner that counts them.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import time
from collections.abc import Callable
from typing import Any

#: No descriptor, buffer or memory for one more connection: wait and try again.
EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
#: The connection died before we took it: take the next.
SKIP = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.ECONNRESET,
                  errno.ENETDOWN, errno.ENOPROTOOPT, errno.EHOSTDOWN, errno.ENONET,
                  errno.EHOSTUNREACH, errno.EOPNOTSUPP, errno.ENETUNREACH, errno.ETIMEDOUT})


def listen(host: str, port: int, backlog: int = 128, reuse_port: bool = False,
           ) -> socket.socket:
    """A non-blocking listening TCP socket on ``host:port`` (port 0 picks one);
    ``reuse_port``: shared with other processes' sockets on it (``SO_REUSEPORT``)."""
    sock = socket.create_server((host, port), backlog=backlog, reuse_port=reuse_port)
    sock.setblocking(False)
    return sock


class AcceptLoop:
    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket,
                 accepted: Callable[[socket.socket, Any], None], *, batch: int = 16,
                 first_backoff: float = 0.05, max_backoff: float = 1.0,
                 note: Callable[[str], None] | None = None,
                 note_interval: float = 0.0,
                 failed: Callable[[OSError], None] | None = None,
                 broken: Callable[[OSError], None] | None = None) -> None:
        self.loop, self.sock, self.accepted = loop, sock, accepted
        self.failed, self.broken = failed, broken
        self.batch, self.first_backoff, self.max_backoff = batch, first_backoff, max_backoff
        self.note = note or (lambda text: None)
        self.note_interval = note_interval
        self._noted_at = -float("inf")
        self._burst_noted = False
        self.backoff = first_backoff
        self.failing_since: float | None = None  #: the current burst's start
        self.failures = 0  #: accept errors in the current burst
        self.bursts = 0  #: bursts since start
        self.closed = False
        self._retry: asyncio.TimerHandle | None = None
        loop.add_reader(sock.fileno(), self._ready)

    def _ready(self) -> None:
        for _ in range(self.batch):
            if self.closed:
                return
            try:
                conn, addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in SKIP:
                    continue
                if exc.errno not in EXHAUSTED and self.broken is not None:
                    self.loop.remove_reader(self.sock.fileno())
                    self.broken(exc)
                    return
                self._failed(exc)
                return
            if self.failing_since is not None:
                lasted = time.monotonic() - self.failing_since
                if self._burst_noted:
                    self.note(f"accepting again after {lasted:.1f} s")
                self.failing_since, self.failures = None, 0
            self.backoff = self.first_backoff
            conn.setblocking(False)
            self.accepted(conn, addr)

    def _failed(self, exc: OSError) -> None:
        self.loop.remove_reader(self.sock.fileno())
        self.failures += 1
        if self.failed is not None:
            self.failed(exc)
        if self.failing_since is None:
            now = self.failing_since = time.monotonic()
            self.bursts += 1
            self._burst_noted = now - self._noted_at >= self.note_interval
            if self._burst_noted:
                self._noted_at = now
                what = "out of descriptors" if exc.errno in EXHAUSTED else "failed"
                self.note(f"accept {what} ({exc.strerror}); backing off until it works "
                          f"again (burst {self.bursts})")
        self._retry = self.loop.call_later(self.backoff, self._resume)
        self.backoff = min(self.backoff * 2, self.max_backoff)

    def _resume(self) -> None:
        self._retry = None
        if not self.closed:
            self.loop.add_reader(self.sock.fileno(), self._ready)
            self._ready()

    def close(self) -> None:
        """Stop accepting and close the listening socket."""
        if self.closed:
            return
        self.closed = True
        if self._retry is not None:
            self._retry.cancel()
        with contextlib.suppress(ValueError, OSError):
            self.loop.remove_reader(self.sock.fileno())
        self.sock.close()
