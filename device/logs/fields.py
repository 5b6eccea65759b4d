"""The allowlist: the only fields a log entry may carry besides its template.

Theory of operation
-------------------
A log call on the kiosk names typed fields (``extra=fields(deltas_up=3,
outcome="ok")``); the journal's handler keeps a field only if its name is in
``FIELDS`` and its value passes that field's check: a whole number in a range,
a word of a closed vocabulary, or a short string matching a pattern that no
name, passport number or free text can match. Anything else is dropped (the
entry says how many were, ``dropped``). The message's %-arguments are never
kept, whatever their type: a year of birth is a number too. Each field says
what it is and why it may leave the kiosk; the debug bundle's redaction report
is this table (``redaction_report``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: The record attribute ``fields`` sets (``logging``'s ``extra``).
ATTRIBUTE = "haven_fields"

_CODE = re.compile(r"[a-z][a-z0-9-]{0,39}")
_TYPE = re.compile(r"[A-Za-z_][A-Za-z0-9_.]{0,119}")
_COMMAND = re.compile(r"[a-z][a-z0-9-]{0,23}")
_FILE = re.compile(r"[A-Za-z0-9_./-]{1,120}")
_FUNCTION = re.compile(r"[A-Za-z_<][A-Za-z0-9_<>.]{0,79}")


@dataclass(frozen=True)
class Field:
    kind: str  #: "int", "enum", "pattern", "frames" (what the redaction report shows)
    what: str
    why: str
    check: Callable[[Any], Any]  #: the value as kept, or None: dropped


def _int(low: int = 0, high: int = 2**53) -> Callable[[Any], Any]:
    def check(v: Any) -> int | None:
        return v if type(v) is int and low <= v <= high else None
    return check


def _enum(*words: str) -> Callable[[Any], Any]:
    allowed = frozenset(words)

    def check(v: Any) -> str | None:
        return v if isinstance(v, str) and v in allowed else None
    return check


def _pattern(rx: re.Pattern[str]) -> Callable[[Any], Any]:
    def check(v: Any) -> str | None:
        return v if isinstance(v, str) and rx.fullmatch(v) else None
    return check


def _frames(v: Any) -> list[list[Any]] | None:
    """A traceback as [file, line, function] triples: where, never what."""
    if not isinstance(v, list) or len(v) > 64:
        return None
    out = []
    for frame in v:
        if not (isinstance(frame, list | tuple) and len(frame) == 3):
            return None
        file, line, func = frame
        if not (_FILE.fullmatch(str(file)) and type(line) is int
                and _FUNCTION.fullmatch(str(func))):
            return None
        out.append([file, line, func])
    return out


_COUNT = "a count says how much work was done, never whose"
_CODE_WHY = "a word of the code's own vocabulary: no value a person typed matches it"

FIELDS: dict[str, Field] = {
    "count": Field("int", "how many things the message is about (check-ins merged, "
                   "entries, serials)", _COUNT, _int()),
    "deltas_up": Field("int", "deltas a sync round sent to the hub", _COUNT, _int()),
    "deltas_down": Field("int", "deltas a sync round took from the hub", _COUNT, _int()),
    "quarantined": Field("int", "deltas the hub held for review in a round", _COUNT, _int()),
    "batches": Field("int", "batches a sync round exchanged", _COUNT, _int()),
    "bytes_sent": Field("int", "bytes a round or transfer sent", _COUNT, _int()),
    "bytes_received": Field("int", "bytes a round or transfer received", _COUNT, _int()),
    "ms": Field("int", "how long something took, in milliseconds",
                "a duration describes the kiosk and its link", _int()),
    "outcome": Field("enum", "how a sync round ended", _CODE_WHY,
                     _enum("ok", "idle", "offline", "refused", "failed", "revoked")),
    "status": Field("enum", "the kiosk's sync status as the LED shows it", _CODE_WHY,
                    _enum("synced", "pending", "offline", "error", "revoked",
                          "suspected-clone")),
    "link": Field("enum", "the hub link's state", _CODE_WHY,
                  _enum("up", "down", "reconnecting")),
    "level": Field("enum", "a memory or disk level", _CODE_WHY,
                   _enum("ok", "soft", "low", "hard", "critical")),
    "code": Field("pattern", "a short error or refusal code (lowercase, digits, dashes)",
                  _CODE_WHY, _pattern(_CODE)),
    "command": Field("pattern", "a technician command's name", _CODE_WHY,
                     _pattern(_COMMAND)),
    "serial": Field("int", "a technician certificate's or a kiosk certificate's serial",
                    "identifies a staff credential, not a patient", _int()),
    "rss_kib": Field("int", "the runtime's resident memory", "kiosk health", _int()),
    "free_kib": Field("int", "free space on the data disk", "kiosk health", _int()),
    "available_kib": Field("int", "the system's available memory (MemAvailable)",
                           "kiosk health", _int()),
    "exc": Field("pattern", "an exception's type (module and class), never its message",
                 "a type is code's name for an error; messages may quote values, so "
                 "they are dropped", _pattern(_TYPE)),
    "tb": Field("frames", "a traceback's frames: file, line and function, innermost last",
                "where the code was, never a local variable or an argument", _frames),
    "crash": Field("enum", "an unhandled exception: in the main thread (process) or "
                   "another (thread)", _CODE_WHY, _enum("process", "thread")),
    "dropped": Field("int", "fields or arguments the log call gave that were not kept",
                     "says that something was withheld, not what", _int()),
}


def fields(**values: Any) -> dict[str, Any]:
    """``extra=`` for a log call: ``log.info("round done", extra=fields(deltas_up=3))``."""
    return {ATTRIBUTE: values}


def clean(values: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """The allowlisted fields of ``values`` as kept, and how many were dropped."""
    kept: dict[str, Any] = {}
    for name, value in values.items():
        spec = FIELDS.get(name)
        checked = spec.check(value) if spec is not None else None
        if checked is not None:
            kept[name] = checked
    return kept, len(values) - len(kept)


def redaction_report() -> list[dict[str, str]]:
    """Every field a log entry may carry: its name, type, what it is, why it may leave.
    The entry's own keys come first (``i``, ``t``, ``lvl``, ``mod``, ``ev``)."""
    own = [("i", "int", "the entry's index, increasing, never reused", "bookkeeping"),
           ("t", "int", "when, in microseconds since 1970", "bookkeeping"),
           ("lvl", "int", "0 debug, 1 info, 2 warning, 3 error, 4 critical", "bookkeeping"),
           ("mod", "pattern", "the logger's name (the code's module)", _CODE_WHY),
           ("ev", "template", "the message as written in the code, its %-placeholders "
            "unfilled; a message not written as a literal is replaced by a marker",
            "the code's own text: the values that would fill it are never kept"),
           ("at", "pattern", "file and line of a log call whose message was not a literal",
            "where in the code, never what")]
    return ([{"field": n, "type": k, "what": w, "why": y} for n, k, w, y in own]
            + [{"field": n, "type": f.kind, "what": f.what, "why": f.why}
               for n, f in FIELDS.items()])
