"""A hub process's ear on PostgreSQL: the store's changes as they commit, and which
process runs the hub's background walks.

Theory of operation
-------------------
Several ``haven hub serve`` processes may share one PostgreSQL database. A
write that every process must act on (arrival numbers given: something new
to push; a kiosk revoked: its sessions end) calls
``host.hub.database.changed`` in its transaction, a ``NOTIFY
haven_changes`` that PostgreSQL delivers at commit to every connection
listening. ``ChangeFeed`` is that connection for one process: psycopg's
asyncio connection on the server's loop, ``LISTEN``ing, and each
notification calls ``heard`` (``StoreWatch.poke``: look at the store now).
It calls ``heard`` too when it starts listening (what changed while it did
not) and every ``backstop`` seconds, a slow poll in case a notification
never came. While it is not listening (connecting; its connection lost, as
in a failover, and made again every ``RETRY`` seconds) ``listening`` is
False, and the watch polls at its own short interval instead.

The same connection elects the process that runs the background walks
(re-sealing under a new data key, a fleet key rotation's migration,
promoting claims): two processes walking at once would write the same rows
twice. The one holding a session advisory lock (``BACKGROUND_LOCK``) leads:
it is tried at each backstop while not held, and it is released when the
connection ends (the process died, or lost the database), so another
process takes the walks over within a backstop. ``leads`` is read on the
loop; a slice already handed to the pool when the lock was lost may overlap
one slice of the next leader, which the walks' own row locks make harmless.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import psycopg

from host.hub.database import BACKGROUND_LOCK, CHANGES_CHANNEL

#: Seconds between two tries to connect while the database cannot be reached.
RETRY = 0.5
CONNECT_TIMEOUT = 10
#: TCP keepalives on the connection: a database machine that died without a word is
#: noticed within about 11 s, and the feed connects again (to the new primary).
KEEPALIVES: dict[str, Any] = {"keepalives": 1, "keepalives_idle": 5,
                              "keepalives_interval": 2, "keepalives_count": 3}


class ChangeFeed:
    def __init__(self, url: str, heard: Callable[[], None], note: Callable[[str], None],
                 backstop: float) -> None:
        """``heard``: look at the store (loop thread); ``note``: a line for the hub's log."""
        self.url, self.heard, self.note, self.backstop = url, heard, note, backstop
        self.listening = False  #: a notification reaches us now
        self.leads = False  #: this process runs the background walks
        self.failures = 0  #: connections lost or not made, since start
        self._task: asyncio.Task[None] | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._task = loop.create_task(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        while True:
            try:
                await self._listen()
            except Exception as exc:  # noqa: BLE001 - logged; polling meanwhile, then again
                self.failures += 1
                if self.failures == 1 or self.failures % 100 == 0:
                    self.note(f"listening for the store's changes failed ({self.failures} "
                              f"times; polling meanwhile): {type(exc).__name__}: "
                              f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}")
            finally:
                self.listening = self.leads = False
            await asyncio.sleep(RETRY)

    async def _listen(self) -> None:
        conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True,
                                                     connect_timeout=CONNECT_TIMEOUT,
                                                     **KEEPALIVES)
        async with conn:
            await conn.execute(f"LISTEN {CHANGES_CHANNEL}")
            self.listening = True
            while True:
                if not self.leads:
                    cur = await conn.execute("SELECT pg_try_advisory_lock(%s)",
                                             [BACKGROUND_LOCK])
                    row = await cur.fetchone()
                    self.leads = bool(row and row[0])
                self.heard()  # what changed before we listened, or was never notified
                async for _ in conn.notifies(timeout=self.backstop):
                    self.heard()
