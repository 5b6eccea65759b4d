"""The server's watch on the store: changes to push, kiosks revoked.

Theory of operation
-------------------
Every ``watch_interval`` seconds ``StoreWatch`` asks SQLite's
``PRAGMA data_version`` on a read-only connection of its own: it moves when
any other connection commits, whether this process's store (a kiosk's batch,
a resolution) or another process (``haven hub revoke``). Only then does it
read the head (the last arrival number), the nodes that wrote after the head
it saw last (``HubStore.nodes_since``), and the kiosks revoked. The look runs
in the worker pool, never on the loop, and one look at a time; the server
hears the result on the loop (``Server.store_changed``): it pushes
``sync-notify`` (its cursor: the new head) to every welcomed session whose
kiosk is not the only node that wrote since, and ends the sessions of
revoked kiosks. A session holds at most one unanswered notify: the kiosk
answers by pulling, and any message from it arms the next one.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from host.hub.storage import HubReader

if TYPE_CHECKING:
    from host.hub.serve import Server


@dataclass(frozen=True)
class Look:
    head: int
    previous: int | None  #: the head at the last look (None: the first look)
    writers: set[int]  #: nodes that wrote after ``previous``
    revoked: set[str]


class StoreWatch:
    def __init__(self, server: Server, path: Path | str) -> None:
        self.server, self.path = server, path
        self._reader: HubReader | None = None
        self._version: int | None = None
        self._head: int | None = None
        self.looks = 0
        self.failures = 0
        self._stopped = False

    def start(self) -> None:
        self.server.loop.call_soon(self._tick)

    def stop(self) -> None:
        self._stopped = True

    def _tick(self) -> None:
        if self._stopped:
            return
        try:
            fut = self.server.submit(self.look)
        except RuntimeError:  # the pool is shut down: the server is stopping
            return
        fut.add_done_callback(self._looked)

    def look(self) -> Look | None:
        """In the pool: what changed since the last look (None: nothing)."""
        if self._reader is None:
            self._reader = HubReader(self.path)
        reader = self._reader
        version = reader.data_version()
        if version == self._version:
            return None
        head = reader.head()
        previous = self._head
        writers = reader.nodes_since(previous) if previous is not None and head != previous \
            else set()
        revoked = reader.revoked_devices()
        self._version, self._head = version, head
        return Look(head, previous, writers, revoked)

    def _looked(self, fut: Any) -> None:
        self.looks += 1
        if fut.cancelled() or self._stopped:
            return
        exc = fut.exception()
        if exc is not None:
            self.failures += 1
            if self.failures == 1 or self.failures % 100 == 0:
                self.server.log("watch", f"looking at the store failed ({self.failures} "
                                f"times): {type(exc).__name__}: {exc}")
            reader, self._reader = self._reader, None
            if reader is not None:
                with contextlib.suppress(Exception):
                    reader.close()
        elif (look := fut.result()) is not None:
            self.server.store_changed(look)
        self.server.housekeeping()
        self.server.loop.call_later(self.server.limits.watch_interval, self._tick)

    def close(self) -> None:
        """In the pool, or once the pool is done."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None
