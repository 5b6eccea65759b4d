"""Which patients the hub erased, and the husks it keeps of writes to their records.

Theory of operation
-------------------
An erased patient is one whose erasure record (``protocol.crdt.erasure``)
the hub holds: ``record_facts`` keeps that record's type and patient, with
no site, as it keeps every record's facts, so the erased are found by the
index on site (a site of none). A patient's records are the patient record
and every record whose ``subject`` fact names them; the facts outlive the
purge (they hold no value), so a write that arrives later is matched.

``husked`` runs in the transaction that commits a kiosk's batch (or a
released quarantined delta): a write to an erased patient's record, from a
kiosk that had not heard of the erasure, is stored as its husk (dot, kind,
context; no value). The kiosk's write is acknowledged as any other, every
replica's heads stay the same, and no pull ever serves its values. A hub
that erased nobody pays one look-up per batch.
"""

from __future__ import annotations

from collections.abc import Iterable

from host.hub.database import Db, rows_in
from protocol.crdt.delta import Delta, encode
from protocol.crdt.erasure import husk, subject_of
from protocol.crdt.schema import ERASURE

#: SQL: the erased patients (the subjects of the erasure records held).
ERASED = f"SELECT subject FROM record_facts WHERE location IS NULL AND type = {ERASURE.number}"


def erased(db: Db) -> set[bytes]:
    """The patients the hub holds an erasure of."""
    return {bytes(s) for (s,) in db.execute(ERASED) if s is not None}


def records_of(db: Db, patients: Iterable[bytes]) -> set[bytes]:
    """The records of ``patients``: their own, and every record naming one as its
    subject (the erasure records aside)."""
    out: set[bytes] = set()
    for pid in patients:
        out.add(pid)
        out.update(bytes(r) for (r,) in db.execute(
            "SELECT rid FROM record_facts WHERE subject = ? AND type != ?",
            [pid, ERASURE.number]))
    return out


def covered(db: Db, patients: set[bytes], delta: Delta,
            theirs: set[bytes] | None = None) -> bool:
    """Whether ``delta`` writes a record of one of ``patients``: by the record's facts
    held (``theirs``: the erased patients' records among those asked, if known), or by
    the subject it sets."""
    if delta.type == ERASURE.number:
        return False
    if delta.record_id in patients or subject_of(delta.type, delta.record_id,
                                                 delta.set) in patients:
        return True
    return delta.record_id in (_theirs(db, [delta.record_id]) if theirs is None else theirs)


def _theirs(db: Db, rids: list[bytes]) -> set[bytes]:
    """Those of ``rids`` whose facts name an erased patient."""
    return _facts_match(db, rids, f"subject IN ({ERASED})")


def erasure_records(db: Db, rids: list[bytes]) -> set[bytes]:
    """Those of ``rids`` that are erasure records held: a kiosk's write to one, whatever
    type it says, is the hub's to refuse (its facts would name another patient)."""
    return _facts_match(db, rids, f"type = {ERASURE.number} AND location IS NULL")


def _facts_match(db: Db, rids: list[bytes], where: str) -> set[bytes]:
    return {bytes(r) for (r,) in rows_in(
        db, f"SELECT rid FROM record_facts WHERE rid IN ({{marks}}) AND {where}", rids)}


def husked(db: Db, good: list[tuple[Delta, bytes]],
           ) -> list[tuple[Delta, bytes]]:
    """``good`` (delta, bytes), each write to an erased patient's record with its husk's
    bytes instead (the delta stays whole: its facts are noted as they came)."""
    patients = erased(db)
    if not patients:
        return good
    theirs = _theirs(db, sorted({d.record_id for d, _ in good}))
    return [(d, encode(husk(d)) if covered(db, patients, d, theirs) else data)
            for d, data in good]
