"""What the page shows live: sync state, and how far check-ins reached the clinic.

The state is one of ``device.status``'s names, the same the status LED shows.

``LiveStatus`` is written from the sync thread and read on the event loop.
Each check-in the page makes gets an ordinal (``note_checkin``); the sync
engine moves ``sent_upto`` when it knows every check-in up to an ordinal
left the outbox with the hub's acknowledgement. A page holding ordinal
``n`` shows "sent to the clinic" once ``sent_upto >= n``, otherwise "saved
on this kiosk". Listeners (server-sent events) wait on ``changed``.

The state shown is the runtime's to decide (``device.runtime``: from the
last round, the link, the disk and what needs a technician); it calls
``update`` with it and shows the same on the LED. ``note_checkin`` turns
``synced`` into ``pending`` by itself and then calls ``when_checkin`` (the
runtime's), so that the LED follows at the moment the check-in is saved.
``last_sync`` (wall-clock seconds) is the end of the last round that
worked, kept in memory: ``haven-kiosk status`` asks the running runtime
for it (``GET /api/status``), so that an idle round writes nothing.

``contact_minutes`` is how long ago the hub was last heard (a frame on the
kept-open session, a keepalive's answer, a round), in whole minutes, once
that is longer than ``contact_after`` seconds (the keepalive interval):
the page's header then says "last contact with the clinic N min ago". It
is read from the sync loop when asked (``watch_contact``), in memory only.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
import threading
import time
from collections.abc import Callable
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
        self.link = "up"  #: the link as the runtime knows it: up, down, reconnecting
        #: The short code a technician's provisioning asks the page to show (None: none)
        self.provision_code: str | None = None
        #: The store waits for staff to unlock it (``device.store.locked``); check-ins
        #: are kept sealed meanwhile and nothing syncs.
        self.locked = False
        self.version = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._event: asyncio.Event | None = None
        self._contact: Callable[[], float | None] | None = None
        self.contact_after = 0.0
        #: Called (on the event loop) right after each ``note_checkin``.
        self.when_checkin: Callable[[], None] | None = None

    def watch_contact(self, age: Callable[[], float | None], after: float) -> None:
        """``age()``: seconds since the hub was last heard (None: never); shown once
        above ``after`` seconds."""
        self._contact, self.contact_after = age, after

    def contact_minutes(self) -> int | None:
        """Whole minutes since the hub was last heard, once longer than ``contact_after``
        seconds; None while contact is recent, or before any."""
        age = self._contact() if self._contact is not None else None
        if age is None or age <= self.contact_after:
            return None
        return int(age // 60)

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
        if self.when_checkin is not None:
            self.when_checkin()
        return n

    def unsent(self) -> bool:
        """Whether a check-in this page made is not yet known to have reached the hub."""
        with self._lock:
            return self.sent_upto < self.committed

    def update(self, state: str | None = None, sent_upto: int | None = None,
               detail: str | None = None, synced: bool = False,
               synced_at: float | None = None, link: str | None = None) -> None:
        """Thread-safe: record what the sync engine learnt. ``synced``: a round just
        worked, at ``synced_at`` (wall-clock seconds; now if not given). Listeners are
        woken only when something changed."""
        with self._lock:
            before = (self.state, self.sent_upto, self.detail, self.last_sync, self.link)
            if state is not None:
                self.state = state
            if link is not None:
                self.link = link
            if sent_upto is not None:
                self.sent_upto = max(self.sent_upto, min(sent_upto, self.committed))
            if detail is not None:
                self.detail = detail
            if synced:
                self.last_sync = time.time() if synced_at is None else synced_at
            same = before == (self.state, self.sent_upto, self.detail, self.last_sync,
                              self.link)
        if not same:
            self._changed()

    def show_provision_code(self, code: str | None) -> None:
        """Thread-safe: show ``code`` on the page, for a technician provisioning this
        kiosk to compare (``device.tech.provision``); None takes it away."""
        with self._lock:
            same = code == self.provision_code
            self.provision_code = code
        if not same:
            self._changed()

    def set_locked(self, locked: bool) -> None:
        """Thread-safe: the store is locked (``device.store.locked``), or no longer."""
        with self._lock:
            same = locked == self.locked
            self.locked = locked
        if not same:
            self._changed()

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            snap = {"state": self.state, "sent_upto": self.sent_upto,
                    "committed": self.committed, "last_sync": self.last_sync,
                    "detail": self.detail, "link": self.link, "version": self.version,
                    "provision_code": self.provision_code, "locked": self.locked}
        snap["contact_min"] = self.contact_minutes()
        return snap

    def status(self) -> dict[str, Any]:
        """What ``haven-kiosk status`` asks the running kiosk (``GET /api/status``):
        the status shown, the link, the last round that worked (ISO 8601, UTC), and
        ``unsent``: the check-ins this page saved since the start and the hub has not
        acknowledged yet (the outbox counts every write)."""
        snap = self.snapshot()
        at = snap["last_sync"]
        when = None if at is None else datetime.datetime.fromtimestamp(at, datetime.UTC)
        return {"state": snap["state"], "link": snap["link"], "locked": snap["locked"],
                "unsent": max(0, snap["committed"] - snap["sent_upto"]),
                "last_sync": None if when is None else when.isoformat(timespec="seconds"),
                "pid": os.getpid()}

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
