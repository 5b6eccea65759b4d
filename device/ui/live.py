"""What the page shows live: sync state, and how far check-ins reached the clinic.

The state is one of ``device.status``'s names, the same the status LED shows.

``LiveStatus`` is written from the sync thread and read on the event loop.
Each check-in the page makes gets an ordinal (``note_checkin``); the sync
engine moves ``sent_upto`` when it knows every check-in up to an ordinal
left the outbox with the hub's acknowledgement. A page holding ordinal
``n`` shows "sent to the clinic" once ``sent_upto >= n``, otherwise "saved
on this kiosk". Listeners (server-sent events) wait on ``changed``.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from typing import Any

from device.status import ERROR, OFFLINE, PENDING, SYNCED

__all__ = ["ERROR", "OFFLINE", "PENDING", "SYNCED", "LiveStatus"]


class LiveStatus:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.state = PENDING
        self.committed = 0
        self.sent_upto = 0
        self.last_sync: float | None = None
        self.detail = ""
        self.version = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._event: asyncio.Event | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Attach to the event loop the listeners run on (call on that loop)."""
        self._loop = loop
        self._event = asyncio.Event()

    def note_checkin(self) -> int:
        """A check-in was committed; returns its ordinal."""
        with self._lock:
            self.committed += 1
            n = self.committed
            if self.state == SYNCED:
                self.state = PENDING
        self._changed()
        return n

    def update(self, state: str | None = None, sent_upto: int | None = None,
               detail: str | None = None, synced: bool = False) -> None:
        """Thread-safe: record what the sync engine learnt."""
        with self._lock:
            if state is not None:
                self.state = state
            if sent_upto is not None:
                self.sent_upto = max(self.sent_upto, min(sent_upto, self.committed))
            if detail is not None:
                self.detail = detail
            if synced:
                self.last_sync = time.time()
        self._changed()

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {"state": self.state, "sent_upto": self.sent_upto,
                    "committed": self.committed, "last_sync": self.last_sync,
                    "detail": self.detail, "version": self.version}

    def _changed(self) -> None:
        with self._lock:
            self.version += 1
        loop, event = self._loop, self._event
        if loop is not None and event is not None and not loop.is_closed():
            loop.call_soon_threadsafe(event.set)

    async def wait_change(self, seen: int, timeout: float) -> dict[str, Any]:
        """The snapshot once ``version`` passes ``seen``, or after ``timeout`` anyway."""
        end = asyncio.get_running_loop().time() + timeout
        while True:
            snap = self.snapshot()
            left = end - asyncio.get_running_loop().time()
            if snap["version"] > seen or left <= 0 or self._event is None:
                return snap
            self._event.clear()
            if self.snapshot()["version"] > seen:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._event.wait(), left)
