"""Scopes by role, the scope checksum and the signed stable point (SPEC.md, "Scopes and
garbage collection").

Theory of operation
-------------------
A kiosk holds only the records of its scope; the hub holds everything and
sends each kiosk only what is in its scope. A scope is a role, the kiosk's
site, the day (UTC, of the hub's time) and, for a clinician station, a
window in days:

* ``full``: every record but audit entries and telemetry (every kiosk
  enrolled before roles were);
* ``door``: the check-ins of its site dated that day, and the verifier
  records of its site (``protocol.crdt.ids.year_verifier``): no patient, no
  name, no year of birth, nothing clinical (the hub sends it check-ins
  without what patients typed, ``WITHHELD_AT_DOOR``);
* ``clinician``: the check-ins of its site dated within the window, the
  patients they name, and those patients' prescriptions, lab results,
  appointments, notes and documents.

Every role holds every erasure record (``protocol.crdt.erasure``), whatever
its site: a kiosk that holds anything of the patient, or is yet to receive
a write of theirs, purges and husks by it. An erasure is never deleted, so
no kiosk collects it.

Whether a record is in scope is decided from a few ``Facts`` of it (type,
site, subject, day), read from its fields by ``facts_of``, never from the
rest of it. A clinician's patients are those named by the check-ins in its
scope, so ``in_scope`` is given them.

``scope_checksum`` condenses a scope as held, so a kiosk and the hub can
tell in the hello whether they agree: every head of every record (the
writes no other write of the record saw, ``heads_of``), each with whether it
is a delete. A record whose heads are all deletes is left out: a kiosk drops
it once stable, the hub keeps it. ``scope_checksum_v1``, one greatest dot per
record, is what kiosks before it send (hello field ``sum``); it cannot see a
lesser concurrent head go missing, and the hub answers it only to leave
those kiosks as they were.

The stable point is the arrival cursor every live replica of a scope has
acknowledged; below it a kiosk may drop its write log and tombstones. The
hub signs it for one kiosk (``sign_stable_point``) with the Ed25519 key the
kiosk's certificate names, and the kiosk prunes only by a point that opens
with that key and names it (``open_stable_point``).

Everything here is pure.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from protocol import MICROPYTHON
from protocol.crdt.ids import verifier_record_id, year_verifier
from protocol.crdt.schema import AUDIT, CHECKIN, ERASURE, PATIENT, TELEMETRY, VERIFIER
from protocol.errors import LocalProtocolError, RemoteProtocolError
from protocol.sync.credential import CredentialError, open_document, sign_document

if TYPE_CHECKING:
    from collections.abc import Container, Iterable, Mapping

    from protocol.crypto import Ed25519PrivateKey

__all__ = [
    "CLINICAL_OF_PATIENT", "DEFAULT_WINDOW_DAYS", "ROLES", "STABLE_LABEL", "Facts", "Head",
    "Scope",
    "ScopeError", "StablePointError", "WITHHELD_AT_DOOR", "checkin_in_scope", "facts_of",
    "heads_of", "in_scope", "open_stable_point", "parse_role", "scope_checksum",
    "scope_checksum_v1", "sign_stable_point", "verifier_record_id", "year_verifier",
]

ROLES = ("door", "clinician", "full")
DEFAULT_WINDOW_DAYS = 30
MAX_WINDOW_DAYS = 3660
MAX_SITE = 256  #: characters of a site's name
#: Types a clinician station holds for each patient in its scope (prescription,
#: lab result, appointment, note, document), by their ``subject``.
CLINICAL_OF_PATIENT = frozenset((3, 4, 5, 6, 7))
#: A check-in's fields a door kiosk is never sent (what a patient typed: a name, a year
#: of birth); the hub sends it check-ins without them, under the same dots.
WITHHELD_AT_DOOR = frozenset((7, 8))
SUM_LABEL = b"haven-scope-2\x00"
SUM_LABEL_V1 = b"haven-scope\x00"
STABLE_LABEL = b"haven-stable-point\x00"
MAX_STABLE_DOC = 512


class ScopeError(LocalProtocolError):
    code = "bad-scope"


class StablePointError(RemoteProtocolError):
    code = "bad-stable-point"


def parse_role(text: str) -> str:
    """A role from command-line text; ``ScopeError`` for any other word."""
    role = text.strip().lower()
    if role not in ROLES:
        raise ScopeError(f"unknown role {text!r}: door, clinician or full")
    return role


@dataclass(frozen=True)
class Scope:
    """What one kiosk holds: its role, its site, the day (``YYYY-MM-DD``, UTC, the hub's)
    and a clinician's window in days."""

    __match_args__ = ("role", "site", "day", "window_days")

    role: str
    site: str
    day: str
    window_days: int = DEFAULT_WINDOW_DAYS

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ScopeError(f"unknown role {self.role!r}: door, clinician or full")
        if type(self.site) is not str or not 0 < len(self.site) <= MAX_SITE:
            raise ScopeError(f"a scope's site is 1 to {MAX_SITE} characters")
        _day_number(self.day)
        if type(self.window_days) is not int or not 0 <= self.window_days <= MAX_WINDOW_DAYS:
            raise ScopeError(f"a scope's window is 0 to {MAX_WINDOW_DAYS} days, "
                             f"not {self.window_days!r}")

    @property
    def first_day(self) -> str | None:
        """The earliest check-in day in scope (None: every day, ``full``)."""
        if self.role == "door":
            return self.day
        if self.role == "clinician":
            return _day_text(_day_number(self.day) - self.window_days)
        return None

    def to_wire(self) -> list[Any]:
        return [self.role, self.site, self.day, self.window_days]

    @classmethod
    def from_wire(cls, obj: Any) -> Scope:
        """The scope of a welcome; ``RemoteProtocolError`` (``bad-scope``) for anything
        but ``[role, site, day, window]`` with a known role and a real day."""
        if not (type(obj) is list and len(obj) == 4 and type(obj[0]) is str
                and type(obj[1]) is str and type(obj[2]) is str and type(obj[3]) is int):
            raise RemoteProtocolError("the hub's scope is not [role, site, day, window]",
                                      "bad-scope")
        try:
            return cls(obj[0], obj[1], obj[2], obj[3])
        except ScopeError as exc:
            raise RemoteProtocolError(f"the hub's scope: {exc}", "bad-scope") from None


@dataclass(frozen=True)
class Facts:
    """What scope needs to know of one record."""

    __match_args__ = ("rid", "type", "location", "subject", "day")

    rid: bytes
    type: int
    location: str | None = None  #: a check-in's site, or a verifier's
    subject: bytes | None = None  #: the patient it is about (16 bytes)
    day: str | None = None  #: a check-in's ``periodStart`` day (first 10 characters)


def facts_of(rid: bytes, rtype: int, fields: Mapping[int, Any]) -> Facts:
    """The facts of a record from its field values by number (wire form, or a UUID's
    text for a reference); a value of the wrong kind is no fact."""
    subject = _ref(fields.get(1)) if rtype in CLINICAL_OF_PATIENT or rtype in (
        CHECKIN.number, VERIFIER.number, ERASURE.number) else None
    if rtype == CHECKIN.number:
        start = fields.get(4)
        day = start[:10] if type(start) is str and len(start) >= 10 else None
        return Facts(rid, rtype, _text(fields.get(5)), subject, day)
    if rtype == VERIFIER.number:
        return Facts(rid, rtype, _text(fields.get(3)), subject)
    return Facts(rid, rtype, subject=subject)


def checkin_in_scope(scope: Scope, facts: Facts) -> bool:
    """Whether a check-in is in ``scope`` by its own facts (False for other types)."""
    if facts.type != CHECKIN.number:
        return False
    if scope.role == "full":
        return True
    if facts.location != scope.site or facts.day is None:
        return False
    if scope.role == "door":
        return facts.day == scope.day
    return facts.day >= (scope.first_day or "")


def in_scope(scope: Scope, facts: Facts, patients: Container[bytes] = ()) -> bool:
    """Whether a record is in ``scope``. ``patients``: the subjects of the check-ins in
    scope (a clinician's; unused for the other roles)."""
    if facts.type in (AUDIT.number, TELEMETRY.number):
        return False
    if scope.role == "full" or facts.type == ERASURE.number:
        return True
    if facts.type == CHECKIN.number:
        return checkin_in_scope(scope, facts)
    if scope.role == "door":
        return facts.type == VERIFIER.number and facts.location == scope.site
    if facts.type == PATIENT.number:
        return facts.rid in patients
    return (facts.type in CLINICAL_OF_PATIENT and facts.subject is not None
            and facts.subject in patients)


if TYPE_CHECKING or not MICROPYTHON:  # a subscripted type is no value under MicroPython
    Head = tuple[bytes, int, int, bool]  #: (rid, stamp, node, is_delete) of one write


def _checked(rid: Any, stamp: Any, node: Any) -> None:
    if type(rid) is not bytes or len(rid) != 16:
        raise LocalProtocolError("a record id is 16 bytes")
    if not (type(stamp) is int and 0 <= stamp < 1 << 64
            and type(node) is int and 0 <= node < 1 << 32):
        raise LocalProtocolError(f"not a dot: ({stamp!r}, {node!r})")


def heads_of(writes: Iterable[tuple[bytes, int, int, bool, Iterable[tuple[int, int]]]]
             ) -> list[Head]:
    """The heads among ``writes``, ``(rid, stamp, node, is_delete, context)`` with the
    context's dots as ``(stamp, node)``: the writes no other write of their record saw.
    A write saw the dots its context names and its node's earlier writes of the record,
    and what those saw (``protocol.crdt.record``); a write seen only through others is
    still named by, or of the node of, the last of them, so checking each write's own
    context and node is enough."""
    seen: set[tuple[bytes, int, int]] = set()
    last: dict[tuple[bytes, int], int] = {}
    held: list[Head] = []
    for rid, stamp, node, is_delete, ctx in writes:
        held.append((rid, stamp, node, bool(is_delete)))
        seen.update((rid, s, n) for s, n in ctx)
        if stamp > last.get((rid, node), -1):
            last[(rid, node)] = stamp
    return [h for h in held if (h[0], h[1], h[2]) not in seen and last[(h[0], h[2])] == h[1]]


def scope_checksum(heads: Iterable[Head]) -> bytes:
    """The checksum of a scope as held: ``heads`` are ``(rid, stamp, node, is_delete)``
    of every head of every record held (``heads_of``), in any order; a record whose
    heads are all deletes is left out. SHA-256 over ``"haven-scope-2\\0"`` and, in
    record id order, ``rid || count of heads as u32`` then per head in dot order
    (stamp, then node) ``stamp as u64 || node as u32 || is_delete as u8``."""
    try:
        items = sorted({(rid, stamp, node, bool(is_delete)) for rid, stamp, node, is_delete
                        in heads})
    except TypeError:  # unhashable or unordered junk
        raise LocalProtocolError("a head is (record id, stamp, node, is_delete)") from None
    digest = hashlib.sha256(SUM_LABEL)
    start, end = 0, len(items)
    while start < end:
        rid = items[start][0]
        stop = start + 1
        while stop < end and items[stop][0] == rid:
            stop += 1
        group = items[start:stop]
        start = stop
        for i, (_, stamp, node, _) in enumerate(group):
            _checked(rid, stamp, node)
            if i and group[i - 1][1:3] == (stamp, node):
                raise LocalProtocolError("one dot given as a delete and as not one")
        if all(h[3] for h in group):
            continue
        digest.update(rid + len(group).to_bytes(4, "big"))
        for _, stamp, node, deleted in group:
            digest.update(stamp.to_bytes(8, "big") + node.to_bytes(4, "big")
                          + (b"\x01" if deleted else b"\x00"))
    return digest.digest()


def scope_checksum_v1(heads: Iterable[Head]) -> bytes:
    """The checksum kiosks before ``scope_checksum`` send (hello field ``sum``):
    ``heads`` are ``(rid, stamp, node, is_delete)`` of the records' writes (their heads,
    or more); per record only the greatest dot ``(stamp, node)`` counts, and a record
    whose greatest write is a delete is left out. SHA-256 over ``"haven-scope\\0"`` and,
    in record id order, ``rid || stamp as u64 || node as u32``."""
    greatest: dict[bytes, tuple[int, int, bool]] = {}
    for rid, stamp, node, is_delete in heads:
        _checked(rid, stamp, node)
        held = greatest.get(rid)
        if held is None or (stamp, node) > held[:2]:
            greatest[rid] = (stamp, node, bool(is_delete))
    digest = hashlib.sha256(SUM_LABEL_V1)
    for rid in sorted(greatest):
        stamp, node, deleted = greatest[rid]
        if not deleted:
            digest.update(rid + stamp.to_bytes(8, "big") + node.to_bytes(4, "big"))
    return digest.digest()


def sign_stable_point(key: Ed25519PrivateKey, device: str, cursor: int, time: int) -> bytes:
    """The hub's word to kiosk ``device`` that every replica of its scope holds
    everything up to arrival ``cursor``, at hub ``time`` (ms since 1970):
    ``[body, signature]`` as the hub's other documents."""
    if type(device) is not str or not device:
        raise LocalProtocolError("a stable point names a kiosk")
    if type(cursor) is not int or type(time) is not int or cursor < 0 or time < 0:
        raise LocalProtocolError("a stable point's cursor and time are unsigned integers")
    return sign_document(key, STABLE_LABEL, {1: device, 2: cursor, 3: time})


def open_stable_point(doc: bytes, hub_ed25519: bytes, device: str) -> tuple[int, int]:
    """``(cursor, time)`` of a stable point signed by ``hub_ed25519`` for ``device``;
    ``StablePointError`` (``bad-stable-point``) for anything else."""
    try:
        fields = open_document(doc, STABLE_LABEL, hub_ed25519, "stable point",
                               MAX_STABLE_DOC)
    except CredentialError as exc:
        if exc.code == "bad-signature":
            raise StablePointError("the stable point is not signed by this kiosk's hub"
                                   ) from None
        raise StablePointError(f"the hub's stable point is not one ({exc})") from None
    named, cursor, time = fields.get(1), fields.get(2), fields.get(3)
    if type(named) is not str or type(cursor) is not int or type(time) is not int or (
            cursor < 0 or time < 0):
        raise StablePointError("the hub's stable point lacks its kiosk, cursor or time")
    if named != device:
        raise StablePointError(f"the stable point is for kiosk {named!r}, not this one "
                               f"({device})")
    return cursor, time


def _ref(value: Any) -> bytes | None:
    if type(value) is bytes:
        return value if len(value) == 16 else None
    if type(value) is str:
        try:
            return uuid.UUID(value).bytes
        except ValueError:
            return None
    return None


def _text(value: Any) -> str | None:
    return value if type(value) is str else None


# Days as numbers (days since 1970-01-01), proleptic Gregorian, without datetime.

_MONTH_DAYS = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _day_number(day: Any) -> int:
    if not (type(day) is str and len(day) == 10 and day[4] == "-" and day[7] == "-"
            and all("0" <= ch <= "9" for ch in day[:4] + day[5:7] + day[8:])):
        raise ScopeError(f"a scope's day is YYYY-MM-DD, not {day!r}")
    y, m, d = int(day[:4]), int(day[5:7]), int(day[8:])
    leap = y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)
    if not (y >= 1 and 1 <= m <= 12 and 1 <= d <= _MONTH_DAYS[m - 1] + (m == 2 and leap)):
        raise ScopeError(f"no such day: {day!r}")
    # Days from civil (H. Hinnant): March-based years make the leap day the last one.
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def utc_day(now_ms: int) -> str:
    """The UTC day (YYYY-MM-DD) of a time in ms since 1970: a scope's day, the hub's
    (its clock) or a kiosk's (the hub's time it learnt, moved on)."""
    return _day_text(now_ms // 86_400_000)


def _day_text(n: int) -> str:
    z = n + 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + (3 if mp < 10 else -9)
    y = yoe + era * 400 + (m <= 2)
    return f"{y:04d}-{m:02d}-{d:02d}"
