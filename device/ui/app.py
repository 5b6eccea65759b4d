"""The page server's routes: the static page, the check-in API, live status, staff.

Blocking store work runs in threads (``asyncio.to_thread``), never on the
event loop. The check-in API answers with codes the page translates; it
never sends a name or a year of birth to the page. With a printer
configured, each check-in's ticket is printed after its commit, within the
printer's timeout, and the answer's ``printed`` says whether it was (absent
without a printer): a printer that fails never refuses or holds up a
check-in (``device.hardware.printer``). A store that boots locked
(``device.store.locked``) still takes check-ins, sealed until staff unlock
it (``/api/unlock``, ``unlock``); their answer says ``locked`` (no short
code yet), and a staff call that needs the store is a 409 ``locked``.
``/api/events`` streams
``LiveStatus`` as server-sent events. The staff routes live in ``staff``;
``/api/hw`` exists only on simulated hardware (tests and demos press the
button and read the LED there).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from device.hardware.printer import Printer, Ticket
from device.store import StorageFull, StoreError
from device.store.pending import PendingCheckin
from device.store.unlock import Locked
from device.ui import checkin as ci
from device.ui.http import HttpError, Request, Response, json_response
from device.ui.live import LiveStatus
from device.ui.pin import PinGuard, PinSource
from device.ui.prompts import AUDIO_TYPES, CLINIC_DIR, Prompts, byte_range
from device.ui.qr import code_svg
from device.ui.staff import Staff
from device.ui.unlock import StaffUnlock

STATIC = Path(__file__).parent / "static"
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".css": "text/css; charset=utf-8", ".json": "application/json; charset=utf-8",
         ".ttf": "font/ttf", ".svg": "image/svg+xml", ".txt": "text/plain; charset=utf-8",
         **AUDIO_TYPES}
log = logging.getLogger("haven.ui")
LANGUAGES = ("en", "fr", "ar", "sw", "prs")
KEEPALIVE = 15.0


class KioskApp:
    def __init__(self, store: Any, live: LiveStatus, *, idle_seconds: float = 60.0,
                 staff_pin: str | None = None, hardware: Any = None,
                 on_checkin: Callable[[], None] | None = None,
                 health: Callable[[], dict[str, Any]] | None = None,
                 admit_checkin: Callable[[], None] | None = None,
                 staff_guard: PinGuard | None = None, staff_pin_wait: float = 3.0,
                 printer: Printer | None = None, usage: Any = None) -> None:
        self.store, self.live, self.hardware = store, live, hardware
        #: How the page is used (``device.metrics.collector.Metrics``): check-ins by
        #: language and time taken, flows abandoned by screen; counts only.
        self.usage = usage
        #: The ticket printer, if one is configured: a ticket after each check-in's commit.
        self.printer = printer
        self._clinic: str | None = None  #: the kiosk's site, as the ticket prints it
        self.idle_seconds = idle_seconds
        self.on_checkin = on_checkin
        #: Raises ``StorageFull`` when the disk is too full for a check-in (blocking).
        self.admit_checkin = admit_checkin
        #: The staff PIN: a hash (or a PIN given as a flag, hashed in memory), else the
        #: hash ``haven-kiosk staff-pin set`` keeps in the data folder (``pin``).
        data = getattr(store, "data", None)
        self.staff = Staff(store, live, PinSource(data, staff_pin),
                           session_seconds=max(idle_seconds, 30.0), health=health,
                           guard=staff_guard if staff_guard is not None
                           else PinGuard(data, cap=staff_pin_wait),
                           wrote=on_checkin,  # staff's writes leave as soon as check-ins do
                           printer=printer)
        self.clock: Callable[[], float] = time.monotonic
        #: Spoken prompts: a clinic's recordings in DATA/prompts/ before the shipped ones.
        self.prompts = Prompts(LANGUAGES, Path(data) / CLINIC_DIR if data is not None else None)
        self._files = {p.relative_to(STATIC).as_posix(): p
                       for p in STATIC.rglob("*") if p.is_file()}
        #: Staff unlock, for a store that boots locked (``device.store.locked``).
        self.unlocker = (StaffUnlock(store, live, wrote=on_checkin, cap=staff_pin_wait)
                         if hasattr(store, "unlock") else None)

    async def handle(self, req: Request) -> Response:
        path = req.path
        if req.method == "GET":
            if path == "/":
                return self._file("index.html")
            if path.startswith("/static/"):
                return self._file(path[len("/static/"):])
            if path.startswith("/audio/"):
                return self._prompt(path[len("/audio/"):], req.headers.get("range"))
            if path == "/api/config":
                return json_response(self.config())
            if path == "/api/status":  # for haven-kiosk status: in memory, nothing written
                return json_response(self.live.status())
            if path == "/api/events":
                return Response(200, content_type="text/event-stream",
                                headers={"X-Accel-Buffering": "no"}, stream=self._events())
            if path == "/api/hw" and self._simulated():
                return json_response(self.hardware.state())
            if path == "/api/staff/overview":
                try:
                    return json_response(await self.staff.overview(req))
                except Locked:
                    raise HttpError(409, "locked") from None
        elif req.method == "POST":
            routes = {"/api/verify": self.verify, "/api/checkin": self.checkin,
                      "/api/staff/login": self.staff.login,
                      "/api/staff/logout": self.staff.logout,
                      "/api/staff/resolve": self.staff.resolve,
                      "/api/staff/identity": self.staff.identity,
                      "/api/staff/queue": self.staff.queue, "/api/usage": self.note_usage}
            if self._simulated():
                routes["/api/hw/press"] = self.hw_press
            if self.unlocker is not None:
                routes["/api/unlock"] = self.unlocker.unlock
            if path in routes:
                if not req.headers.get("content-type", "").startswith("application/json"):
                    raise HttpError(400, "bad-json")
                try:
                    return json_response(await routes[path](req.json()))
                except Locked:  # a staff action while locked: unlock first
                    raise HttpError(409, "locked") from None
        raise HttpError(404, "not-found")

    def config(self) -> dict[str, Any]:
        return {"idle_seconds": self.idle_seconds, "languages": LANGUAGES,
                "reasons": ci.REASONS, "staff": self.staff.enabled,
                "unlock": self.unlocker is not None,
                "prompts": self.prompts.available(),
                "simulated": self._simulated()}

    def _file(self, name: str) -> Response:
        path = self._files.get(name)
        if path is None:
            raise HttpError(404, "not-found")
        return Response(200, path.read_bytes(), TYPES.get(path.suffix, "application/octet-stream"))

    def _prompt(self, rest: str, range_header: str | None) -> Response:
        """``/audio/<lang>/<prompt>``: both names from fixed lists, never a path."""
        lang, _, prompt = rest.partition("/")
        path = self.prompts.find(lang, prompt)
        if path is None:
            raise HttpError(404, "not-found")
        data, ctype = path.read_bytes(), TYPES[path.suffix]
        try:
            part = byte_range(range_header, len(data))
        except ValueError:
            return Response(416, b"", ctype, {"Content-Range": f"bytes */{len(data)}"})
        if part is None:
            return Response(200, data, ctype, {"Accept-Ranges": "bytes"})
        start, end = part
        return Response(206, data[start:end], ctype, {
            "Accept-Ranges": "bytes", "Content-Range": f"bytes {start}-{end - 1}/{len(data)}"})

    def _simulated(self) -> bool:
        return self.hardware is not None and bool(self.hardware.simulated)

    async def _events(self) -> AsyncIterator[bytes]:
        seen, sent = -1, None
        yield b"retry: 1000\n\n"
        while True:
            snap = await self.live.wait_change(seen, KEEPALIVE)
            public = {k: snap[k] for k in ("state", "sent_upto", "committed", "contact_min",
                                           "provision_code", "locked")}
            if snap["version"] == seen and public == sent:  # contact ages without a change
                yield b": keepalive\n\n"
                continue
            seen, sent = snap["version"], public
            yield f"data: {json.dumps(public)}\n\n".encode()

    # Check-in ---------------------------------------------------------------------------

    async def verify(self, body: dict[str, Any]) -> dict[str, Any]:
        """Passport (or short patient code) + year: checks the input only, and answers
        every passport and code alike; a code's check character is checked here.

        Nothing is looked up here: whether the passport is known, and whether the
        year matches, is for staff (the check-in's ``identity``), so there is
        nothing to guess against and nothing to throttle (SPEC.md "Identity at the
        kiosk")."""
        try:
            if body.get("code") is not None:  # the start screen checks a code alone
                ci.clean_code(body.get("code"))
                if body.get("year") is not None:
                    ci.clean_year(body.get("year"))
            else:
                ci.clean_passport(body.get("passport"))
                ci.clean_year(body.get("year"))
        except ci.CheckinInputError as exc:
            raise HttpError(400, exc.code, {"detail": exc.detail} if exc.detail else None) from None
        return {"result": "ok"}

    async def checkin(self, body: dict[str, Any]) -> dict[str, Any]:
        """Record a check-in; the queue number comes back only after the commit.

        A passport or code check-in is never refused for what was typed: the year
        (and a name, if sent) is a claim the store keeps on the check-in, and the
        answer is the same whether it matched, did not, or named nobody known here.
        A new patient's answer carries their short patient code (``code``) and its
        QR as inline SVG (``code_qr``), in the body, never in a URL; none on a kiosk
        with no number yet."""
        try:
            reason = ci.clean_reason(body.get("reason"))
            year = ci.clean_year(body.get("year"))
            passport = ci.clean_passport(body["passport"]) if body.get("passport") else None
            code = ci.clean_code(body["code"]) if body.get("code") else None
            name = ci.clean_name(body.get("name")) if body.get("name") is not None else None
        except ci.CheckinInputError as exc:
            raise HttpError(400, exc.code, {"detail": exc.detail} if exc.detail else None) from None
        if passport is not None and code is not None:
            raise HttpError(400, "bad-code")
        new_patient = passport is None and code is None
        if new_patient and name is None:
            raise HttpError(400, "bad-name")
        if new_patient and body.get("consent") is not True:
            raise HttpError(400, "no-consent")
        def save() -> Any:
            if self.admit_checkin is not None:
                self.admit_checkin()
            return self.store.checkin(name=name, passport=passport, code=code,
                                      birth_year=year, reason=reason)
        try:
            result = await asyncio.to_thread(save)
        except StorageFull as exc:  # refused whole, or rolled back by SQLite: nothing half-written
            log.error("check-in refused: %s", exc)
            raise HttpError(507, "storage-full") from None
        except (StoreError, sqlite3.Error, OSError) as exc:  # a broken store
            log.error("check-in not saved: %s", type(exc).__name__)
            raise HttpError(503, "store") from None
        ticket = self.live.note_checkin()
        if self.usage is not None:
            took = body.get("took_ms")
            self.usage.checkin(body.get("lang"),
                               took / 1000 if isinstance(took, (int, float)) else None)
        if self.hardware is not None:
            try:
                await asyncio.to_thread(self.hardware.chime.checkin)
            except Exception as exc:  # the check-in is saved: a silent buzzer must not hide it
                log.error("check-in chime failed: %s", exc)
        if self.on_checkin is not None:
            self.on_checkin()
        out: dict[str, Any] = {"queue_number": result.queue_number, "ticket": ticket}
        if isinstance(result, PendingCheckin):  # sealed until staff unlock: no code yet
            out["locked"] = True
        if result.code:  # a new patient's short code, and its QR drawn here
            out["code"] = result.code
            out["code_qr"] = await asyncio.to_thread(code_svg, result.code)
        if self.printer is not None:  # saved already: a printer that fails only says so
            out["printed"] = await self._print(result)
        return out

    async def note_usage(self, body: dict[str, Any]) -> dict[str, Any]:
        """The page gave up a flow (idle, or Cancel): its screen and language, nothing
        typed. Anything but a known screen and language counts as ``other``."""
        if body.get("event") != "abandon":
            raise HttpError(400, "bad-usage")
        if self.usage is not None:
            self.usage.abandoned(body.get("screen"), body.get("lang"))
        return {"result": "ok"}

    async def _print(self, result: Any) -> bool:
        """The check-in's ticket, within the printer's timeout; whether it printed."""
        assert self.printer is not None
        clinic = self._clinic
        if clinic is None:
            try:
                clinic = self._clinic = str(await asyncio.to_thread(
                    lambda: self.store.status()["site"] or ""))
            except Locked:  # until staff unlock it: the number and the time only
                clinic = ""
            except (StoreError, sqlite3.Error, OSError) as exc:
                log.error("a ticket without the clinic's name: %s", exc)
                clinic = ""
        # the store's clock (the hub's sense of time on a Pi without a clock), whose local
        # day numbers the queue
        clock = getattr(self.store, "clock", None)
        now = clock() / 1000 if callable(clock) else time.time()
        ticket = Ticket(result.queue_number, time.strftime("%Y-%m-%d %H:%M", time.localtime(now)),
                        clinic, getattr(result, "code", None))
        return await self.printer.print_ticket(ticket)

    async def hw_press(self, body: dict[str, Any]) -> dict[str, Any]:
        seconds = body.get("seconds", 0.2)
        if not isinstance(seconds, int | float) or not 0 < seconds <= 30:
            raise HttpError(400, "bad-seconds")
        await asyncio.to_thread(self.hardware.press, float(seconds))
        return dict(self.hardware.state())
