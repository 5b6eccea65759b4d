"""Staff unlock on the page: the passphrase that opens a store booted locked.

``POST /api/unlock`` with ``{"passphrase": ...}`` runs ``LockableStore.unlock``
(scrypt, then the merge of the check-ins taken while locked) off the event
loop, one try at a time. A wrong passphrase is a 403 ``wrong-passphrase``;
as with the staff PIN (``pin.PinGuard``), two misses are free, then each
makes the next try wait, doubling up to ``cap`` seconds (a 429
``slow-down`` with the wait), never a lockout, and check-ins go on all the
while. An empty or oversized passphrase is a 400 ``bad-passphrase`` and
counts as no try; a damaged keys file is a 503 ``bad-key-file`` (logged:
a technician restores it). The answer comes once the store is open and
takes check-ins (``pending``: how many taken while locked are to merge);
they are merged in the background, an entry that does not open kept and
logged.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from typing import Any

from device.store.exc import StoreError
from device.store.unlock import BadPassphrase, WrongPassphrase
from device.ui.http import HttpError
from device.ui.live import LiveStatus
from device.ui.pin import PinGuard

log = logging.getLogger("haven.staff")


class StaffUnlock:
    def __init__(self, store: Any, live: LiveStatus, *, cap: float = 3.0,
                 wrote: Callable[[], None] | None = None) -> None:
        self.store, self.live = store, live
        #: Misses of the passphrase, in memory (a restart asks for the passphrase anyway).
        self.guard = PinGuard(None, cap=cap)
        #: Called once unlocked: the runtime starts a sync round.
        self.wrote = wrote
        self._trying = asyncio.Lock()
        #: The merge of the check-ins taken while locked, once unlocked (in a thread).
        self.merging: asyncio.Task[None] | None = None

    async def unlock(self, body: dict[str, Any]) -> dict[str, Any]:
        async with self._trying:
            wait = self.guard.wait(time.monotonic())
            if wait > 0:
                self.guard.missed(time.monotonic(), waited=False)
                raise HttpError(429, "slow-down", {"wait": math.ceil(wait)})
            try:
                await asyncio.to_thread(self.store.open, body.get("passphrase"))
            except BadPassphrase:
                raise HttpError(400, "bad-passphrase") from None
            except WrongPassphrase:
                now = time.monotonic()
                self.guard.missed(now)
                raise HttpError(403, "wrong-passphrase",
                                {"wait": math.ceil(self.guard.wait(now))}) from None
            except StoreError as exc:
                log.error("staff unlock failed: %s", exc)
                raise HttpError(503, exc.code) from None
            self.guard.succeeded(time.monotonic())
        self.live.set_locked(False)
        pending = await asyncio.to_thread(self.store.pending_count)
        self.merging = asyncio.create_task(asyncio.to_thread(self._merge))
        return {"pending": pending}

    def _merge(self) -> None:
        """The check-ins taken while locked, into the store (a thread; logged)."""
        try:
            merged = self.store.merge_pending()
        except Exception:  # kept in pending.db: the next unlock merges them again
            log.exception("the check-ins taken while locked were not all merged")
            return
        log.info("%d check-ins taken while locked merged", merged.merged + merged.already)
        if merged.refused:
            log.error("%d check-ins taken while locked could not be opened; they are kept",
                      len(merged.refused))
        if self.wrote is not None:
            self.wrote()
