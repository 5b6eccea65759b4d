"""A patient's erasure: which records it covers, and what is left of their writes.

Theory of operation
-------------------
An erasure is an ordinary write that every replica applies by purging. The
hub writes a put on the patient's erasure record (type ``erasure``, named by
``erasure_record_id`` of the patient id, so two requests for one patient are
one record) and a delete of each of the patient's live records. Every replica
holding that record keeps, of each write to the patient's records, only its
*husk* (``husk``): the record id, type, dot, kind, causal context and the
conflict it resolves, with every value gone. Dots and heads survive, so
version vectors, scope sums and the merge's causality are the same with or
without the values, and replicas that purged at different times converge.

The patient's records are the patient record itself and every record whose
subject is the patient (``covers``). A write that reaches a replica after
the erasure, from a kiosk that had not heard of it, is husked on arrival.

Why not a per-patient key destroyed on erasure (crypto-shredding): any kiosk
derives a patient id offline, so two kiosks that meet one new patient apart
would need one key they cannot agree on, and a key derived from a master key
cannot be destroyed. The values are sealed at rest on every replica
already; purging them, with SQLite's secure_delete, leaves nothing to open.

Everything here is pure.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from protocol.crdt.delta import Delta
from protocol.crdt.schema import ERASURE, PATIENT, SUBJECT, TYPES

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

_ID_LABEL = b"haven/erasure-id/v1\x00"
#: The erasure record's fields, by name.
FIELDS = {f.name: f.number for f in ERASURE.fields}
#: The types whose records name a patient in ``subject`` (field 1).
SUBJECT_TYPES = frozenset(
    t.number for t in TYPES.values()
    if t.number not in (PATIENT.number, ERASURE.number) and t.by_number.get(1) == SUBJECT)


def erasure_record_id(patient: bytes) -> bytes:
    """The id of ``patient``'s erasure record (a version-8 UUID of a hash of the id)."""
    return _hashed_id(_ID_LABEL, patient)


def _hashed_id(label: bytes, patient: bytes) -> bytes:
    """A version-8 UUID of SHA-256(``label`` || ``patient``), a patient id (16 bytes)."""
    if type(patient) is not bytes or len(patient) != 16:
        raise ValueError("a patient id is 16 bytes")
    raw = bytearray(hashlib.sha256(label + patient).digest()[:16])
    raw[6] = (raw[6] & 0x0F) | 0x80
    raw[8] = (raw[8] & 0x3F) | 0x80
    return bytes(raw)


def husk(delta: Delta) -> Delta:
    """``delta`` with every value gone: what a replica keeps of an erased patient's write."""
    if not (delta.set or delta.add or delta.remove or delta.extra):
        return delta
    return replace(delta, set={}, add={}, remove={}, extra={})


def subject_of(rtype: int, rid: bytes, fields: Mapping[int, Any]) -> bytes | None:
    """The patient a record of type ``rtype`` belongs to, by its fields (wire form); None
    for a record of nobody (an audit entry, an erasure)."""
    if rtype == PATIENT.number:
        return rid
    if rtype in SUBJECT_TYPES:
        value = fields.get(SUBJECT.number)
        return value if type(value) is bytes and len(value) == 16 else None
    return None


def covers(erased: frozenset[bytes] | set[bytes], rtype: int, rid: bytes,
           fields: Mapping[int, Any]) -> bool:
    """Whether a record belongs to an erased patient (``erased``: their ids)."""
    return subject_of(rtype, rid, fields) in erased


_SUCCESSOR_LABEL = b"haven/erased-patient-successor/v1\x00"


def successor_id(patient: bytes) -> bytes:
    """The id a kiosk registers an erased patient under when they come back (the id
    their passport or code gives is erased for good): a version-8 UUID of a hash of the
    erased id, so every kiosk that knows of the erasure registers them under one id,
    offline too. Nothing of the erased record is carried over."""
    return _hashed_id(_SUCCESSOR_LABEL, patient)


def ids_across(first: bytes, rotations: Sequence[Callable[[bytes], bytes]],
               live: Callable[[bytes], bytes]) -> list[bytes]:
    """The id a patient is registered under in each generation of the fleet key, the
    first's first: ``first`` (what their passport or code gives under the first key),
    and each later one carried from the one before by that generation's ``rotations``
    entry, an erased id followed to its successor by ``live`` at every generation. An
    erasure made before a rotation names the first generation's id, so its successor is
    taken there, then carried: the id a kiosk still on the older key registers them
    under, and the hub remaps to."""
    out = [live(first)]
    for rotate in rotations:
        out.append(live(rotate(out[-1])))
    return out
