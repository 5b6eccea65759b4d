"""The check-in flow's input rules, without HTTP.

Every passport is treated alike: the page and the API never say whether a
passport is known or whether the year typed matches it, so there is nothing
to guess against and nothing to throttle (no lockout). What the patient types
is a claim the store keeps on the check-in (``Store.checkin``); how it
compared with the record held is for staff only (``staff``). Every error is
a code the page translates into the patient's language.
"""

from __future__ import annotations

import re
import time
import unicodedata
from typing import Any

from device.exc import DeviceError
from protocol.crdt import schema as crdt_schema

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
