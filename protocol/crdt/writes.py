"""Turning a caller's intent into one delta, against the record as we hold it.

Theory of operation
-------------------
Every local write is checked here, before it gets a stamp: the type and the
fields must be known and the values must fit; a record keeps its type; a
deleted record is not written again; a record on hold takes no ordinary
write, only a resolution. The delta's causal context is the record's heads
written by other nodes (our own earlier writes are implied by our stamps),
which is exactly what a receiver needs to tell "saw" from "concurrent".

A resolution names a current conflict by id. ``keep`` re-asserts one
version (a kept delete becomes a delete); ``values`` assigns fields over the
current state. Either way the write's context covers every head, so on
every replica it supersedes all the versions, as an ordinary write.

These functions are pure: the caller passes the stamp (from its ``HLC``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from protocol.crdt.clock import Dot
from protocol.crdt.delta import CONFLICT_ID_SIZE, DELETE, PUT, Delta
from protocol.crdt.record import HOLD, Conflict, RecordView, Version
from protocol.crdt.schema import ADD_WINS, TYPES, TypeSpec
from protocol.errors import LocalProtocolError

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping


class RecordHeldError(LocalProtocolError):
    code = "held"


def _context(view: RecordView | None, node: int) -> tuple[Dot, ...]:
    return tuple(sorted(d for d in view.heads if d.node != node)) if view else ()


def _check_target(view: RecordView | None, spec: TypeSpec, resolving: bool) -> None:
    if view is None:
        return
    if view.type != spec.number:
        have = TYPES[view.type].name if view.type in TYPES else f"#{view.type}"
        raise LocalProtocolError(f"record is a {have}, not a {spec.name}", "type-mismatch")
    if view.deleted and not resolving:
        raise LocalProtocolError("record is deleted", "deleted")
    if view.held and not resolving:
        ids = ", ".join(c.id for c in view.conflicts if c.severity == HOLD)
        raise RecordHeldError(f"record is held for review; resolve conflict {ids} first")


def build_put(
    view: RecordView | None,
    record_id: bytes,
    spec: TypeSpec,
    node: int,
    stamp: int,
    values: Mapping[str, Any] = {},  # noqa: B006 - read only
    add: Mapping[str, Iterable[str]] = {},  # noqa: B006
    remove: Mapping[str, Iterable[str]] = {},  # noqa: B006
    *,
    resolves: str | None = None,
) -> Delta:
    """A put that assigns ``values``, adds and removes set elements."""
    _check_target(view, spec, resolves is not None)
    sets: dict[int, Any] = {}
    for name, value in values.items():
        fspec = spec.field(name)
        if fspec.policy == ADD_WINS:
            raise LocalProtocolError(f"{name} is a set: use add/remove", "field-policy")
        sets[fspec.number] = fspec.to_wire(value)
    adds = _elements(spec, add)
    present = view.sets if view else {}
    removes = {
        k: tuple(sorted(set(v) & present.get(k, frozenset())))
        for k, v in _elements(spec, remove).items()
    }
    removes = {k: v for k, v in removes.items() if v}
    for k in set(adds) & set(removes):
        if set(adds[k]) & set(removes[k]):
            raise LocalProtocolError("an element cannot be added and removed at once", "field-set")
    return Delta(
        record_id, spec.number, node, stamp, PUT, sets, adds, removes,
        _context(view, node), spec.version, _conflict_bytes(resolves),
    )


def _elements(spec: TypeSpec, changes: Mapping[str, Iterable[str]]) -> dict[int, tuple[str, ...]]:
    out: dict[int, tuple[str, ...]] = {}
    for name, elems in changes.items():
        fspec = spec.field(name)
        if fspec.policy != ADD_WINS:
            raise LocalProtocolError(f"{name} is not a set", "field-policy")
        items = tuple(sorted(set(elems)))
        for e in items:
            fspec.check_wire(e, LocalProtocolError)
        if items:
            out[fspec.number] = items
    return out


def build_delete(view: RecordView | None, record_id: bytes, node: int, stamp: int,
                 *, resolves: str | None = None) -> Delta:
    if view is None:
        raise LocalProtocolError("no such record", "not-found")
    if view.type in TYPES:
        _check_target(view, TYPES[view.type], resolves is not None)
    return Delta(record_id, view.type, node, stamp, DELETE, ctx=_context(view, node),
                 schema=TYPES[view.type].version if view.type in TYPES else 1,
                 resolves=_conflict_bytes(resolves))


def find_conflict(view: RecordView, conflict_id: str) -> Conflict:
    for c in view.conflicts:
        if c.id == conflict_id:
            return c
    raise LocalProtocolError(
        f"no current conflict {conflict_id} on this record (already resolved?)", "no-conflict")


def build_resolve(
    view: RecordView,
    conflict_id: str,
    node: int,
    stamp: int,
    *,
    keep: str | None = None,
    values: Mapping[str, Any] | None = None,
) -> Delta:
    """The write that resolves ``conflict_id`` (``keep`` a version id, or assign ``values``)."""
    conflict = find_conflict(view, conflict_id)
    if (keep is None) == (values is None):
        raise LocalProtocolError("resolve with either a version to keep or values to set")
    if keep is not None:
        chosen = _version(conflict, keep)
        if chosen.type not in TYPES:
            raise LocalProtocolError("cannot keep a version of an unknown type", "unknown-type")
        spec = TYPES[chosen.type]
        if chosen.deleted:
            return Delta(view.record_id, view.type, node, stamp, DELETE,
                         ctx=_context(view, node), schema=spec.version,
                         resolves=_conflict_bytes(conflict_id))
        return _restore(view, spec, chosen, node, stamp, conflict_id)
    assert values is not None
    spec = _known(view.type)
    fields = dict(view.fields)
    for name, value in values.items():
        fspec = spec.field(name)
        if fspec.policy == ADD_WINS:
            raise LocalProtocolError(f"{name} is a set: keep a version instead", "field-policy")
        fields[fspec.number] = fspec.to_wire(value)
    merged = Version(Dot(stamp, node), spec.number, False,
                     {k: v for k, v in fields.items() if v is not None}, dict(view.sets))
    return _restore(view, spec, merged, node, stamp, conflict_id)


def _restore(view: RecordView, spec: TypeSpec, chosen: Version, node: int, stamp: int,
             conflict_id: str) -> Delta:
    sets: dict[int, Any] = {k: None for k in view.fields if k not in chosen.fields}
    sets.update(chosen.fields)
    adds = {k: tuple(sorted(v)) for k, v in chosen.sets.items()}
    removes: dict[int, tuple[str, ...]] = {}
    for k, now in view.sets.items():
        gone = tuple(sorted(now - chosen.sets.get(k, frozenset())))
        if gone:
            removes[k] = gone
    return Delta(view.record_id, spec.number, node, stamp, PUT, sets, adds, removes,
                 _context(view, node), spec.version, _conflict_bytes(conflict_id))


def _version(conflict: Conflict, version_id: str) -> Version:
    for v in conflict.versions:
        if v.id == version_id:
            return v
    ids = ", ".join(v.id for v in conflict.versions)
    raise LocalProtocolError(f"conflict {conflict.id} has no version {version_id} ({ids})",
                             "no-version")


def _known(type_number: int) -> TypeSpec:
    if type_number not in TYPES:
        raise LocalProtocolError(f"record type #{type_number} is unknown here", "unknown-type")
    return TYPES[type_number]


def _conflict_bytes(conflict_id: str | None) -> bytes | None:
    if conflict_id is None:
        return None
    try:
        raw = bytes.fromhex(conflict_id)
    except ValueError:
        raw = b""
    if len(raw) != CONFLICT_ID_SIZE:
        raise LocalProtocolError(f"not a conflict id: {conflict_id!r}", "conflict-id")
    return raw
