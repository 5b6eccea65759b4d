"""What the store holds of its scope: each record's facts, and the scope's checksum.

Theory of operation
-------------------
Whether a record is in the kiosk's scope is decided by ``protocol.sync.scope``
from a few facts of it (type, site, subject, day). The store keeps them
sealed like every other value, so ``ScopeReader`` opens just the fields the
facts come from (subject, site, start), and only for the types whose scope
depends on them; a ``full`` kiosk needs none. A clinician's patients are
the subjects of its check-ins in scope, so check-ins are read first.

The checksum (``scope.scope_checksum``) is over every head of each record
(``records.heads``) and whether each is a delete. That is plain when every
head is (the record is deleted: left out of the sum) or none is (no delete
among its writes, or no conflict), and otherwise read from the versions of
the delete-update conflict, which names every head.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import sqlite_utils

from device.store.keys import FieldCipher
from device.store.materialise import parse_heads, read_view
from protocol import strict_cbor
from protocol.crdt.clock import Dot
from protocol.crdt.schema import AUDIT, CHECKIN, ERASURE, PATIENT, VERIFIER
from protocol.sync.scope import CLINICAL_OF_PATIENT, Facts, Head, Scope, facts_of, in_scope
from protocol.sync.sensor_records import is_sensor_id
from protocol.sync.telemetry import is_telemetry_id

#: The fields facts are read from: subject, a verifier's site, a check-in's start and site.
FACT_FIELDS = (1, 3, 4, 5)
_NEEDS_FIELDS = frozenset((CHECKIN.number, VERIFIER.number, *CLINICAL_OF_PATIENT))


class ScopeReader:
    """Facts of records, and whether they are in ``scope``, over one connection."""

    def __init__(self, db: sqlite_utils.Database, cipher: FieldCipher, scope: Scope,
                 patients: set[bytes] | None = None) -> None:
        self.db, self.cipher, self.scope = db, cipher, scope
        self._patients = patients

    def facts(self, rid: bytes, rtype: int) -> Facts:
        if rtype not in _NEEDS_FIELDS:
            return Facts(rid, rtype)
        fields: dict[int, Any] = {}
        for field, stamp, node, sealed in self.db.execute(
                "SELECT field, stamp, node, sealed FROM field_values WHERE rid = ?"
                f" AND field IN ({','.join(map(str, FACT_FIELDS))})", [rid]).fetchall():
            fields[field] = strict_cbor.loads(self.cipher.open_field(rid, field, stamp, node,
                                                                     sealed))
        return facts_of(rid, rtype, fields)

    def patients(self) -> set[bytes]:
        """The subjects of the check-ins in scope (a clinician's patients)."""
        if self._patients is None:
            self._patients = set()
            if self.scope.role == "clinician":
                for (rid,) in self.db.execute("SELECT rid FROM records WHERE type = ?",
                                              [CHECKIN.number]).fetchall():
                    facts = self.facts(rid, CHECKIN.number)
                    if facts.subject is not None and in_scope(self.scope, facts):
                        self._patients.add(facts.subject)
        return self._patients

    def holds(self, rid: bytes, rtype: int) -> bool:
        """Whether the record is in the scope."""
        if self.scope.role == "full":
            return rtype != AUDIT.number and not is_telemetry_id(rid) and not is_sensor_id(rid)
        if self.scope.role == "door" and rtype not in (CHECKIN.number, VERIFIER.number,
                                                       ERASURE.number):
            return False
        patients = self.patients() if rtype in (PATIENT.number, *CLINICAL_OF_PATIENT) else ()
        return in_scope(self.scope, self.facts(rid, rtype), patients)


def held_heads(db: sqlite_utils.Database, cipher: FieldCipher, reader: ScopeReader
               ) -> Iterator[Head]:
    """(rid, stamp, node, is_delete) of every head of each held record in scope."""
    for row in db.execute("SELECT rid, type, deleted, n_conflicts, has_delete, heads, extra"
                          " FROM records").fetchall():
        # A deleted record is left out of the sum: no facts needed.
        if row[2] or reader.holds(row[0], row[1]):
            yield from record_heads(db, cipher, *row)


def record_heads(db: sqlite_utils.Database, cipher: FieldCipher, rid: bytes, rtype: int,
                 deleted: int, n_conf: int, has_delete: int, heads: bytes, extra: Any
                 ) -> list[Head]:
    """(rid, stamp, node, is_delete) of every head of one record as held (its
    ``records`` row)."""
    dots = parse_heads(heads)
    deletes: set[Dot] = set()
    if deleted:
        deletes = dots
    elif has_delete and n_conf:
        view = read_view(db, cipher, rid, rtype, False, heads, extra)
        deletes = {v.dot for c in view.conflicts for v in c.versions if v.deleted}
    return [(rid, d.stamp, d.node, d in deletes) for d in dots]
