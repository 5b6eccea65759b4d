"""Garbage collection: out-of-scope records pruned, stable write logs dropped.

Theory of operation
-------------------
``collect`` walks the records in id order, a slice at a time; each slice is
one ``BULK`` job on the writer and one transaction, so a check-in waits for
one chunk of records at most (a slice takes chunks until ``SLICE_S`` has
passed, ``BUSY_SLICE_S`` while check-ins come, or one waits), and a crash
(or a power cut: a slice commits without its own fsync, the next check-in's
commit carries it) loses at most the slice in progress, which the next pass
does again: every step is idempotent. A pass that runs out of its time
budget says so (``done`` false) and the next one goes on from where it
stopped (in memory; a restart begins again). For a door or a clinician, the
walk comes after the logs of every record of a type the scope never holds
are shed in write order (``shed.py``: the cheap way when a full kiosk turns
door and drops nearly everything).

What a slice deletes goes set by set: a run of neighbouring records that go
entirely, by id range (their rows are neighbours in every table but the
write log); freed pages are not written over with zeros (``secure_delete``
FAST: deleted cells are zeroed in the pages the slice writes anyway, but a page
it frees is not, which would write every byte pruned twice, WAL then database;
pruned is not wiped in any case, the threat model says why).
Once the WAL has grown past ``SETTLE_AFTER``, the pass waits off the writer
for a checkpoint, and the WAL starts over.

In each slice, a record with a write of this kiosk's own still in the outbox
(unsent, or sent and not acknowledged) is left alone: nothing unsynced is
ever pruned. Of the others:

1. a record out of the kiosk's scope goes, every row of it;
2. a record wholly stable (every write's arrival, ``records.seen_at`` or
   ``ops.arrived``, at or below the hub's stable point, which every replica
   of the scope has acknowledged), in no conflict and not stale, with one
   head, keeps its merged rows only: its write log (``ops``, ``seen``) goes
   and it is marked ``partial``; a deleted one (every head a delete) goes
   entirely. A door kiosk's check-in loses what the patient typed there
   (``scope.WITHHELD_AT_DOOR``: the hub never sends a door those fields, and
   it keeps its own only until they are stable); one in conflict keeps its
   log, each write of it without those fields, as the hub sends them.

Conflict versions need nothing: ``conflicts`` only ever holds the current
ones. The kiosk's audit chain is never touched (``device.audit`` reads it
back), nor is an erasure record (``erasure``: a kiosk never forgets one).

A clinician's patients are those named by its check-ins in scope, read once
per pass; if anything else wrote since, patients and their records are not
pruned in that slice (the next pass looks again), so a check-in merged
during the pass never loses its patient.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlite_utils

from device.store import shed
from device.store.db import WAL_LIMIT, secure_delete
from device.store.keys import FieldCipher
from device.store.materialise import op_label, parse_heads, refresh
from device.store.rebase import RECORD_TABLES
from device.store.scope_state import ScopeReader
from device.store.writer import BULK
from protocol.crdt.clock import Dot
from protocol.crdt.delta import decode, encode
from protocol.crdt.schema import CHECKIN, ERASURE, PATIENT, VERIFIER
from protocol.driver.database import immediate
from protocol.sync import audit as sync_audit
from protocol.sync.scope import CLINICAL_OF_PATIENT, WITHHELD_AT_DOOR, Scope

if TYPE_CHECKING:
    from device.store.store import Store

#: Records judged and deleted together (one set of statements); a slice (one
#: transaction) takes chunks of them until ``SLICE_S`` has passed or a check-in waits,
#: so a check-in waits for one chunk at most.
SLICE_RECORDS = 64
SLICE_S = 0.05
#: ... but only ``BUSY_SLICE_S`` while check-ins come (one in the last ``BUSY_S``): each
#: check-in's commit, fsynced, writes out what the slices before it wrote to the WAL.
BUSY_SLICE_S = 0.004
BUSY_S = 1.0
#: Past this size of the WAL, the pass waits for a checkpoint before its next slice, at
#: most ``SETTLE_S``. Each checkpoint writes the pages the slices changed since the last
#: into the database, 1 KiB pages scattered over 4 KiB pages of the card, so rarer ones
#: write less: a 20-day full kiosk turned door (242 MiB) wrote 370 MiB with a WAL grown
#: to 186 MiB when never settled, 712 MiB with it kept under 65 MiB (64 MiB here).
SETTLE_AFTER = 16 * WAL_LIMIT
SETTLE_S = 5.0
#: What a pass counts, in ``CollectReport``'s order.
COUNTED = ("pruned", "compacted", "dropped")
#: An ``ops`` row without an arrival (a write whose acknowledgement gave none) is
#: never stable.
NEVER = 1 << 62


@dataclass(frozen=True)
class CollectReport:
    pruned: int = 0  #: records out of scope, dropped
    compacted: int = 0  #: records whose write log went
    dropped_deleted: int = 0  #: deleted records, dropped
    slices: int = 0
    done: bool = True  #: False: the budget ran out; the next pass goes on


@dataclass
class _Pass:
    scope: Scope
    stable: int
    phase: str  #: ``mark`` and ``shed`` (``shed.py``), then ``walk``
    after: bytes = b""  #: the last record id done (``mark``, ``walk``)
    after_id: int = 0  #: the last write-log row done (``shed``)
    patients: set[bytes] | None = None  #: a clinician's, read once per pass
    patients_at: int = -1  #: ``Store.commits`` when they were read; -1: not yet
    whole: bool = True  #: the pass began at the beginning

    @classmethod
    def resume(cls, scope: Scope, stable: int, position: bytes) -> _Pass:
        """A pass from where the last one for ``scope`` stopped (``position``, as
        ``position`` gave it; empty: the beginning)."""
        first = PHASES[0] if shed.never_held(scope) else "walk"
        if not position:
            return cls(scope, stable, first)
        phase, at = PHASES[position[0]], position[1:]
        if phase == "shed":
            return cls(scope, stable, phase, after_id=int.from_bytes(at, "big"), whole=False)
        return cls(scope, stable, phase, after=at, whole=False)

    def position(self) -> bytes:
        at = self.after_id.to_bytes(8, "big") if self.phase == "shed" else self.after
        return bytes([PHASES.index(self.phase)]) + at

    def next_phase(self) -> bool:
        """On to the next phase, from its beginning; False after the last."""
        if self.phase == "walk":
            return False
        self.phase, self.after, self.after_id = PHASES[PHASES.index(self.phase) + 1], b"", 0
        return True


PHASES = ("mark", "shed", "walk")


def collect(store: Store, scope: Scope, stable: int, budget_s: float) -> CollectReport:
    store.flush_acks()  # acknowledged writes leave the outbox first, with their arrival
    deadline = time.monotonic() + budget_s
    scope_was, start = store.gc_from
    state = _Pass.resume(scope, stable, start if scope_was == scope else b"")
    totals = [0, 0, 0]
    slices = 0
    while True:
        job = _walk if state.phase == "walk" else _shed
        counts, finished = store.writer.call(functools.partial(job, store, state), BULK)
        slices += 1
        totals = [a + b for a, b in zip(totals, counts, strict=True)]
        if finished:
            finished = not state.next_phase()
        if finished or time.monotonic() > deadline:
            break
        _settle(store)
    store.gc_from = (scope, b"" if finished else state.position())
    if finished and state.whole:  # a whole pass, start to end
        store.gc_settled = (scope.role, scope.site)
    return CollectReport(totals[0], totals[1], totals[2], slices, finished)


def _settle(store: Store) -> None:
    """Between two slices: once the WAL has grown past ``SETTLE_AFTER``, wait off the
    writer for a checkpoint, so that it starts over instead of growing by everything the
    pass writes (hundreds of MiB when a full kiosk turns door)."""
    try:
        size = store.path.with_name(store.path.name + "-wal").stat().st_size
    except OSError:
        return
    if size > SETTLE_AFTER and store.checkpointer.settle(SETTLE_S):
        # What check-ins committed meanwhile, copied too (a few pages), off the writer as
        # well (a checkpoint's fsync there held check-ins up for hundreds of ms): with
        # nothing left in the WAL to copy, the next commit starts it over and cuts it back.
        store.checkpointer.settle(SETTLE_S)


def _slice_s(store: Store) -> float:
    return BUSY_SLICE_S if store.writer.urgent_lately(BUSY_S) else SLICE_S


def _shed(store: Store, state: _Pass, db: sqlite_utils.Database
          ) -> tuple[tuple[int, int, int], bool]:
    """A slice of the steps before the walk (``shed.py``): whether the step is done."""
    started, limit = time.perf_counter(), _slice_s(store)
    types = shed.never_held(state.scope)
    after, after_id, done, chunks = state.after, state.after_id, False, 0
    with secure_delete(db, "FAST"), immediate(db, synchronous="NORMAL"):
        while not done:
            if state.phase == "mark":
                after, done = shed.mark(db, types, after)
            else:
                after_id, done = shed.shed(db, types, after_id)
            chunks += 1
            if store.writer.urgent_waiting() or time.perf_counter() - started > limit:
                break
    state.after, state.after_id = after, after_id
    store.after_commit(1)
    return (0, 0, 0), done


def _walk(store: Store, state: _Pass, db: sqlite_utils.Database
          ) -> tuple[tuple[int, int, int], bool]:
    """A slice of the walk over the records: whether it reached the last."""
    started, limit = time.perf_counter(), _slice_s(store)
    reader = ScopeReader(db, store.cipher, state.scope, state.patients)
    if state.scope.role == "clinician" and state.patients_at < 0:
        state.patients = reader.patients()
        state.patients_at = store.commits
    patients_fresh = state.scope.role != "clinician" or state.patients_at == store.commits
    counts = [0, 0, 0]
    after, done, finished = state.after, 0, False
    with secure_delete(db, "FAST"), immediate(db, synchronous="NORMAL"):
        unsent = {r for (r,) in db.execute("SELECT DISTINCT rid FROM outbox").fetchall()}
        while not finished:
            rows = db.execute(
                "SELECT rid, type, deleted, n_conflicts, heads, stale, seen IS NOT NULL,"
                " seen_at, partial FROM records WHERE rid > ? ORDER BY rid LIMIT ?",
                [after, SLICE_RECORDS]).fetchall()
            finished = len(rows) < SLICE_RECORDS
            if rows:
                _chunk(store, state, db, reader, rows, unsent, patients_fresh, counts)
                after = rows[-1][0]
                done += len(rows)
            if store.writer.urgent_waiting() or time.perf_counter() - started > limit:
                break  # a check-in waits, or the slice's time is up: commit, go on later
    state.after = after
    store.after_commit(1)
    if state.scope.role == "clinician" and patients_fresh:
        state.patients_at = store.commits  # our own commit changes nothing it read
    return (counts[0], counts[1], counts[2]), finished


def _chunk(store: Store, state: _Pass, db: sqlite_utils.Database, reader: ScopeReader,
           rows: list[tuple[Any, ...]], unsent: set[bytes], patients_fresh: bool,
           counts: list[int]) -> None:
    """Records ``rows`` (consecutive in id order) judged, and what goes of them deleted
    set by set: runs of records that go entirely by id range, logs in one statement."""
    logged = {rid: (n, top) for rid, n, top in db.execute(
        "SELECT rid, COUNT(*), MAX(COALESCE(arrived, ?)) FROM ops WHERE rid >= ? AND rid <= ?"
        " GROUP BY rid", [NEVER, rows[0][0], rows[-1][0]])}
    settled = store.gc_settled == (state.scope.role, state.scope.site)
    door = state.scope.role == "door"
    runs: list[list[bytes]] = []  #: runs of neighbouring records that go entirely
    run: list[bytes] = []
    compact: list[bytes] = []
    for row in rows:
        rid, rtype, n_ops = row[0], row[1], logged.get(row[0], (0, 0))[0]
        kept = (rid in unsent or sync_audit.is_audit_id(rid) or rtype == ERASURE.number
                or not (patients_fresh or rtype not in (PATIENT.number, *CLINICAL_OF_PATIENT))
                or (settled and door and rtype == VERIFIER.number and not (row[6] or n_ops)))
        # (the last: in scope at the last whole pass, and unchanged since; a record of a
        # type never held may have lost its log to ``shed`` and must be looked at)
        verdict = None if kept else _verdict(state, reader, row, logged.get(rid, (0, 0)))
        goes = verdict in ("pruned", "dropped")
        if verdict in COUNTED:
            counts[COUNTED.index(verdict)] += 1
        if verdict == "compacted":
            compact.append(rid)
        elif verdict == "forget" and door and rtype == CHECKIN.number and n_ops and not row[8]:
            _forget_typed(db, store.cipher, rid)  # a conflict keeps the log
        if goes:
            run.append(rid)
        elif run:
            runs.append(run)
            run = []
    if run:
        runs.append(run)
    drop_runs(db, runs)
    if compact:
        _compact(db, compact, door_checkins={
            rid for rid, rtype, *_ in rows if door and rtype == CHECKIN.number})


def _verdict(state: _Pass, reader: ScopeReader, row: tuple[Any, ...], logged: tuple[int, int]
             ) -> str | None:
    """What becomes of a record no unsent write holds: ``pruned`` (out of scope),
    ``dropped`` (deleted, stable), ``compacted`` (stable, one head, no conflict: its log
    goes), ``forget`` (stable, in conflict: its log stays), None (nothing yet)."""
    rid, rtype, is_deleted, n_conf, heads, stale, has_seen, seen_at, _ = row
    n_ops, top_ops = logged
    if not reader.holds(rid, rtype):
        return "pruned"
    if stale or not (has_seen or n_ops) or max(seen_at, top_ops) > state.stable:
        return None  # waiting for the hub, nothing to drop, or not all of it stable
    if n_conf or not (is_deleted or len(parse_heads(heads)) == 1):
        return "forget"
    return "dropped" if is_deleted else "compacted"


def drop_runs(db: sqlite_utils.Database, runs: list[list[bytes]]) -> None:
    """Every row of the records in ``runs``; each run holds neighbours in id order (no
    other record's id between its first and last), so it goes by range."""
    for table in RECORD_TABLES:
        db.conn.executemany(f"DELETE FROM {table} WHERE rid BETWEEN ? AND ?",
                            [(r[0], r[-1]) for r in runs])


def _compact(db: sqlite_utils.Database, rids: list[bytes], door_checkins: set[bytes]
             ) -> None:
    """Stable records keep their merged rows only (a door's check-ins without what the
    patient typed)."""
    marks = ",".join("?" * len(rids))
    db.execute(f"DELETE FROM ops WHERE rid IN ({marks})", rids)
    db.execute(f"UPDATE records SET partial = 1, seen = NULL, seen_at = 0 WHERE rid IN ({marks})",
               rids)
    typed = [rid for rid in rids if rid in door_checkins]
    if typed:
        db.execute(f"DELETE FROM field_values WHERE rid IN ({','.join('?' * len(typed))})"
                   f" AND field IN ({','.join(map(str, sorted(WITHHELD_AT_DOOR)))})", typed)


def _forget_typed(db: sqlite_utils.Database, cipher: FieldCipher, rid: bytes) -> None:
    """A door's stable check-in that keeps its write log (its versions are in conflict):
    every write of it without what the patient typed (``WITHHELD_AT_DOOR``), as the hub
    sends them to a door, under the same dots; the record rebuilt from them."""
    changed = []
    for stamp, node, sealed in db.execute(
            "SELECT stamp, node, sealed FROM ops WHERE rid = ?", [rid]).fetchall():
        label = op_label(rid, Dot(stamp, node))
        delta = decode(cipher.open_blob(label, sealed))
        if WITHHELD_AT_DOOR & delta.set.keys():
            kept = {k: v for k, v in delta.set.items() if k not in WITHHELD_AT_DOOR}
            changed.append((cipher.seal_blob(label, encode(dataclasses.replace(delta, set=kept))),
                            rid, stamp, node))
    if changed:
        db.conn.executemany("UPDATE ops SET sealed = ? WHERE rid = ? AND stamp = ? AND node = ?",
                            changed)
        refresh(db, cipher, rid)
