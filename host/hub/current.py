"""The hub's current records: every record's merged state, kept in step with ``ops``.

Theory of operation
-------------------
``records`` holds one row per record the hub holds a delta of: its type, whether it
is deleted, whether a conflict holds it (a held prescription, a schema clash), how
many conflicts it has, its heads (dots: no patient value) and ``hseq``, the arrival
number of the last delta that changed it (``haven hub export --since``).
``record_fields`` holds its values, each sealed on its own (``at_rest``) under the
current data key, the associated data binding the record id, the kind of value and
the field (``value_ad``), so a value moved to another row or field does not open.
A row is a register (kind 0: its value, ``None`` too, with the dot that wrote it), a
set (kind 1: its elements, sorted) or the record's conflicts (kind 2: every
conflict with its versions, as the reference merge makes them).

Every write to ``ops`` calls ``apply`` (new deltas) or ``refresh`` (deltas
rewritten in place: an erasure's husks) in the same transaction, so the table
always equals what the reference merge (``protocol.crdt.record``) gives over
``ops``; ``views`` reads ``RecordView``s back from it, equal to the replayed ones,
so ``dump``, review and status print what they printed when they replayed.

``apply`` takes one of three paths per record:

* a record new to the hub: its first delta's values, and each later one's that saw
  the one before (the second path), else the merge of the deltas just written,
  which are all there is of it;
* a put that saw the record's one head (in its context, or the head is the same
  node's earlier write) on a record neither deleted nor in any conflict, with no
  set change: its dot is past every dot held (a context names only older writes),
  so it becomes the one head and its assignments win; the other fields and the
  conflicts (none) stay. Nothing is opened;
* anything else: the record's deltas are read from ``ops`` and merged again.

A call's rows are written in three statements (rows, values cleared, values) and
its values sealed in one call. ``resume`` fills the table from ``ops`` when it is
empty and ``ops`` is not (migration 9 makes the tables; the keys it needs come with
the store's first open, in that transaction: a fill cut short is made again).
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import cbor2

from host.hub import at_rest, husking
from host.hub.database import Db, meta_get, rows_in
from protocol.crdt.clock import Dot
from protocol.crdt.delta import Delta, decode
from protocol.crdt.record import Conflict, RecordLog, RecordView, Version
from protocol.errors import RemoteProtocolError

REGISTER, SET, CONFLICTS = 0, 1, 2  #: ``record_fields.kind``
#: Migration 9's tables (``storage``).
TABLES = (
    """CREATE TABLE records (
        rid BLOB PRIMARY KEY, type INTEGER NOT NULL, hseq INTEGER NOT NULL,
        deleted INTEGER NOT NULL, held INTEGER NOT NULL, conflicts INTEGER NOT NULL,
        heads BLOB NOT NULL)""",
    "CREATE INDEX records_by_hseq ON records (hseq)",
    """CREATE TABLE record_fields (
        id INTEGER PRIMARY KEY, rid BLOB NOT NULL, kind INTEGER NOT NULL,
        field INTEGER NOT NULL, stamp INTEGER, node INTEGER, value BLOB NOT NULL,
        UNIQUE (rid, kind, field))""",
)
#: What the re-sealer walks of this module's rows (``storage._RESEAL``'s shape).
RESEAL_SELECT = ("SELECT id, rid, kind, field, value FROM record_fields WHERE id > ?"
                 " ORDER BY id LIMIT ?")
_UPSERT_RECORD = (
    "INSERT INTO records (rid, type, hseq, deleted, held, conflicts, heads)"
    " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (rid) DO UPDATE SET type = excluded.type,"
    " hseq = excluded.hseq, deleted = excluded.deleted, held = excluded.held,"
    " conflicts = excluded.conflicts, heads = excluded.heads")
_UPSERT_FIELD = (
    "INSERT INTO record_fields (rid, kind, field, stamp, node, value) VALUES (?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (rid, kind, field) DO UPDATE SET stamp = excluded.stamp,"
    " node = excluded.node, value = excluded.value")
_AD = struct.Struct(">BH")


def value_ad(rid: bytes, kind: int, field: int) -> bytes:
    """The associated data of one sealed value: its record, kind and field."""
    return b"record" + bytes(rid) + _AD.pack(kind, field)


def _cbor(value: Any) -> bytes:
    return cbor2.dumps(value, canonical=True)


def _heads(dots: Iterable[Dot]) -> bytes:
    return _cbor([x for d in dots for x in d])


def _dots(blob: bytes) -> tuple[Dot, ...]:
    flat = iter(cbor2.loads(blob))
    return tuple(map(Dot._make, zip(flat, flat, strict=True)))


def _version_item(v: Version) -> list[Any]:
    return [v.dot.stamp, v.dot.node, v.type, v.deleted, dict(v.fields),
            {k: sorted(e) for k, e in v.sets.items()}]


def _conflict_item(c: Conflict) -> list[Any]:
    return [c.id, c.cls, c.severity, c.field, [_version_item(v) for v in c.versions]]


def _conflict(rid: bytes, item: list[Any]) -> Conflict:
    cid, cls, severity, field, versions = item
    return Conflict(cid, rid, cls, severity, field, tuple(
        Version(Dot(stamp, node), rtype, deleted, fields,
                {k: frozenset(e) for k, e in sets.items()})
        for stamp, node, rtype, deleted, fields, sets in versions))


# Writing ---------------------------------------------------------------------------


class _Writes:
    """The rows one call writes, gathered into three statements (and one sealing)."""

    def __init__(self) -> None:
        self.records: list[tuple[Any, ...]] = []
        self.values: list[tuple[bytes, int, int, Dot | None, Any]] = []
        self.cleared: list[tuple[bytes]] = []

    def record(self, rid: bytes, rtype: int, hseq: int, heads: Iterable[Dot],
               deleted: bool = False, held: bool = False, conflicts: int = 0) -> None:
        self.records.append((rid, rtype, hseq, int(deleted), int(held), conflicts,
                             _heads(heads)))

    def view(self, view: RecordView, hseq: int, fresh: bool) -> None:
        """The record's row and every value as ``view`` has them (``fresh``: none held)."""
        rid = view.record_id
        self.record(rid, view.type, hseq, view.heads, view.deleted, view.held,
                    len(view.conflicts))
        if not fresh:
            self.cleared.append((rid,))
        self.values += [(rid, REGISTER, k, dot, view.fields.get(k))
                        for k, dot in view.field_dots.items()]
        self.values += [(rid, SET, k, None, sorted(e)) for k, e in view.sets.items()]
        if view.conflicts:
            self.values.append((rid, CONFLICTS, 0, None,
                                [_conflict_item(c) for c in view.conflicts]))

    def flush(self, db: Db, sealer: at_rest.Sealer) -> None:
        if self.cleared:
            db.conn.executemany("DELETE FROM record_fields WHERE rid = ?", self.cleared)
        if self.records:
            db.conn.executemany(_UPSERT_RECORD, self.records)
        if self.values:
            sealed = sealer.seal_values([(value_ad(rid, kind, field), _cbor(value))
                                         for rid, kind, field, _, value in self.values])
            db.conn.executemany(_UPSERT_FIELD, [
                (rid, kind, field, None if dot is None else dot.stamp,
                 None if dot is None else dot.node, blob)
                for (rid, kind, field, dot, _), blob in zip(self.values, sealed, strict=True)])
        self.__init__()  # type: ignore[misc]


def apply(db: Db, sealer: at_rest.Sealer, added: Sequence[tuple[int, Delta]]) -> None:
    """Bring the records of ``added`` (arrival number, delta as ``ops`` now holds it),
    just written to ``ops`` in the caller's transaction, up to date."""
    by_record: dict[bytes, list[Delta]] = {}
    last: dict[bytes, int] = {}
    for hseq, delta in added:
        by_record.setdefault(delta.record_id, []).append(delta)
        last[delta.record_id] = max(hseq, last.get(delta.record_id, hseq))
    held = _held(db, list(by_record))
    out = _Writes()
    for rid, deltas in by_record.items():
        row = held.get(rid)
        if row is None:
            values = _fresh(deltas)
            if values is None:
                log = RecordLog(rid)
                for delta in deltas:
                    log.add(delta)
                out.view(log.view(), last[rid], fresh=True)
                continue
        elif row[0] or row[1]:
            values = None
        else:
            heads = _dots(bytes(row[2]))
            values = _chain(heads[0], deltas) if len(heads) == 1 else None
        if values is None:
            view = replayed(db, sealer, rid)
            if view is not None:
                out.view(view, last[rid], fresh=False)
            continue
        top = deltas[-1]
        out.record(rid, top.type, last[rid], [top.dot], top.is_delete)
        out.values += [(rid, kind, k, dot, v) for (kind, k), (dot, v) in values.items()]
    out.flush(db, sealer)


def _held(db: Db, rids: list[bytes]) -> dict[bytes, tuple[int, int, bytes]]:
    """(deleted, conflicts, heads) of those of ``rids`` the table holds."""
    return {bytes(r): (d, c, h) for r, d, c, h in rows_in(
        db, "SELECT rid, deleted, conflicts, heads FROM records WHERE rid IN ({marks})", rids)}


def _fresh(deltas: list[Delta]) -> dict[tuple[int, int], tuple[Dot | None, Any]] | None:
    """The values of a record new to the hub whose first delta the others follow in turn
    (``_chain``); None: the merge must say."""
    first = deltas[0]
    if first.is_delete:
        return {} if len(deltas) == 1 else None
    more = _chain(first.dot, deltas[1:])
    if more is None:
        return None
    values: dict[tuple[int, int], tuple[Dot | None, Any]] = {
        (REGISTER, k): (first.dot, v) for k, v in first.set.items()}
    values.update(((SET, k), (None, sorted(set(e)))) for k, e in first.add.items() if e)
    values.update(more)
    return values


def _chain(head: Dot, deltas: list[Delta]) -> dict[tuple[int, int], tuple[Dot | None, Any]] | None:
    """The second path above: the register values ``deltas`` set, each a put that saw
    the one head before it (the record neither deleted nor in conflict); None if one of
    them is not."""
    values: dict[tuple[int, int], tuple[Dot | None, Any]] = {}
    for delta in deltas:
        if (delta.is_delete or delta.add or delta.remove
                or not (head in delta.ctx or head.node == delta.node and head < delta.dot)):
            return None
        head = delta.dot
        values.update(((REGISTER, k), (head, v)) for k, v in delta.set.items())
    return values


def as_stored(db: Db, added: Sequence[tuple[int, Delta]],
              kept: Sequence[tuple[Delta, bytes]]) -> Sequence[tuple[int, Delta]]:
    """``added`` (arrival number, delta as it came) as ``ops`` holds them: an erased
    patient's write is kept as its husk (``kept``: each delta with the bytes written)."""
    if not husking.erased(db):
        return added
    written = {(d.record_id, d.dot): data for d, data in kept}
    return [(hseq, decode(written[d.record_id, d.dot])) for hseq, d in added]


def replayed(db: Db, sealer: at_rest.Sealer,
             rid: bytes) -> RecordView | None:
    """The reference merge of every delta ``ops`` holds of ``rid`` (None: none)."""
    log = RecordLog(rid)
    for stamp, node, blob in db.execute("SELECT stamp, node, data FROM ops WHERE rid = ?",
                                        [rid]).fetchall():
        _add(log, sealer.open_op(rid, stamp, node, bytes(blob)))
    return log.view() if log.ops else None


def _add(log: RecordLog, data: bytes) -> None:
    with contextlib.suppress(RemoteProtocolError):  # one held as it came, undecodable
        log.add(decode(data))


def refresh(db: Db, sealer: at_rest.Sealer, rids: Iterable[bytes]) -> None:
    """Merge ``rids`` again after their deltas were rewritten in place (an erasure's
    husks), each keeping its arrival number: no delta arrived."""
    _one_committer(db)
    out = _Writes()
    for rid in rids:
        row = db.execute("SELECT hseq FROM records WHERE rid = ?", [rid]).fetchone()
        view = replayed(db, sealer, rid) if row is not None else None
        if view is not None:
            out.view(view, int(row[0]), fresh=False)
    out.flush(db, sealer)


def _one_committer(db: Db) -> None:
    """Wait for, and hold to commit, the lock every write to ``ops`` holds
    (``storage.next_hseq``): with several hub processes (PostgreSQL), a record is
    merged again only when no other transaction is writing its rows from what it read
    before."""
    from host.hub.storage import LAST_HSEQ  # (storage imports this module)

    meta_get(db, LAST_HSEQ, lock=True)


def resume(db: Db, sealer: at_rest.Sealer) -> int:
    """Fill the tables from ``ops`` if they are empty and ``ops`` is not (a hub from
    before migration 9), in the caller's transaction; returns the records written."""
    def filled() -> bool:
        return db.execute("SELECT 1 FROM records LIMIT 1").fetchone() is not None

    if db.execute("SELECT 1 FROM ops LIMIT 1").fetchone() is None or filled():
        return 0
    _one_committer(db)
    return 0 if filled() else rebuild(db, sealer)  # (another process may have, meanwhile)


def rebuild(db: Db, sealer: at_rest.Sealer) -> int:
    """Every record's row made anew from ``ops``, in the caller's transaction; returns
    how many."""
    db.execute("DELETE FROM record_fields")
    db.execute("DELETE FROM records")
    out = _Writes()
    count = 0
    log: RecordLog | None = None
    last = 0
    for rid, stamp, node, hseq, blob in db.execute(
            "SELECT rid, stamp, node, hseq, data FROM ops ORDER BY rid, hseq"):
        rid = bytes(rid)
        if log is None or log.record_id != rid:
            if log is not None and log.ops:
                out.view(log.view(), last, fresh=True)
                count += 1
            if len(out.records) >= 1000:
                out.flush(db, sealer)
            log = RecordLog(rid)
        _add(log, sealer.open_op(rid, stamp, node, bytes(blob)))
        last = hseq
    if log is not None and log.ops:
        out.view(log.view(), last, fresh=True)
        count += 1
    out.flush(db, sealer)
    return count


# Reading ---------------------------------------------------------------------------


def views(db: Db, sealer: at_rest.Sealer, where: str = "",
          args: Sequence[Any] = ()) -> list[RecordView]:
    """The records (``where``: an SQL condition on ``records r`` with ``args``) as the
    reference merge makes them, in record id order."""
    return [view for view, _ in rows(db, sealer, where, args)]


def rows(db: Db, sealer: at_rest.Sealer, where: str = "",
         args: Sequence[Any] = ()) -> Iterator[tuple[RecordView, int]]:
    """Each record's view and the arrival number of its last change (see ``views``),
    read in one statement (one snapshot)."""
    cursor = db.execute(
        "SELECT r.rid, r.type, r.deleted, r.heads, r.hseq, f.kind, f.field, f.stamp, f.node,"
        " f.value FROM records r LEFT JOIN record_fields f ON f.rid = r.rid"
        + (f" WHERE {where}" if where else "") + " ORDER BY r.rid", list(args))
    open_value, loads, pack, dot = sealer.open_value, cbor2.loads, _AD.pack, Dot._make
    record: list[Any] = []
    fields: dict[int, Any] = {}
    dots: dict[int, Dot] = {}
    sets: dict[int, frozenset[str]] = {}
    prefix = b""
    for rid, rtype, deleted, heads, hseq, kind, field, stamp, node, blob in cursor:
        if not record or rid != record[0]:
            if record:
                yield _view(*record)
            fields, dots, sets = {}, {}, {}
            record = [rid, rtype, deleted, heads, hseq, fields, dots, sets, ()]
            prefix = b"record" + bytes(rid)
        if kind is None:
            continue
        value = loads(open_value(prefix + pack(kind, field), bytes(blob)))
        if kind == REGISTER:
            dots[field] = dot((stamp, node))
            if value is not None:
                fields[field] = value
        elif kind == SET:
            sets[field] = frozenset(value)
        else:
            record[8] = tuple(_conflict(bytes(rid), c) for c in value)
    if record:
        yield _view(*record)


def _view(rid: bytes, rtype: int, deleted: int, heads: bytes, hseq: int,
          fields: dict[int, Any], dots: dict[int, Dot], sets: dict[int, frozenset[str]],
          conflicts: tuple[Conflict, ...]) -> tuple[RecordView, int]:
    return RecordView(bytes(rid), rtype, bool(deleted), fields, sets, _dots(bytes(heads)),
                      conflicts, dots), int(hseq)
