"""What may leave the kiosk in a debug bundle, and the report that says why.

Theory of operation
-------------------
A bundle is read by whoever pulled it, so everything in it is chosen field by
field; nothing is copied whole. Log entries keep the Journal's own fields
(index, time, level, logger, message template) and the fields of its allowlist
(``device.logs.fields``), each checked again here by the allowlist's own check; anything
else in a line is dropped and counted. The other sections come from the
kiosk's views (status, metrics), which hold numbers and a few codes: ``scrub``
keeps numbers, booleans and map keys that are codes, and a string only under a
key of ``TEXT_KEYS`` (states, levels, times), shaped like a code or a time.
Whatever it drops is named (by path, never by value) in the redaction report.
Databases, keys and patient values are never read into a bundle at all: the
kiosk's key only signs it, and its store is asked for counts and the audit chain.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from typing import Any

#: The Journal's own fields of every entry: name -> (type, what it is, why it may leave).
BASE_FIELDS: dict[str, tuple[type, str, str]] = {
    "i": (int, "the entry's index", "orders the entries; says what a pull has"),
    "t": (int, "when it was written (µs since 1970)", "a timeline needs times"),
    "lvl": (int, "level: 0 debug .. 4 critical", "finds the errors"),
    "mod": (str, "the logger's name (a module)", "says which part of the kiosk wrote it"),
    "ev": (str, "the message template as written in the code, never filled in",
           "says what happened without any value"),
}
#: name -> (check: the value as kept or None, type's name, what it is, why it may leave)
LogField = tuple[Callable[[Any], Any], str, str, str]
#: Strings in status and metrics are kept under these keys only (closed vocabularies,
#: times, versions); each must look like a code or a time as well.
TEXT_KEYS = frozenset({"state", "link", "level", "source", "version", "last_sync",
                       "outcome", "lang", "language", "screen", "at", "day", "hour",
                       "describe", "kind", "code", "class", "severity", "status", "result"})
CODE = re.compile(r"[A-Za-z0-9_.:+\-/ ]{0,64}")
KEY = re.compile(r"[A-Za-z0-9_.:\-]{1,48}")
#: Status fields never copied: free text written by the code with values in it.
DROPPED_KEYS = frozenset({"last_errors", "detail", "record_id", "msg", "path"})

#: What each non-log section is and why it may leave the kiosk.
SECTIONS: dict[str, tuple[str, str]] = {
    "manifest.json": ("kiosk id, site, versions, configuration hash, boot ids, clock offset "
                      "from the hub, log index range, the request's nonce",
                      "identifies the kiosk and the state the rest describes; a hash of "
                      "the configuration, not its values"),
    "status.json": ("sync state, outbox counts by lane, link state, memory and disk, "
                    "counts of conflicts and quarantined deltas by class and code",
                    "what a technician sees on `haven tech status`; counts and codes only"),
    "audit.json": ("the kiosk's chain of technician actions: who (a certificate serial), "
                   "what, result, codes", "shows who did what to the kiosk; audit details "
                   "are codes by construction (protocol.sync.audit)"),
    "link.json": ("link state and events, console link counters",
                  "why sync stopped; counters only"),
    "metrics.json": ("sync per round, health per minute, usage counts by hour, language "
                     "and screen", "aggregates: nothing identifies a patient"),
    "crashes.json": ("crash entries of the log: exception type and frames (file, line, "
                     "function), no message, no locals", "finds the code that failed"),
    "logs.jsonl": ("log entries with the fields listed under logs",
                   "each field is allowlisted with a reason (below)"),
}
#: What a bundle never holds.
NEVER = ["the databases (store.db, sync.db, pending.db, documents.db)",
         "any key (store, fleet, kiosk, technician)",
         "any patient value: names, passport numbers, years of birth, notes, record ids",
         "formatted log messages and exception messages (values could be in them)"]


class Dropped:
    """Counts what was left out, by path (``status.sync.detail``), never by value."""

    def __init__(self) -> None:
        self.paths: dict[str, int] = {}

    def add(self, path: str) -> None:
        self.paths[path] = self.paths.get(path, 0) + 1


def scrub(value: Any, dropped: Dropped, path: str, key: str = "") -> Any:
    """``value`` with only what may leave (see the module docstring); ``...`` if nothing
    of it may."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            name = str(k)
            if not _key_ok(name):
                dropped.add(f"{path}.{name}" if KEY.fullmatch(name) else f"{path}.*")
                continue
            kept = scrub(v, dropped, f"{path}.{name}", name)
            if kept is not ...:
                out[name] = kept
        return out
    if isinstance(value, list | tuple):
        return [kept for v in value if (kept := scrub(v, dropped, path, key)) is not ...]
    if isinstance(value, str) and key in TEXT_KEYS and CODE.fullmatch(value):
        return value
    dropped.add(path)
    return ...


@functools.lru_cache(maxsize=1024)
def _key_ok(name: str) -> bool:
    return name not in DROPPED_KEYS and KEY.fullmatch(name) is not None


def log_fields() -> dict[str, LogField]:
    """The Journal's own fields and its allowlist (``device.logs.fields.FIELDS``)."""
    table: dict[str, LogField] = {
        name: (_typed(kind), kind.__name__, what, why)
        for name, (kind, what, why) in BASE_FIELDS.items()}
    from device.logs.fields import FIELDS

    for name, spec in FIELDS.items():
        table[name] = (spec.check, spec.kind, spec.what, spec.why)
    return table


def _typed(kind: type) -> Callable[[Any], Any]:
    return lambda v: v if type(v) is kind else None


def report(fields: Mapping[str, LogField], dropped: Dropped) -> dict[str, Any]:
    """The bundle's ``redaction.json``."""
    return {
        "sections": [{"section": name, "what": what, "why": why}
                     for name, (what, why) in SECTIONS.items()],
        "log_fields": [{"field": name, "type": kind, "what": what, "why": why}
                       for name, (_, kind, what, why) in sorted(fields.items())],
        "never": NEVER,
        "dropped": dict(sorted(dropped.paths.items())),
    }

