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
answers by pulling, and any message from it arms the next one. A data key
rotated by another process (``haven hub keys rotate``, or another server
process) is taken into this process's store at once: the rows that process
seals under it are read here too.

On PostgreSQL, where several hub processes may share the database, the
store's writers notify at commit (``host.hub.database.changed``) and
``change_feed.ChangeFeed`` listens: a notification looks at once (``poke``),
so a revocation or a batch committed through any process reaches every
process's sessions within a look's time (looks at most every ``MIN_GAP``
seconds, however many commits notify). The tick goes on every
``watch_interval`` for the server's housekeeping, but looks only when
notified, every ``watch_backstop`` (the feed's slow poll), or at every tick
while the feed is not listening. What the store tells is the same on every
process; what each process does with it (its own sessions) is its own.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from host.hub.at_rest import CURRENT
from host.hub.database import is_url
from host.hub.storage import HubReader

if TYPE_CHECKING:
    from host.hub.change_feed import ChangeFeed
    from host.hub.serve import Server


#: Seconds from the end of a look to the next one a notification calls for.
MIN_GAP = 0.05


@dataclass(frozen=True)
class Look:
    head: int
    previous: int | None  #: the head at the last look (None: the first look)
    writers: set[int]  #: nodes that wrote after ``previous``
    revoked: set[str]
    data_key: int  #: the data key's version sealing new rows


class StoreWatch:
    def __init__(self, server: Server, path: Path | str) -> None:
        self.server, self.path = server, path
        self._reader: HubReader | None = None
        self._version: int | None = None
        self._head: int | None = None
        self.looks = 0
        self.failures = 0
        self._stopped = False
        self._wanted = True  #: notified (or never looked): the next tick looks
        self._timer: asyncio.Handle | None = None  #: the next tick, while none runs
        self._looked_at = -MIN_GAP  #: when the last look ended (the loop's clock)
        self.feed: ChangeFeed | None = None
        if is_url(path):  # psycopg is imported only for a hub on PostgreSQL
            from host.hub.change_feed import ChangeFeed
            self.feed = ChangeFeed(str(path), self.poke, lambda text: server.log("watch", text),
                                   server.limits.watch_backstop)

    @property
    def leads(self) -> bool:
        """This process runs the hub's background walks (``change_feed``); on SQLite,
        whose hub has one serving process, always."""
        return self.feed is None or self.feed.leads

    def start(self) -> None:
        if self.feed is not None:
            self.feed.start(self.server.loop)
        self._timer = self.server.loop.call_soon(self._tick)

    def stop(self) -> None:
        self._stopped = True
        if self.feed is not None:
            self.feed.stop()

    def poke(self) -> None:
        """The store changed (loop thread): look now (``MIN_GAP`` after the last look at
        the soonest), or after the look under way."""
        self._wanted = True
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
            self._next(self._looked_at + MIN_GAP - self.server.loop.time())

    def _tick(self) -> None:
        self._timer = None
        if self._stopped:
            return
        if self.feed is not None and self.feed.listening and not self._wanted:
            self.server.housekeeping()  # nothing was notified: no look
            self._next(self.server.limits.watch_interval)
            return
        self._wanted = False
        try:
            fut = self.server.submit(self.look)
        except RuntimeError:  # the pool is shut down: the server is stopping
            return
        fut.add_done_callback(self._looked)

    def _next(self, delay: float) -> None:
        self._timer = self.server.loop.call_later(max(0.0, delay), self._tick)

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
        return Look(head, previous, writers, revoked, int(reader.get_meta(CURRENT) or 0))

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
        self._looked_at = self.server.loop.time()
        self._next(MIN_GAP if self._wanted else self.server.limits.watch_interval)

    def close(self) -> None:
        """In the pool, or once the pool is done."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None
