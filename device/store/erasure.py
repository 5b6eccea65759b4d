"""A patient's erasure on the kiosk: what the store holds of them purged, later writes husked.

Theory of operation
-------------------
Only the hub writes an erasure record (``protocol.crdt.erasure``); a local
write of that type is refused (``check_local``). Every path a delta from
elsewhere takes into the store (a pull, a quarantined delta released,
another kiosk's file: ``inbox``; a stale record's write set and a scope's
snapshot: ``rebase``) hands its decoded deltas to ``arriving`` inside its
transaction, before they merge. There:

1. an erasure record among them whose id is not the erasure id of its
   subject is no erasure (``inbox`` quarantines it); a valid one for a
   patient not erased yet makes the patient erased from then on, and its
   own record is purged (``purge``: each write in its log replaced by its
   husk, sealed again under the same dot, so the outbox still sends the dot;
   the merged rows rebuilt without a value, from the husked log when it is
   whole, else the rows as they were with every value gone), as are the
   quarantined deltas of the patient's records (husked);
2. every delta of an erased patient's record, or naming an erased patient
   as its subject, is husked before it merges; a record it names that the
   store held already is purged as above.

The other records of the patient are found by their subject, which is
sealed: ``finish``, right after the commit on the writer thread, opens the
subject field of every record of a type that has one (a deleted record's
from its write log) and purges the patient's, a slice at a time, each its
own transaction with check-ins going between (seconds on a kiosk that holds
a year). Meanwhile no local write can put a value on the patient (a record
already found is refused, a new one names the patient), and a write from
elsewhere to a record not reached yet is purged when the scan reaches it.
Its place is kept in ``meta``: a crash leaves it owed, and the store's next
open goes on (``owed``).

The erased patients are read back from the erasure records (their subjects,
sealed) when the store opens, and their records from ``meta`` (one row per
record, ``erased:`` and its id: the husks carry no subject to match later
writes by, and a deleted record's rows may be collected). Erasure records
are never collected and survive a rebase.

All of it runs with ``secure_delete`` on, so the bytes deleted or replaced
are zeroed in the pages written. Then ``finish`` writes the free pages of
the file over with zeros (pages freed earlier by a garbage-collection pass,
which frees without zeroing, may hold the patient's sealed values), in
slices that let check-ins go first; drops the content of documents only
erased records used (``device.sync.document_store``); and checkpoints the
WAL, which holds the pages as they were, and cuts it to nothing
(``wal_checkpoint(TRUNCATE)``).

A patient who checks in again after their erasure is a new registration
(``Store.checkin``): the id their passport or code gives stays erased, and
they are registered under its ``successor_id``, from what they type.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import sqlite3
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import sqlite_utils

from device.store.db import secure_delete
from device.store.exc import BadRequest, CorruptData
from device.store.keys import FieldCipher
from device.store.materialise import op_label, read_view, refresh, rewrite
from protocol import strict_cbor
from protocol.crdt.clock import Dot
from protocol.crdt.delta import Delta, decode, encode
from protocol.crdt.erasure import (
    SUBJECT_TYPES,
    erasure_record_id,
    husk,
    ids_across,
    successor_id,
)
from protocol.crdt.record import RecordView
from protocol.crdt.schema import ERASURE, SUBJECT
from protocol.driver.database import immediate
from protocol.errors import RemoteProtocolError

if TYPE_CHECKING:
    from device.store.fleet import FleetKey
    from device.store.store import Store

log = logging.getLogger("haven.store")
#: ``meta`` keys: a record of an erased patient (``erased:`` and its id in hex) ...
RECORD_KEY = "erased:"
#: ... and the zeros written over free pages while a wipe runs (``wipe_free``).
WIPE_KEY = "erasure-wipe:"
#: Free pages written over per transaction (1 KiB each); check-ins go between.
WIPE_PAGES = 2048
#: ``meta``: an erasure's ``finish`` owed: where its scan goes on (a record id in hex),
#: or ``DONE`` once it is done.
FINISH_KEY = "erasure-finish"
DONE = "done"
#: Records whose subject a scan slice opens (one transaction).
SCAN_RECORDS = 1024
SET_META = "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)"
GET_META = "SELECT value FROM meta WHERE key = ?"
#: Successors followed at most (a patient erased, back, erased again...).
MAX_SUCCESSORS = 64
SUBJECT_FIELD = SUBJECT.number
_QUARANTINE = b"quarantine"  # the seal's label (``inbox``, ``quarantine``)


@dataclass(frozen=True)
class Erased:
    """The erased patients a store knows of, and their records it held or was sent."""

    patients: frozenset[bytes] = frozenset()
    records: frozenset[bytes] = frozenset()

    def covers(self, delta: Delta) -> bool:
        """Whether ``delta`` is a write of an erased patient's record."""
        if delta.type == ERASURE.number:
            return False
        rid = delta.record_id
        return (rid in self.records or rid in self.patients
                or delta.type in SUBJECT_TYPES and _among(delta.set.get(SUBJECT_FIELD),
                                                          self.patients))

    def live_id(self, patient: bytes) -> bytes:
        """``patient``, or the successor it is registered under if it is erased."""
        for _ in range(MAX_SUCCESSORS):
            if patient not in self.patients:
                return patient
            patient = successor_id(patient)
        raise BadRequest("this patient was erased too many times to register again",
                         "erased")

    def registered_id(self, fleet: FleetKey, gave: tuple[str, str],
                      given: uuid.UUID) -> bytes:
        """The id a patient who gave ``gave`` (("passport", number) or ("code", code))
        is registered under at generation ``fleet``, whose id of it is ``given``: their
        first generation's id carried through the rotations, an erased one followed to
        its successor at each (``ids_across``). A TPM's key takes a command per id:
        none more before a rotation."""
        rotations = fleet.rotations()
        if rotations:
            first = fleet.generations()[-1]
            given = (first.patient_id(gave[1]) if gave[0] == "passport"
                     else first.code_patient_id(gave[1]))
        return ids_across(given.bytes, rotations, self.live_id)[-1]

    def holds(self, rid: bytes) -> bool:
        """Whether record ``rid`` is an erased patient's."""
        return rid in self.records or rid in self.patients

    def more(self, patients: Iterable[bytes] = (), records: Iterable[bytes] = ()) -> Erased:
        return Erased(self.patients | frozenset(patients), self.records | frozenset(records))


def _among(value: object, patients: frozenset[bytes]) -> bool:
    """Whether a subject field's value (a quarantined delta's may be of any kind) is one
    of ``patients``."""
    return type(value) is bytes and value in patients


def erasure_subject(delta: Delta) -> bytes | None:
    """The patient an erasure record's write erases; None for any other write, or for one
    whose record id is not its subject's erasure id (``refusal``)."""
    if delta.type != ERASURE.number or delta.is_delete:
        return None
    subject = delta.set.get(SUBJECT_FIELD)
    if type(subject) is not bytes or len(subject) != 16:
        return None
    return subject if erasure_record_id(subject) == delta.record_id else None


def refusal(delta: Delta) -> RemoteProtocolError | None:
    """Why a delta from elsewhere is quarantined on erasure grounds: an erasure record's
    put whose record id is not its subject's erasure id."""
    if (delta.type == ERASURE.number and not delta.is_delete
            and SUBJECT_FIELD in delta.set and erasure_subject(delta) is None):
        return RemoteProtocolError("an erasure record's id is not its subject's erasure id",
                                   "bad-erasure")
    return None


def check_local(erased: Erased, delta: Delta) -> None:
    """Refuse a local write of an erasure (the hub writes them), or one that would write
    a value of an erased patient's record (a husk, as a write made again under a new
    node, passes)."""
    if delta.type == ERASURE.number:
        raise BadRequest("only the hub writes an erasure (haven hub erase)", "erasure-local")
    if erased.covers(delta) and husk(delta) is not delta:
        raise BadRequest("this patient's data was erased: nothing of theirs is written "
                         "again (a patient who comes back checks in as new)", "erased")


def load(db: sqlite_utils.Database, cipher: FieldCipher) -> Erased:
    """What ``db`` says is erased: the subjects of its erasure records, and the records
    kept in ``meta``."""
    patients = set()
    for rid, stamp, node, sealed in db.execute(
            "SELECT r.rid, f.stamp, f.node, f.sealed FROM records r JOIN field_values f"
            " ON f.rid = r.rid AND f.field = ? WHERE r.type = ?",
            [SUBJECT_FIELD, ERASURE.number]).fetchall():
        subject = strict_cbor.loads(cipher.open_field(rid, SUBJECT_FIELD, stamp, node, sealed))
        if type(subject) is bytes and erasure_record_id(subject) == rid:
            patients.add(subject)
    records = {bytes.fromhex(key[len(RECORD_KEY):]) for (key,) in db.execute(
        "SELECT key FROM meta WHERE key >= ? AND key < ?", [RECORD_KEY, RECORD_KEY[:-1] + ";"])}
    return Erased(frozenset(patients), frozenset(records))


def arriving(store: Store, db: sqlite_utils.Database, items: list[tuple[Delta, bytes]]
             ) -> list[tuple[Delta, bytes]]:
    """Deltas from elsewhere about to merge (in the caller's transaction, on the writer):
    new erasures among them purge their patients' own records and owe the scan for the
    rest (``finish``); the writes of erased patients' records come back as husks."""
    erased = store.erased
    new = {s for d, _ in items if (s := erasure_subject(d)) is not None} - erased.patients
    if new:
        erased = erased.more(new)
        store.erased = erased
        db.execute(SET_META, [FINISH_KEY, ""])  # the scan, from the first record
    named = {d.record_id for d, _ in items if erased.covers(d)} - erased.records
    if new:  # the patient records held, and every quarantined delta of the patients
        named |= {r for (r,) in db.execute(
            f"SELECT rid FROM records WHERE rid IN ({','.join('?' * len(new))})", list(new))}
    if named:  # records of an erased patient new to the store, or held without a subject
        erased = erased.more(records=named)
        store.erased = erased
        with secure_delete(db, "ON"):
            purge(db, store.cipher, named)
            _husk_quarantine(db, store.cipher, erased)
    if not erased.patients:
        return items
    out = []
    for delta, data in items:
        bare = husk(delta) if erased.covers(delta) else delta
        out.append((delta, data) if bare is delta else (bare, encode(bare)))
    return out


def scan_slice(db: sqlite_utils.Database, cipher: FieldCipher, patients: frozenset[bytes],
               after: bytes, limit: int) -> tuple[set[bytes], bytes | None]:
    """Of the next ``limit`` records after id ``after`` of the types that name a subject,
    those of ``patients`` (by their subject field, opened; a record without one, deleted,
    by the subjects its write log names), and where the next slice starts (None: done)."""
    types = ",".join(str(t) for t in sorted(SUBJECT_TYPES))
    rows = db.execute(
        "SELECT r.rid, f.stamp, f.node, f.sealed FROM records r LEFT JOIN field_values f"
        f" ON f.rid = r.rid AND f.field = ? WHERE r.type IN ({types}) AND r.rid > ?"
        " ORDER BY r.rid LIMIT ?", [SUBJECT_FIELD, after, limit]).fetchall()
    found = set()
    for rid, stamp, node, sealed in rows:
        if sealed is not None:
            if _among(strict_cbor.loads(cipher.open_field(rid, SUBJECT_FIELD, stamp, node,
                                                          sealed)), patients):
                found.add(rid)
        elif any(_among(d.set.get(SUBJECT_FIELD), patients) for d in _log(db, cipher, rid)):
            found.add(rid)
    return found, (rows[-1][0] if len(rows) == limit else None)


def _log(db: sqlite_utils.Database, cipher: FieldCipher, rid: bytes) -> Iterator[Delta]:
    for stamp, node, sealed in db.execute(
            "SELECT stamp, node, sealed FROM ops WHERE rid = ?", [rid]).fetchall():
        try:
            yield decode(cipher.open_blob(op_label(rid, Dot(stamp, node)), sealed))
        except RemoteProtocolError as exc:
            raise CorruptData(f"stored write does not decode: {exc}") from None


def purge(db: sqlite_utils.Database, cipher: FieldCipher, rids: set[bytes]) -> None:
    """Every value the store holds of records ``rids`` gone, their dots and heads kept;
    the records kept in ``meta``."""
    for rid in sorted(rids):
        husked = []
        for delta in _log(db, cipher, rid):
            bare = husk(delta)
            if bare is not delta:
                husked.append((cipher.seal_blob(op_label(rid, bare.dot), encode(bare)),
                               rid, bare.stamp, bare.node))
        db.conn.executemany("UPDATE ops SET sealed = ? WHERE rid = ? AND stamp = ? AND node = ?",
                            husked)
        row = db.execute("SELECT type, deleted, heads, extra, stale, partial, has_delete"
                         " FROM records WHERE rid = ?", [rid]).fetchone()
        if row is None:
            continue
        whole = not (row[4] or row[5]) and db.execute(
            "SELECT 1 FROM ops WHERE rid = ? LIMIT 1", [rid]).fetchone() is not None
        if whole:
            refresh(db, cipher, rid)
        else:
            rewrite(db, cipher, _bare(read_view(db, cipher, rid, *row[:4])), bool(row[6]))
    db.conn.executemany("INSERT OR IGNORE INTO meta (key, value) VALUES (?, 1)",
                        [(RECORD_KEY + rid.hex(),) for rid in rids])


def _bare(view: RecordView) -> RecordView:
    """``view`` with every value gone: its heads, its deletion and its conflicts' versions
    (each without values) kept."""
    return dataclasses.replace(view, fields={}, sets={}, field_dots={}, conflicts=tuple(
        dataclasses.replace(c, versions=tuple(
            dataclasses.replace(v, fields={}, sets={}) for v in c.versions))
        for c in view.conflicts))


def _husk_quarantine(db: sqlite_utils.Database, cipher: FieldCipher, erased: Erased) -> None:
    """Quarantined deltas of erased patients' records kept as their husks (their reasons
    name no value); one that does not decode names no record, and stays."""
    changed = []
    for qid, sealed in db.execute("SELECT id, sealed FROM quarantine").fetchall():
        reason, data = strict_cbor.loads(cipher.open_blob(_QUARANTINE, sealed))
        try:
            delta = decode(data)
        except RemoteProtocolError:
            continue
        if erased.covers(delta) and (bare := husk(delta)) is not delta:
            changed.append((cipher.seal_blob(_QUARANTINE, strict_cbor.dumps(
                [reason, encode(bare)])), qid))
    db.conn.executemany("UPDATE quarantine SET sealed = ? WHERE id = ?", changed)


@contextlib.contextmanager
def guard(store: Store, db: sqlite_utils.Database) -> Iterator[None]:
    """Around a writer transaction that may erase (outside it): the store's ``erased``
    put back if the transaction fails; after it commits, what an erasure owes
    (``finish``)."""
    before = store.erased
    try:
        yield
    except BaseException:
        store.erased = before
        raise
    if store.erased is not before:  # a new object whenever it changes
        finish(store, db)


def owed(db: sqlite_utils.Database) -> bool:
    """Whether an erasure's ``finish`` was cut short (a crash): the store's open runs it."""
    return db.execute(GET_META, [FINISH_KEY]).fetchone() is not None


def finish(store: Store, db: sqlite_utils.Database) -> None:
    """After an erasure's commit, on the writer thread: the records whose subject is an
    erased patient found and purged, a slice (one transaction) at a time, check-ins going
    between; free pages zeroed; the documents only erased records used dropped; the WAL
    checkpointed and cut to nothing. Its place is kept in ``meta`` (``FINISH_KEY``): a
    crash leaves it owed, and the next open goes on from there."""
    while (row := db.execute(GET_META, [FINISH_KEY]).fetchone()) is not None and \
            row[0] != DONE:
        before = store.erased
        try:
            with secure_delete(db, "ON"), immediate(db, synchronous="NORMAL"):
                found, after = scan_slice(db, store.cipher, before.patients,
                                          bytes.fromhex(row[0]), SCAN_RECORDS)
                found -= before.records
                if found:
                    store.erased = before.more(records=found)
                    purge(db, store.cipher, found)
                if after is None:
                    _husk_quarantine(db, store.cipher, store.erased)
                db.execute(SET_META, [FINISH_KEY, DONE if after is None else after.hex()])
        except BaseException:
            store.erased = before
            raise
        store.writer.run_urgent(db)
    try:
        wipe_free(store, db)
    except sqlite3.OperationalError as exc:  # a full disk, say: the purge stands
        log.warning("free pages not zeroed after an erasure: %s", exc)
    _forget_documents(store, store.erased.records)
    with immediate(db):
        db.execute("DELETE FROM meta WHERE key = ?", [FINISH_KEY])
    for _ in range(50):  # readers finish their reads; a busy checkpoint is tried again
        busy, _, _ = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if not busy:
            return
        time.sleep(0.02)
    log.warning("the WAL could not be cut after an erasure: the next checkpoint copies it")


def wipe_free(store: Store, db: sqlite_utils.Database) -> int:
    """Every free page of the file written over with zeros: rows of zeros in ``meta``
    take them, a slice at a time (check-ins go between), then go with ``secure_delete``
    on, which zeroes a page whole as it frees it; returns the pages taken."""
    page = int(db.execute("PRAGMA page_size").fetchone()[0])
    free = int(db.execute("PRAGMA freelist_count").fetchone()[0])
    done = 0
    with secure_delete(db, "ON"):
        for n in range(free // WIPE_PAGES + 2):
            if not free:
                break
            take = min(free, WIPE_PAGES)
            with immediate(db, synchronous="NORMAL"):
                # its overflow pages take the free pages (page - 4 bytes each)
                db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, zeroblob(?))",
                           [f"{WIPE_KEY}{n:08d}", take * (page - 4)])
            done += take
            store.writer.run_urgent(db)
            free = int(db.execute("PRAGMA freelist_count").fetchone()[0])
        with immediate(db):  # each page freed is zeroed whole (its last bytes too)
            db.execute("DELETE FROM meta WHERE key >= ? AND key < ?",
                       [WIPE_KEY, WIPE_KEY[:-1] + ";"])
    return done


def _forget_documents(store: Store, rids: frozenset[bytes]) -> None:
    """The content of erased documents, in ``documents.db``, and the chunks no other
    document uses."""
    from device.sync import document_store  # documents live beside the store

    if not (store.data / document_store.DB_NAME).exists():
        return
    docs = document_store.DocumentStore(store.data, store.cipher)
    try:
        docs.forget(rids)
    finally:
        docs.close()

