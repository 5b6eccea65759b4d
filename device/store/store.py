"""The kiosk's store: records, write log, outbox and quarantine in one SQLite file.

Theory of operation
-------------------
``init_store`` creates a data directory (owner-only) holding the database,
the store key (``keys.KeyFile``) and the fleet key that patient ids are
derived from, or what another key provider keeps instead (a TPM's sealed
blobs, a passphrase's wrapped keys: ``providers``). ``Store`` opens it; every
id derived from the fleet key goes through ``Store.fleet`` (``fleet``). Every
method that writes runs as one job on the writer thread (``writer.Writer``)
inside one ``BEGIN IMMEDIATE``
transaction: a check-in writes the patient and the check-in, their write
log entries, merged rows and outbox entries and the queue counter (one
``executemany`` per table for both records), then commits once (one WAL
fsync), and only then returns its queue number. The clock needs no row of
its own per write (``recover_clock``). Reads use their own connection; WAL
lets them run beside the writer.

Local writes are built and checked by ``protocol.crdt.writes`` against the
record as its write log says it is, so the store and the reference merge
cannot disagree on what a write means. Every local write takes one path,
``_write``: a write that only assigns registers of a record with no delete
and no conflict (a check-in, most puts) goes the merge's SQL way, from the
record's heads alone; any other rebuilds the record from its write log.
``merge`` takes deltas from the hub, decodes and checks them, quarantines
the bad ones with a reason (one bad delta never blocks the rest), and merges
the rest in short slices that let waiting check-ins go first.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import random
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Collection, Container, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlite_utils
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from device.store import collect as gc
from device.store import covering, erasure, inbox, outbox, rotation, seen
from device.store import rebase as hub_copy
from device.store.acks import FLUSH_AFTER_S, MAX_NOTED, AckedEntries
from device.store.checkpoint import Checkpointer
from device.store.collect import CollectReport
from device.store.db import connect
from device.store.door import verifier_verdict
from device.store.exc import BadRequest, KeyMismatch, NotInitialised, StorageFull, StoreError
from device.store.fleet import FleetKeeper, FleetKey, FleetSecret
from device.store.inbox import MergeReport
from device.store.keys import SEAL_OVERHEAD, KeyProvider
from device.store.materialise import (
    insert_op,
    load_log,
    op_label,
    parse_heads,
    persist_fast,
    read_view,
    rewrite,
)
from device.store.providers import FLEET_KEY as FLEET_KEY
from device.store.providers import STORE_KEY as STORE_KEY
from device.store.providers import open_keys
from device.store.report import status_of
from device.store.scope_state import ScopeReader, held_heads
from device.store.writer import BULK, URGENT, Writer
from protocol.crdt import schema as crdt_schema
from protocol.crdt import short_code
from protocol.crdt.clock import HLC, Dot, VersionVector
from protocol.crdt.delta import Delta, decode, encode
from protocol.crdt.ids import normalise_passport, random_id, time_ordered_id
from protocol.crdt.record import RecordView, canonical_json
from protocol.crdt.writes import build_delete, build_put, build_resolve
from protocol.driver.database import immediate
from protocol.driver.wall_clock import wall_ms
from protocol.errors import LocalProtocolError, ProtocolError
from protocol.sync import audit as sync_audit
from protocol.sync.scope import Scope, scope_checksum
from protocol.sync.sealed_identity import seal_identity

log = logging.getLogger("haven.store")
DB_NAME = "store.db"
#: Most deltas in one merge job; its transactions are also cut short by time and by
#: waiting check-ins (``inbox``).
SLICE = 4096
#: Checkpoint the WAL after about this much written: a local write counts
#: ``LOCAL_WEIGHT``, a merged delta one (``checkpoint``). 256 check-ins: bytes written
#: per check-in 44 KiB with 1024, 35 KiB with 4096 (1,000 check-ins on 1,000).
CHECKPOINT_WEIGHT = 4096
LOCAL_WEIGHT = 16


NEXT_QUEUE_NUMBER = ("INSERT INTO queue_numbers VALUES (?, 1) ON CONFLICT (day) DO UPDATE"
                     " SET last = last + 1 RETURNING last")
#: A day's counter moved past a number handed out elsewhere (while locked: ``pending``).
RAISE_QUEUE_NUMBER = ("INSERT INTO queue_numbers VALUES (?, ?) ON CONFLICT (day) DO UPDATE"
                      " SET last = MAX(last, excluded.last)")
RECORD_ROWS = ("SELECT rid, type, n_conflicts, has_delete, heads FROM records"
               " WHERE rid IN (?, ?)")


SAVE_CLOCK = "INSERT OR REPLACE INTO meta (key, value) VALUES ('hlc', ?)"
SET_META = "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)"
#: The audit chain's head (``put_chained``, ``device.audit``).
AUDIT_HEAD = "audit_head"
GET_META = "SELECT value FROM meta WHERE key = ?"
#: A kiosk provisioned offline awaiting its fleet key: the hub's X25519 key (hex) that
#: check-ins seal their passport or code to until the key comes (``await_fleet_key``).
FLEET_PENDING = "fleet_pending"
#: The generations of the fleet key moved to, with the kiosk's stamp at each move, as JSON
#: (``install_fleet_later``).
FLEET_GENERATIONS = "fleet_generations"
#: The most moves kept: what the hub needs is the moves of writes it may not have yet.
MAX_MOVES = 16
#: The kiosk's next short patient code's counter, in the check-in's transaction.
NEXT_CODE = ("INSERT INTO meta VALUES ('code_counter', 1) ON CONFLICT (key) DO UPDATE"
             " SET value = value + 1 WHERE value < ? RETURNING value")

#: Builds a local write from the record as it is (``None``: new) and a fresh stamp.
Build = Callable[[RecordView | None, int], Delta]
#: One local write: record id, how to build it, whether it assigns registers only.
Write = tuple[bytes, Build, bool]


def _given_id(fleet: FleetKey, gave: tuple[str, str]) -> uuid.UUID:
    """The patient id of what a patient gave: ("passport", number) or ("code", code)."""
    return fleet.patient_id(gave[1]) if gave[0] == "passport" else fleet.code_patient_id(gave[1])


def recover_clock(db: sqlite_utils.Database) -> int:
    """The greatest stamp this kiosk has handed out or observed.

    A merge saves the clock with every transaction; a local write does not need
    to, because its stamp goes into the outbox in the same transaction, and an
    entry leaves the outbox only in a transaction that saves the clock. So the
    saved clock and the outbox's greatest stamp together cover every stamp."""
    saved = db.conn.execute("SELECT value FROM meta WHERE key = 'hlc'").fetchone()
    queued = db.conn.execute("SELECT MAX(stamp) FROM outbox").fetchone()[0]
    return max(int(saved[0]) if saved else 0, queued or 0)


@dataclass(frozen=True)
class CheckinResult:
    record_id: str
    patient_id: str
    queue_number: str
    #: How the typed identity compared with the record held here (``claim_verdict``):
    #: for staff only, never for the patient's screen.
    identity: str = "new"
    #: A patient without documents: the short patient code to come back with.
    code: str | None = None


def claim_verdict(fields: Mapping[int, Any], claim: Mapping[str, Any]) -> str:
    """``match`` when every claimed value agrees with the patient's record (a birth
    year against the year of ``birthDate``; a name ignoring case and spacing), else
    ``mismatch``; ``unknown`` when the record has neither a name nor a birth date (it
    was only seen at check-ins). A field the record lacks cannot agree."""
    if not any(isinstance(fields.get(crdt_schema.PATIENT.field(k).number), str)
               for k in ("name", "birthDate")):
        return "unknown"
    for key, value in claim.items():
        held = fields.get(crdt_schema.PATIENT.field(key).number)
        if not isinstance(held, str):
            return "mismatch"
        if key == "birthDate" and held[:4] != str(value)[:4]:
            return "mismatch"
        if key == "name" and " ".join(held.casefold().split()) != " ".join(
                str(value).casefold().split()):
            return "mismatch"
    return "match"


class Store:
    def __init__(self, data: Path, key_provider: KeyProvider | None = None, *,
                 fleet: FleetKeeper | None = None, create: bool = False,
                 clock: Callable[[], int] = wall_ms) -> None:
        self.data = Path(data)
        #: Milliseconds since 1970. The sync engine passes the hub's time here when it
        #: has it: a Pi has no battery clock, and stamps and the "too far ahead"
        #: check are only as good as this.
        self.clock = clock
        self.path = self.data / DB_NAME
        if not create and not self.path.exists():
            raise NotInitialised(f"no kiosk store in {self.data}; run: haven-kiosk init")
        if key_provider is None or fleet is None:  # what the data directory holds
            found_key, found_fleet = open_keys(self.data)
            key_provider, fleet = key_provider or found_key, fleet or found_fleet
        self.key_provider = key_provider
        self.cipher = rotation.cipher_of(key_provider)  # both keys while one rotates
        #: Where the fleet key is kept (``device.store.fleet``), and the key: every id
        #: derived from it goes through ``self.fleet``.
        self.fleet_keeper = fleet
        self.fleet = self.fleet_keeper.load()
        self.hlc = HLC()
        self.rng = random.Random()
        self._letter_site: tuple[str, str] | None = None
        self._written = 0
        self._checkpointer = Checkpointer(self.path)
        self._acked = AckedEntries()
        #: Commits on the writer so far (``after_commit``), for ``collect``.
        self.commits = 0
        #: Where the last ``collect`` pass stopped, for the scope it ran for.
        self.gc_from: tuple[Scope | None, bytes] = (None, b"")
        #: The role and site of the last whole ``collect`` pass (its records of them were
        #: in scope then: one that is not a check-in and has not changed still is).
        self.gc_settled: tuple[str, str] | None = None
        self._flush_lock = threading.Lock()
        self._flush_timer: threading.Timer | None = None
        #: The writer thread: every write is a job on it (``writer``).
        self.writer = Writer(self._open_writer)
        self.reader = connect(self.path)
        self.node = int(self._meta("node") or 0)
        #: The erased patients and their records (``erasure``), kept by the writer.
        self.erased = erasure.load(self.reader, self.cipher)
        if erasure.owed(self.reader):  # an erasure's purge cut short: it goes on
            self.writer.call(lambda db: erasure.finish(self, db), BULK)

    @property
    def fleet_key(self) -> bytes:
        """The fleet key's bytes, for a kiosk that holds them in memory (not a TPM's)."""
        if not isinstance(self.fleet, FleetSecret):
            raise StoreError("this kiosk's fleet key is not held in memory", "key-held")
        return self.fleet.secret

    def _open_writer(self) -> sqlite_utils.Database:
        db = connect(self.path, migrate=True)
        db.execute("PRAGMA wal_autocheckpoint = 0")  # see after_commit
        with immediate(db):
            if db.execute("SELECT value FROM meta WHERE key = 'node'").fetchone() is None:
                node = int.from_bytes(os.urandom(4), "big") | 1
                db.execute("INSERT INTO meta VALUES ('node', ?)", [str(node)])
                db.execute("INSERT INTO meta VALUES ('fleet', ?)", [self.fleet.fingerprint()])
        self.hlc = HLC(recover_clock(db))
        return db

    def close(self) -> None:
        with self._flush_lock:
            timer, self._flush_timer = self._flush_timer, None
        if timer is not None:
            timer.cancel()
        self._flush_acks()
        self.writer.close()
        self._checkpointer.close()
        self.reader.conn.close()

    @property
    def checkpointer(self) -> Checkpointer:
        """The thread that copies the WAL back into the database (``checkpoint.py``)."""
        return self._checkpointer

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def release_memory(self) -> None:
        """Give SQLite's page caches back (``PRAGMA shrink_memory``) on both connections;
        the writer's as background work, after waiting check-ins."""
        self.writer.call(lambda db: db.execute("PRAGMA shrink_memory").fetchall(), BULK)
        self.reader.execute("PRAGMA shrink_memory").fetchall()

    def truncate_wal(self) -> None:
        """Copy the WAL into the database and cut it to nothing (``PRAGMA
        wal_checkpoint(TRUNCATE)``), as background work: frees disk space."""
        self.writer.call(
            lambda db: db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall(), BULK)

    # Meta ---------------------------------------------------------------------------

    def _meta(self, key: str) -> Any:
        row = self.reader.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
        return row[0] if row else None

    def configure(self, site: str, letter: str, fleet_key: bytes | None = None) -> None:
        """Set the kiosk's site and letter; install ``fleet_key`` only while no patient
        exists (patient ids are derived from it), or while the kiosk awaits its fleet
        key (``await_fleet_key``: no id it made since depends on a key)."""
        def job(db: sqlite_utils.Database) -> None:
            if (fleet_key is not None
                    and FleetSecret(fleet_key).fingerprint() != self.fleet.fingerprint()):
                pending = db.execute(GET_META, [FLEET_PENDING]).fetchone() is not None
                patients = db.execute("SELECT COUNT(*) FROM records WHERE type = ?",
                                      [crdt_schema.PATIENT.number]).fetchone()[0]
                if patients and not pending:
                    raise KeyMismatch(
                        f"this kiosk already holds {patients} patients under another fleet"
                        " key; a different key would give the same people new ids")
            if fleet_key is None and self.fleet.site not in (None, site):
                raise KeyMismatch(
                    f"this kiosk's fleet key is held for site {self.fleet.site!r}: a new "
                    "site needs the fleet key again (haven-kiosk init --fleet-key FILE)")
            if fleet_key is not None:
                self.fleet = self.fleet_keeper.install(fleet_key, site)
                self._note_move(db)  # a TPM's later keys go with a new site's first key
                db.execute(SET_META, ["fleet", self.fleet.fingerprint()])
                db.execute("DELETE FROM meta WHERE key = ?", [FLEET_PENDING])
            db.execute(SET_META, ["site", site])
            db.execute(SET_META, ["letter", letter])
            self._letter_site = None
        self._run(job)

    def install_fleet_later(self, base: bytes, later: Sequence[bytes]) -> bool:
        """The keys of the fleet key's generations 2, 3... (``later``), from the hub after
        it rotated the key (SPEC.md "Fleet key rotation"): kept by the fleet keeper, and
        patient ids of the newest generation made from now on. ``base``: the
        fingerprint of the first generation the chain goes on from; refused
        (``KeyMismatch``, nothing changed) if it is not this kiosk's key's, or if a
        generation held here is another key. True when a generation was added. The
        kiosk's own stamp at the move is kept (``_note_move``): the hub tells by it
        which of the kiosk's writes were made under which generation."""
        held = self.fleet.key_fingerprints()
        offered = [base, *(FleetSecret(key).fingerprint() for key in later)]
        if base != held[0]:
            raise KeyMismatch(
                f"the hub's fleet key chain goes on from another first key (fingerprint "
                f"{base.hex()[:16]}...) than this kiosk's ({held[0].hex()[:16]}...): "
                "refused, nothing changed; enrol the kiosk again with this hub")
        if offered[:len(held)] != held[:len(offered)]:
            raise KeyMismatch("the hub's fleet key chain holds another key than this "
                              "kiosk's for a generation both hold: refused, nothing changed")
        if len(offered) <= len(held):
            return False

        def job(db: sqlite_utils.Database) -> bool:
            self.fleet = self.fleet_keeper.install_later(list(later), self._identity(db)[1])
            self._note_move(db)
            return True

        added: bool = self._run(job)
        return added

    def _note_move(self, db: sqlite_utils.Database) -> None:
        """Keep the move to ``self.fleet``'s generation at a stamp of our own, past every
        write made before it (``fleet_generations``); the last ``MAX_MOVES`` are kept."""
        row = db.execute(GET_META, [FLEET_GENERATIONS]).fetchone()
        moves = json.loads(row[0]) if row else []
        if (moves[-1][0] if moves else 1) == self.fleet.generation:
            return
        moves.append([self.fleet.generation, self.hlc.now(self.clock())])
        db.execute(SAVE_CLOCK, [self.hlc.last])
        db.execute(SET_META, [FLEET_GENERATIONS, json.dumps(moves[-MAX_MOVES:])])

    def fleet_generations(self) -> list[list[int]]:
        """Each generation of the fleet key this kiosk moved to, with its own stamp at the
        move, oldest first: ``[[generation, stamp], ...]`` (none: generation 1 only)."""
        held = self._meta(FLEET_GENERATIONS)
        moves: list[list[int]] = json.loads(held) if held else []
        return moves

    def await_fleet_key(self, hub_x25519: bytes) -> None:
        """Until ``configure`` installs the fleet key, make no id from a key: a check-in
        with a passport or a short code is recorded under a provisional random subject,
        what the patient gave sealed to the hub's ``hub_x25519`` (the hub completes
        it: ``host.hub.claims.complete``), and a new patient gets a random id and no
        code. For a kiosk provisioned offline, which holds no fleet key until its
        first sync (SPEC.md "Identity before the fleet key")."""
        if len(hub_x25519) != 32:
            raise BadRequest("the hub's X25519 key is 32 bytes", "bad-key")
        self._run(lambda db: db.execute(SET_META, [FLEET_PENDING, hub_x25519.hex()]))

    @property
    def fleet_pending(self) -> bool:
        """Whether the kiosk awaits its fleet key (``await_fleet_key``)."""
        return self._meta(FLEET_PENDING) is not None

    def _identity(self, db: sqlite_utils.Database) -> tuple[str, str]:
        """The kiosk's queue prefix and site (read once per writer; ``init`` and a
        queue label change them): its letter, and the queue label after it if the hub
        gave one (``set_queue_label``)."""
        if self._letter_site is None:
            rows = dict(db.execute("SELECT key, value FROM meta WHERE key IN"
                                   " ('letter', 'site', 'queue_label')").fetchall())
            label = rows.get("queue_label")
            self._letter_site = (f"{rows['letter']}{label or ''}", rows["site"])
        return self._letter_site

    @property
    def queue_label(self) -> int | None:
        """The label the hub gave this kiosk, a suspected clone, for its queue numbers."""
        value = self._meta("queue_label")
        return int(value) if value else None

    def set_queue_label(self, label: int) -> None:
        """Number check-ins ``A<label>-001``... from now on (SPEC.md "Clones": the hub
        gives each copy of a cloned kiosk a label no other copy has, so no queue number
        is handed out twice); durable before it returns."""
        def job(db: sqlite_utils.Database) -> None:
            db.execute(SET_META, ["queue_label", str(int(label))])
            self._letter_site = None
        self._run(job)

    @property
    def kiosk_number(self) -> int | None:
        """The number the hub gave this kiosk: its short patient codes' first part."""
        value = self._meta("kiosk_number")
        return int(value) if value is not None else None

    def set_kiosk_number(self, number: int) -> None:
        """Hand out short patient codes under ``number`` from now on (from the certificate,
        or the hub's welcome for a kiosk whose certificate has none); durable before it
        returns. A number new to this kiosk starts its counter again: the hub never
        gives a number twice, so no code made under it can have been handed out."""
        short_code.encode(number, 1)  # in range, or ShortCodeError

        def job(db: sqlite_utils.Database) -> None:
            held = db.execute(GET_META, ["kiosk_number"]).fetchone()
            if held is None or int(held[0]) != number:
                db.execute(SET_META, ["kiosk_number", int(number)])
                db.execute(SET_META, ["code_counter", 0])
        self._run(job)

    def made_here(self, writes: Iterable[tuple[bytes, int]]) -> bool:
        """Whether this kiosk's own node made every write (record id, stamp)."""
        return all(self.reader.execute(
            "SELECT 1 FROM ops WHERE rid = ? AND stamp = ? AND node = ?",
            [rid, stamp, self.node]).fetchone() for rid, stamp in writes)

    def take_node(self, node: int,
                  audit_key: Callable[[], Ed25519PrivateKey] | None = None) -> None:
        """Become ``node``: the identity an offline approval reserved for this kiosk
        (``device.enrol.install_approval``). Only a kiosk that has written nothing may:
        its writes are stamped with its node. Its audit entries aside (a technician's
        attempts before, ``device.audit``): they are written again, in order, as
        ``node``'s chain, signed by ``audit_key()``. Durable before it returns."""
        now = self.clock()
        first, last = sync_audit.id_range()

        def job(db: sqlite_utils.Database) -> None:
            if db.execute("SELECT 1 FROM ops WHERE rid < ? OR rid > ? LIMIT 1",
                          [first, last]).fetchone() is not None:
                raise StoreError("this kiosk has written records already: it cannot take "
                                 "another identity (provision a fresh kiosk)",
                                 "already-provisioned")
            earlier = {bytes(rid): decode(self.cipher.open_blob(
                op_label(rid, Dot(stamp, n)), sealed)) for rid, stamp, n, sealed in db.execute(
                    "SELECT rid, stamp, node, sealed FROM ops ORDER BY rid, stamp DESC")}
            db.execute(SET_META, ["node", str(int(node))])
            if not earlier:
                return
            if audit_key is None:
                raise StoreError("this kiosk's audit entries need its key to follow it to "
                                 "another identity", "already-provisioned")
            key, head = audit_key(), None
            for table in ("ops", "records", "field_values", "conflicts", "outbox"):
                db.execute(f"DELETE FROM {table} WHERE rid BETWEEN ? AND ?", [first, last])
            writes: list[Write] = []
            for delta in earlier.values():
                try:
                    entry = sync_audit.from_delta(delta).entry
                except ProtocolError:
                    continue  # not an entry this kiosk made: nothing to carry
                rid, signed, head = sync_audit.next_link(key, node, head, entry)
                writes.append((rid, _audit_put(rid, node, signed.values()), True))
            self._write(db, now, writes)
            db.execute("DELETE FROM meta WHERE key = ?", [AUDIT_HEAD])
            if head is not None:
                db.execute(SET_META, [AUDIT_HEAD, head])
        self._run(job)
        self.node = int(node)

    def take_new_node(self) -> int:
        """Become a new node: a cloned kiosk re-provisioned (SPEC.md "Clones"). Each
        write made here that the hub did not acknowledge is written again as the new
        node's (the same change, a fresh stamp, a context over every head of its
        record but the new node's, the old write among them), and the old entries leave
        the outbox; the old node's writes are no longer this kiosk's to send. The queue
        label goes with the old identity. Its audit entries are not written again: signed
        as the old identity, whose copies are in doubt, they stay as they are (the new
        node's chain starts at 1). Returns how many writes went again."""
        now = self.clock()

        def job(db: sqlite_utils.Database) -> tuple[int, int]:
            old, new = self.node, int.from_bytes(os.urandom(4), "big") | 1
            again: dict[tuple[bytes, int], Delta] = {}
            for rid, stamp, node, sealed in db.execute(
                    "SELECT o.rid, o.stamp, o.node, p.sealed FROM outbox o JOIN ops p ON"
                    " p.rid = o.rid AND p.stamp = o.stamp AND p.node = o.node"
                    " WHERE o.state = 'queued' AND o.node = ? ORDER BY o.seq", [old]).fetchall():
                if sync_audit.is_audit_id(bytes(rid)):
                    continue  # the old identity's audit entries: signed as it, kept here
                delta = decode(self.cipher.open_blob(op_label(rid, Dot(stamp, node)), sealed))
                again.setdefault((bytes(rid), stamp), delta)
            db.execute("DELETE FROM outbox WHERE node = ? AND state = 'queued'", [old])
            db.conn.executemany(seen.ADD, [  # no longer ours: held as any other node's
                (seen.pack(stamp, old), arrived or 0, rid) for rid, stamp, arrived in db.execute(
                    "SELECT rid, stamp, arrived FROM ops WHERE node = ?", [old]).fetchall()])
            db.execute("UPDATE ops SET local = 0 WHERE node = ?", [old])
            db.execute(SET_META, ["node", str(new)])
            db.execute("DELETE FROM meta WHERE key = 'queue_label'")
            # and its kiosk number: the new identity's enrolment brings one of its own
            db.execute("DELETE FROM meta WHERE key IN ('kiosk_number', 'code_counter')")
            self._letter_site = None
            self._write(db, now, [(d.record_id, _as_node(d, new), False)
                                  for d in again.values()])
            return new, len(again)

        new, count = self._run(job)
        self.node = new
        return int(count)

    # Local writes -------------------------------------------------------------------

    def _write(self, db: sqlite_utils.Database, now_ms: int, writes: Sequence[Write],
               rows: Mapping[bytes, tuple[Any, ...]] | None = None,
               known: Mapping[bytes, int] | None = None) -> list[Delta]:
        """Local writes inside the caller's transaction: write log, merged rows, outbox.

        Each write is (record id, ``build``, registers only). One that assigns
        registers only, to a record with no delete and no conflict, needs nothing
        but the record's type and heads (its ``records`` row: ``rows``, read here
        unless the caller read them); such writes are persisted together, one
        statement per table, on the merge's SQL path. Any other write rebuilds its
        record from the write log. Outbox entries follow the order of ``writes``;
        ``known`` maps record ids to the types the caller read."""
        if rows is None:
            rids = [rid for rid, _, _ in writes]
            rows = {row[0]: row[1:] for row in db.execute(
                "SELECT rid, type, n_conflicts, has_delete, heads FROM records"
                f" WHERE rid IN ({','.join('?' * len(rids))})", rids)}
        done: list[Delta] = []
        light: list[tuple[Delta, bytes]] = []
        for rid, build, registers_only in writes:
            row = rows.get(rid)
            if registers_only and (row is None or not (row[1] or row[2])):
                heads = None if row is None else RecordView(
                    rid, row[0], False, {}, {}, tuple(sorted(parse_heads(row[3]))), ())
                delta = self._stamp(build, heads, now_ms)
                if delta.is_delete or delta.add or delta.remove:
                    raise AssertionError("a light write assigns registers only")
                light.append((delta, encode(delta)))
            else:
                self._persist_light(db, light, known)
                light = []
                delta = self._write_one(db, rid, build, now_ms)
                self._enqueue(db, [(delta, encode(delta))], known)
            done.append(delta)
        self._persist_light(db, light, known)
        return done

    def _write_one(self, db: sqlite_utils.Database, rid: bytes, build: Build,
                   now_ms: int) -> Delta:
        """A write rebuilt from the record's write log, or, when the store does not hold
        it whole (``records.partial``, ``stale``), from the merged rows: a local write
        saw every head, so ``covering`` gives the exact view unless the record is in
        conflict (only a stale one can be: it waits for the hub's write set as it is)."""
        flags = db.execute("SELECT stale, partial, has_delete FROM records WHERE rid = ?",
                           [rid]).fetchone()
        if flags is None or not (flags[0] or flags[1]):
            log = load_log(db, self.cipher, rid)
            delta = self._stamp(build, log.view() if log.ops else None, now_ms)
            insert_op(db, self.cipher, delta, encode(delta), local=True)
            log.add(delta)
            rewrite(db, self.cipher, log.view(), any(op.is_delete for op in log.ops.values()))
            return delta
        view = self._view(db, rid)
        delta = self._stamp(build, view, now_ms)
        insert_op(db, self.cipher, delta, encode(delta), local=True)
        if covering.extends(view, delta):
            rewrite(db, self.cipher, covering.after(view, delta),
                    bool(flags[2]) or delta.is_delete)
        return delta

    def _stamp(self, build: Build, view: RecordView | None, now_ms: int) -> Delta:
        """``build`` with a fresh stamp; a refused write leaves no trace, not even on
        the clock."""
        before = self.hlc.last
        try:
            delta = build(view, self.hlc.now(now_ms))
            erasure.check_local(self.erased, delta)
            return delta
        except BaseException:
            self.hlc.last = before
            raise

    def _persist_light(self, db: sqlite_utils.Database, light: list[tuple[Delta, bytes]],
                       known: Mapping[bytes, int] | None) -> None:
        if light:
            persist_fast(db, self.cipher, light, local=True)
            self._enqueue(db, light, known)

    def _enqueue(self, db: sqlite_utils.Database, written: list[tuple[Delta, bytes]],
                 known: Mapping[bytes, int] | None) -> None:
        outbox.enqueue_many(db, [(_lane(d), d, len(data)) for d, data in written])
        for delta, _ in written:
            spec = crdt_schema.TYPES.get(delta.type)
            subject = delta.set.get(1) if spec and "subject" in spec.by_name else None
            if not isinstance(subject, bytes):
                continue
            # A record's entries are queued in its type's lane and only ever promoted: if
            # that lane is no lower priority than ours, there is nothing to pull up.
            subject_type = known.get(subject) if known else None
            subject_spec = crdt_schema.TYPES.get(subject_type) if subject_type is not None \
                else None
            if subject_spec is None or subject_spec.lane > _lane(delta):
                outbox.promote(db, subject, _lane(delta))

    def after_commit(self, merged: int = 0) -> None:
        """Count a commit on the writer (``merged`` deltas, or one local write) toward
        the next checkpoint of the WAL, which runs beside the writer."""
        self.commits += 1
        self._written += merged or LOCAL_WEIGHT
        if self._written >= CHECKPOINT_WEIGHT:
            self._written = 0
            self._checkpointer.request()

    def _run(self, fn: Callable[[sqlite_utils.Database], Any], fsync: bool = True) -> Any:
        """``fn`` in one transaction on the writer thread, before waiting merge work.

        ``fsync=False`` commits without an fsync, for what may be lost to a power cut
        without harm: the next commit that fsyncs makes it durable too (the WAL is
        written in order), and a crash before that leaves the state before it."""
        # The clock needs no write of its own: every local stamp is in the outbox, in
        # the same transaction as the write (see ``recover_clock``).
        def job(db: sqlite_utils.Database) -> Any:
            acked = self._acked.take()
            try:
                with immediate(db, synchronous=None if fsync else "NORMAL"):
                    if acked:  # acknowledged entries leave with this write (``acks``)
                        # ... and their stamps with them: the clock is saved in their place
                        db.conn.execute(SAVE_CLOCK, [str(self.hlc.last)])
                        outbox.ack(db, list(acked), {k: v[3] for k, v in acked.items()})
                    result = fn(db)
            except BaseException:
                self._acked.put_back(acked)
                raise
            self.after_commit()
            return result
        try:
            with self.full_disk_guard():
                return self.writer.call(job, URGENT)
        except LocalProtocolError as exc:
            raise BadRequest(str(exc), exc.code) from None

    @contextlib.contextmanager
    def full_disk_guard(self) -> Iterator[None]:
        """SQLITE_FULL as ``StorageFull``: the transaction it hit was rolled back whole."""
        try:
            yield
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode != sqlite3.SQLITE_FULL:
                raise
            raise StorageFull(f"the disk holding {self.data} is full: this write was not "
                              "saved (everything saved before is intact); free some space "
                              "and try again") from None

    def checkin(self, *, name: str | None = None, passport: str | None = None,
                code: str | None = None, birth_year: int | None = None,
                reason: str | None = None, now_ms: int | None = None,
                checkin_id: bytes | None = None,
                queue_number: str | None = None) -> CheckinResult:
        """Record a check-in; returns after the commit.

        What the patient typed is a claim kept on the check-in (``claimName``,
        ``claimBirthDate``), never written onto a patient named by a passport or a
        short patient code: the kiosk may not hold that patient, and a fresh stamp
        would replace the real record everywhere (SPEC.md "Identity at the kiosk").
        The check-in's ``identity`` says how the claim compared with the record held
        here (``match``, ``mismatch``, ``unknown``). A patient the kiosk does not hold
        gets a write that assigns nothing (the record exists, and its lane carries it);
        only a patient without documents, whose id is new, is registered from the
        claim (``new``). Such a patient is given the kiosk's next short patient code
        (``code`` of the result), its counter moved in the check-in's own transaction,
        so a power cut never gives one code twice; a kiosk with no number yet (its
        certificate predates kiosk numbers, and no hub has told it since) gives a
        random id and no code. So does a kiosk awaiting its fleet key
        (``await_fleet_key``), which records a passport's or a code's check-in under a
        provisional subject, the passport or code sealed to the hub (``unknown``).

        A check-in taken while the store was locked (``pending``) comes with the id and
        the queue number it was given then (``checkin_id``, ``queue_number``): the id is
        refused if the store holds it (``duplicate-checkin``), and the day's counter
        moves past the number."""
        now = self.clock() if now_ms is None else now_ms
        if passport is None and code is None and not name:
            raise BadRequest("a patient without documents needs a name", "bad-name")
        try:
            gave = (("passport", normalise_passport(passport)) if passport
                    else ("code", short_code.parse(code)) if code else None)
        except LocalProtocolError as exc:
            raise BadRequest(str(exc), exc.code) from None
        claim: dict[str, Any] = {}
        if name:
            claim["name"] = name
        if birth_year is not None:
            claim["birthDate"] = f"{birth_year:04d}"
        cid = (time_ordered_id(now, os.urandom(10)) if checkin_id is None
               else uuid.UUID(bytes=checkin_id))
        taken = _queue_count(queue_number) if queue_number is not None else None
        local = time.localtime(now / 1000)
        day = time.strftime("%Y-%m-%d", local)
        started = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now / 1000)) + "Z"

        # A key in a TPM takes a command per id (tens of ms): made before the writer's
        # job, so the writer is not held meanwhile (made in it if the key changed since).
        fleet, erased = self.fleet, self.erased
        early = None if gave is None or self.fleet_pending else _given_id(fleet, gave)
        early_again = (None if early is None or gave is None or not erased.patients
                       else erased.registered_id(fleet, gave, early))

        def fn(db: sqlite_utils.Database) -> CheckinResult:
            conn = db.conn
            letter, site = self._identity(db)
            if taken is None:
                n = conn.execute(NEXT_QUEUE_NUMBER, [day]).fetchone()[0]
                number = f"{letter}-{n:03d}"
            else:
                conn.execute(RAISE_QUEUE_NUMBER, [day, taken])
                number = str(queue_number)
            pending = conn.execute(GET_META, [FLEET_PENDING]).fetchone()
            sealed = (None if gave is None or pending is None
                      else seal_identity(cid.bytes, *gave, bytes.fromhex(pending[0])))
            known = (None if gave is None or sealed is not None
                     else early if early is not None and self.fleet is fleet
                     else _given_id(self.fleet, gave))
            again = False
            if known is not None and gave is not None and self.erased.patients:
                # erased, in this generation or before a rotation: registered anew
                # (``erasure``), under one id whichever generation a kiosk is at
                now_id = uuid.UUID(bytes=early_again if early_again is not None
                                   and self.erased is erased and self.fleet is fleet
                                   else self.erased.registered_id(self.fleet, gave, known))
                again, known = now_id != known or known.bytes in self.erased.patients, now_id
            given = None if gave is not None or pending is not None else self._next_code(conn)
            pid = (known if known is not None
                   else self.fleet.code_patient_id(given) if given
                   else random_id(os.urandom(16)))
            rows = {row[0]: row[1:] for row in conn.execute(RECORD_ROWS, [pid.bytes, cid.bytes])}
            if cid.bytes in rows:
                raise BadRequest(f"check-in {cid} is held already", "duplicate-checkin")
            prow = rows.get(pid.bytes)
            writes: list[Write] = []
            if sealed is not None:
                # provisional: no patient record (the hub writes the real one's), no verdict
                identity = "unknown"
            elif known is None or again and prow is None:
                identity = "new"
                writes.append((pid.bytes, lambda view, stamp: build_put(
                    view, pid.bytes, crdt_schema.PATIENT, self.node, stamp, claim), True))
            else:
                identity = self._verdict(db, site, gave, pid, claim)
                if prow is None:  # the record exists from here on, with no field written
                    writes.append((pid.bytes, lambda view, stamp: build_put(
                        view, pid.bytes, crdt_schema.PATIENT, self.node, stamp, {}), True))
            checkin_values = {"subject": str(pid), "status": "arrived", "periodStart": started,
                              "location": site, "queueNumber": number, "identity": identity}
            if "name" in claim:
                checkin_values["claimName"] = claim["name"]
            if "birthDate" in claim:
                checkin_values["claimBirthDate"] = claim["birthDate"]
            if reason:
                checkin_values["reasonCode"] = reason
            if sealed is not None:
                checkin_values["sealedIdentity"] = sealed
            writes.append((cid.bytes, lambda view, stamp: build_put(
                view, cid.bytes, crdt_schema.CHECKIN, self.node, stamp, checkin_values), True))
            patient_type = prow[0] if prow else crdt_schema.PATIENT.number
            self._write(db, now, writes, rows, {pid.bytes: patient_type})
            return CheckinResult(str(cid), str(pid), number, identity,
                                 short_code.display(given) if given else None)

        result: CheckinResult = self._run(fn)
        return result

    def _verdict(self, db: sqlite_utils.Database, site: str, gave: tuple[str, str] | None,
                 pid: uuid.UUID, claim: Mapping[str, Any]) -> str:
        """How ``claim`` compares with the patient's record held here (``claim_verdict``),
        else with a door kiosk's verifier of the patient: by ``pid``, the newest
        generation's id, then, while the hub migrates records to it (SPEC.md "Fleet key
        rotation"), by the older generations' ids of what the patient gave."""
        for n, key in enumerate(self.fleet.generations()):
            gid = pid if n == 0 or gave is None else _given_id(key, gave)
            current = self._view(db, gid.bytes)
            identity = (claim_verdict(current.fields, claim)
                        if current is not None and not current.deleted else "unknown")
            if identity == "unknown":  # a door kiosk's: the patient's verifier says
                identity = verifier_verdict(db, self.cipher, key, site, gid.bytes,
                                            claim) or "unknown"
            if identity != "unknown" or gave is None:
                return identity
        return "unknown"

    def raise_queue_numbers(self, last: Mapping[str, int]) -> None:
        """Move each day's queue counter past ``last[day]`` (numbers given while the store
        was locked: ``pending``), so none is handed out again; durable before it returns."""
        self._run(lambda db: db.conn.executemany(RAISE_QUEUE_NUMBER, list(last.items())))

    def _next_code(self, conn: sqlite3.Connection) -> str | None:
        """The kiosk's next short patient code, inside the caller's transaction; None
        without a kiosk number, on a kiosk the hub found cloned (it numbers its queue
        with a label: its copies share its number and its counter, so they would give
        one code to two patients; re-provisioned, it is enrolled with a number of its
        own), or once every code of this kiosk is given (logged: a full counter never
        wraps)."""
        held = dict(conn.execute("SELECT key, value FROM meta WHERE key IN"
                                 " ('kiosk_number', 'queue_label')").fetchall())
        if "kiosk_number" not in held or "queue_label" in held:
            return None
        number = held["kiosk_number"]
        row = conn.execute(NEXT_CODE, [short_code.MAX_COUNTER]).fetchone()
        if row is None:
            log.error("kiosk %s has given all its %d short patient codes: new patients get "
                      "no code; enrol it again as a new kiosk", number, short_code.MAX_COUNTER)
            return None
        return short_code.encode(int(number), int(row[0]))

    def settle_identity(self, checkin_id: str, action: str, *, subject: str | None = None,
                        name: str | None = None, birth_year: int | None = None,
                        now_ms: int | None = None) -> str:
        """Staff's answer to a check-in's identity: ``confirm`` it, ``attach`` it to
        another patient (``subject``), or ``correct`` the patient's record (``name``,
        ``birth_year``, as seen on a document at the desk). Each is an ordinary
        replicated write (the check-in's ``identity``, and for a correction the
        patient's fields too), in one transaction; returns the check-in's id.

        A kiosk still waiting for its fleet key (``await_fleet_key``) can neither
        attach nor correct: a passport's patient id needs the key, and its check-ins'
        subjects are provisional until the hub completes them (SPEC.md "Identity
        before the fleet key"), so either would land on a patient no one else holds."""
        now = self.clock() if now_ms is None else now_ms
        if action in ("attach", "correct") and self.fleet_pending:
            raise BadRequest("this kiosk has not synced since it was provisioned: attach and "
                             "correct wait for its first sync (confirm works now)",
                             "fleet-pending")
        cid, view = self._checkin_view(self.reader, checkin_id)
        values: dict[str, Any] = {}
        patient: dict[str, Any] = {}
        if action == "confirm":
            values["identity"] = "confirmed"
        elif action == "attach":
            if subject is None:
                raise BadRequest("attach needs the patient's id", "bad-subject")
            values.update(identity="attached", subject=str(uuid.UUID(bytes=_parse_id(subject))))
        elif action == "correct":
            if name:
                patient["name"] = name
            if birth_year is not None:
                patient["birthDate"] = f"{birth_year:04d}"
            if not patient:
                raise BadRequest("a correction sets a name or a year of birth", "bad-correction")
            values["identity"] = "corrected"
        else:
            raise BadRequest(f"unknown identity action {action!r}", "bad-action")
        held = view.fields.get(crdt_schema.CHECKIN.field("subject").number)
        pid = (_parse_id(values["subject"]) if "subject" in values
               else held if isinstance(held, bytes) else _parse_id(str(held)))
        writes = [self._checkin_put(cid, values)]
        if patient:
            writes.insert(0, (pid, lambda v, stamp: build_put(
                v, pid, crdt_schema.PATIENT, self.node, stamp, patient), True))
        self._run(lambda db: self._write(db, now, writes))
        return str(uuid.UUID(bytes=cid))

    def set_checkin_status(self, checkin_id: str, status: str, *,
                           now_ms: int | None = None) -> str:
        """Staff move a check-in on in the queue: ``in-progress`` (called), ``finished``
        (seen), ``cancelled`` (a no-show), or back to ``arrived`` (an undo), as
        ``crdt_schema.checkin_status_allowed`` permits from the status held here. An
        ordinary replicated write of the check-in's ``status``; the check and the write
        are one transaction. Returns the check-in's id."""
        now = self.clock() if now_ms is None else now_ms
        if status not in crdt_schema.CHECKIN_STATUSES:
            raise BadRequest(f"unknown check-in status {status!r}", "bad-status")

        def job(db: sqlite_utils.Database) -> bytes:
            cid, view = self._checkin_view(db, checkin_id)
            held = view.fields.get(crdt_schema.CHECKIN.field("status").number)
            if not crdt_schema.checkin_status_allowed(held, status):
                raise BadRequest(f"a check-in {held} cannot become {status}", "bad-transition")
            self._write(db, now, [self._checkin_put(cid, {"status": status})])
            return cid

        return str(uuid.UUID(bytes=self._run(job)))

    def _checkin_view(self, db: sqlite_utils.Database, checkin_id: str) -> tuple[bytes, RecordView]:
        """A check-in's id and view, for staff's writes to it."""
        cid = _parse_id(checkin_id)
        view = self._view(db, cid)
        if view is None or view.type != crdt_schema.CHECKIN.number or view.deleted:
            raise BadRequest(f"no check-in {checkin_id}", "no-checkin")
        return cid, view

    def _checkin_put(self, cid: bytes, values: Mapping[str, Any]) -> Write:
        """Staff's write of registers of a check-in."""
        return (cid, lambda v, stamp: build_put(
            v, cid, crdt_schema.CHECKIN, self.node, stamp, values), True)

    def put(self, type_name: str, record_id: str | None = None,
            values: Mapping[str, Any] | None = None, add: Mapping[str, Iterable[str]] | None = None,
            remove: Mapping[str, Iterable[str]] | None = None, now_ms: int | None = None) -> str:
        """Create or update a record; returns its id."""
        now = self.clock() if now_ms is None else now_ms
        try:
            spec = crdt_schema.type_by_name(type_name)
            rid = uuid.UUID(record_id) if record_id else time_ordered_id(now, os.urandom(10))
        except (LocalProtocolError, ValueError) as exc:
            raise BadRequest(str(exc)) from None
        self._run(lambda db: self._write(db, now, [(rid.bytes, lambda view, stamp: build_put(
            view, rid.bytes, spec, self.node, stamp, values or {}, add or {}, remove or {}),
            not (add or remove))]))
        return str(rid)

    def put_many(self, puts: Sequence[tuple[str, bytes, Mapping[str, Any]]],
                 meta: Mapping[str, str] | None = None, now_ms: int | None = None) -> None:
        """Several puts (type name, record id, values) and settings in ``meta``, in one
        transaction, durable before it returns: what a sensor node sent, and how far it
        is stored (``device.fridges``), commit together or not at all."""
        now = self.clock() if now_ms is None else now_ms
        try:
            specs = [crdt_schema.type_by_name(name) for name, _, _ in puts]
        except LocalProtocolError as exc:
            raise BadRequest(str(exc), exc.code) from None

        def put(rid: bytes, spec: crdt_schema.TypeSpec, values: Mapping[str, Any]) -> Write:
            return (rid, lambda view, stamp: build_put(view, rid, spec, self.node, stamp,
                                                       values), True)

        def job(db: sqlite_utils.Database) -> None:
            self._write(db, now, [put(rid, spec, values)
                                  for spec, (_, rid, values) in zip(specs, puts, strict=True)])
            for key, value in (meta or {}).items():
                db.execute(SET_META, [key, value])
        self._run(job)

    def setting(self, key: str) -> Any:
        """A value kept in ``meta`` (``put_many``), or None."""
        return self._meta(key)

    def put_chained(self, key: str,
                    step: Callable[[Any], tuple[bytes, str, Mapping[str, Any], Any, Any]],
                    now_ms: int | None = None) -> Any:
        """One put that follows a chain whose head is kept in ``meta`` under ``key`` (the
        audit chain, ``device.audit``), head and put in one transaction, so no two
        links are ever made from one head. ``step(head held or None)`` returns (record
        id, type name, values, new head, result); returns the result."""
        now = self.clock() if now_ms is None else now_ms

        def job(db: sqlite_utils.Database) -> Any:
            row = db.execute(GET_META, [key]).fetchone()
            rid, type_name, values, head, result = step(row[0] if row else None)
            spec = crdt_schema.type_by_name(type_name)
            self._write(db, now, [(rid, lambda view, stamp: build_put(
                view, rid, spec, self.node, stamp, values), True)])
            db.execute(SET_META, [key, head])
            return result
        return self._run(job)

    def put_text(self, type_name: str, record_id: str | None, items: list[str],
                 now_ms: int | None = None) -> str:
        """``put`` from ``FIELD=VALUE`` / ``FIELD+=ELEM`` / ``FIELD-=ELEM`` text."""
        try:
            values, add, remove = crdt_schema.parse_assignments(
                crdt_schema.type_by_name(type_name), items)
        except LocalProtocolError as exc:
            raise BadRequest(str(exc), exc.code) from None
        return self.put(type_name, record_id, values, add, remove, now_ms)

    def delete(self, record_id: str, now_ms: int | None = None) -> None:
        now = self.clock() if now_ms is None else now_ms
        rid = _parse_id(record_id)
        self._run(lambda db: self._write(db, now, [(rid, lambda view, stamp: build_delete(
            view, rid, self.node, stamp), False)]))

    def resolve(self, conflict_id: str, *, keep: str | None = None,
                values: Mapping[str, Any] | None = None, assignments: list[str] | None = None,
                now_ms: int | None = None) -> str:
        """Resolve a conflict: keep a version, or set values (or ``FIELD=VALUE`` text).

        Returns the record id."""
        now = self.clock() if now_ms is None else now_ms
        row = self.reader.execute("SELECT rid, type FROM conflicts JOIN records USING (rid)"
                                  " WHERE id = ?", [conflict_id]).fetchone()
        if row is None:
            raise BadRequest(f"no current conflict {conflict_id}", "no-conflict")
        rid: bytes = row[0]
        if assignments is not None:
            try:
                spec = crdt_schema.TYPES[row[1]]
                values, add, remove = crdt_schema.parse_assignments(spec, assignments)
            except (LocalProtocolError, KeyError) as exc:
                raise BadRequest(str(exc)) from None
            if add or remove:
                raise BadRequest("a resolution sets registers; keep a version to settle sets")
        self._run(lambda db: self._write(db, now, [(rid, lambda view, stamp: build_resolve(
            _must(view), conflict_id, self.node, stamp, keep=keep, values=values), False)]))
        return str(uuid.UUID(bytes=rid))

    # Merging deltas from elsewhere ------------------------------------------------------

    def merge(self, deltas: Iterable[bytes], now_ms: int | None = None,
              slice_size: int = SLICE, *, cursor: int | None = None) -> MergeReport:
        """Merge deltas (any order, duplicates welcome); bad ones go to quarantine.
        ``cursor``: from the hub, the cursor of the page they came in (only their dots
        are kept: the hub keeps every delta); None: from elsewhere (another kiosk's,
        a released quarantined one), kept with their bodies.

        On a full disk, ``StorageFull``: slices merged before it stay merged, and the
        rest can simply be merged again later."""
        with self.full_disk_guard():
            return inbox.merge(self, deltas, self.clock() if now_ms is None else now_ms,
                               slice_size, cursor)

    # Scope, garbage collection and the hub's copy (``collect``, ``rebase``) -----------

    def stale_records(self, limit: int = 256) -> list[bytes]:
        """Records waiting for the hub's write set (``replace_records``), at most ``limit``."""
        return [bytes(r) for (r,) in self.reader.execute(
            "SELECT rid FROM records WHERE stale = 1 LIMIT ?", [limit]).fetchall()]

    def replace_records(self, deltas: Iterable[bytes], rids: Iterable[bytes], *,
                        cursor: int = 0) -> int:
        """Rebuild ``rids`` from the hub's whole write set of them (``deltas``, pulled at
        ``cursor``) and this kiosk's unsent writes; returns how many were rebuilt.
        ``BadSnapshot`` if a delta does not decode (nothing changes)."""
        items = hub_copy.decoded(deltas)
        wanted = list(rids)
        return int(self._bulk(lambda db: hub_copy.replace(
            db, self.cipher, self.node, erasure.arriving(self, db, items), wanted, cursor),
            items))

    def rebase(self, deltas: Iterable[bytes], upto: int, hub_sum: bytes, version: int = 2,
               *, scope: Scope | None = None, lost: int | None = None) -> dict[str, Any]:
        """Rebuild ``scope`` (None: all the store holds) from the hub's snapshot of it cut
        at ``upto``, keeping every unsent write of this kiosk's own and leaving records
        out of ``scope`` to ``collect`` (``rebase``). A snapshot that does not match
        ``hub_sum`` (by ``scope_checksum``, or ``version`` 1: a hub before it, by
        ``scope_checksum_v1``) raises ``BadSnapshot`` and changes nothing. ``lost``: the
        hub's node, whose writes the snapshot lacks are lost (``check_sum``)."""
        items = hub_copy.decoded(deltas)
        hub_copy.check_sum(items, hub_sum, version, self.reader, lost)
        held = None if scope is None else hub_copy.held_in(self.reader, self.cipher, scope)
        result: dict[str, Any] = self._bulk(lambda db: hub_copy.rebase(
            db, self.cipher, self.node, erasure.arriving(self, db, items), upto, scope, held),
            items)
        return result

    def scope_checksum(self, scope: Scope) -> bytes | None:
        """The checksum of ``scope`` as held (``scope.scope_checksum``); None while any
        write of this kiosk's own is queued or in flight."""
        if any(seq not in self._acked for (seq,) in self.reader.execute(
                "SELECT seq FROM outbox").fetchall()):
            return None
        return scope_checksum(held_heads(
            self.reader, self.cipher, ScopeReader(self.reader, self.cipher, scope)))

    def collect(self, scope: Scope, stable: int, budget_s: float = 1.0) -> CollectReport:
        """One garbage-collection pass (``collect``) by the hub's verified stable point
        ``stable``, for at most about ``budget_s``."""
        with self.full_disk_guard():
            return gc.collect(self, scope, stable, budget_s)

    def _bulk(self, fn: Callable[[sqlite_utils.Database], Any],
              items: Sequence[tuple[Delta, bytes]]) -> Any:
        """``fn`` in one transaction as background work, the clock moved past ``items``."""
        def job(db: sqlite_utils.Database) -> Any:
            with erasure.guard(self, db), immediate(db):
                result = fn(db)
                top = max((d.stamp for d, _ in items), default=0)
                if top > self.hlc.last:
                    self.hlc.last = top
                db.conn.execute(SAVE_CLOCK, [str(self.hlc.last)])
            self.after_commit(len(items))
            return result
        with self.full_disk_guard():
            return self.writer.call(job, BULK)

    # Reading ----------------------------------------------------------------------------

    def _view(self, db: sqlite_utils.Database, rid: bytes) -> RecordView | None:
        row = db.execute("SELECT type, deleted, heads, extra FROM records WHERE rid = ?",
                         [rid]).fetchone()
        if row is None:
            return None
        return read_view(db, self.cipher, rid, row[0], bool(row[1]), row[2], row[3])

    def view(self, record_id: str) -> RecordView | None:
        return self._view(self.reader, _parse_id(record_id))

    def views(self) -> list[RecordView]:
        rows = self.reader.execute("SELECT rid, type, deleted, heads, extra FROM records")
        return [read_view(self.reader, self.cipher, rid, t, bool(d), h, e)
                for rid, t, d, h, e in rows.fetchall()]

    def version_vector(self) -> VersionVector:
        """node -> greatest stamp held from it, as the write log and the registers show
        (deltas from the hub leave no row of their own: a node's write whose values were
        all overwritten since is not counted). The hub keeps it for its status only."""
        return VersionVector(self.reader.execute(
            "SELECT node, MAX(stamp) FROM (SELECT node, stamp FROM ops UNION ALL"
            " SELECT node, stamp FROM field_values) GROUP BY node").fetchall())

    def deltas_since(self, seen: Mapping[int, int], limit: int = 10_000) -> list[bytes]:
        """The deltas a peer that has seen ``seen`` lacks, oldest first (at most ``limit``)."""
        out: list[bytes] = []
        for rid, stamp, node, sealed in self.reader.execute(
                "SELECT rid, stamp, node, sealed FROM ops ORDER BY stamp, node"):
            if stamp > seen.get(node, -1):
                out.append(self.cipher.open_blob(op_label(rid, Dot(stamp, node)), sealed))
                if len(out) >= limit:
                    break
        return out

    def deltas_in(self, first: bytes, last: bytes) -> list[bytes]:
        """The deltas held for the records ``first`` to ``last`` (ids in byte order)."""
        return [self.cipher.open_blob(op_label(rid, Dot(stamp, node)), sealed)
                for rid, stamp, node, sealed in self.reader.execute(
                    "SELECT rid, stamp, node, sealed FROM ops WHERE rid BETWEEN ? AND ?"
                    " ORDER BY rid, stamp, node", [first, last]).fetchall()]

    def dump(self) -> bytes:
        """Canonical JSON of every record, decrypted (identical across synced replicas)."""
        return canonical_json(self.views())

    def status(self, now_ms: int | None = None) -> dict[str, Any]:
        """Outbox per lane, conflicts, quarantine and last sync, as plain data."""
        st = status_of(self.reader, self.node, self.clock() if now_ms is None else now_ms)
        st["outbox"] = self._acked.discount(st["outbox"])
        return st

    # Outbox -----------------------------------------------------------------------------

    def outbox_batch(self, now_ms: int | None = None,
                     max_bytes: int = outbox.DEFAULT_BATCH_BYTES,
                     besides: Collection[int] = ()) -> list[outbox.Entry]:
        """The next entries for a batch, passing over those in ``besides`` too."""
        now = self.clock() if now_ms is None else now_ms
        skip: Container[int] = self._acked
        if besides:
            acked, extra = self._acked, frozenset(besides)
            skip = _Either(acked, extra)
        return outbox.batch(self.reader, self.cipher, now, max_bytes, skip=skip)

    def outbox_ack(self, seqs: Iterable[int], arrived: int | None = None) -> int:
        """Remove entries the hub acknowledged (authenticated, durable) as committed;
        returns how many there were. ``arrived``: the greatest arrival number the hub
        gave their writes, kept with them (``collect`` compares it with the stable point).

        They leave with the next local write, or within ``acks.FLUSH_AFTER_S``, and
        without an fsync of their own (``acks``); entries that come back after a crash
        are sent again, and the hub keeps each write once."""
        seqs = list(seqs)
        if not seqs:
            return 0
        rows = self.reader.execute(
            f"SELECT seq, lane, size, state FROM outbox WHERE seq IN ({','.join('?' * len(seqs))})",
            seqs).fetchall()
        self._acked.add(rows, arrived)
        if len(self._acked) > MAX_NOTED:
            self._delete_acked()
            return len(rows)
        with self._flush_lock:
            if self._flush_timer is None:
                self._flush_timer = threading.Timer(FLUSH_AFTER_S, self._flush_acks)
                self._flush_timer.daemon = True
                self._flush_timer.start()
        return len(rows)

    def _flush_acks(self) -> None:
        """The timer's (or the close's) turn: delete what no local write took yet."""
        with self._flush_lock:
            self._flush_timer = None
        self._delete_acked()

    def flush_acks(self) -> None:
        """Take acknowledged entries out of the outbox now (``acks``), their arrival
        numbers kept on their writes."""
        self._delete_acked()

    def _delete_acked(self) -> None:
        if self._acked:
            with contextlib.suppress(StoreError):  # a full disk: the next write takes them
                self._run(lambda db: None, fsync=False)

    def outbox_retry(self, seqs: Iterable[int], now_ms: int | None = None) -> None:
        now = self.clock() if now_ms is None else now_ms
        seqs = list(seqs)
        self._run(lambda db: outbox.retry(db, seqs, now, self.rng))

    def outbox_reject(self, seq: int, code: str) -> None:
        self._run(lambda db: outbox.reject(db, seq, code))

    def outbox_requeue_local(self) -> int:
        """Queue again every write made on this kiosk that is not queued (for a hub
        restored from a backup, which lost some); returns how many."""
        lanes = {t.number: t.lane for t in crdt_schema.TYPES.values()}
        self._acked.take()  # acknowledged by the hub that lost them: they stay queued
        result: int = self._run(lambda db: outbox.requeue_local(
            db, lanes, crdt_schema.LANE_NOTE, SEAL_OVERHEAD))
        return result


class _Either:
    """In one container or the other."""

    def __init__(self, a: Container[int], b: Container[int]) -> None:
        self.a, self.b = a, b

    def __contains__(self, item: object) -> bool:
        return item in self.a or item in self.b


def _as_node(delta: Delta, node: int) -> Build:
    """``delta`` written again by ``node``, with a fresh stamp and the record's heads
    (``Store.take_new_node``, ``reissue.reissue_ahead``)."""
    return lambda view, stamp: dataclasses.replace(
        delta, node=node, stamp=stamp,
        ctx=tuple(sorted(d for d in view.heads if d.node != node)) if view else ())


def _audit_put(rid: bytes, node: int, values: Mapping[str, Any]) -> Build:
    return lambda view, stamp: build_put(view, rid, crdt_schema.AUDIT, node, stamp, values)


def _queue_count(number: str) -> int:
    """The day's count in a queue number (``A-007``, ``A2-013``: 7, 13)."""
    _, _, count = number.rpartition("-")
    if not count.isdigit():
        raise BadRequest(f"not a queue number: {number!r}", "bad-queue-number")
    return int(count)


def _lane(delta: Delta) -> int:
    spec = crdt_schema.TYPES.get(delta.type)
    return spec.lane if spec else crdt_schema.LANE_NOTE


def _must(view: RecordView | None) -> RecordView:
    if view is None:
        raise LocalProtocolError("no such record", "not-found")
    return view


def _parse_id(text: str) -> bytes:
    try:
        return uuid.UUID(text).bytes
    except ValueError:
        raise BadRequest(f"not a record id: {text!r}", "bad-id") from None
