"""The staff screen's API, behind a PIN: today's queue, sync state, held conflicts.

A state that needs a technician (``device.status.REVOKED``, ``SUSPECTED_CLONE``)
is also given as ``technician``, which the screen shows among its warnings.

A right PIN gives a random token (held in the page's memory only) that
expires after ``session_seconds`` without use; wrong PINs are slowed down
like wrong years. Resolving a held conflict is ``Store.resolve``, the very
call ``haven-kiosk resolve`` makes.
"""

from __future__ import annotations

import asyncio
import calendar
import hmac
import secrets
import time
from collections.abc import Callable
from typing import Any

from device.status import REVOKED, SUSPECTED_CLONE
from device.sync.state import last_sync_of
from device.ui.checkin import Throttle
from device.ui.http import HttpError, Request
from device.ui.live import LiveStatus
from protocol.crdt import schema as crdt_schema

CHECKIN = crdt_schema.CHECKIN


def today_queue(store: Any, now: float | None = None) -> list[dict[str, Any]]:
    """Today's check-ins (local day), oldest first: number, reason, time. No names."""
    day = time.strftime("%Y-%m-%d", time.localtime(time.time() if now is None else now))
    field = {f.name: f.number for f in CHECKIN.fields}
    rows = []
    for view in store.views():
        if view.type != CHECKIN.number or view.deleted:
            continue
        started = str(view.fields.get(field["periodStart"]) or "")
        try:
            t = calendar.timegm(time.strptime(started[:19], "%Y-%m-%dT%H:%M:%S"))
        except ValueError:
            continue
        if time.strftime("%Y-%m-%d", time.localtime(t)) != day:
            continue
        rows.append({"number": view.fields.get(field["queueNumber"]),
                     "reason": view.fields.get(field["reasonCode"]),
                     "status": view.fields.get(field["status"]),
                     "time": time.strftime("%H:%M", time.localtime(t)), "t": t})
    rows.sort(key=lambda r: (r["t"], str(r["number"])))
    for r in rows:
        del r["t"]
    return rows


def held_conflicts(store: Any) -> list[dict[str, Any]]:
    """Conflicts held for review, each version with its fields by name."""
    out = []
    for c in store.status()["conflicts"]:
        if c["severity"] != "hold":
            continue
        view = store.view(c["record_id"])
        versions = []
        for conflict in view.conflicts if view else ():
            if conflict.id != c["id"]:
                continue
            for v in conflict.versions:
                spec = crdt_schema.TYPES.get(v.type)
                names = {f.number: f.name for f in spec.fields} if spec else {}
                versions.append({"id": v.id, "deleted": v.deleted,
                                 "fields": {names.get(k, str(k)): val
                                            for k, val in sorted(v.fields.items())
                                            if names.get(k) != "subject"}})
        out.append({"id": c["id"], "class": c["class"], "record_id": c["record_id"],
                    "type": crdt_schema.type_name(view.type) if view else "?",
                    "versions": versions})
    return out


class Staff:
    def __init__(self, store: Any, live: LiveStatus, pin: str | None,
                 session_seconds: float = 120.0,
                 health: Callable[[], dict[str, Any]] | None = None) -> None:
        self.store, self.live, self.pin = store, live, pin
        #: The kiosk's own health (memory, disk), shown beside the sync state.
        self.health = health
        self.session_seconds = session_seconds
        self.tokens: dict[str, float] = {}
        self.throttle = Throttle(free=2)

    @property
    def enabled(self) -> bool:
        return bool(self.pin)

    def _check(self, token: Any) -> None:
        now = time.monotonic()
        self.tokens = {t: at for t, at in self.tokens.items() if now - at < self.session_seconds}
        if not isinstance(token, str) or token not in self.tokens:
            raise HttpError(403, "staff-login")
        self.tokens[token] = now

    async def login(self, body: dict[str, Any]) -> dict[str, Any]:
        if not self.pin:
            raise HttpError(403, "no-staff-pin")
        now = time.monotonic()
        wait = self.throttle.wait("pin", now)
        if wait > 0:
            raise HttpError(429, "slow-down", {"wait": round(wait + 0.5)})
        pin = body.get("pin")
        if not isinstance(pin, str) or not hmac.compare_digest(pin.encode(), self.pin.encode()):
            wait = self.throttle.failed("pin", now)
            raise HttpError(403, "bad-pin", {"wait": round(wait + 0.49)})
        self.throttle.succeeded("pin")
        token = secrets.token_urlsafe(24)
        self.tokens[token] = now
        return {"token": token}

    async def logout(self, body: dict[str, Any]) -> dict[str, Any]:
        self.tokens.pop(str(body.get("token")), None)
        return {}

    async def overview(self, req: Request) -> dict[str, Any]:
        self._check(req.headers.get("x-staff-token"))

        def read() -> dict[str, Any]:
            st = self.store.status()
            return {"queue": today_queue(self.store), "conflicts": held_conflicts(self.store),
                    "outbox": sum(int(x["entries"]) for x in st["outbox"]["lanes"].values()),
                    "last_sync": last_sync_of(self.store.data), "site": st["site"],
                    "letter": st["letter"]}
        data = await asyncio.to_thread(read)
        data["sync"] = {k: v for k, v in self.live.snapshot().items() if k != "version"}
        state = data["sync"]["state"]
        data["technician"] = state if state in (REVOKED, SUSPECTED_CLONE) else None
        data["health"] = self.health() if self.health is not None else {}
        return data

    async def resolve(self, body: dict[str, Any]) -> dict[str, Any]:
        self._check(body.get("token"))
        conflict, keep = body.get("conflict"), body.get("keep")
        if not isinstance(conflict, str) or not isinstance(keep, str):
            raise HttpError(400, "bad-request")
        from device.store import StoreError
        try:
            rid = await asyncio.to_thread(self.store.resolve, conflict, keep=keep)
        except StoreError as exc:
            raise HttpError(409, "resolve-failed", {"detail": str(exc)}) from None
        return {"record_id": rid}
