"""The check-in flow's input rules, without HTTP.

Every passport, and every short patient code, is treated alike: the page and
the API never say whether a passport or code is known or whether the year
typed matches it, so there is nothing to guess against and nothing to
throttle (no lockout). What the patient types is a claim the store keeps on
the check-in (``Store.checkin``); how it compared with the record held is for
staff only (``staff``). Every error is a code the page translates into the
patient's language: ``code`` names the field (``bad-year``, ``bad-name``),
``detail`` what is wrong with it (``year-future``, ``name-letters``,
``code-check``...), so each gets its own message.

A short patient code goes in the passport's field: it is one when typed or
scanned with its dash (``clean_code``), and a value without one is a passport
number (SPEC.md "Short patient codes").

A year of birth lies between ``YEARS_BACK`` years ago and this year. A name
is NFC-normalised with its white space collapsed; it holds letters (at least
one), combining marks, spaces, ``' - .`` and the zero-width (non-)joiners that
Persian and Arabic spelling needs, at most ``NAME_MAX`` characters. Control
characters (NUL included) and bidi overrides and isolates are refused, not
stripped: what is stored is exactly what the patient saw.
"""

from __future__ import annotations

import re
import time
import unicodedata
from typing import Any

from device.exc import DeviceError
from protocol.crdt import schema as crdt_schema
from protocol.crdt import short_code

PASSPORT = re.compile(r"[A-Z0-9]{5,20}")
REASONS = ("sick", "injury", "child", "pregnancy", "medicine", "results", "other")
NAME_MAX = 60
YEARS_BACK = 120
BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
NAME_MARKS = " '-.\u200c\u200d"
PATIENT_NAME = crdt_schema.PATIENT.field("name").number
PATIENT_BIRTH = crdt_schema.PATIENT.field("birthDate").number


class CheckinInputError(DeviceError, ValueError):
    """Bad input: ``code`` is what the page shows (translated)."""

    def __init__(self, code: str, detail: str | None = None) -> None:
        super().__init__(detail or code)
        self.code, self.detail = code, detail


def clean_passport(text: Any) -> str:
    """Upper case, without spaces or dashes; scanners add neither harm nor noise."""
    if not isinstance(text, str) or len(text) > 64:
        raise CheckinInputError("bad-passport")
    value = re.sub(r"[\s\-<]", "", unicodedata.normalize("NFKC", text)).upper()
    if not PASSPORT.fullmatch(value):
        raise CheckinInputError("bad-passport")
    return value


def clean_code(text: Any) -> str:
    """A short patient code as typed or scanned, as printed (``XXXX-XXXX``). Only a
    value with its dash is a code (``short_code.is_code``): the page sends it as one
    by the same rule. ``bad-code``, with ``code-check`` when a character is wrong."""
    if not isinstance(text, str) or len(text) > 64:
        raise CheckinInputError("bad-code")
    value = unicodedata.normalize("NFKC", text)
    if not short_code.is_code(value):
        raise CheckinInputError("bad-code")
    try:
        return short_code.display(value)
    except short_code.ShortCodeError as exc:
        raise CheckinInputError("bad-code", exc.code) from None


def clean_year(text: Any, now: float | None = None) -> int:
    this_year = time.gmtime(time.time() if now is None else now).tm_year
    value = str(text).strip() if isinstance(text, str | int) else ""
    value = unicodedata.normalize("NFKC", value)
    try:
        digits = "".join(str(unicodedata.digit(c)) for c in value)
    except (TypeError, ValueError):
        raise CheckinInputError("bad-year", "year-letters") from None
    if len(digits) < 4:
        raise CheckinInputError("bad-year", "year-short")
    if len(digits) > 4:
        raise CheckinInputError("bad-year")
    if int(digits) > this_year:
        raise CheckinInputError("bad-year", "year-future")
    if int(digits) < this_year - YEARS_BACK:
        raise CheckinInputError("bad-year", "year-old")
    return int(digits)


def clean_name(text: Any) -> str:
    if not isinstance(text, str):
        raise CheckinInputError("bad-name")
    if any(unicodedata.category(c) == "Cc" or c in BIDI_CONTROLS for c in text):
        raise CheckinInputError("bad-name", "name-chars")
    value = " ".join(unicodedata.normalize("NFC", text).split())
    if any(not (unicodedata.category(c)[0] in "LM" or c in NAME_MARKS) for c in value):
        raise CheckinInputError("bad-name", "name-chars")
    if len(value) > NAME_MAX:
        raise CheckinInputError("bad-name", "name-long")
    if not any(unicodedata.category(c)[0] == "L" for c in value):
        raise CheckinInputError("bad-name", "name-letters")
    return value


def clean_reason(text: Any) -> str:
    if text not in REASONS:
        raise CheckinInputError("bad-reason")
    return str(text)
