"""An in-memory replica: the reference the SQL store is held to.

Theory of operation
-------------------
A ``Replica`` is a node id, a hybrid logical clock, a version vector and a
``RecordLog`` per record. Local writes (``put``, ``delete``, ``resolve``) are
built and checked by ``writes``, stamped by the clock, merged locally and
returned as encoded deltas, one per write. ``receive`` takes a delta's bytes
from anywhere, in any order and any number of times: it decodes strictly,
checks the stamp against the local clock (refusing one too far ahead, never
rewriting it), checks known fields against the schema, and merges. Deltas
of an unknown type or a newer schema version are kept as they came.

Time and randomness are arguments; nothing here reads a clock.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from protocol.crdt.clock import HLC, VersionVector
from protocol.crdt.delta import Delta, decode, encode
from protocol.crdt.record import Conflict, RecordLog, RecordView, canonical_json
from protocol.crdt.schema import ADD_WINS, MAX_TEXT, TYPES, type_by_name
from protocol.crdt.writes import build_delete, build_put, build_resolve
from protocol.errors import LocalProtocolError, RemoteProtocolError

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Mapping


def _plain_text_fields() -> dict[int, frozenset[int]]:
    return {t.number: frozenset(f.number for f in t.fields
                                if f.policy != ADD_WINS and f.kind in ("string", "code"))
            for t in TYPES.values()}


#: Per type, the registers holding free text: the common case, checked inline.
_TEXT_FIELDS = _plain_text_fields()


def check_known_fields(delta: Delta) -> None:
    """Refuse values that do not fit a field this schema knows (older or same version)."""
    spec = TYPES.get(delta.type)
    if spec is None or delta.schema > spec.version:
        return
    text = _TEXT_FIELDS[delta.type]
    for key, value in delta.set.items():
        if key in text and (value is None or type(value) is str and len(value) <= MAX_TEXT):
            continue
        fspec = spec.by_number.get(key)
        if fspec is None:
            continue
        if fspec.policy == ADD_WINS:
            raise RemoteProtocolError(f"{fspec.name} is a set, not a register", "field-policy")
        fspec.check_wire(value)
    for changes in (delta.add, delta.remove):
        for key, elems in changes.items():
            fspec = spec.by_number.get(key)
            if fspec is None:
                continue
            if fspec.policy != ADD_WINS:
                raise RemoteProtocolError(f"{fspec.name} is not a set", "field-policy")
            for e in elems:
                fspec.check_wire(e)


class Replica:
    def __init__(self, node: int, clock: HLC | None = None) -> None:
        self.node = node
        self.clock = clock or HLC()
        self.seen = VersionVector()
        self.records: dict[bytes, RecordLog] = {}

    def view(self, record_id: bytes) -> RecordView | None:
        log = self.records.get(record_id)
        return log.view() if log else None

    def views(self) -> Iterator[RecordView]:
        for log in self.records.values():
            yield log.view()

    def conflicts(self) -> list[Conflict]:
        return [c for v in self.views() for c in v.conflicts]

    def _merge(self, delta: Delta) -> bool:
        self.seen.add(delta.dot)
        log = self.records.get(delta.record_id)
        if log is None:
            log = self.records[delta.record_id] = RecordLog(delta.record_id)
        return log.add(delta)

    def _local(self, delta: Delta) -> bytes:
        data = encode(delta)
        self._merge(delta)
        return data

    def put(
        self,
        record_id: bytes,
        type_name: str,
        wall_ms: int,
        values: Mapping[str, Any] = {},  # noqa: B006 - read only
        add: Mapping[str, Iterable[str]] = {},  # noqa: B006
        remove: Mapping[str, Iterable[str]] = {},  # noqa: B006
    ) -> bytes:
        spec = type_by_name(type_name)
        view = self.view(record_id)
        # Check before the clock moves: a refused write leaves no trace.
        build_put(view, record_id, spec, self.node, self.clock.last + 1, values, add, remove)
        stamp = self.clock.now(wall_ms)
        return self._local(build_put(view, record_id, spec, self.node, stamp, values, add, remove))

    def delete(self, record_id: bytes, wall_ms: int) -> bytes:
        view = self.view(record_id)
        build_delete(view, record_id, self.node, self.clock.last + 1)
        return self._local(build_delete(view, record_id, self.node, self.clock.now(wall_ms)))

    def find_conflict(self, conflict_id: str) -> RecordView:
        for view in self.views():
            if any(c.id == conflict_id for c in view.conflicts):
                return view
        raise LocalProtocolError(f"no current conflict {conflict_id}", "no-conflict")

    def resolve(self, conflict_id: str, wall_ms: int, *, keep: str | None = None,
                values: Mapping[str, Any] | None = None) -> bytes:
        view = self.find_conflict(conflict_id)
        build_resolve(view, conflict_id, self.node, self.clock.last + 1, keep=keep, values=values)
        stamp = self.clock.now(wall_ms)
        return self._local(
            build_resolve(view, conflict_id, self.node, stamp, keep=keep, values=values))

    def receive(self, data: bytes, wall_ms: int) -> bool:
        """Merge one delta from elsewhere; ``False`` if it was already here."""
        delta = decode(data)
        self.clock.check(delta.stamp, wall_ms)
        check_known_fields(delta)
        self.clock.observe(delta.stamp, wall_ms)
        return self._merge(delta)

    def dump(self) -> bytes:
        return canonical_json(self.views())
