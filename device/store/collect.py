"""Garbage collection: out-of-scope records pruned, stable write logs dropped.

Theory of operation
-------------------
``collect`` walks the records in id order, a slice at a time; each slice is
one ``BULK`` job on the writer and one transaction, so a check-in waits for
one slice at most, and a crash (or a power cut: a slice commits without its
own fsync, the next check-in's commit carries it) loses at most the slice
in progress, which the next pass does again: every step is idempotent. A
pass that runs out of its time budget says so (``done`` false) and the next
one goes on from where it stopped (in memory; a restart begins again).

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
back).

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
from typing import TYPE_CHECKING

import sqlite_utils

from device.store.keys import FieldCipher
from device.store.materialise import op_label, parse_heads, refresh
from device.store.rebase import drop
from device.store.scope_state import ScopeReader
from device.store.writer import BULK
from protocol.crdt.clock import Dot
from protocol.crdt.delta import decode, encode
from protocol.crdt.schema import CHECKIN, PATIENT
from protocol.driver.database import immediate
from protocol.sync import audit as sync_audit
from protocol.sync.scope import CLINICAL_OF_PATIENT, WITHHELD_AT_DOOR, Scope

if TYPE_CHECKING:
    from device.store.store import Store

#: Records looked at in one slice (one transaction) at most; a slice also ends after
#: ``SLICE_S`` or as soon as a check-in waits, so a check-in waits for one record.
SLICE_RECORDS = 256
SLICE_S = 0.004
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
    after: bytes
    patients: set[bytes] | None = None  #: a clinician's, read once per pass
    patients_at: int = -1  #: ``Store.commits`` when they were read; -1: not yet
    after_start: bytes = b""  #: where this pass began


def collect(store: Store, scope: Scope, stable: int, budget_s: float) -> CollectReport:
    store.flush_acks()  # acknowledged writes leave the outbox first, with their arrival
    deadline = time.monotonic() + budget_s
    scope_was, start = store.gc_from
    state = _Pass(scope, stable, start if scope_was == scope else b"")
    state.after_start = state.after
    totals = [0, 0, 0]
    slices = 0
    while True:
        counts, finished = store.writer.call(functools.partial(_slice, store, state), BULK)
        slices += 1
        totals = [a + b for a, b in zip(totals, counts, strict=True)]
        if finished or time.monotonic() > deadline:
            break
    store.gc_from = (scope, b"" if finished else state.after)
    if finished and state.after_start == b"":  # a whole pass, start to end
        store.gc_settled = (scope.role, scope.site)
    return CollectReport(totals[0], totals[1], totals[2], slices, finished)


def _slice(store: Store, state: _Pass, db: sqlite_utils.Database
           ) -> tuple[tuple[int, int, int], bool]:
    started = time.perf_counter()
    reader = ScopeReader(db, store.cipher, state.scope, state.patients)
    if state.scope.role == "clinician" and state.patients_at < 0:
        state.patients = reader.patients()
        state.patients_at = store.commits
    patients_fresh = state.scope.role != "clinician" or state.patients_at == store.commits
    pruned = compacted = deleted = 0
    with immediate(db, synchronous="NORMAL"):
        rows = db.execute(
            "SELECT rid, type, deleted, n_conflicts, heads, stale, seen IS NOT NULL, seen_at,"
            " partial FROM records WHERE rid > ? ORDER BY rid LIMIT ?",
            [state.after, SLICE_RECORDS]).fetchall()
        unsent = {r for (r,) in db.execute("SELECT DISTINCT rid FROM outbox").fetchall()}
        logged = {rid: (n, top) for rid, n, top in db.execute(
            "SELECT rid, COUNT(*), MAX(COALESCE(arrived, ?)) FROM ops WHERE rid > ? AND rid <= ?"
            " GROUP BY rid", [NEVER, state.after, rows[-1][0] if rows else state.after])}
        settled = store.gc_settled == (state.scope.role, state.scope.site)
        door = state.scope.role == "door"
        gone: list[bytes] = []
        done = 0
        for rid, rtype, is_deleted, n_conf, heads, stale, has_seen, seen_at, partial in rows:
            if done and (store.writer.urgent_waiting()
                         or time.perf_counter() - started > SLICE_S):
                break  # a check-in waits: commit what is done, go on in the next slice
            done += 1
            n_ops, top_ops = logged.get(rid, (0, 0))
            if rid in unsent or sync_audit.is_audit_id(rid):
                continue
            if not (patients_fresh or rtype not in (PATIENT.number, *CLINICAL_OF_PATIENT)):
                continue
            if (settled and rtype != CHECKIN.number and state.scope.role == "door"
                    and not (has_seen or n_ops)):
                continue  # in scope at the last whole pass, and unchanged since
            if not reader.holds(rid, rtype):
                gone.append(rid)
                pruned += 1
                continue
            if stale or not (has_seen or n_ops) or max(seen_at, top_ops) > state.stable:
                continue  # waiting for the hub, nothing to drop, or not all of it stable
            if n_conf or not (is_deleted or len(parse_heads(heads)) == 1):
                if door and rtype == CHECKIN.number and n_ops and not partial:
                    _forget_typed(db, store.cipher, rid)  # a conflict keeps the log
                continue
            if is_deleted:
                gone.append(rid)
                deleted += 1
            else:
                db.execute("DELETE FROM ops WHERE rid = ?", [rid])
                db.execute("UPDATE records SET partial = 1, seen = NULL, seen_at = 0"
                           " WHERE rid = ?", [rid])
                if door and rtype == CHECKIN.number:
                    db.execute("DELETE FROM field_values WHERE rid = ? AND field IN"
                               f" ({','.join(map(str, sorted(WITHHELD_AT_DOOR)))})", [rid])
                compacted += 1
        drop(db, gone)
    if done:
        state.after = rows[done - 1][0]
    store.after_commit(done or 1)
    if state.scope.role == "clinician" and patients_fresh:
        state.patients_at = store.commits  # our own commit changes nothing it read
    return (pruned, compacted, deleted), done == len(rows) < SLICE_RECORDS


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
