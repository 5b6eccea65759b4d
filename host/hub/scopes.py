"""The hub's side of scopes: each record's facts, a scope's deltas, snapshots, sums.

Theory of operation
-------------------
A kiosk holds only its scope (``protocol.sync.scope``: a role at a site on a
day). Whether a record is in a scope depends on a few facts of it (its type,
a check-in's site and day, the patient it is about), which ``record_facts``
keeps, one row a record, upserted in the transaction that commits each delta
(``note_facts``): each fact with the dot that set it, so the greatest dot's
value wins whatever the arrival order, as in the merge. A ``full`` scope
(every record but audit entries and telemetry) never reads them: its pull is
the unfiltered one, as before scopes.

A kiosk drops a deleted record whole (tombstone and write log) once the
delete is below its stable point. A write concurrent with that delete may
still arrive later (its writer pulled the delete before its batch went). The
hub marks such a write when it commits it (``note_late``: the record holds a
delete the write did not see), and every pull sends that record's older
deltas again at the write's position (``_older``), so the kiosk rebuilds the
merged record (a delete-update conflict), never the late write alone.

Every role holds every erasure record (``protocol.crdt.erasure``): its facts
row (type and patient, no site) is found by the index on site, as a site of
none.

A pull in scope (``changes_in_scope``) reads the deltas after the cursor
with their record's facts and keeps those in scope by the facts now; a door
kiosk's check-ins come without what the patient typed (``for_door``: no name,
no date of birth ever reaches a door kiosk from another). For a
clinician station, a check-in that names a patient none of its check-ins in
scope named by the cursor brings that patient in: their record's and their
clinical records' older deltas go in the page at the check-in's position, and
a page never ends inside such a group unless it is larger than a page
(``protocol.sync.paging``). Who is in a station's scope
(``_Patients``) is asked one patient at a time, through the index on
``subject``, so a pull costs what arrived, not what the site holds.

A snapshot (``snapshot_page``) is every delta, any writer's, of the records in
scope, up to the head it was cut at, in arrival order, a page at a time; the
last page of a whole-scope snapshot carries ``scope_sums`` at that head: the
checksum (``scope_checksum``) of every head of each record, which is what the
kiosk computes over what it holds. The hub's sum for a kiosk's hello counts
what arrived by its cursor and the kiosk's own writes. The heads are found
at sum time (``scope_heads``): a record written by one node alone has its
last write as its one head; only the deltas of records more than one node
wrote are read whole, for their contexts. No table of covered dots is kept
(``python -m tools.benchmarks._scope_sum``, a full scope of 100,000 ops, CPU
time): the sum takes 0.55 s with a tenth of the records written by two
nodes and 0.8 to 0.9 s with half, against 0.42 to 0.5 s through such a
table, which would cost a row per context dot at every commit, a migration
and its backfill, and 0.24 s for the greatest dots alone (v1). A sum is
computed only for a hello that carries one (a kiosk with nothing queued,
once a session) and for a snapshot's last page.

The stable point of a kiosk (``stable_point``) is the smallest cursor
acknowledged by every live kiosk (approved: not revoked, not decommissioned)
of its scope group: the same role at the same site, or every ``full`` kiosk.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator
from itertools import groupby
from typing import Any

import cbor2

from host.hub.at_rest import opened
from host.hub.database import Db, is_postgres, rows_in
from protocol.crdt.clock import Dot
from protocol.crdt.delta import KEY_CTX, Delta, decode, encode
from protocol.errors import RemoteProtocolError
from protocol.sync.audit import is_audit_id
from protocol.sync.paging import PageSplit, paged
from protocol.sync.scope import (
    WITHHELD_AT_DOOR,
    Facts,
    Head,
    Scope,
    checkin_in_scope,
    facts_of,
    heads_of,
    in_scope,
    scope_checksum,
    scope_checksum_v1,
)
from protocol.sync.sensor_records import is_sensor_id
from protocol.sync.telemetry import is_telemetry_id

CHECKIN, VERIFIER, ERASURE = 2, 9, 10
#: Snapshots of named records (``sync-pull`` ``snapshot: [rids]``) name at most this many.
MAX_SNAPSHOT_RIDS = 256

_FACTS = "f.type, f.location, f.subject, f.day"
#: SQL: a delta's bytes (sealed at rest: ``host.hub.at_rest``), of ``ops`` and ``ops o``.
_DATA, _O_DATA = opened(), opened("o.")


def _kiosk_only(rid: bytes) -> bool:
    """A record only its kiosk writes and no kiosk holds: an audit entry, telemetry, or a
    sensor node's record (``protocol.sync.sensor_records``)."""
    return is_audit_id(rid) or is_telemetry_id(rid) or is_sensor_id(rid)


def _dot(delta: Delta) -> bytes:
    """A delta's dot as bytes that sort as dots do (stamp, then node)."""
    return delta.stamp.to_bytes(8, "big") + delta.node.to_bytes(4, "big")


def _taken(fact: str) -> str:
    """SQL: a fact and its dot, each taken from the delta when its dot is greater."""
    newer = (f"(record_facts.{fact}_dot IS NULL OR excluded.{fact}_dot >"
             f" record_facts.{fact}_dot)")
    return (f"{fact} = CASE WHEN {newer} THEN excluded.{fact} ELSE record_facts.{fact} END,"
            f" {fact}_dot = CASE WHEN {newer} THEN excluded.{fact}_dot"
            f" ELSE record_facts.{fact}_dot END")


def note_facts(db: Db, deltas: Iterable[Delta]) -> None:
    """Upsert the facts of the deltas' records, in the caller's transaction: each fact
    kept with the dot that set it, and taken from a delta only when its dot is greater
    (the merge's rule for a register: whatever order they arrive in, the facts are the
    merged record's). A delete sets none, so the record stays in the scopes it was in,
    for the delete to reach them. A delta that sets no fact writes nothing, so a record
    with none (a patient, an audit entry) has no row: its type is its deltas'
    (``_type_of``). An erasure record's facts never change: they say who is erased
    (``husking``)."""
    rows = []
    for d in deltas:
        f = facts_of(d.record_id, d.type, d.set)
        if f.location is not None or f.subject is not None or f.day is not None:
            dot = _dot(d)
            rows.append((f.rid, f.type, f.location, f.subject, f.day,
                         *(None if v is None else dot for v in (f.location, f.subject, f.day))))
    if rows:
        db.conn.executemany(
            "INSERT INTO record_facts (rid, type, location, subject, day, location_dot,"
            " subject_dot, day_dot) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (rid) DO"
            f" UPDATE SET {_taken('location')}, {_taken('subject')}, {_taken('day')}"
            f" WHERE record_facts.type != {ERASURE}", rows)


def note_late(db: Db, added: Iterable[tuple[int, Delta]],
              deleted: str = "del") -> None:
    """Mark, in the caller's transaction, each write (arrival, delta) to a record that
    held, when it arrived, a delete the write did not see (its context does not name
    it, nor is it the writer's own): a kiosk may have dropped that record's tombstone,
    so pulls send the record's whole write set again at the write's position
    (``_older``). A write that saw the delete through another write is marked too: one
    more copy of deltas the kiosk counts as duplicates, never a loss. ``deleted``: SQL
    for whether a held delta is a delete (before migration 8, its head)."""
    writes = [(hseq, d) for hseq, d in added if not d.is_delete]
    rids = sorted({d.record_id for _, d in writes})
    deletes: dict[bytes, list[tuple[int, int, int]]] = {}  # record -> (arrival, stamp, node)
    for rid, hseq, stamp, node, flag in rows_in(  # the records written that hold a delete
            db, f"SELECT rid, hseq, stamp, node, {deleted} FROM ops WHERE rid IN ({{marks}})",
            rids):
        if flag:
            deletes.setdefault(bytes(rid), []).append((hseq, stamp, node))
    late = [(hseq,) for hseq, d in writes if any(
        before < hseq and node != d.node and Dot(stamp, node) not in set(d.ctx)
        for before, stamp, node in deletes.get(d.record_id, ()))]
    if late:
        db.conn.executemany("INSERT INTO late_writes (hseq) VALUES (?) ON CONFLICT DO NOTHING",
                            late)


def note_commit(db: Db, added: list[tuple[int, Delta]]) -> None:
    """What the hub keeps beside each delta it commits (arrival, delta): the facts of
    its record and whether it came late to a deleted one."""
    note_facts(db, (d for _, d in added))
    note_late(db, added)


def decoded(held: Iterable[tuple[int, bytes]]) -> list[tuple[int, Delta]]:
    """(arrival, delta) of deltas as held; one that does not decode has no facts and is
    no late write (it stays held, as it came)."""
    out = []
    for hseq, data in held:
        try:
            out.append((int(hseq), decode(bytes(data))))
        except RemoteProtocolError:
            continue
    return out


def fill_facts(db: Db) -> None:
    """The facts of every delta held, and the late writes among them (migration 7): only
    records with a delete can have one. Deltas are read through ``hub_open``, which the
    caller registers (``at_rest.register``; in migration 7 every delta is plain). A hub
    on PostgreSQL began at a later release: nothing to fill."""
    if is_postgres(db):
        return
    db.conn.create_function("is_delete_head", 1, lambda data: is_delete_head(bytes(data)))
    note_facts(db, (d for _, d in decoded(db.execute(f"SELECT hseq, {_DATA} FROM ops"))))
    deleted = {bytes(rid) for rid, data in db.execute(f"SELECT rid, {_DATA} FROM ops").fetchall()
               if is_delete_head(bytes(data))}
    for rid in sorted(deleted):
        note_late(db, decoded(db.execute(f"SELECT hseq, {_DATA} FROM ops WHERE rid = ?",
                                         [rid]).fetchall()), f"is_delete_head({_DATA})")


def _type_of(data: bytes) -> int:
    """A delta's record type, from its head (``type << 1 | kind``)."""
    return data[1] >> 1 if data[1] < 24 else decode(data).type


def for_door(data: bytes) -> bytes:
    """A delta as a door kiosk is sent it: a check-in's claims left out (same dot)."""
    if data[1] != CHECKIN << 1:  # not a check-in put (the head byte of types below 12)
        return data
    delta = decode(data)
    if not WITHHELD_AT_DOOR & delta.set.keys():
        return data
    return encode(dataclasses.replace(
        delta, set={k: v for k, v in delta.set.items() if k not in WITHHELD_AT_DOOR}))


def _facts(rid: bytes, row: Iterable[Any], data: bytes | None = None) -> Facts:
    """Facts from a ``record_facts`` row; none (a record without facts): its type is
    ``data``'s, a delta of it."""
    rtype, location, subject, day = row
    if rtype is None:
        rtype = -1 if data is None else _type_of(data)
    return Facts(rid, rtype, location, None if subject is None else bytes(subject), day)


def head(db: Db) -> int:
    return int(db.execute("SELECT COALESCE(MAX(hseq), 0) FROM ops").fetchone()[0])


class _Patients:
    """The patients a clinician station's scope holds: those named by a check-in in
    scope that has a write that arrived by ``cursor`` (or one by ``node``), and those
    that ``enter`` later. A container, asked one patient at a time."""

    def __init__(self, db: Db, scope: Scope, cursor: int,
                 node: int | None = None) -> None:
        self.db, self.scope, self.cursor, self.node = db, scope, cursor, node
        self.known: dict[bytes, bool] = {}

    def __contains__(self, pid: object) -> bool:
        if not isinstance(pid, bytes):
            return False
        if pid not in self.known:
            # by the patient alone: the index on subject, never the one on site
            rows = self.db.execute(
                f"SELECT f.rid, {_FACTS}, EXISTS (SELECT 1 FROM ops o WHERE o.rid = f.rid"
                " AND (o.hseq <= ? OR o.node = ?)) FROM record_facts f WHERE f.subject = ?",
                [self.cursor, self.node, pid]).fetchall()
            self.known[pid] = any(r[5] and checkin_in_scope(self.scope, _facts(
                bytes(r[0]), r[1:5])) for r in rows)
        return self.known[pid]

    def entering(self, facts: Facts) -> bytes | None:
        """The patient a check-in brings into scope (None: it brings none)."""
        if (facts.type != CHECKIN or facts.subject is None or facts.subject in self
                or not checkin_in_scope(self.scope, facts)):
            return None
        return facts.subject

    def enter(self, pid: bytes) -> None:
        self.known[pid] = True

    def records(self, pid: bytes, before: int) -> list[tuple[int, bytes]]:
        """(arrival, delta) of the patient's record and of their records in scope that
        arrived before ``before``, any writer's."""
        return sorted((hseq, data) for _, _, _, hseq, data, _ in _patient_ops(
            self.db, self.scope, pid, "o.hseq < ?", [before]))


def _older(db: Db, rid: bytes, before: int) -> list[tuple[int, bytes]]:
    """(arrival, delta) of every delta of a record that arrived before ``before``."""
    return [(hseq, bytes(data)) for hseq, data in db.execute(
        f"SELECT hseq, {_DATA} FROM ops WHERE rid = ? AND hseq < ? ORDER BY hseq",
        [rid, before])]


def _after(db: Db, select: str, args: Callable[[int], list[Any]], cursor: int,
           rows: int = 500) -> Iterator[Any]:
    """The rows of ``select`` (its first column an arrival number, its condition taking
    ``args(after)``) in arrival order, read ``rows`` at a time: a pull stops at a page,
    and a server that hands a statement's whole result at once (PostgreSQL) is asked
    for no more than that."""
    while True:
        got = db.execute(f"{select} ORDER BY o.hseq LIMIT ?", [*args(cursor), rows]).fetchall()
        yield from got
        if len(got) < rows:
            return
        cursor = got[-1][0]


def changes_full(db: Db, cursor: int, exclude_node: int | None,
                 max_bytes: int, split: PageSplit | None = None,
                 ) -> tuple[list[bytes], int, bool]:
    """The unfiltered pull: the deltas after ``cursor`` not ``exclude_node``'s (a
    kiosk's: no audit entries), a late write's record whole (``note_late``; a group
    larger than a page goes over the pages of the session's ``split``)."""
    def groups() -> Iterator[tuple[int, list[bytes]]]:
        for hseq, node, rid, data, late in _after(
                db, f"SELECT o.hseq, o.node, o.rid, {_O_DATA}, l.hseq IS NOT NULL FROM ops o"
                " LEFT JOIN late_writes l ON l.hseq = o.hseq WHERE o.hseq > ?",
                lambda after: [after], cursor):
            if exclude_node is not None and _kiosk_only(rid):
                yield hseq, []
                continue
            group = [d for _, d in _older(db, bytes(rid), hseq)] if late else []
            yield hseq, group + [bytes(data)] if node != exclude_node else group
    return paged(groups(), cursor, cursor, max_bytes, split)


def changes_in_scope(db: Db, scope: Scope, cursor: int,
                     exclude_node: int | None, max_bytes: int,
                     split: PageSplit | None = None) -> tuple[list[bytes], int, bool]:
    """A pull in a door or clinician scope: the deltas after ``cursor`` of records in
    scope, not ``exclude_node``'s, with the deltas a patient entering scope brings and
    a late write's record whole (``note_late``); (deltas, cursor, more)."""
    top = head(db)
    patients = _Patients(db, scope, cursor)
    late = (f"SELECT o.hseq, o.node, o.rid, {_O_DATA}, l.hseq IS NOT NULL, " + _FACTS +
            " FROM ops o LEFT JOIN late_writes l ON l.hseq = o.hseq")
    # Driven by what arrived after the cursor (ops first), never by what the site holds.
    if scope.role == "door":  # only check-ins and verifiers of its site can be in scope
        rows = _after(db, f"{late} CROSS JOIN record_facts f WHERE f.rid = o.rid"
                      " AND o.hseq > ? AND o.hseq <= ? AND (f.location = ?"
                      " AND f.type IN (?, ?) OR f.location IS NULL AND f.type = ?)",
                      lambda after: [after, top, scope.site, CHECKIN, VERIFIER, ERASURE],
                      cursor)
    else:
        rows = _after(db, f"{late} LEFT JOIN record_facts f ON f.rid = o.rid"
                      " WHERE o.hseq > ? AND o.hseq <= ?", lambda after: [after, top], cursor)

    def groups() -> Iterator[tuple[int, list[bytes]]]:
        for hseq, node, rid, data, is_late, *fact in rows:
            facts = _facts(bytes(rid), fact, data)
            entering = patients.entering(facts) if scope.role == "clinician" else None
            group = dict(patients.records(entering, hseq)) if entering else {}
            if entering:
                patients.enter(entering)
            if in_scope(scope, facts, patients):
                if is_late:
                    group.update(_older(db, bytes(rid), hseq))
                if node != exclude_node:
                    group[hseq] = bytes(data)
            yield hseq, [for_door(d) if scope.role == "door" else d
                         for _, d in sorted(group.items())]
    return paged(groups(), cursor, top, max_bytes, split)


_OPS = f"SELECT o.rid, o.stamp, o.node, o.hseq, {_O_DATA}, " + _FACTS + \
    " FROM record_facts f JOIN ops o ON o.rid = f.rid WHERE "
Row = tuple[bytes, int, int, int, bytes, Facts]  #: rid, stamp, node, arrival, delta, facts


def _rows(rows: Iterable[tuple[Any, ...]]) -> Iterator[Row]:
    for rid, stamp, node, hseq, data, *fact in rows:
        yield bytes(rid), stamp, node, hseq, bytes(data), _facts(bytes(rid), fact, data)


def _patient_ops(db: Db, scope: Scope, pid: bytes, held: str,
                 args: list[Any]) -> Iterator[Row]:
    """The deltas (``held``: which) of a patient's record and of their records in scope
    but check-ins, through the indexes on ``rid`` and ``subject``."""
    rows = db.execute(
        f"SELECT o.rid, o.stamp, o.node, o.hseq, {_O_DATA}, NULL, NULL, NULL, NULL FROM ops o"
        f" WHERE o.rid = ? AND {held} UNION ALL {_OPS}f.subject = ? AND {held}",
        [pid, *args, pid, *args]).fetchall()
    return (r for r in _rows(rows)
            if r[5].type not in (CHECKIN, ERASURE) and in_scope(scope, r[5], {pid}))


def _held_ops(db: Db, scope: Scope, cursor: int,
              node: int | None = None) -> Iterator[Row]:
    """Every delta that arrived by ``cursor`` (or is ``node``'s) of the door or clinician
    scope's records."""
    held, args = "(o.hseq <= ? OR o.node = ?)", [cursor, node]
    # every erasure, by the site's index (a site of none)
    yield from _rows(db.execute(f"{_OPS}f.location IS NULL AND f.type = ? AND {held}",
                                [ERASURE, *args]).fetchall())
    if scope.role == "door":  # today's check-ins and the verifiers, by the site's index
        yield from (r for r in _rows(db.execute(
            f"{_OPS}f.location = ? AND f.type = ? AND f.day >= ? AND {held} UNION ALL"
            f" {_OPS}f.location = ? AND f.type = ? AND {held}",
            [scope.site, CHECKIN, scope.first_day, *args, scope.site, VERIFIER, *args]
            ).fetchall()) if in_scope(scope, r[5]))
        return
    patients: set[bytes] = set()
    for r in _rows(db.execute(f"{_OPS}f.location = ? AND f.type = ? AND f.day >= ? AND {held}",
                              [scope.site, CHECKIN, scope.first_day, *args]).fetchall()):
        if checkin_in_scope(scope, r[5]):
            yield r
            if r[5].subject is not None:
                patients.add(r[5].subject)
    for pid in sorted(patients):
        yield from _patient_ops(db, scope, pid, held, args)


def is_delete_head(data: bytes) -> bool:
    """Whether a delta is a delete, by its head (``type << 1 | kind``) alone."""
    return bool((data[1] if data[1] < 24 else data[2]) & 1)


def _context(data: bytes) -> list[tuple[int, int]]:
    """A held delta's causal context as (stamp, node): read from its items alone, since
    the hub checked the delta when it took it; none for one that does not decode."""
    try:
        items = cbor2.loads(data)
        flat = next(items[i + 1] for i in range(4, len(items), 2) if items[i] == KEY_CTX)
        return [(flat[j + 1], flat[j]) for j in range(0, len(flat), 2)]
    except (StopIteration, cbor2.CBORDecodeError, TypeError, IndexError, ValueError):
        return []


def _heads_by_record(rows: Iterable[tuple[bytes, int, int, bytes]]) -> Iterator[Head]:
    """The heads of each record from its held writes (rid, stamp, node, delta), rows of
    one record in a run: a record written by one node alone has its last write as its
    one head; the others' by their deltas' contexts (given whole for them only)."""
    for rid, run in groupby(rows, key=lambda row: row[0]):
        if _kiosk_only(rid):
            continue
        held = list(run)
        if all(row[2] == held[0][2] for row in held):
            _, stamp, n, data = max(held)
            yield rid, stamp, n, is_delete_head(data)
        else:
            yield from heads_of((rid, stamp, n, is_delete_head(data), _context(data))
                                for _, stamp, n, data in held)


def scope_heads(db: Db, scope: Scope, cursor: int,
                node: int | None = None) -> Iterator[Head]:
    """Every head of every record of ``scope`` as a kiosk holds it with every write that
    arrived by ``cursor`` and its own (``node``'s)."""
    if scope.role == "full":
        held = "(hseq <= :cursor OR node = :node)"
        args = {"cursor": cursor, "node": node}
        # a record one node wrote: its last write ((rid, stamp) is unique there)
        for rid, stamp, n, head in db.execute(
                "SELECT o.rid, o.stamp, o.node, o.del FROM ops o JOIN (SELECT rid, MAX(stamp)"
                f" AS last FROM ops WHERE {held} GROUP BY rid HAVING COUNT(DISTINCT node) = 1)"
                " m ON o.rid = m.rid AND o.stamp = m.last", args):
            if not _kiosk_only(rid):
                yield rid, stamp, n, bool(head)
        yield from _heads_by_record(db.execute(  # the others, by their deltas' contexts
            f"SELECT rid, stamp, node, {_DATA} FROM ops WHERE {held} AND rid IN (SELECT rid"
            f" FROM ops WHERE {held} GROUP BY rid HAVING COUNT(DISTINCT node) > 1)"
            " ORDER BY rid", args))
        return
    yield from _heads_by_record(sorted((rid, stamp, n, data) for rid, stamp, n, _, data, _
                                   in _held_ops(db, scope, cursor, node)))


def _held_writes(db: Db, scope: Scope, cursor: int,
                 node: int | None) -> Iterator[Head]:
    """Every write of ``scope`` a kiosk holds with what arrived by ``cursor`` and its own,
    without its context: what ``scope_checksum_v1`` needs (the greatest of each)."""
    if scope.role == "full":
        for rid, stamp, n, deleted in db.execute("SELECT rid, stamp, node, del FROM ops"
                                                 " WHERE hseq <= ? OR node = ?",
                                                 [cursor, node]):
            if not _kiosk_only(rid):
                yield rid, stamp, n, bool(deleted)
    else:
        for rid, stamp, n, _, data, _ in _held_ops(db, scope, cursor, node):
            yield rid, stamp, n, is_delete_head(data)


def scope_sums(db: Db, scope: Scope, cursor: int, node: int | None = None,
               versions: Iterable[int] = (2, 1)) -> dict[int, bytes]:
    """The checksums of ``scope`` as a kiosk holds it with every write that arrived by
    ``cursor`` and its own (``node``'s), by version: 2 ``scope_checksum``, 1
    ``scope_checksum_v1`` (kiosks before it; alone, without finding the heads)."""
    wanted = set(versions)
    if 2 not in wanted:
        return {1: scope_checksum_v1(_held_writes(db, scope, cursor, node))} if wanted else {}
    heads = list(scope_heads(db, scope, cursor, node))
    sums = {2: scope_checksum(heads)}
    if 1 in wanted:
        sums[1] = scope_checksum_v1(heads)
    return sums


def snapshot_page(db: Db, scope: Scope, cursor: int, upto: int,
                  rids: list[bytes] | None, max_bytes: int) -> tuple[list[bytes], int, bool]:
    """A page of the snapshot cut at ``upto``: every delta after ``cursor`` of the records
    in scope (of ``rids``, those in scope; None: the whole scope); (deltas, cursor, more)."""
    span = f"SELECT hseq, rid, {_DATA} FROM ops WHERE hseq > ? AND hseq <= ?"
    rows: Iterable[tuple[Any, ...]]
    if rids:
        marks = ", ".join("?" * len(rids))
        patients = _Patients(db, scope, upto)
        rows = [r[:3] for r in db.execute(
            f"SELECT o.hseq, o.rid, {_O_DATA}, {_FACTS} FROM ops o LEFT JOIN record_facts f"
            f" ON f.rid = o.rid WHERE o.hseq > ? AND o.hseq <= ? AND o.rid IN ({marks})"
            " ORDER BY o.hseq", [cursor, upto, *rids]).fetchall()
            if in_scope(scope, _facts(bytes(r[1]), r[3:], r[2]), patients)]
    elif rids is not None:
        rows = ()
    elif scope.role == "full":
        rows = (r for r in db.execute(f"{span} ORDER BY hseq", [cursor, upto])
                if not _kiosk_only(r[1]))
    else:
        rows = sorted((hseq, rid, data) for rid, _, _, hseq, data, _
                      in _held_ops(db, scope, upto) if hseq > cursor)
    out: list[bytes] = []
    size = 0
    for hseq, _, data in rows:
        if out and size + len(data) > max_bytes:
            return out, cursor, True
        out.append(for_door(bytes(data)) if scope.role == "door" else bytes(data))
        size += len(data)
        cursor = hseq
    return out, upto, False


def stable_point(db: Db, role: str, site: str) -> int:
    """The smallest cursor every live kiosk of the scope group acknowledged."""
    row = db.execute("SELECT MIN(acked) FROM devices WHERE state = 'approved' AND role = ?"
                     " AND (role = 'full' OR site = ?)", [role, site]).fetchone()
    return int(row[0] or 0)
