"""The reference merge: a record's writes, and the state and conflicts they imply.

Theory of operation
-------------------
A replica keeps, per record, the set of writes (deltas) it has received,
keyed by dot. Merging is set union, so it is commutative, associative and
idempotent by construction; everything a user sees is a pure function of
that set (``RecordLog.view``), so replicas holding the same writes print the
same bytes (``canonical_json``).

Causality. Write ``b`` saw write ``a`` (``a`` is in ``past(b)``) when ``a`` is
an earlier write of the same node on this record, or is named in ``b``'s
causal context, or is in the past of either of those. Context dots and
earlier own writes have smaller stamps, so one pass in dot order computes
every ``past`` (kept as bit masks). The *heads* are the writes no other write
has seen: one head means no conflict.

State. The live writes are the heads that are not deletes and their pasts,
minus everything a delete among them had seen (a delete wipes what it saw;
a write made after a delete starts the record afresh). Over the live writes:

* a ``lww`` field takes the value of the greatest dot that assigned it;
* an ``add-wins`` set holds every element with an add that no removal had
  seen.

When every head is a delete, the record is deleted.

Conflicts are data, derived the same way everywhere:

* ``schema``: the heads disagree on the record's type (severity ``hold``);
* ``delete-update``: a delete and an update neither of which saw the other.
  The update is kept and the record stays; severity ``hold`` for held types,
  ``review`` for clinical ones, ``info`` otherwise;
* ``update-update`` on a held type (prescription): two or more updates that
  did not see each other hold the record, with every version kept;
* ``update-update`` on a field of any other type: two or more live
  assignments that did not see each other; the greatest dot wins and the
  conflict is reported with severity ``info`` until someone who has seen
  them assigns the field again (a write to another field does not settle it).
  Concurrent assignments of the same value are no conflict.

Each version is a head's own view of the record (its past, by the same
rules), named by its dot. A conflict's id hashes the record id, the class,
the field and the sorted dots, so it is the same on every replica. A
resolution is an ordinary write whose context covers every head.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from protocol import MICROPYTHON, strict_cbor
from protocol.crdt.clock import Dot
from protocol.crdt.delta import Delta
from protocol.crdt.schema import ADD_WINS, TYPES, field_name, type_name

if TYPE_CHECKING:
    from collections.abc import Iterable

UPDATE_UPDATE = "update-update"
DELETE_UPDATE = "delete-update"
SCHEMA = "schema"
HOLD = "hold"
REVIEW = "review"
INFO = "info"


@dataclass(frozen=True)
class Version:
    """One concurrent version of a record: what the record was as its writer left it."""

    __match_args__ = ("dot", "type", "deleted", "fields", "sets")
    dot: Dot
    type: int
    deleted: bool
    fields: dict[int, Any]
    sets: dict[int, frozenset[str]]

    @property
    def id(self) -> str:
        return self.dot.version_id()


@dataclass(frozen=True)
class Conflict:
    __match_args__ = ("id", "record_id", "cls", "severity", "field", "versions")
    id: str
    record_id: bytes
    cls: str
    severity: str
    field: int | None
    versions: tuple[Version, ...]


@dataclass(frozen=True)
class RecordView:
    __match_args__ = (
        "record_id", "type", "deleted", "fields", "sets", "heads", "conflicts", "field_dots"
    )
    record_id: bytes
    type: int
    deleted: bool
    fields: dict[int, Any]
    sets: dict[int, frozenset[str]]
    heads: tuple[Dot, ...]
    conflicts: tuple[Conflict, ...]
    #: The write whose value each register holds (``None`` values included).
    field_dots: dict[int, Dot] = field(default_factory=dict)

    @property
    def held(self) -> bool:
        return any(c.severity == HOLD for c in self.conflicts)

    def value(self, number: int) -> Any:
        if number in self.sets:
            return self.sets[number]
        return self.fields.get(number)


def conflict_id(record_id: bytes, cls: str, field: int | None, dots: Iterable[Dot]) -> str:
    h = hashlib.sha256(b"haven/conflict\x00" + record_id + cls.encode() + b"\x00")
    h.update(b"\xff\xff" if field is None else field.to_bytes(2, "big"))
    for dot in sorted(dots):
        h.update(dot.to_bytes())
    return h.digest().hex()[:16]


class RecordLog:
    """Every write received for one record."""

    def __init__(self, record_id: bytes) -> None:
        self.record_id = record_id
        self.ops: dict[Dot, Delta] = {}
        self._view: RecordView | None = None

    def add(self, delta: Delta) -> bool:
        """Merge one write; ``False`` if it was already here."""
        if delta.dot in self.ops:
            return False
        self.ops[delta.dot] = delta
        self._view = None
        return True

    def view(self) -> RecordView:
        if self._view is None:
            self._view = _Graph(self).view()
        return self._view


class _Graph:
    def __init__(self, log: RecordLog) -> None:
        self.rid = log.record_id
        self.ops = [log.ops[d] for d in sorted(log.ops)]
        index = {op.dot: i for i, op in enumerate(self.ops)}
        self.past: list[int] = []
        last_own: dict[int, int] = {}
        for i, op in enumerate(self.ops):
            preds = [index[d] for d in op.ctx if d in index]
            if op.node in last_own:
                preds.append(last_own[op.node])
            mask = 0
            for j in preds:
                mask |= 1 << j | self.past[j]
            self.past.append(mask)
            last_own[op.node] = i
        covered = 0
        for mask in self.past:
            covered |= mask
        self.heads = [i for i in range(len(self.ops)) if not covered >> i & 1]

    def _bits(self, mask: int) -> list[int]:
        return [i for i in range(len(self.ops)) if mask >> i & 1]

    def _live(self, roots: Iterable[int]) -> int:
        mask = 0
        for r in roots:
            mask |= 1 << r | self.past[r]
        cut = 0
        for i in self._bits(mask):
            if self.ops[i].is_delete:
                cut |= 1 << i | self.past[i]
        return mask & ~cut

    def _state(self, live: int) -> tuple[dict[int, Any], dict[int, frozenset[str]]]:
        fields, sets, _ = self._state_dots(live)
        return fields, sets

    def _state_dots(
        self, live: int
    ) -> tuple[dict[int, Any], dict[int, frozenset[str]], dict[int, Dot]]:
        fields: dict[int, Any] = {}
        dots: dict[int, Dot] = {}
        adds: dict[int, dict[str, list[int]]] = {}
        removes: dict[int, dict[str, list[int]]] = {}
        for i in self._bits(live):
            op = self.ops[i]
            fields.update(op.set)
            dots.update((k, op.dot) for k in op.set)
            for key, elems in op.add.items():
                for e in elems:
                    adds.setdefault(key, {}).setdefault(e, []).append(i)
            for key, elems in op.remove.items():
                for e in elems:
                    removes.setdefault(key, {}).setdefault(e, []).append(i)
        sets: dict[int, frozenset[str]] = {}
        for key, by_elem in adds.items():
            gone = removes.get(key, {})
            present = frozenset(
                e for e, adders in by_elem.items()
                if any(not any(self.past[r] >> a & 1 for r in gone.get(e, ())) for a in adders)
            )
            if present:
                sets[key] = present
        return {k: v for k, v in fields.items() if v is not None}, sets, dots

    def version(self, i: int) -> Version:
        op = self.ops[i]
        if op.is_delete:
            return Version(op.dot, op.type, True, {}, {})
        fields, sets = self._state(self._live([i]))
        return Version(op.dot, op.type, False, fields, sets)

    def view(self) -> RecordView:
        heads = self.heads
        top = self.ops[heads[-1]]
        spec = TYPES.get(top.type)
        held = spec.held if spec else False
        clinical = spec.clinical if spec else True
        updates = [h for h in heads if not self.ops[h].is_delete]
        deletes = [h for h in heads if self.ops[h].is_delete]
        fields, sets, dots = self._state_dots(self._live(updates)) if updates else ({}, {}, {})
        found: list[tuple[str, str, int | None, list[int]]] = []
        if len({self.ops[h].type for h in heads}) > 1:
            found.append((SCHEMA, HOLD, None, heads))
        if updates and deletes:
            severity = HOLD if held else REVIEW if clinical else INFO
            found.append((DELETE_UPDATE, severity, None, heads))
        if held and len(updates) > 1:
            found.append((UPDATE_UPDATE, HOLD, None, updates))
        elif updates:
            live = self._live(updates)
            for key in sorted({k for i in self._bits(live) for k in self.ops[i].set}):
                writers = [i for i in self._bits(live) if key in self.ops[i].set]
                tops = [i for i in writers if not any(self.past[j] >> i & 1 for j in writers)]
                if len({strict_cbor.dumps(self.ops[i].set[key]) for i in tops}) > 1:
                    found.append((UPDATE_UPDATE, INFO, key, tops))
        conflicts = tuple(sorted(
            (Conflict(
                conflict_id(self.rid, cls, key, (self.ops[i].dot for i in members)),
                self.rid, cls, severity, key, tuple(self.version(i) for i in members))
             for cls, severity, key, members in found),
            key=lambda c: c.id))
        return RecordView(
            self.rid, top.type, not updates, fields, sets,
            tuple(self.ops[h].dot for h in heads), conflicts, dots)


# Canonical JSON --------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return "hex:" + value.hex()
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


def _fields_json(type_number: int, fields: dict[int, Any],
                 sets: dict[int, frozenset[str]]) -> dict[str, Any]:
    spec = TYPES.get(type_number)
    out: dict[str, Any] = {}
    for key, value in fields.items():
        fspec = spec.by_number.get(key) if spec else None
        if fspec is not None and fspec.policy != ADD_WINS:
            value = fspec.from_wire(value)
        out[field_name(type_number, key)] = _jsonable(value)
    for key, elems in sets.items():
        out[field_name(type_number, key)] = sorted(elems)
    return out


def version_json(v: Version) -> dict[str, Any]:
    return {"id": v.id, "type": type_name(v.type), "deleted": v.deleted,
            "fields": _fields_json(v.type, v.fields, v.sets)}


def conflict_json(c: Conflict, type_number: int) -> dict[str, Any]:
    return {
        "id": c.id,
        "record_id": str(uuid.UUID(bytes=c.record_id)),
        "class": c.cls,
        "severity": c.severity,
        "field": None if c.field is None else field_name(type_number, c.field),
        "versions": [version_json(v) for v in c.versions],
    }


def record_json(view: RecordView) -> dict[str, Any]:
    return {
        "id": str(uuid.UUID(bytes=view.record_id)),
        "type": type_name(view.type),
        "deleted": view.deleted,
        "held": view.held,
        "fields": _fields_json(view.type, view.fields, view.sets),
        "conflicts": [conflict_json(c, view.type) for c in view.conflicts],
    }


def canonical_json(views: Iterable[RecordView]) -> bytes:
    """Sorted-key JSON of every record: identical bytes for identical write sets."""
    records = sorted((record_json(v) for v in views), key=lambda r: str(r["id"]))
    if MICROPYTHON:
        from protocol.portable import sorted_json

        text = sorted_json.dumps({"records": records}, allow_nan=False)
    else:
        text = json.dumps({"records": records}, sort_keys=True, separators=(",", ":"),
                          ensure_ascii=True, allow_nan=False)
    return text.encode() + b"\n"
