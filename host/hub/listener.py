"""The hub's TCP listeners: the shared accept loop, and a listener opened again when broken.

Theory of operation
-------------------
A ``Listener`` serves one ``--listen`` address with the accept loop both
sides share (``protocol.driver.accept.AcceptLoop``): at most
``accept_batch`` connections a wakeup, and when descriptors run out
(``EMFILE``...), a backoff with one log row for the whole burst and one at
its end; each failed accept is counted as a ``descriptors`` refusal.

With ``--reuse-port`` several hub processes (of one hub on PostgreSQL) bind
the same address with ``SO_REUSEPORT``, and the kernel gives each new
connection to one of them, by a hash of its addresses and ports. It is a
flag, not the default on PostgreSQL: without it a second server started on
a port in use (another hub's, by mistake) fails at once instead of taking
half of that hub's kiosks.

Any other accept error means the listening socket itself is broken: it is
closed and opened again on the same address (shared again, if it was); after ``listener_retries``
failed tries the server gives up (``Server.fatal``), and the process exits
non-zero so that systemd restarts it.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

from protocol.driver.accept import AcceptLoop, listen

if TYPE_CHECKING:
    from host.hub.serve import Server

REOPEN_WAIT = 0.5


def bind(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    return listen(host, port, backlog=1024, reuse_port=reuse_port)


class Listener:
    def __init__(self, server: Server, sock: socket.socket, reuse_port: bool = False) -> None:
        self.server = server
        self.reuse_port = reuse_port
        self.address: tuple[str, int] = sock.getsockname()[:2]
        self.reopen_tries = 0
        self.closed = False
        self.accept: AcceptLoop | None = self._accept_on(sock)

    @property
    def sock(self) -> socket.socket | None:
        return self.accept.sock if self.accept is not None else None

    def _accept_on(self, sock: socket.socket) -> AcceptLoop:
        url = self._url()
        return AcceptLoop(
            self.server.loop, sock, self.server.accepted,
            batch=self.server.limits.accept_batch,
            note=lambda text: self.server.log("descriptors", f"{url}: {text}"),
            failed=lambda exc: self.server.refused(
                "descriptors", f"accept on {url}: {exc.strerror}"),
            broken=self._broken)

    def _broken(self, exc: OSError) -> None:
        self.server.log("listener", f"{self._url()} failed ({exc}); opening it again")
        self._drop()
        self._reopen()

    def _reopen(self) -> None:
        if self.closed:
            return
        try:
            sock = bind(*self.address, reuse_port=self.reuse_port)
        except OSError as exc:
            self.reopen_tries += 1
            if self.reopen_tries >= self.server.limits.listener_retries:
                self.server.fatal(f"cannot listen on {self._url()} again: {exc}")
                return
            self.server.loop.call_later(REOPEN_WAIT, self._reopen)
            return
        self.reopen_tries = 0
        self.accept = self._accept_on(sock)

    def _drop(self) -> None:
        accept, self.accept = self.accept, None
        if accept is not None:
            accept.close()

    def close(self) -> None:
        self.closed = True
        self._drop()

    def _url(self) -> str:
        return f"tcp://{self.address[0]}:{self.address[1]}"
