"""A wake event that a wait on sockets can include: the sync thread's one alarm clock.

Theory of operation
-------------------
The sync thread sleeps between rounds on the kept-open session's socket
(the hub may push a ``sync-notify``, or answer a keepalive) and must also
wake at once for a check-in, the service button or a link that returned,
which other threads signal. ``Wake`` is a ``threading.Event`` that also
owns a socket pair: ``set`` writes a byte to one end, so the other end
(``fileno``) turns readable and a ``select`` on it and on the hub's socket
returns. ``clear`` clears the flag first and then drains the pair: a
``set`` racing with it leaves the flag set, which the waiter looks at
before it sleeps. Nothing polls: an idle kiosk's sync thread wakes only for
its own deadlines (a keepalive) or for something that happened.
"""

from __future__ import annotations

import contextlib
import socket
import threading


class Wake(threading.Event):
    """A ``threading.Event`` whose ``fileno`` is readable while it may be set."""

    def __init__(self) -> None:
        super().__init__()
        self._r, self._w = socket.socketpair()
        self._r.setblocking(False)
        self._w.setblocking(False)

    def fileno(self) -> int:
        return self._r.fileno()

    def set(self) -> None:
        super().set()
        with contextlib.suppress(OSError):  # full (already readable) or closed
            self._w.send(b"\0")

    def clear(self) -> None:
        super().clear()
        self.drain()

    def drain(self) -> None:
        """Read what ``set`` wrote (after a wait saw the pair readable)."""
        with contextlib.suppress(OSError):
            while self._r.recv(4096):
                pass

    def close(self) -> None:
        self._r.close()
        self._w.close()
