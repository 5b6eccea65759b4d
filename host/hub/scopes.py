"""The hub's side of scopes: each record's facts, a scope's deltas, snapshots, sums.

Theory of operation
-------------------
A kiosk holds only its scope (``protocol.sync.scope``: a role at a site on a
day). Whether a record is in a scope depends on a few facts of it (its type,
a check-in's site and day, the patient it is about), which ``record_facts``
keeps, one row a record, upserted in the transaction that commits each delta
(``note_facts``): a later non-null value wins, in arrival order. A ``full``
scope (every record but audit entries) never reads them: its pull is the
unfiltered one, as before scopes.

A pull in scope (``changes_in_scope``) reads the deltas after the cursor
with their record's facts and keeps those in scope by the facts now; a door
kiosk's check-ins come without what the patient typed (``for_door``: no name,
no date of birth ever reaches a door kiosk from another). For a
clinician station, a check-in that names a patient none of its check-ins in
scope named by the cursor brings that patient in: their record's and their
clinical records' older deltas go in the page at the check-in's position, and
a page never ends inside such a group. Who is in a station's scope
(``_Patients``) is asked one patient at a time, through the index on
``subject``, so a pull costs what arrived, not what the site holds.

A snapshot (``snapshot_page``) is every delta, any writer's, of the records in
scope, up to the head it was cut at, in arrival order, a page at a time; the
last page of a whole-scope snapshot carries ``scope_sum`` at that head: the
checksum (``scope_checksum``) of each record's greatest write, which is what
the kiosk computes over what it holds. The hub's sum for a kiosk's hello
counts what arrived by its cursor and the kiosk's own writes.

The stable point of a kiosk (``stable_point``) is the smallest cursor
acknowledged by every live kiosk (approved: not revoked, not decommissioned)
of its scope group: the same role at the same site, or every ``full`` kiosk.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from typing import Any

import sqlite_utils

from protocol.crdt.delta import Delta, decode, encode
from protocol.sync.audit import is_audit_id
from protocol.sync.scope import Facts, Scope, checkin_in_scope, facts_of, in_scope, scope_checksum

CHECKIN, VERIFIER = 2, 9
#: A check-in's fields that a door kiosk is never sent: what the patient typed (a name,
#: a date of birth). Its own check-ins hold them until it collects them.
CLAIMS = frozenset((7, 8))
#: Snapshots of named records (``sync-pull`` ``snapshot: [rids]``) name at most this many.
MAX_SNAPSHOT_RIDS = 256

_FACTS = "f.type, f.location, f.subject, f.day"


def note_facts(db: sqlite_utils.Database, delta: Delta) -> None:
    """Upsert ``delta``'s record's facts (in the caller's transaction): its values that
    are set win, the others stay (a delete sets none: the record stays in the scopes
    it was in, for the delete to reach them)."""
    f = facts_of(delta.record_id, delta.type, delta.set)
    db.execute("INSERT INTO record_facts (rid, type, location, subject, day)"
               " VALUES (?, ?, ?, ?, ?) ON CONFLICT (rid) DO UPDATE SET"
               " location = COALESCE(excluded.location, record_facts.location),"
               " subject = COALESCE(excluded.subject, record_facts.subject),"
               " day = COALESCE(excluded.day, record_facts.day)",
               [f.rid, f.type, f.location, f.subject, f.day])


def fill_facts(db: sqlite_utils.Database) -> None:
    """The facts of every delta held, in arrival order (migration 7)."""
    for (data,) in db.execute("SELECT data FROM ops ORDER BY hseq").fetchall():
        note_facts(db, decode(bytes(data)))


def for_door(data: bytes) -> bytes:
    """A delta as a door kiosk is sent it: a check-in's claims left out (same dot)."""
    if data[1] != CHECKIN << 1:  # not a check-in put (the head byte of types below 12)
        return data
    delta = decode(data)
    if not CLAIMS & delta.set.keys():
        return data
    return encode(dataclasses.replace(
        delta, set={k: v for k, v in delta.set.items() if k not in CLAIMS}))


def _facts(rid: bytes, row: Iterable[Any]) -> Facts:
    rtype, location, subject, day = row
    return Facts(rid, -1 if rtype is None else rtype, location,
                 None if subject is None else bytes(subject), day)


def head(db: sqlite_utils.Database) -> int:
    return int(db.execute("SELECT COALESCE(MAX(hseq), 0) FROM ops").fetchone()[0])


class _Patients:
    """The patients a clinician station's scope holds: those named by a check-in in
    scope that has a write that arrived by ``cursor`` (or one by ``node``), and those
    that ``enter`` later. A container, asked one patient at a time."""

    def __init__(self, db: sqlite_utils.Database, scope: Scope, cursor: int,
                 node: int | None = None) -> None:
        self.db, self.scope, self.cursor, self.node = db, scope, cursor, node
        self.first = scope.first_day or ""
        self.known: dict[bytes, bool] = {}

    def __contains__(self, pid: object) -> bool:
        if not isinstance(pid, bytes):
            return False
        if pid not in self.known:
            rows = self.db.execute(
                f"SELECT f.rid, {_FACTS} FROM record_facts f WHERE f.subject = ?"
                " AND f.type = ? AND f.location = ? AND f.day >= ? AND EXISTS (SELECT 1"
                " FROM ops o WHERE o.rid = f.rid AND (o.hseq <= ? OR o.node = ?))",
                [pid, CHECKIN, self.scope.site, self.first, self.cursor, self.node])
            self.known[pid] = any(checkin_in_scope(self.scope, _facts(bytes(r[0]), r[1:]))
                                  for r in rows)
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
        rows = self.db.execute(
            f"SELECT o.hseq, o.data, f.rid, {_FACTS} FROM record_facts f"
            " JOIN ops o ON o.rid = f.rid WHERE (f.subject = ? OR f.rid = ?) AND o.hseq < ?"
            " ORDER BY o.hseq", [pid, pid, before])
        return [(hseq, bytes(data)) for hseq, data, rid, *fact in rows
                if in_scope(self.scope, _facts(bytes(rid), fact), {pid})]


def changes_in_scope(db: sqlite_utils.Database, scope: Scope, cursor: int,
                     exclude_node: int | None, max_bytes: int,
                     ) -> tuple[list[bytes], int, bool]:
    """A pull in a door or clinician scope: the deltas after ``cursor`` of records in
    scope, not ``exclude_node``'s, with the deltas a patient entering scope brings;
    (deltas, cursor, more)."""
    top = head(db)
    patients = _Patients(db, scope, cursor)
    where = ""
    args: list[Any] = [cursor, top]
    if scope.role == "door":  # only check-ins and verifiers of its site can be in scope
        where, args = " AND f.location = ? AND f.type IN (?, ?)", [*args, scope.site,
                                                                    CHECKIN, VERIFIER]
    rows = db.execute(f"SELECT o.hseq, o.node, o.rid, o.data, {_FACTS} FROM ops o"
                      " LEFT JOIN record_facts f ON f.rid = o.rid"
                      f" WHERE o.hseq > ? AND o.hseq <= ?{where} ORDER BY o.hseq",
                      args).fetchall()
    out: list[bytes] = []
    size, last = 0, cursor
    for hseq, node, rid, data, *fact in rows:
        facts = _facts(bytes(rid), fact)
        entering = patients.entering(facts) if scope.role == "clinician" else None
        group = [d for _, d in patients.records(entering, hseq)] if entering else []
        if entering:
            patients.enter(entering)
        if node != exclude_node and in_scope(scope, facts, patients):
            group.append(for_door(bytes(data)) if scope.role == "door" else bytes(data))
        grown = sum(map(len, group))
        if out and group and size + grown > max_bytes:
            if entering:
                patients.known.pop(entering)
            return out, last, True
        out += group
        size += grown
        last = hseq
    return out, max(cursor, top), False


def records_in_scope(db: sqlite_utils.Database, scope: Scope, cursor: int,
                     node: int | None = None) -> set[bytes]:
    """The door or clinician scope's records that have a write that arrived by
    ``cursor`` (or one by ``node``)."""
    held = "EXISTS (SELECT 1 FROM ops o WHERE o.rid = f.rid AND (o.hseq <= ? OR o.node = ?))"
    if scope.role == "door":
        rows = db.execute(f"SELECT f.rid, {_FACTS} FROM record_facts f WHERE f.location = ?"
                          f" AND f.type IN (?, ?) AND {held}",
                          [scope.site, CHECKIN, VERIFIER, cursor, node]).fetchall()
        return {bytes(r[0]) for r in rows if in_scope(scope, _facts(bytes(r[0]), r[1:]), ())}
    patients = _Patients(db, scope, cursor, node)
    out: set[bytes] = set()
    for rid, *fact in db.execute(
            f"SELECT f.rid, {_FACTS} FROM record_facts f WHERE f.type = ? AND f.location = ?"
            f" AND f.day >= ? AND {held}",
            [CHECKIN, scope.site, patients.first, cursor, node]).fetchall():
        facts = _facts(bytes(rid), fact)
        if checkin_in_scope(scope, facts):
            out.add(facts.rid)
            if facts.subject is not None:
                patients.enter(facts.subject)
    for pid in [p for p, yes in patients.known.items() if yes]:
        for rid, *fact in db.execute(f"SELECT f.rid, {_FACTS} FROM record_facts f"
                                     f" WHERE (f.subject = ? OR f.rid = ?) AND {held}",
                                     [pid, pid, cursor, node]).fetchall():
            if in_scope(scope, _facts(bytes(rid), fact), patients):
                out.add(bytes(rid))
    return out


def _heads(rows: Iterator[tuple[Any, ...]]) -> Iterator[tuple[bytes, int, int, bool]]:
    """Each record's greatest write, from rows (rid, stamp, node, head bytes) in
    (rid, stamp, node) order: (rid, stamp, node, whether it is a delete)."""
    last: tuple[Any, ...] | None = None
    for row in rows:
        if last is not None and row[0] != last[0]:
            yield _head_of(last)
        last = row
    if last is not None:
        yield _head_of(last)


def _head_of(row: tuple[Any, ...]) -> tuple[bytes, int, int, bool]:
    rid, stamp, node, start = row
    start = bytes(start)
    kind = start[1] & 1 if start[1] < 24 else start[2] & 1  # the delta's head: type << 1 | kind
    return bytes(rid), stamp, node, bool(kind)


def scope_sum(db: sqlite_utils.Database, scope: Scope, cursor: int,
              node: int | None = None) -> bytes:
    """The checksum of ``scope`` as a kiosk holds it with every write that arrived by
    ``cursor`` and its own (``node``'s)."""
    sql = ("SELECT rid, stamp, node, substr(data, 1, 3) FROM ops WHERE (hseq <= ? OR node = ?)"
           "{} ORDER BY rid, stamp, node")
    if scope.role == "full":
        rows = db.execute(sql.format(""), [cursor, node])
        return scope_checksum(h for h in _heads(rows) if not is_audit_id(h[0]))
    heads: list[tuple[bytes, int, int, bool]] = []
    for rid in sorted(records_in_scope(db, scope, cursor, node)):
        heads += _heads(db.execute(sql.format(" AND rid = ?"), [cursor, node, rid]))
    return scope_checksum(heads)


def snapshot_page(db: sqlite_utils.Database, scope: Scope, cursor: int, upto: int,
                  rids: list[bytes] | None, max_bytes: int) -> tuple[list[bytes], int, bool]:
    """A page of the snapshot cut at ``upto``: every delta after ``cursor`` of the records
    in scope (of ``rids``, those in scope; None: the whole scope); (deltas, cursor, more)."""
    if rids is not None:
        if not rids:
            return [], upto, False
        patients = _Patients(db, scope, upto)
        wanted: set[bytes] | None = {
            bytes(r[0]) for r in db.execute(f"SELECT f.rid, {_FACTS} FROM record_facts f"
                                            f" WHERE f.rid IN ({', '.join('?' * len(rids))})",
                                            rids).fetchall()
            if in_scope(scope, _facts(bytes(r[0]), r[1:]), patients)}
    elif scope.role == "full":
        wanted = None
    else:
        wanted = records_in_scope(db, scope, upto)
    rows = db.execute("SELECT hseq, rid, data FROM ops WHERE hseq > ? AND hseq <= ?"
                      + ("" if rids is None else
                         f" AND rid IN ({', '.join('?' * len(rids))})") + " ORDER BY hseq",
                      [cursor, upto, *(rids or [])])
    out: list[bytes] = []
    size, last = 0, cursor
    for hseq, rid, data in rows:
        rid = bytes(rid)
        if (rid in wanted) if wanted is not None else not is_audit_id(rid):
            if out and size + len(data) > max_bytes:
                return out, last, True
            out.append(for_door(bytes(data)) if scope.role == "door" else bytes(data))
            size += len(data)
        last = hseq
    return out, max(last, upto), False


def stable_point(db: sqlite_utils.Database, role: str, site: str) -> int:
    """The smallest cursor every live kiosk of the scope group acknowledged."""
    row = db.execute("SELECT MIN(acked) FROM devices WHERE state = 'approved' AND role = ?"
                     " AND (role = 'full' OR site = ?)", [role, site]).fetchone()
    return int(row[0] or 0)
