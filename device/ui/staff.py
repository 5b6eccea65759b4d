"""The staff screen's API, behind a PIN: today's queue, sync state, held conflicts.

A state that needs a technician (``device.status.REVOKED``, ``SUSPECTED_CLONE``)
is also given as ``technician``, which the screen shows among its warnings.
The ticket printer's state (``printer``: ok, paper-low, paper-out, cover-open,
error, failed, absent, unknown; None without a printer) is the one last learnt,
from a ticket or a look that the overview starts when it is older than
``PRINTER_MAX_AGE``, so the overview never waits on a printer.

The PIN is checked against its scrypt hash (``pin``), one check at a time,
off the event loop; a miss makes the next try wait a few seconds at most and
raises an alert from a few misses on (``pin.PinGuard``), never a lockout. A
right PIN gives a random token (held in the page's memory only) that expires
after ``session_seconds`` without use. Resolving a held conflict is
``Store.resolve``, the very call ``haven-kiosk resolve`` makes.

Check-ins whose identity is to be confirmed (the kiosk's verdict on what the
patient typed is ``mismatch``, or ``unknown``: no record held here) are
listed with the claim beside the record held, for staff only; ``identity``
confirms one, attaches it to the right patient, or records a correction, each
``Store.settle_identity``, a replicated write.

A fridge node's alarm raised and not yet cleared (``fridges``) is shown first
among the warnings, until the node says it cleared.

Today's queue lists the check-ins still waiting first; staff call one, mark it
seen or a no-show, or undo that (``queue``), each ``Store.set_checkin_status``,
a replicated write of the check-in's Encounter status.
"""

from __future__ import annotations

import asyncio
import calendar
import math
import secrets
import time
import uuid
from collections.abc import Callable
from typing import Any

from device.fridges.records import FridgeRecords
from device.status import REVOKED, SUSPECTED_CLONE
from device.sync.state import last_sync_of
from device.ui import checkin as ci
from device.ui.http import HttpError, Request
from device.ui.live import LiveStatus
from device.ui.pin import PinGuard, PinSource, verify_pin
from protocol.crdt import schema as crdt_schema

CHECKIN = crdt_schema.CHECKIN
PRINTER_MAX_AGE = 10.0  #: seconds: an older printer state is asked again (in the background)
#: The staff screen's queue buttons, and the check-in status each writes.
QUEUE_ACTIONS = {"call": "in-progress", "seen": "finished", "no-show": "cancelled",
                 "undo": "arrived"}


def today_queue(store: Any, now: float | None = None) -> list[dict[str, Any]]:
    """Today's check-ins (local day): id, number, reason, status, time. No names. Those
    still waiting (or called) come first, oldest first; those done with after them."""
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
        rows.append({"id": str(uuid.UUID(bytes=view.record_id)),
                     "number": view.fields.get(field["queueNumber"]),
                     "reason": view.fields.get(field["reasonCode"]),
                     "status": view.fields.get(field["status"]),
                     "time": time.strftime("%H:%M", time.localtime(t)), "t": t})
    rows.sort(key=lambda r: (r["status"] in crdt_schema.CHECKIN_DONE, r["t"], str(r["number"])))
    for r in rows:
        del r["t"]
    return rows


def held_conflicts(store: Any) -> list[dict[str, Any]]:
    """Conflicts held for review, each version with its fields by name; none of an erased
    patient's records (their versions hold no value, and the hub deletes the records)."""
    out = []
    for c in store.status()["conflicts"]:
        if c["severity"] != "hold" or store.erased.holds(uuid.UUID(c["record_id"]).bytes):
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


def identity_to_confirm(store: Any) -> list[dict[str, Any]]:
    """Check-ins flagged "identity to confirm at the desk", oldest first: the claim, and
    the record this kiosk holds for the patient (if any), for staff only."""
    field = {f.name: f.number for f in CHECKIN.fields}
    pfield = {f.name: f.number for f in crdt_schema.PATIENT.fields}
    rows = []
    for view in store.views():
        if view.type != CHECKIN.number or view.deleted:
            continue
        identity = view.fields.get(field["identity"])
        if identity not in crdt_schema.IDENTITY_TO_CONFIRM:
            continue
        subject = view.fields.get(field["subject"])
        pid = str(uuid.UUID(bytes=subject)) if isinstance(subject, bytes) else None
        patient = store.view(pid) if pid else None
        record = ({"name": patient.fields.get(pfield["name"]),
                   "birthDate": patient.fields.get(pfield["birthDate"])}
                  if patient is not None and not patient.deleted else None)
        if record is not None and not any(record.values()):
            record = None  # only seen at check-ins: nothing on record here
        rows.append({"id": str(uuid.UUID(bytes=view.record_id)), "identity": identity,
                     "number": view.fields.get(field["queueNumber"]),
                     "time": str(view.fields.get(field["periodStart"]) or ""),
                     "claim": {"name": view.fields.get(field["claimName"]),
                               "birthDate": view.fields.get(field["claimBirthDate"])},
                     "record": record, "patient": pid})
    rows.sort(key=lambda r: (r["time"], str(r["number"])))
    return rows


def fridge_alarms(store: Any) -> list[dict[str, Any]]:
    """The fridge nodes' alarms raised and not yet cleared (``device.fridges``): fridge,
    location, kind (high, low, sensor), since (Unix seconds), minutes, extreme (hundredths
    of °C, None for a sensor alarm), as each node last said."""
    return FridgeRecords(store, time.time).raised()


class Staff:
    def __init__(self, store: Any, live: LiveStatus, pins: PinSource,
                 session_seconds: float = 120.0,
                 health: Callable[[], dict[str, Any]] | None = None,
                 guard: PinGuard | None = None,
                 wrote: Callable[[], None] | None = None, printer: Any = None) -> None:
        self.store, self.live, self.pins = store, live, pins
        #: The ticket printer (``device.hardware.printer.Printer``), if one is configured.
        self.printer = printer
        #: Called after each write staff make (the runtime starts a sync round: a kept-open
        #: session has no round of its own until something is written).
        self.wrote = wrote
        #: The kiosk's own health (memory, disk), shown beside the sync state.
        self.health = health
        self.session_seconds = session_seconds
        self.tokens: dict[str, float] = {}
        self.guard = guard if guard is not None else PinGuard()
        self._checking = asyncio.Lock()

    @property
    def enabled(self) -> bool:
        return self.pins.current() is not None

    def _check(self, token: Any) -> None:
        now = time.monotonic()
        self.tokens = {t: at for t, at in self.tokens.items() if now - at < self.session_seconds}
        if not isinstance(token, str) or token not in self.tokens:
            raise HttpError(403, "staff-login")
        self.tokens[token] = now

    async def login(self, body: dict[str, Any]) -> dict[str, Any]:
        stored = self.pins.current()
        if stored is None:
            raise HttpError(403, "no-staff-pin")
        async with self._checking:  # one slow check at a time: a burst waits its turn
            wait = self.guard.wait(time.monotonic())
            if wait > 0:  # a try unchecked: it counts toward the alert all the same
                self.guard.missed(time.monotonic(), waited=False)
                raise HttpError(429, "slow-down", {"wait": math.ceil(wait)})
            pin = body.get("pin")
            ok = await asyncio.to_thread(verify_pin, pin, stored)
            now = time.monotonic()
            if not ok:
                self.guard.missed(now)
                raise HttpError(403, "bad-pin", {"wait": math.ceil(self.guard.wait(now))})
            self.guard.succeeded(now)
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
                    "identity": identity_to_confirm(self.store),
                    "outbox": sum(int(x["entries"]) for x in st["outbox"]["lanes"].values()),
                    "last_sync": max(filter(None, (last_sync_of(self.store.data),
                                                   self.live.status()["last_sync"])),
                                     default=None),  # every round's, kept in memory
                    "site": st["site"],
                    "letter": st["letter"],
                    "fridges": fridge_alarms(self.store)}
        data = await asyncio.to_thread(read)
        data["sync"] = {k: v for k, v in self.live.snapshot().items() if k != "version"}
        state = data["sync"]["state"]
        data["technician"] = state if state in (REVOKED, SUSPECTED_CLONE) else None
        data["health"] = self.health() if self.health is not None else {}
        data["pin_alert"] = self.guard.alert()
        data["printer"] = None
        if self.printer is not None:  # as last learnt; a look at it starts if that is old
            data["printer"] = self.printer.snapshot()
            self.printer.refresh(PRINTER_MAX_AGE)
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
        self._wrote()
        return {"record_id": rid}

    async def identity(self, body: dict[str, Any]) -> dict[str, Any]:
        """Confirm a check-in's identity, attach it to the patient a passport names, or
        correct the patient's name and year of birth."""
        self._check(body.get("token"))
        checkin, action = body.get("checkin"), body.get("action")
        if not isinstance(checkin, str) or action not in ("confirm", "attach", "correct"):
            raise HttpError(400, "bad-request")
        kw: dict[str, Any] = {}
        try:
            if action == "attach":
                passport = ci.clean_passport(body.get("passport"))
                kw["subject"] = str(self.store.fleet.patient_id(passport))
            elif action == "correct":
                if body.get("name") is not None:
                    kw["name"] = ci.clean_name(body.get("name"))
                if body.get("year") is not None:
                    kw["birth_year"] = ci.clean_year(body.get("year"))
        except ci.CheckinInputError as exc:
            raise HttpError(400, exc.code) from None
        from device.store import StoreError
        try:
            cid = await asyncio.to_thread(self.store.settle_identity, checkin, action, **kw)
        except StoreError as exc:
            raise HttpError(409, "identity-failed", {"detail": str(exc)}) from None
        self._wrote()
        return {"checkin": cid}

    async def queue(self, body: dict[str, Any]) -> dict[str, Any]:
        """Call a check-in, mark it seen or a no-show, or undo that (``QUEUE_ACTIONS``):
        ``Store.set_checkin_status``, a replicated write. A move the status held does
        not allow (a no-show seen, say) is a 409."""
        self._check(body.get("token"))
        checkin, status = body.get("checkin"), QUEUE_ACTIONS.get(str(body.get("action")))
        if not isinstance(checkin, str) or status is None:
            raise HttpError(400, "bad-action")
        from device.store import BadRequest, StoreError
        try:
            cid = await asyncio.to_thread(self.store.set_checkin_status, checkin, status)
        except BadRequest as exc:  # no such check-in, or a move not allowed
            raise HttpError(409 if exc.code == "bad-transition" else 400, exc.code) from None
        except StoreError as exc:  # a full disk, a broken store: nothing was written
            raise HttpError(503, exc.code) from None
        self._wrote()
        return {"checkin": cid, "status": status}

    def _wrote(self) -> None:
        if self.wrote is not None:
            self.wrote()
