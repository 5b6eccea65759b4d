"""Keeping the merged state in step with the write log, in bulk.

Theory of operation
-------------------
A local write lands in ``ops`` (sealed: the outbox sends it from there). A
delta from the hub (``merge_slice``) leaves only its dot, packed in its
record's row (``seen``), with the cursor of the page it came in: the hub
keeps every delta, and a sealed copy of each here was most of what a merge
wrote, and what a kiosk's database grew by. Those dots and this kiosk's own
writes in ``ops`` tell a duplicate, exactly, from the record rows a chunk
reads anyway. The merged state then follows one of two paths.

Fast path, in SQL. A put that has seen every current head of its record
(or starts a new record), changes no set, and meets a record with no delete
and no conflict in its history, simply becomes the record's only head. Its
assignments go through one ``executemany`` of::

    INSERT INTO field_values ... ON CONFLICT (rid, field) DO UPDATE ...
    WHERE (excluded.stamp, excluded.node) > (field_values.stamp, field_values.node)

which is the last-writer-wins register, decided by SQLite on stamps and
node ids alone, over ciphertexts it cannot read. Of several fast writes to
one register in a batch only the greatest dot can change the row, so only
that one is sealed and upserted (the record's ``seen`` keeps every dot).

Slow path, in Python (``merge_record``). Anything else (a delete, a set
change, a write that had not seen a head, a record already in conflict)
first tries ``covering``: a write that saw every head of a record in no
conflict gives the next view from the merged rows alone. Otherwise, if the
record's write log is whole (``records.partial`` is 0), the write joins it
with its body and the record is rebuilt by the reference merge
(``protocol.crdt.record``): that is where conflicts are found. If it is not
whole, the write is kept with its body, and the record, as it was, is
marked ``stale`` until the hub's write set of it comes (``rebase``). Records
that need any of this are few.

Both paths produce the same rows as the reference merge; the tests hold
them to it.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Callable, Container, Iterable, Sequence
from typing import Any

import cbor2
import sqlite_utils

from device.store import covering, seen
from device.store.exc import CorruptData
from device.store.keys import FieldCipher
from protocol import strict_cbor
from protocol.crdt.clock import Dot
from protocol.crdt.delta import Delta, decode
from protocol.crdt.record import Conflict, RecordLog, RecordView, Version

UPSERT_FIELD = """
INSERT INTO field_values (rid, field, stamp, node, sealed) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (rid, field) DO UPDATE SET
    stamp = excluded.stamp, node = excluded.node, sealed = excluded.sealed
WHERE (excluded.stamp, excluded.node) > (field_values.stamp, field_values.node)
"""
INSERT_OP = """
INSERT INTO ops (rid, stamp, node, type, local, sealed) VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT DO NOTHING
"""
#: A record's merged row, its ``stale`` and ``partial`` flags as they were (or 0).
REWRITE_RECORD = """
INSERT INTO records (rid, type, deleted, held, n_conflicts, has_delete, heads, extra)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (rid) DO UPDATE SET type = excluded.type, deleted = excluded.deleted,
    held = excluded.held, n_conflicts = excluded.n_conflicts,
    has_delete = excluded.has_delete, heads = excluded.heads, extra = excluded.extra
"""
#: Fast writes from the hub: the record's only head, their dots (``seen``), no bodies.
HUB_RECORD = """
INSERT INTO records (rid, type, deleted, held, n_conflicts, has_delete, heads, extra, partial,
                     seen, seen_at)
VALUES (?, ?, 0, 0, 0, 0, ?, NULL, 1, ?, ?)
ON CONFLICT (rid) DO UPDATE SET heads = excluded.heads, partial = 1,
    seen = CAST(COALESCE(records.seen, X'') || excluded.seen AS BLOB),
    seen_at = MAX(records.seen_at, excluded.seen_at)
"""
#: Fast writes from elsewhere, their bodies in ``ops``: the head and their dots.
PEER_RECORD = """
INSERT INTO records (rid, type, deleted, held, n_conflicts, has_delete, heads, extra,
                     seen, seen_at)
VALUES (?, ?, 0, 0, 0, 0, ?, NULL, ?, ?)
ON CONFLICT (rid) DO UPDATE SET heads = excluded.heads,
    seen = CAST(COALESCE(records.seen, X'') || excluded.seen AS BLOB),
    seen_at = MAX(records.seen_at, excluded.seen_at)
"""
FAST_RECORD = """
INSERT INTO records (rid, type, deleted, held, n_conflicts, has_delete, heads, extra)
VALUES (?, ?, 0, 0, 0, 0, ?, NULL)
ON CONFLICT (rid) DO UPDATE SET heads = excluded.heads
"""


_DOT = struct.Struct(">IQ")  # Dot.to_bytes: node, stamp
_canonical: Callable[[Any], bytes] = functools.partial(cbor2.dumps, canonical=True)


def op_label(rid: bytes, dot: Dot) -> bytes:
    return b"op" + rid + _DOT.pack(dot.node, dot.stamp)


def _op_label(rid: bytes, stamp: int, node: int) -> bytes:
    return b"op" + rid + _DOT.pack(node, stamp)


def heads_blob(heads: Iterable[Dot]) -> bytes:
    return strict_cbor.dumps([x for d in sorted(heads) for x in (d.node, d.stamp)])


def _one_head(stamp: int, node: int) -> bytes:
    return _canonical([node, stamp])


def parse_heads(blob: bytes) -> set[Dot]:
    # Written by this store, never received: cbor2 alone reads it (a damaged blob raises).
    try:
        flat = cbor2.loads(blob)
        return {Dot(flat[i + 1], flat[i]) for i in range(0, len(flat), 2)}
    except (cbor2.CBORDecodeError, TypeError, IndexError, ValueError) as exc:
        raise CorruptData(f"stored heads do not decode: {exc}") from None


def load_log(db: sqlite_utils.Database, cipher: FieldCipher, rid: bytes) -> RecordLog:
    log = RecordLog(rid)
    for stamp, node, sealed in db.execute(
        "SELECT stamp, node, sealed FROM ops WHERE rid = ?", [rid]
    ).fetchall():
        data = cipher.open_blob(op_label(rid, Dot(stamp, node)), sealed)
        try:
            log.add(decode(data))
        except ValueError as exc:
            raise CorruptData(f"stored write does not decode: {exc}") from None
    return log


def insert_op(db: sqlite_utils.Database, cipher: FieldCipher, delta: Delta, data: bytes,
              local: bool) -> bool:
    sealed = cipher.seal_blob(op_label(delta.record_id, delta.dot), data)
    cur = db.execute(INSERT_OP, [delta.record_id, delta.stamp, delta.node, delta.type,
                                 int(local), sealed])
    return cur.rowcount == 1


def _version_wire(v: Version) -> list[Any]:
    return [v.dot.node, v.dot.stamp, v.type, v.deleted, v.fields,
            {k: sorted(s) for k, s in v.sets.items()}]


def rewrite(db: sqlite_utils.Database, cipher: FieldCipher, view: RecordView,
            has_delete: bool) -> None:
    """Replace a record's merged rows with ``view``."""
    rid = view.record_id
    extra = {0: {k: sorted(s) for k, s in view.sets.items()},
             1: [[c.id, c.cls, c.severity, c.field, [_version_wire(v) for v in c.versions]]
                 for c in view.conflicts]}
    db.execute("DELETE FROM field_values WHERE rid = ?", [rid])
    if not view.deleted:
        db.conn.executemany(
            "INSERT INTO field_values (rid, field, stamp, node, sealed) VALUES (?, ?, ?, ?, ?)",
            [(rid, k, d.stamp, d.node, cipher.seal_field(
                rid, k, d.stamp, d.node, strict_cbor.dumps(view.fields.get(k))))
             for k, d in view.field_dots.items()])
    db.execute("DELETE FROM conflicts WHERE rid = ?", [rid])
    db.conn.executemany(
        "INSERT INTO conflicts (id, rid, class, severity, versions) VALUES (?, ?, ?, ?, ?)",
        [(c.id, rid, c.cls, c.severity, " ".join(v.id for v in c.versions))
         for c in view.conflicts])
    db.execute(REWRITE_RECORD,
        [rid, view.type, int(view.deleted), int(view.held), len(view.conflicts),
         int(has_delete), heads_blob(view.heads),
         cipher.seal_blob(b"rec" + rid, strict_cbor.dumps(extra))])


def refresh(db: sqlite_utils.Database, cipher: FieldCipher, rid: bytes) -> RecordView:
    """Rebuild a record from its write log (the slow path)."""
    log = load_log(db, cipher, rid)
    view = log.view()
    rewrite(db, cipher, view, any(op.is_delete for op in log.ops.values()))
    return view


def read_view(db: sqlite_utils.Database, cipher: FieldCipher, rid: bytes, rtype: int,
              deleted: bool, heads: bytes, extra: bytes | None) -> RecordView:
    """A record's view from its merged rows (no write log needed)."""
    fields: dict[int, Any] = {}
    dots: dict[int, Dot] = {}
    for field, stamp, node, sealed in db.execute(
        "SELECT field, stamp, node, sealed FROM field_values WHERE rid = ?", [rid]
    ).fetchall():
        dots[field] = Dot(stamp, node)
        value = strict_cbor.loads(cipher.open_field(rid, field, stamp, node, sealed))
        if value is not None:
            fields[field] = value
    sets: dict[int, frozenset[str]] = {}
    conflicts: list[Conflict] = []
    if extra is not None:
        obj = strict_cbor.loads(cipher.open_blob(b"rec" + rid, extra))
        sets = {k: frozenset(v) for k, v in obj[0].items()}
        for cid, cls, severity, field, versions in obj[1]:
            conflicts.append(Conflict(cid, rid, cls, severity, field, tuple(
                Version(Dot(stamp, node), vtype, vdel, vfields,
                        {k: frozenset(e) for k, e in vsets.items()})
                for node, stamp, vtype, vdel, vfields, vsets in versions)))
    return RecordView(rid, rtype, deleted, fields, sets, tuple(sorted(parse_heads(heads))),
                      tuple(conflicts), dots)


def persist_fast(db: sqlite_utils.Database, cipher: FieldCipher,
                 writes: Sequence[tuple[Delta, bytes]], local: bool) -> None:
    """Puts on clean records that saw every head: the fast path without the slice's
    bookkeeping (the caller checked). One ``executemany`` per table."""
    conn = db.conn
    sealed = cipher.seal_blobs([(_op_label(d.record_id, d.stamp, d.node), data)
                                for d, data in writes])
    conn.executemany(INSERT_OP, [
        (d.record_id, d.stamp, d.node, d.type, int(local), blob)
        for (d, _), blob in zip(writes, sealed, strict=True)])
    rows = [(d.record_id, k, d.stamp, d.node, _canonical(v))
            for d, _ in writes for k, v in d.set.items()]
    conn.executemany(UPSERT_FIELD, [
        (rid, k, stamp, node, blob)
        for (rid, k, stamp, node, _), blob in zip(rows, cipher.seal_fields(rows), strict=True)])
    conn.executemany(FAST_RECORD, [(d.record_id, d.type, _one_head(d.stamp, d.node))
                                   for d, _ in writes])


_LOOKUP = 400  # record ids per IN (...) query


def _records(conn: Any, rids: list[bytes]
             ) -> tuple[dict[bytes, tuple[int, Any, bool]], dict[bytes, bytes]]:
    """rid -> (type, heads, messy) for the records that exist (messy: a delete or a
    conflict in their history, or stale), and rid -> the dots they hold (``seen``)."""
    state: dict[bytes, tuple[int, Any, bool]] = {}  # heads: a set of dots, or one (stamp, node)
    blobs: dict[bytes, bytes] = {}
    for i in range(0, len(rids), _LOOKUP):
        chunk = rids[i:i + _LOOKUP]
        marks = ",".join("?" * len(chunk))
        for rid, rtype, n_conf, has_delete, stale, heads, blob in conn.execute(
            "SELECT rid, type, n_conflicts, has_delete, stale, heads, seen FROM records"
            f" WHERE rid IN ({marks})", chunk,
        ):
            state[rid] = (rtype, parse_heads(heads), bool(n_conf or has_delete or stale))
            if blob:
                blobs[rid] = blob
    return state, blobs


def held_dots(conn: Any, rids: Iterable[bytes]) -> set[tuple[bytes, int, int]]:
    """The dots ``ops`` holds for these records."""
    rids = list(rids)
    held: set[tuple[bytes, int, int]] = set()
    for i in range(0, len(rids), _LOOKUP):
        chunk = rids[i:i + _LOOKUP]
        marks = ",".join("?" * len(chunk))
        held.update(conn.execute(
            f"SELECT rid, stamp, node FROM ops WHERE rid IN ({marks})", chunk).fetchall())
    return held


def insert_bodies(conn: Any, cipher: FieldCipher, writes: Sequence[tuple[Delta, bytes]],
                  at: int, own_node: int) -> None:
    """Keep deltas with their bodies (``arrived`` = ``at``); a dot held already is
    skipped."""
    sealed = cipher.seal_blobs([(_op_label(d.record_id, d.stamp, d.node), data)
                                for d, data in writes])
    conn.executemany(
        "INSERT INTO ops (rid, stamp, node, type, local, sealed, arrived)"
        " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        [(d.record_id, d.stamp, d.node, d.type, int(d.node == own_node), blob, at)
         for (d, _), blob in zip(writes, sealed, strict=True)])


def _fresh(conn: Any, items: list[tuple[Delta, bytes]], blobs: dict[bytes, bytes],
           own_node: int) -> list[tuple[Delta, bytes, bytes]]:
    """The deltas not held yet, each with its packed dot: held is a dot among its
    record's ``seen`` (every delta from elsewhere leaves one) or a write of our own in
    ``ops``."""
    mine: Container[tuple[bytes, int, int]] = ()
    if any(d.node == own_node for d, _ in items):
        mine = held_dots(conn, {d.record_id for d, _ in items if d.node == own_node})
    taken: set[tuple[bytes, int, int]] = set()
    fresh = []
    pack = seen.pack
    for d, data in items:
        rid, stamp, node = key = d.record_id, d.stamp, d.node
        if key in taken:
            continue
        taken.add(key)
        dot = pack(stamp, node)
        blob = blobs.get(rid)
        if blob is not None and seen.holds(blob, dot) or key in mine:
            continue
        fresh.append((d, data, dot))
    return fresh


def merge_slice(db: sqlite_utils.Database, cipher: FieldCipher,
                items: list[tuple[Delta, bytes]], at: int | None, own_node: int
                ) -> tuple[int, int]:
    """Merge decoded deltas; returns (new, duplicates). Runs inside the caller's
    transaction. From the hub, in a page with cursor ``at``: only their dots are kept.
    From elsewhere (``at`` None: another kiosk's file, a quarantined delta released),
    with no hub to send a record's write set, their bodies are kept too."""
    conn = db.conn
    state, blobs = _records(conn, list({d.record_id: None for d, _ in items}))
    fresh = _fresh(conn, items, blobs, own_node)
    if at is None:
        insert_bodies(conn, cipher, [(d, data) for d, data, _ in fresh], 0, own_node)
    dots: dict[bytes, list[bytes]] = {}
    slow: set[bytes] = set()
    # Last writer wins: of the fast writes to one register, only the greatest dot can
    # change the row, so only it is sealed and upserted.
    winners: dict[tuple[bytes, int], tuple[int, int, Any]] = {}
    for delta, _, dot in fresh:
        rid = delta.record_id
        held = dots.get(rid)
        if held is None:
            dots[rid] = [dot]
        else:
            held.append(dot)
        if rid in slow:
            continue
        stamp, node = delta.stamp, delta.node
        current = state.get(rid)
        if current is None:  # new here; a write that saw others may find them missing
            covers, rtype, messy = not delta.ctx, delta.type, False
        else:
            rtype, heads, messy = current
            if type(heads) is tuple:  # the one head a fast write left
                hs, hn = heads
                covers = hn == node and hs < stamp or (hs, hn) in delta.ctx
            else:
                covers = all(h in delta.ctx or (h.node == node and h.stamp < stamp)
                             for h in heads)
        if (messy or not covers or delta.kind or delta.add or delta.remove
                or rtype != delta.type):
            slow.add(rid)
            continue
        state[rid] = (rtype, (stamp, node), False)
        for k, v in delta.set.items():
            won = winners.get((rid, k))
            if won is None or (stamp, node) > (won[0], won[1]):
                winners[(rid, k)] = (stamp, node, v)
    rows = [(rid, k, stamp, node, _canonical(v))
            for (rid, k), (stamp, node, v) in winners.items() if rid not in slow]
    conn.executemany(UPSERT_FIELD, [
        (rid, k, stamp, node, blob)
        for (rid, k, stamp, node, _), blob in zip(rows, cipher.seal_fields(rows), strict=True)])
    conn.executemany(PEER_RECORD if at is None else HUB_RECORD, [
        (rid, state[rid][0], _one_head(*state[rid][1]), b"".join(packed), at or 0)
        for rid, packed in dots.items() if rid not in slow])
    for rid in sorted(slow):
        merge_record(db, cipher, rid, [(d, data) for d, data, _ in fresh
                                       if d.record_id == rid], at, own_node)
        conn.execute(seen.ADD, [b"".join(dots[rid]), at or 0, rid])
    return len(fresh), len(items) - len(fresh)


def merge_record(db: sqlite_utils.Database, cipher: FieldCipher, rid: bytes,
                 writes: list[tuple[Delta, bytes]], at: int | None, own_node: int) -> None:
    """Deltas the SQL path cannot take, for one record. From the hub (``at``), in
    this order of preference: each extends the record's view (``covering``), without a
    body; or the record's write log is whole, and they join it and the record is
    rebuilt (the reference merge); or they are kept with their bodies and the record
    waits, as it was, for the hub's write set (``stale``). From elsewhere (``at`` None,
    bodies kept already): the log first, then ``covering``, then ``stale``."""
    conn = db.conn
    writes = sorted(writes, key=lambda w: w[0].dot)
    row = conn.execute("SELECT type, deleted, heads, extra, stale, partial, has_delete"
                       " FROM records WHERE rid = ?", [rid]).fetchone()
    if at is None and (row is None or not row[5]):
        refresh(db, cipher, rid)
        return
    if row is not None and row[4]:
        if at is not None:
            insert_bodies(conn, cipher, writes, at, own_node)
        return
    view = None if row is None else read_view(db, cipher, rid, row[0], bool(row[1]), row[2],
                                              row[3])
    grown = view
    for delta, _ in writes:
        if row is None and grown is None and delta.ctx or not covering.extends(grown, delta):
            break
        grown = covering.after(grown, delta)
    else:
        assert grown is not None
        rewrite(db, cipher, grown, bool(row and row[6]) or any(d.is_delete for d, _ in writes))
        conn.execute("UPDATE records SET partial = 1 WHERE rid = ?", [rid])
        return
    if at is None:
        conn.execute("UPDATE records SET stale = 1 WHERE rid = ?", [rid])
        return
    insert_bodies(conn, cipher, writes, at, own_node)
    if row is None or not row[5]:
        refresh(db, cipher, rid)
        held = {d.dot for d, _ in writes}
        if row is None and any(c not in held for d, _ in writes for c in d.ctx):
            # It saw writes this kiosk never held (collected, or out of scope then).
            conn.execute("UPDATE records SET stale = 1 WHERE rid = ?", [rid])
        return
    conn.execute("UPDATE records SET stale = 1 WHERE rid = ?", [rid])
