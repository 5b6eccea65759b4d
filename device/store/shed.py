"""Write logs of records a scope never holds, shed in write order before they are pruned.

Theory of operation
-------------------
A kiosk that held everything and turns door drops nearly all it holds.
``collect`` prunes records in id order, and their rows in ``records``,
``field_values`` and ``conflicts`` are stored in that order too: whole pages
go at a time, freed, not written. Their write log is not: ``ops`` keeps its
rows in write order (tables, migration 3), so deleting one record's log
changes pages that hold rows of many other records, and each such page is
written again by every slice that deletes one of its rows: about as many
pages written as rows deleted.

So before the pass walks the records, the logs of the records of every type
its scope never holds, whatever their facts (``never_held``: a door holds
check-ins and verifiers only), go in write order, in two steps, each a
chunk at a time in the pass's slices (one transaction each):

1. ``mark``: those records, in id order, are marked ``partial`` (their write
   log is not whole: a write concurrent with them waits for the hub's write
   set, and a local write builds on the merged rows, which are exact for
   it): each page of ``records`` written once;
2. ``shed``: their ``ops`` rows go, in write order (pages freed whole), of
   marked records only.

A record with a write of this kiosk's own still in the outbox is left alone
by both, as are the kiosk's audit chain and a record in conflict (a local
write on a record whose log is not whole builds on its merged rows, which
are exact only without a conflict); the walk prunes those as before. The
records themselves and their ``seen`` dots (duplicates stay exact) stay
until the walk prunes them; after either step, or a crash, or a pass that
stops there, the store is as a compaction leaves it: consistent, each step
idempotent.
"""

from __future__ import annotations

import sqlite_utils

from protocol.crdt.schema import AUDIT, CHECKIN, ERASURE, PATIENT, TYPES, VERIFIER
from protocol.sync.audit import ID_PREFIX
from protocol.sync.scope import CLINICAL_OF_PATIENT, Scope

#: Rows a chunk of either step covers (records, then write-log rows).
CHUNK_ROWS = 512
#: Records with a write of this kiosk's own still queued or in flight.
NOT_UNSENT = "rid NOT IN (SELECT rid FROM outbox)"


def never_held(scope: Scope) -> tuple[int, ...]:
    """The record types ``scope`` never holds, whatever a record's facts (the kiosk's
    audit chain and erasures aside: no collection touches them)."""
    if scope.role == "door":
        held = {CHECKIN.number, VERIFIER.number}
    elif scope.role == "clinician":
        held = {CHECKIN.number, PATIENT.number, *CLINICAL_OF_PATIENT}
    else:
        return ()
    return tuple(sorted(t for t in TYPES
                        if t not in held and t not in (AUDIT.number, ERASURE.number)))


def mark(db: sqlite_utils.Database, types: tuple[int, ...], after: bytes
         ) -> tuple[bytes, bool]:
    """Step 1 for the next ``CHUNK_ROWS`` records after id ``after``: where it ended,
    and whether those were the last."""
    row = db.execute("SELECT rid FROM records WHERE rid > ? ORDER BY rid LIMIT 1 OFFSET ?",
                     [after, CHUNK_ROWS - 1]).fetchone()
    upto = " AND rid <= ?" if row else ""
    db.execute(f"UPDATE records SET partial = 1 WHERE rid > ?{upto} AND partial = 0"
               f" AND n_conflicts = 0 AND type IN ({_list(types)})"
               f" AND substr(rid, 1, 8) != ? AND {NOT_UNSENT}",
               [after, *([row[0]] if row else []), ID_PREFIX])
    return (row[0], False) if row else (after, True)


def shed(db: sqlite_utils.Database, types: tuple[int, ...], after: int) -> tuple[int, bool]:
    """Step 2 for the next ``CHUNK_ROWS`` rows of the write log after row ``after``:
    where it ended, and whether those were the last."""
    row = db.execute("SELECT id FROM ops WHERE id > ? ORDER BY id LIMIT 1 OFFSET ?",
                     [after, CHUNK_ROWS - 1]).fetchone()
    upto = " AND id <= ?" if row else ""
    db.execute(f"DELETE FROM ops WHERE id > ?{upto} AND type IN ({_list(types)})"
               f" AND {NOT_UNSENT} AND EXISTS (SELECT 1 FROM records r"
               " WHERE r.rid = ops.rid AND r.partial = 1)",
               [after, *([row[0]] if row else [])])
    return (row[0], False) if row else (after, True)


def _list(types: tuple[int, ...]) -> str:
    return ",".join(str(int(t)) for t in types)
