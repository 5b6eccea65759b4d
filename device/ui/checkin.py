"""The check-in flow's rules, without HTTP: input checks, identity proof, slow-down.

A passport number is looked up by the fleet's keyed hash (the patient id);
the year of birth the patient types is compared here, on the kiosk, and
the answer is only ``match``, ``new`` (no such patient yet) or
``mismatch``: never a name or a year. Wrong years are slowed down per
patient id and for the whole kiosk (``Throttle``). Every error is a code
the page translates into the patient's language.
"""

from __future__ import annotations

import re
import time
import unicodedata
from dataclasses import dataclass, field
from typing import Any

from device.exc import DeviceError
from protocol.crdt import schema as crdt_schema
from protocol.crdt.ids import patient_id

PASSPORT = re.compile(r"[A-Z0-9]{5,20}")
REASONS = ("sick", "injury", "child", "pregnancy", "medicine", "results", "other")
NAME_MAX = 80
PATIENT_NAME = crdt_schema.PATIENT.field("name").number
PATIENT_BIRTH = crdt_schema.PATIENT.field("birthDate").number


class CheckinInputError(DeviceError, ValueError):
    """Bad input: ``code`` is what the page shows (translated)."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


def clean_passport(text: Any) -> str:
    """Upper case, without spaces or dashes; scanners add neither harm nor noise."""
    if not isinstance(text, str) or len(text) > 64:
        raise CheckinInputError("bad-passport")
    value = re.sub(r"[\s\-<]", "", unicodedata.normalize("NFKC", text)).upper()
    if not PASSPORT.fullmatch(value):
        raise CheckinInputError("bad-passport")
    return value


def clean_year(text: Any, now: float | None = None) -> int:
    this_year = time.gmtime(time.time() if now is None else now).tm_year
    value = str(text).strip() if isinstance(text, str | int) else ""
    value = unicodedata.normalize("NFKC", value)
    try:
        digits = "".join(str(unicodedata.digit(c)) for c in value)
    except (TypeError, ValueError):
        raise CheckinInputError("bad-year") from None
    if len(digits) != 4 or not 1900 <= int(digits) <= this_year:
        raise CheckinInputError("bad-year")
    return int(digits)


def clean_name(text: Any) -> str:
    if not isinstance(text, str):
        raise CheckinInputError("bad-name")
    value = " ".join(unicodedata.normalize("NFC", text).split())
    if not 1 <= len(value) <= NAME_MAX:
        raise CheckinInputError("bad-name")
    for c in value:
        cat = unicodedata.category(c)
        if not (cat[0] in "LM" or c in " '-.\u200c\u200d"):
            raise CheckinInputError("bad-name")
    return value


def clean_reason(text: Any) -> str:
    if text not in REASONS:
        raise CheckinInputError("bad-reason")
    return str(text)


@dataclass
class Throttle:
    """Slows down wrong years: per patient, and kiosk-wide against number guessing."""

    free: int = 1
    cap: float = 300.0
    kiosk_free: int = 5
    window: float = 600.0
    per_id: dict[str, tuple[int, float]] = field(default_factory=dict)
    recent: list[float] = field(default_factory=list)

    def wait(self, key: str, now: float) -> float:
        """Seconds before ``key`` may try again (0 when it may now)."""
        _, until = self.per_id.get(key, (0, 0.0))
        self.recent = [t for t in self.recent if now - t < self.window]
        extra = len(self.recent) - self.kiosk_free
        kiosk_until = (self.recent[-1] + min(self.cap, 2.0 ** extra)) if extra >= 0 else 0.0
        return max(0.0, until - now, kiosk_until - now)

    def failed(self, key: str, now: float) -> float:
        count, _ = self.per_id.get(key, (0, 0.0))
        count += 1
        delay = 0.0 if count <= self.free else min(self.cap, 2.0 ** (count - self.free))
        self.per_id[key] = (count, now + delay)
        if len(self.per_id) > 10_000:  # bounded: forget the oldest
            self.per_id.pop(next(iter(self.per_id)))
        self.recent.append(now)
        return self.wait(key, now)

    def succeeded(self, key: str) -> None:
        self.per_id.pop(key, None)


@dataclass(frozen=True)
class Known:
    """A patient on record: only what the kiosk needs to check them in."""

    pid: str
    name: str
    birth_year: int | None


def lookup(store: Any, passport: str) -> Known | None:
    """The patient a passport number names, or ``None`` (blocking: call off the loop)."""
    pid = str(patient_id(store.fleet_key, passport))
    view = store.view(pid)
    if view is None or view.deleted:
        return None
    birth = view.fields.get(PATIENT_BIRTH)
    year = int(str(birth)[:4]) if birth and str(birth)[:4].isdigit() else None
    return Known(pid, str(view.fields.get(PATIENT_NAME) or ""), year)
