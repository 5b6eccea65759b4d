"""The hub's store: kiosks, their batch chains, every delta, quarantine and a log.

Theory of operation
-------------------
``HubStore`` is one SQLite file (WAL, ``synchronous=FULL``, one connection
behind a lock, every write one ``BEGIN IMMEDIATE`` transaction, tables
changed only by numbered migrations: ``protocol.driver.database``). It is
the ``HubStorage`` of the hub's sync role (``protocol.sync.hub_round``).

``ops`` holds each delta once, keyed by its dot, with ``hseq``, the hub's
arrival order: a kiosk's pull cursor is an ``hseq``. An ``hseq`` is at least
the hub's clock in microseconds (``next_hseq``), so a hub restored from a
backup numbers what it receives afterwards beyond every cursor it gave out
before, and a kiosk that pulls from such a cursor misses nothing. ``devices`` holds each
enrolled kiosk's keys, state and checkpoint (last batch sequence and chain
hash); ``batches`` remembers every committed batch's hash, so a batch sent
again after a lost ack is recognised by (device, sequence) and acknowledged
without being applied twice. ``commit_batch`` writes the deltas, the
quarantined ones, the batch and the new checkpoint in one transaction and
returns only after it is durable. ``held_batches`` keeps the batches of a
suspected clone (SPEC.md "Clones") off the chain, for review, never applied.
``approvals`` keeps what each offline approval reserved (a letter, a node, a
kiosk number) and the kiosk that used it (SPEC.md "Offline approvals").

Patient values are sealed at rest (``at_rest``): every delta in ``ops``, each
quarantined delta and each held batch, under the keyring's current data key,
bound to its row. What SQL must read of a delta is kept beside it in plain
columns that carry no patient value (``del``: whether it is a delete).
``reseal_slice`` seals the rows of a hub from before sealing, and re-seals
those of an older key after a rotation, a slice per transaction, the progress
in ``meta``; when none remain, the older keys are deleted. The connection runs
with ``secure_delete`` so the pages a re-seal frees hold no old bytes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlite_utils

from host.hub import at_rest, current, husking, scopes
from host.hub.database import (
    OWN_WRITES_LOCK,
    ConnectionLost,
    Db,
    IntegrityError,
    changed,
    for_update,
    is_postgres,
    meta_delete,
    meta_get,
    meta_set,
    open_hub_database,
    rows_in,
    writing,
)
from protocol.crdt import short_code
from protocol.crdt.delta import Delta, decode
from protocol.driver.database import Migrations, open_database
from protocol.driver.sealing import KeyProvider
from protocol.errors import RemoteProtocolError
from protocol.sync.approval import LETTERS
from protocol.sync.batches import Batch
from protocol.sync.hub_round import CheckpointMoved
from protocol.sync.paging import PageSplit
from protocol.sync.reissue import is_reissue
from protocol.sync.scope import Scope

MIGRATIONS = Migrations("hub.db")
#: ``meta`` keys: the technicians' signed revocation list, and its number.
REVOCATIONS_LIST, REVOCATIONS_NUMBER = "technician_revocations", "technician_revocations_number"
#: 1: the tables as release c3497bc made them (``IF NOT EXISTS``: its files are at 1).
MIGRATIONS.sql(
    1,
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value)",
    """CREATE TABLE IF NOT EXISTS devices (
        device_id TEXT PRIMARY KEY, node INTEGER NOT NULL UNIQUE, site TEXT NOT NULL,
        letter TEXT NOT NULL, x25519 BLOB NOT NULL UNIQUE, ed25519 BLOB NOT NULL,
        state TEXT NOT NULL, enrolled_at INTEGER NOT NULL, last_seen INTEGER,
        last_seq INTEGER NOT NULL DEFAULT 0, last_hash BLOB NOT NULL,
        cursor INTEGER NOT NULL DEFAULT 0, vv TEXT)""",
    """CREATE TABLE IF NOT EXISTS batches (
        device_id TEXT NOT NULL, seq INTEGER NOT NULL, hash BLOB NOT NULL,
        received_at INTEGER NOT NULL, deltas INTEGER NOT NULL, quarantined TEXT NOT NULL,
        PRIMARY KEY (device_id, seq))""",
    """CREATE TABLE IF NOT EXISTS ops (
        hseq INTEGER PRIMARY KEY AUTOINCREMENT, rid BLOB NOT NULL, stamp INTEGER NOT NULL,
        node INTEGER NOT NULL, data BLOB NOT NULL, origin TEXT NOT NULL,
        UNIQUE (rid, stamp, node))""",
    """CREATE TABLE IF NOT EXISTS quarantine (
        id INTEGER PRIMARY KEY, at INTEGER NOT NULL, device_id TEXT, seq INTEGER,
        code TEXT NOT NULL, reason TEXT NOT NULL, data BLOB NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS log (
        id INTEGER PRIMARY KEY, at INTEGER NOT NULL, device_id TEXT, code TEXT NOT NULL,
        detail TEXT NOT NULL)""",
)
#: 2: clones (SPEC.md, "Sync": "Clones"). A kiosk seen to sign two batches under one
#: sequence is flagged (``suspected_clone``); ``clone_labels`` counts the queue labels
#: given to its copies, ``clone_mark`` is that count at the last detection (labels up
#: to it are stale). ``held_batches`` keeps each batch off the hub's chain, verified,
#: for review: never applied, never dropped. ``batches.first_hseq``: the arrival number
#: a batch's deltas start at, so a kiosk behind the hub is shown what came after it.
MIGRATIONS.sql(
    2,
    "ALTER TABLE batches ADD COLUMN first_hseq INTEGER",
    "ALTER TABLE devices ADD COLUMN suspected_clone INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE devices ADD COLUMN clone_labels INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE devices ADD COLUMN clone_mark INTEGER NOT NULL DEFAULT 0",
    """CREATE TABLE held_batches (
        device_id TEXT NOT NULL, branch INTEGER NOT NULL, seq INTEGER NOT NULL,
        hash BLOB NOT NULL, prev BLOB NOT NULL, payload BLOB NOT NULL, sig BLOB NOT NULL,
        received_at INTEGER NOT NULL, PRIMARY KEY (device_id, hash))""",
    "CREATE INDEX held_by_seq ON held_batches (device_id, seq)",
)
#: 3: each kiosk's number, the first part of its short patient codes (SPEC.md "Short
#: patient codes"): unique, never given again. Kiosks enrolled before are numbered here,
#: in the order they enrolled; each is told its number in the next welcome.
MIGRATIONS.sql(
    3,
    "ALTER TABLE devices ADD COLUMN kiosk_number INTEGER",
    """UPDATE devices SET kiosk_number = (SELECT COUNT(*) FROM devices d
        WHERE (d.enrolled_at, d.device_id) <= (devices.enrolled_at, devices.device_id))""",
    "CREATE UNIQUE INDEX devices_by_number ON devices (kiosk_number)",
)
#: 4: technician certificates the hub issued (SPEC.md "Technicians"): what each names,
#: and when it was revoked (NULL: not). Serials are the rows' ids, never given twice.
MIGRATIONS.sql(
    4,
    """CREATE TABLE technicians (
        serial INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, sites TEXT NOT NULL,
        kiosks TEXT NOT NULL, actions TEXT NOT NULL, not_before INTEGER NOT NULL,
        expires INTEGER NOT NULL, ed25519 BLOB NOT NULL, issued_at INTEGER NOT NULL,
        revoked_at INTEGER)""",
)
#: 5: offline approvals (SPEC.md "Offline approvals"): what each reserved at its site, a
#: letter (until it expires or is used), a node and a kiosk number (for good: neither
#: is given again), and the kiosk that used it (its X25519 key; NULL: unused).
MIGRATIONS.sql(
    5,
    """CREATE TABLE approvals (
        serial INTEGER PRIMARY KEY AUTOINCREMENT, site TEXT NOT NULL, letter TEXT NOT NULL,
        node INTEGER NOT NULL UNIQUE, kiosk_number INTEGER NOT NULL UNIQUE,
        issued_at INTEGER NOT NULL, expires INTEGER NOT NULL, used_by BLOB, used_at INTEGER)""",
)
#: 6: replacements (``host.hub.replace``): a kiosk retired (revoked, reason "replaced")
#: and the kiosk that took over its letter at its site from a day (UTC, YYYY-MM-DD). One
#: row per retired kiosk; rows are never deleted.
MIGRATIONS.sql(
    6,
    """CREATE TABLE replacements (
        old_device TEXT PRIMARY KEY, new_device TEXT NOT NULL, site TEXT NOT NULL,
        letter TEXT NOT NULL, from_day TEXT NOT NULL, at INTEGER NOT NULL)""",
)
#: 7: scopes (``host.hub.scopes``). Each kiosk's ``role`` (every kiosk enrolled before
#: holds the whole fleet's records: ``full``), a clinician station's window in days,
#: when its role was set (hub ms; a kiosk welcomed before is told to rebase), and
#: ``acked``, the greatest cursor it said it holds (stable points). ``record_facts``:
#: what scopes need of each record, each fact with the dot that set it (the greatest:
#: the merge's value), filled here from every delta held. ``late_writes``: the arrival
#: numbers of writes that came to a record holding a delete they did not see (pulls send
#: the record's whole write set there: a kiosk may have dropped its tombstone). A batch's
#: ``arrived``: the greatest arrival number its deltas were given (the ack's). An
#: approval's role and window: the kiosk it enrols has them from its first sync.
@MIGRATIONS(7)
def _m007_scopes(db: sqlite_utils.Database) -> None:
    for statement in (
            "ALTER TABLE devices ADD COLUMN role TEXT NOT NULL DEFAULT 'full'",
            "ALTER TABLE devices ADD COLUMN window_days INTEGER NOT NULL DEFAULT 30",
            "ALTER TABLE devices ADD COLUMN role_since INTEGER",
            "ALTER TABLE devices ADD COLUMN acked INTEGER NOT NULL DEFAULT 0",
            "ALTER TABLE batches ADD COLUMN arrived INTEGER",
            "ALTER TABLE approvals ADD COLUMN role TEXT NOT NULL DEFAULT 'full'",
            "ALTER TABLE approvals ADD COLUMN window_days INTEGER NOT NULL DEFAULT 30",
            """CREATE TABLE record_facts (
                rid BLOB PRIMARY KEY, type INTEGER NOT NULL, location TEXT, subject BLOB,
                day TEXT, location_dot BLOB, subject_dot BLOB, day_dot BLOB) WITHOUT ROWID""",
            "CREATE TABLE late_writes (hseq INTEGER PRIMARY KEY)",
            "CREATE INDEX facts_by_site ON record_facts (location, type, day)",
            "CREATE INDEX facts_by_subject ON record_facts (subject)"):
        db.execute(statement)
    at_rest.register(db, at_rest.PLAIN)  # every delta is plain before migration 8
    scopes.fill_facts(db)


#: 8: the data at rest (``at_rest``): ``keyring`` holds the wrapped keys (filled when the
#: store first opens with its key provider), ``ops.del`` whether a delta is a delete, read
#: from its head here, while every delta is still plain. The rows are sealed afterwards,
#: in the background (``HubStore.reseal_slice``).
@MIGRATIONS(8)
def _m008_at_rest(db: sqlite_utils.Database) -> None:
    db.execute("""CREATE TABLE keyring (
        version INTEGER PRIMARY KEY, wrapped BLOB NOT NULL, created INTEGER NOT NULL,
        retired INTEGER)""")
    db.execute("ALTER TABLE ops ADD COLUMN del INTEGER NOT NULL DEFAULT 0")
    db.conn.executemany("UPDATE ops SET del = 1 WHERE hseq = ?", [
        (hseq,) for hseq, head in db.execute("SELECT hseq, substr(data, 1, 3) FROM ops")
        if scopes.is_delete_head(bytes(head))])


#: 9: the current records (``current``): each record's merged state, its values sealed
#: one by one, kept in the transaction of every write to ``ops``; filled from ``ops`` at
#: the store's first open after this (it needs the keys: ``current.resume``).
MIGRATIONS.sql(9, *current.TABLES)

#: SQL: a delta's bytes, opened (``at_rest``).
OPENED = at_rest.opened()
#: ``meta`` key: a kiosk number no new kiosk is given at or below (set by a restore).
NUMBER_FLOOR = "kiosk_number_floor"


def next_number(db: Db) -> int:
    """The next kiosk number: one past every number a kiosk or an approval was given,
    and past the floor a restore set."""
    held = db.execute("SELECT COALESCE((SELECT MAX(kiosk_number) FROM devices), 0),"
                      " COALESCE((SELECT MAX(kiosk_number) FROM approvals), 0)").fetchone()
    return max(int(held[0]), int(held[1]), int(meta_get(db, NUMBER_FLOOR) or 0)) + 1


#: ``meta`` key: the last arrival number given.
LAST_HSEQ = "last_hseq"
#: How long a process waits for another's pass of the hub's own writes (``own_writes``).
OWN_WRITES_WAIT = 120.0


def next_hseq(db: Db) -> int:
    """The next arrival number: after the last one given, and not below the clock (in
    µs). It locks the counter until the transaction ends, so that arrival numbers are
    given in the order their transactions commit: with several writers (hub processes
    on PostgreSQL), a number is never visible before a smaller one that is still to
    commit, and a pull's cursor never passes a delta that commits late. The caller
    records the last number it used (``used_hseq``), in the same transaction."""
    last = meta_get(db, LAST_HSEQ, lock=True)
    if last is None:  # a hub from before the counter: from the greatest number given
        meta_set(db, LAST_HSEQ, _greatest_given(db), replace=False)
        last = meta_get(db, LAST_HSEQ, lock=True)  # another writer's, if it was first
    return max(int(last) + 1, time.time_ns() // 1000)


def _greatest_given(db: Db) -> int:
    """The greatest arrival number ever given (SQLite's AUTOINCREMENT remembers one whose
    row went; a hub on PostgreSQL began with the counter)."""
    row = db.execute("SELECT MAX(hseq) FROM ops" if is_postgres(db) else
                     "SELECT seq FROM sqlite_sequence WHERE name = 'ops'").fetchone()
    return int((row[0] if row else None) or 0)


def used_hseq(db: Db, last: int) -> None:
    """Arrival numbers up to ``last`` were given (``next_hseq``)."""
    meta_set(db, LAST_HSEQ, last)
    changed(db)  # every hub process pushes them at commit


@dataclass(frozen=True)
class Device:
    device_id: str
    node: int
    site: str
    letter: str
    x25519: bytes
    ed25519: bytes
    state: str
    last_seq: int
    last_hash: bytes
    cursor: int
    last_seen: int | None
    suspected_clone: int = 0  #: 1: two batches under one sequence were seen
    clone_labels: int = 0  #: queue labels given to copies of this kiosk
    clone_mark: int = 0  #: ``clone_labels`` at the last detection
    kiosk_number: int | None = None  #: the first part of its short patient codes
    role: str = "full"  #: its scope's role (``protocol.sync.scope.ROLES``)
    window_days: int = 30  #: a clinician station's window
    role_since: int | None = None  #: when the role was set (hub ms); None: at enrolment
    acked: int = 0  #: the greatest cursor it said it holds


@dataclass(frozen=True)
class Op:
    rid: bytes
    stamp: int
    node: int
    data: bytes


class HubStore:
    """The hub's database. Thread-safe: one lock around one connection."""

    def __init__(self, target: Path | str, keys: KeyProvider | None = None) -> None:
        """The store in ``target``: an SQLite file's path, or a PostgreSQL URL (then
        ``keys`` must be given: there is no folder beside it to find them in)."""
        self._lock = threading.RLock()
        self._own = threading.RLock()  # ``own_writes``
        self._vv: dict[int, int] = {}  # ``version_vector`` by arrival ``_vv_at``
        self._vv_at = 0
        if keys is None and not isinstance(target, Path):
            raise ValueError("a hub database given by URL needs its key provider")
        self._db: Db = open_hub_database(target, MIGRATIONS)
        self._keys = at_rest.default_provider(Path(target).parent) if keys is None else keys
        try:
            with self._tx() as db:
                self._sealer = at_rest.load(db, self._keys)
                current.resume(db, self._sealer)
            at_rest.register(self._db, self._sealer)
        except BaseException:
            self._db.close()
            raise

    @property
    def sealer(self) -> at_rest.Sealer:
        return self._sealer

    def _sealing(self, db: Db) -> at_rest.Sealer:
        """The sealer, in a write transaction: the keyring again if another process
        rotated the key meanwhile (nothing is sealed under a key about to go)."""
        if at_rest.current_version(db) != self._sealer.current:
            self._sealer = at_rest.load(db, self._keys)
            at_rest.register(self._db, self._sealer)
        return self._sealer

    @contextmanager
    def _tx(self) -> Iterator[Db]:
        with self._lock, writing(self._db):
            yield self._db

    def _q(self, sql: str, args: tuple[Any, ...] | list[Any] = ()) -> list[Any]:
        with self._lock:
            try:
                return self._db.execute(sql, args).fetchall()
            except (sqlite3.OperationalError, at_rest.SealBroken) as exc:
                # SQLite reports only that hub_open raised; say what that means (and the
                # same where the client opened it: PostgreSQL)
                if isinstance(exc, sqlite3.OperationalError) and \
                        "user-defined function" not in str(exc):
                    raise
                raise at_rest.SealBroken("a delta held does not open: altered, moved to "
                                         "another row, or sealed under a key this keyring "
                                         "lacks") from None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def take_keys(self) -> None:
        """The keyring as another process left it, if it rotated the key meanwhile."""
        with self._tx() as db:
            self._sealing(db)

    @contextmanager
    def own_writes(self) -> Iterator[None]:
        """A pass of the hub's own writes (its clock in ``meta`` 'hlc': claims,
        resolutions, verifiers, erasures, the fleet key's migration), one at a time across
        threads and, on PostgreSQL, across the hub's processes (an advisory lock of the
        connection, tried outside the store's lock until had): two passes at once would
        give two writes one stamp."""
        with self._own:
            if is_postgres(self._db):
                deadline = time.monotonic() + OWN_WRITES_WAIT
                while True:
                    with self._lock:
                        if self._q("SELECT pg_try_advisory_lock(?)", [OWN_WRITES_LOCK])[0][0]:
                            break
                    if time.monotonic() > deadline:
                        raise ConnectionLost("another hub process held its own writes' lock "
                                             f"for {OWN_WRITES_WAIT:.0f} s")
                    time.sleep(0.01)
            try:
                yield
            finally:
                if is_postgres(self._db):
                    with self._lock, contextlib.suppress(Exception):  # a lost one is gone
                        self._q("SELECT pg_advisory_unlock(?)", [OWN_WRITES_LOCK])

    @contextmanager
    def writing(self) -> Iterator[tuple[Db, at_rest.Sealer]]:
        """One write transaction and the sealer, for work that rewrites sealed rows
        across tables at once (``erasure``)."""
        with self._tx() as db:
            yield db, self._sealing(db)

    # Meta and devices -------------------------------------------------------------

    def get_meta(self, key: str) -> Any:
        with self._lock:
            return meta_get(self._db, key)

    def set_meta(self, key: str, value: Any) -> None:
        with self._tx() as db:
            meta_set(db, key, value)

    def own_node(self) -> int:
        """The hub's own node (``meta.node``, drawn at ``init``), which its writes carry."""
        return int(self.get_meta("node") or 1)

    def add_device(self, dev: Device, now: int, max_number: int = short_code.MAX_KIOSK) -> int:
        """Record a new kiosk with the next kiosk number, one past every number given
        before, to kiosks and approvals (rows are never deleted, so none is given twice);
        returns it. ``ValueError`` past ``max_number``, or when an approved kiosk holds
        its letter at its site (checked in the same transaction: two enrolments at once)."""
        with self._tx() as db:
            number = next_number(db)
            if number > max_number:
                raise ValueError(f"every kiosk number up to {max_number} is taken")
            self._insert_device(db, dev, now, number)
            return number

    @staticmethod
    def _insert_device(db: Db, dev: Device, now: int, number: int) -> None:
        holder = db.execute("SELECT device_id FROM devices WHERE site = ? AND letter = ?"
                            " AND state = 'approved'", [dev.site, dev.letter]).fetchone()
        if holder is not None and dev.state == "approved":
            raise ValueError(f"letter {dev.letter} is taken at site {dev.site!r} by kiosk "
                             f"{holder[0]}")
        try:
            db.execute("INSERT INTO devices (device_id, node, site, letter, x25519, ed25519,"
                       " state, enrolled_at, last_hash, kiosk_number, role, window_days)"
                       " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       [dev.device_id, dev.node, dev.site, dev.letter, dev.x25519, dev.ed25519,
                        dev.state, now, dev.last_hash, number, dev.role, dev.window_days])
        except IntegrityError as exc:
            raise ValueError(f"kiosk {dev.device_id} clashes with a kiosk known: {exc}") from None

    # Offline approvals (SPEC.md "Offline approvals") ---------------------------------------

    def reserve_approvals(self, site: str, count: int, issued: int, expires: int,
                          nodes: Iterator[int], max_number: int = short_code.MAX_KIOSK,
                          role: str = "full", window_days: int = 30,
                          ) -> list[tuple[int, str, int, int]]:
        """Reserve ``count`` kiosks at ``site``, each its own letter (the first free there:
        no approved kiosk's, no live approval's), node (the first of ``nodes`` no kiosk or
        approval has) and kiosk number (the next ones); all or none, durably. Returns
        (serial, letter, node, number) for each; ``ValueError`` when they do not fit."""
        with self._tx() as db:
            taken = {row[0] for row in db.execute(
                "SELECT letter FROM devices WHERE site = ? AND state = 'approved' UNION"
                " SELECT letter FROM approvals WHERE site = ? AND used_by IS NULL"
                " AND expires > ?", [site, site, issued])}
            free = [c for c in LETTERS if c not in taken]
            if len(free) < count:
                raise ValueError(f"{len(free)} letters are free at site {site!r} (kiosks and "
                                 "live approvals hold the others)")
            number = next_number(db)
            if number + count - 1 > max_number:
                raise ValueError(f"every kiosk number up to {max_number} would be taken")
            out = []
            for letter in free[:count]:
                node = next(n for n in nodes if not db.execute(
                    "SELECT 1 FROM devices WHERE node = ? UNION SELECT 1 FROM approvals"
                    " WHERE node = ?", [n, n]).fetchone())
                serial = db.execute("INSERT INTO approvals (site, letter, node, kiosk_number,"
                                    " issued_at, expires, role, window_days)"
                                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING serial",
                                    [site, letter, node, number, issued, expires, role,
                                     window_days]).fetchone()[0]
                out.append((int(serial), letter, node, number))
                number += 1
            return out

    def enrol_approved(self, serial: int, dev: Device, now: int) -> str:
        """A kiosk presents approval ``serial`` (for ``dev.node``): ``enrolled`` (recorded
        now, with the approval's kiosk number), ``same`` (it enrolled with it before) or
        ``other`` (another kiosk did: this one is a copy). ``ValueError`` if the hub
        holds no such approval, or its letter is taken."""
        with self._tx() as db:
            row = db.execute("SELECT node, kiosk_number, used_by, role, window_days"
                             " FROM approvals WHERE serial = ?", [serial]).fetchone()
            if row is None or row[0] != dev.node:
                raise ValueError("the hub holds no such approval (a hub restored from an "
                                 "older backup?)")
            if row[2] is not None:
                return "same" if bytes(row[2]) == dev.x25519 else "other"
            db.execute("UPDATE approvals SET used_by = ?, used_at = ? WHERE serial = ?",
                       [dev.x25519, now, serial])
            self._insert_device(db, dataclasses.replace(dev, role=row[3], window_days=row[4]),
                                now, int(row[1]))
            return "enrolled"

    def letters_taken(self, site: str, but: str | None = None,
                      now: int | None = None) -> dict[str, str]:
        """The letters in use at ``site`` (by an approved kiosk other than ``but``, and with
        ``now``, by an approval neither used nor expired), each with what holds it."""
        out = {letter: f"kiosk {device_id}" for letter, device_id in self._q(
            "SELECT letter, device_id FROM devices WHERE site = ? AND state = 'approved'"
            " AND device_id IS DISTINCT FROM ?", [site, but])}
        if now is not None:
            for letter, serial in self._q("SELECT letter, serial FROM approvals WHERE site = ?"
                                          " AND used_by IS NULL AND expires > ?", [site, now]):
                out.setdefault(letter, f"approval {serial}, until it is used or expires")
        return out

    def retire(self, old_id: str, new_id: str, site: str, letter: str, from_day: str,
               now: int) -> None:
        """``old_id`` replaced by ``new_id`` (its letter at ``site`` from ``from_day``), in
        one transaction: the replacement kept, the old kiosk revoked, and the new one, if
        enrolled, given the letter. Again for the same pair: nothing changes."""
        with self._tx() as db:
            held = db.execute("SELECT new_device FROM replacements WHERE old_device = ?",
                              [old_id]).fetchone()
            if held is not None:
                if held[0] != new_id:
                    raise ValueError(f"kiosk {old_id} was replaced by {held[0]} already")
                return
            db.execute("INSERT INTO replacements VALUES (?, ?, ?, ?, ?, ?)",
                       [old_id, new_id, site, letter, from_day, now])
            db.execute("UPDATE devices SET state = 'revoked' WHERE device_id = ?", [old_id])
            changed(db)
            db.execute("UPDATE devices SET letter = ? WHERE device_id = ?", [letter, new_id])

    def replacement(self, old_id: str) -> dict[str, Any] | None:
        """How ``old_id`` was replaced (by, site, letter, from_day, at), or None."""
        rows = self._q("SELECT new_device, site, letter, from_day, at FROM replacements"
                       " WHERE old_device = ?", [old_id])
        if not rows:
            return None
        by, site, letter, day, at = rows[0]
        return {"by": by, "site": site, "letter": letter, "from_day": day, "at": at}

    _DEV = ("SELECT device_id, node, site, letter, x25519, ed25519, state, last_seq, last_hash,"
            " cursor, last_seen, suspected_clone, clone_labels, clone_mark, kiosk_number,"
            " role, window_days, role_since, acked FROM devices")

    def device(self, device_id: str) -> Device | None:
        rows = self._q(self._DEV + " WHERE device_id = ?", [device_id])
        return Device(*rows[0]) if rows else None

    def devices(self) -> list[Device]:
        return [Device(*r) for r in self._q(self._DEV + " ORDER BY site, letter, device_id")]

    def set_state(self, device_id: str, state: str) -> bool:
        with self._tx() as db:
            changed(db)  # a revocation ends the kiosk's sessions on every hub process
            return db.execute("UPDATE devices SET state = ? WHERE device_id = ?",
                              [state, device_id]).rowcount > 0

    def seen(self, device_id: str, now: int, cursor: int | None = None,
             vv: Mapping[Any, Any] | None = None) -> None:
        """The kiosk was here (and holds what arrived by ``cursor``, or ``vv``)."""
        text = None if vv is None else json.dumps(
            {f"{n:08x}": s for n, s in vv.items() if isinstance(n, int)}, sort_keys=True)
        with self._tx() as db:
            db.execute("UPDATE devices SET last_seen = ?, cursor = COALESCE(?, cursor),"
                       " acked = CASE WHEN ? > acked THEN ? ELSE acked END,"
                       " vv = COALESCE(?, vv) WHERE device_id = ?",
                       [now, cursor, cursor, cursor, text, device_id])

    def set_role(self, device_id: str, role: str, window_days: int, now: int) -> bool:
        """Give the kiosk a role (and window) from ``now``, logged; False: no such kiosk."""
        with self._tx() as db:
            if db.execute("UPDATE devices SET role = ?, window_days = ?, role_since = ?"
                          " WHERE device_id = ?",
                          [role, window_days, now, device_id]).rowcount == 0:
                return False
            db.execute("INSERT INTO log (at, device_id, code, detail) VALUES (?, ?, ?, ?)",
                       [now, device_id, "role", f"role {role}" + (
                           f", window {window_days} days" if role == "clinician" else "")])
            return True

    # Batches and deltas -----------------------------------------------------------

    def batch_hash(self, device_id: str, seq: int) -> bytes | None:
        rows = self._q("SELECT hash FROM batches WHERE device_id = ? AND seq = ?",
                       [device_id, seq])
        return bytes(rows[0][0]) if rows else None

    def commit_batch(self, device_id: str, seq: int, hash_: bytes,
                     good: list[tuple[Delta, bytes]], bad: list[tuple[str, str, bytes]],
                     now: int, quarantined: list[int], follows: bytes | None = None,
                     ) -> int | None:
        """Apply one batch durably: the good deltas (each record's facts with them), the
        bad ones in quarantine (code, reason, bytes), and the kiosk's checkpoint moved to
        it. Returns the greatest arrival number given (None: nothing new arrived).
        ``follows``: the checkpoint the caller saw, checked under a lock on the kiosk's
        row, held to commit (``CheckpointMoved``: another process moved it). A database
        lost mid-commit (a failover) is waited for and the batch tried once more: with
        ``follows``, a first try that did commit shows as ``CheckpointMoved``."""
        args = (device_id, seq, hash_, good, bad, now, quarantined, follows)
        try:
            return self._commit_batch(*args)
        except ConnectionLost:
            if follows is None:
                raise
            return self._commit_batch(*args)

    def _commit_batch(self, device_id: str, seq: int, hash_: bytes,
                      good: list[tuple[Delta, bytes]], bad: list[tuple[str, str, bytes]],
                      now: int, quarantined: list[int], follows: bytes | None,
                      ) -> int | None:
        with self._tx() as db:
            if follows is not None:
                held = db.execute("SELECT last_seq, last_hash FROM devices WHERE device_id = ?"
                                  + for_update(db), [device_id]).fetchone()
                if held is None or (held[0], bytes(held[1])) != (seq - 1, follows):
                    raise CheckpointMoved(f"kiosk {device_id}'s checkpoint moved")
            sealer = self._sealing(db)
            good = husking.husked(db, good)  # an erased patient's: no value kept
            sealed = sealer.seal_ops([(d.record_id, d.stamp, d.node, data) for d, data in good])
            given = insert_ops(db, [(_sealed(d, blob), device_id, d.is_delete)
                                    for (d, _), blob in zip(good, sealed, strict=True)])
            added = [(hseq, d) for hseq, (d, _) in zip(given, good, strict=True)
                     if hseq is not None]
            scopes.note_commit(db, added)
            current.apply(db, sealer, current.as_stored(db, added, good))
            arrived = added[-1][0] if added else None
            first = added[0][0] if added else next_hseq(db)
            for code, reason, data in bad:
                qid = int(db.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM quarantine"
                                     ).fetchone()[0])
                db.execute("INSERT INTO quarantine (id, at, device_id, seq, code, reason, data)"
                           " VALUES (?, ?, ?, ?, ?, ?, ?)",
                           [qid, now, device_id, seq, code, reason,
                            sealer.seal(at_rest.quarantine_ad(qid), data)])
            if good:
                drop_superseded(db, sealer, device_id, [d for d, _ in good], now)
            db.execute("INSERT INTO batches VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                       [device_id, seq, hash_, now, len(good), json.dumps(quarantined), first,
                        arrived])
            db.execute("UPDATE devices SET last_seq = ?, last_hash = ?, last_seen = ?"
                       " WHERE device_id = ?", [seq, hash_, now, device_id])
            return arrived

    # Clones: held batches, the flag, queue labels -----------------------------------

    def is_held(self, device_id: str, hash_: bytes) -> bool:
        return bool(self._q("SELECT 1 FROM held_batches WHERE device_id = ? AND hash = ?",
                            [device_id, hash_]))

    def held_hashes(self, device_id: str, seq: int) -> list[bytes]:
        return [bytes(h) for (h,) in self._q(
            "SELECT hash FROM held_batches WHERE device_id = ? AND seq = ?", [device_id, seq])]

    def hold_batch(self, device_id: str, batch: Batch, now: int) -> tuple[int, bool, bool]:
        """Keep a verified batch off the hub's chain: on the branch of the held batch it
        follows, unless that branch has another batch under its sequence already (one
        more copy), else on a new branch. Returns (branch, whether the batch is new
        here, whether its branch is)."""
        with self._tx() as db:
            row = db.execute("SELECT branch FROM held_batches WHERE device_id = ? AND hash = ?",
                             [device_id, batch.hash]).fetchone()
            if row:
                return int(row[0]), False, False
            row = db.execute(
                "SELECT p.branch FROM held_batches p WHERE p.device_id = ? AND p.hash = ?"
                " AND NOT EXISTS (SELECT 1 FROM held_batches s WHERE s.device_id = p.device_id"
                " AND s.branch = p.branch AND s.seq = ?)",
                [device_id, batch.prev, batch.seq]).fetchone()
            branch = int(row[0]) if row else int(db.execute(
                "SELECT COALESCE(MAX(branch), 0) + 1 FROM held_batches WHERE device_id = ?",
                [device_id]).fetchone()[0])
            payload = self._sealing(db).seal(at_rest.held_ad(device_id, batch.hash),
                                             batch.payload)
            db.execute("INSERT INTO held_batches VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                       [device_id, branch, batch.seq, batch.hash, batch.prev, payload,
                        batch.sig, now])
            return branch, True, row is None

    def held_batches(self) -> list[dict[str, Any]]:
        """Every held batch, by kiosk, branch and sequence (payload as it came)."""
        return [{"device": d, "branch": b, "seq": s, "hash": bytes(h).hex(),
                 "received_at": at,
                 "payload": self._sealer.open(at_rest.held_ad(d, bytes(h)), bytes(p))}
                for d, b, s, h, at, p in self._q(
                    "SELECT device_id, branch, seq, hash, received_at, payload"
                    " FROM held_batches ORDER BY device_id, branch, seq")]

    def writes_since_batch(self, device_id: str, seq: int, node: int, limit: int,
                           ) -> list[tuple[bytes, int]]:
        """The last ``limit`` writes of ``node`` (record id, stamp) that arrived with the
        kiosk's batch ``seq`` or after it; [] if the hub does not know where it began."""
        row = self._q("SELECT first_hseq FROM batches WHERE device_id = ? AND seq = ?",
                      [device_id, seq])
        if not row or row[0][0] is None:
            return []
        return [(bytes(rid), stamp) for rid, stamp in self._q(
            "SELECT rid, stamp FROM ops WHERE node = ? AND hseq >= ? ORDER BY hseq DESC"
            " LIMIT ?", [node, row[0][0], limit])]

    def suspect_clone(self, device_id: str, detail: str, now: int) -> None:
        """Flag the kiosk, log why (``suspected-clone``), and make every queue label
        given to its copies so far stale."""
        with self._tx() as db:
            db.execute("UPDATE devices SET suspected_clone = 1, clone_mark = clone_labels"
                       " WHERE device_id = ?", [device_id])
            db.execute("INSERT INTO log (at, device_id, code, detail) VALUES (?, ?, ?, ?)",
                       [now, device_id, "suspected-clone", detail[:500]])

    def issue_label(self, device_id: str) -> int:
        """A queue label no copy of this kiosk was given before."""
        with self._tx() as db:
            return int(db.execute("UPDATE devices SET clone_labels = clone_labels + 1"
                                  " WHERE device_id = ? RETURNING clone_labels",
                                  [device_id]).fetchone()[0])

    def clear_clone(self, device_id: str, now: int) -> bool:
        """A technician settled it: the flag goes (held batches stay, for review)."""
        with self._tx() as db:
            if db.execute("UPDATE devices SET suspected_clone = 0 WHERE device_id = ?",
                          [device_id]).rowcount == 0:
                return False
            db.execute("INSERT INTO log (at, device_id, code, detail) VALUES (?, ?, ?, ?)",
                       [now, device_id, "clone-cleared", "cleared by the technician"])
            return True

    def batch_quarantined(self, device_id: str, seq: int) -> list[int]:
        rows = self._q("SELECT quarantined FROM batches WHERE device_id = ? AND seq = ?",
                       [device_id, seq])
        return list(json.loads(rows[0][0])) if rows else []

    def batch_arrived(self, device_id: str, seq: int) -> int | None:
        """The greatest arrival number the kiosk's committed batch ``seq`` was given."""
        rows = self._q("SELECT arrived FROM batches WHERE device_id = ? AND seq = ?",
                       [device_id, seq])
        return rows[0][0] if rows else None

    def erasure_records(self, rids: list[bytes]) -> set[bytes]:
        """Those of ``rids`` that are erasure records the hub holds (``husking``)."""
        with self._lock:
            return husking.erasure_records(self._db, rids)

    def add_local(self, *ops: Op) -> None:
        """The hub's own writes, in one transaction."""
        with self._tx() as db:
            sealed = self._sealing(db).seal_ops([(op.rid, op.stamp, op.node, op.data)
                                                 for op in ops])
            given = insert_ops(db, [(Op(op.rid, op.stamp, op.node, blob), "hub",
                                     scopes.is_delete_head(op.data))
                                    for op, blob in zip(ops, sealed, strict=True)])
            decoded = scopes.decoded([(hseq, op.data) for hseq, op in zip(given, ops, strict=True)
                                      if hseq is not None])
            scopes.note_commit(db, decoded)
            current.apply(db, self._sealer, decoded)

    def changes_since(self, cursor: int, exclude_node: int | None, max_bytes: int,
                      scope: Scope | None = None, split: PageSplit | None = None,
                      ) -> tuple[list[bytes], int, bool]:
        """Deltas that arrived after ``cursor`` and did not come from ``exclude_node``
        (None: every delta). A kiosk's pull (``exclude_node`` given) gets no audit entries:
        they are the kiosk's account of technicians' actions, for the hub alone. A write
        that came late to a deleted record brings the record's older deltas with it
        (``scopes.note_late``). With a door or clinician ``scope``, only its records'
        (``scopes.changes_in_scope``). ``split``: the session's place in a group larger
        than a page (``protocol.sync.paging``)."""
        with self._lock:
            if scope is not None and scope.role != "full":
                return scopes.changes_in_scope(self._db, scope, cursor, exclude_node,
                                               max_bytes, split)
            return scopes.changes_full(self._db, cursor, exclude_node, max_bytes, split)

    def snapshot(self, scope: Scope, cursor: int, upto: int, rids: list[bytes] | None,
                 max_bytes: int) -> tuple[list[bytes], int, bool]:
        """A page of the snapshot of ``scope`` (``rids``: of those records) cut at ``upto``,
        after ``cursor`` (``scopes.snapshot_page``)."""
        with self._lock:
            return scopes.snapshot_page(self._db, scope, cursor, upto, rids, max_bytes)

    def scope_sums(self, scope: Scope, cursor: int, node: int | None = None,
                   versions: tuple[int, ...] = (2, 1)) -> dict[int, bytes]:
        """The checksums of ``scope`` held with what arrived by ``cursor`` and ``node``'s,
        by version (``scopes.scope_sums``)."""
        with self._lock:
            return scopes.scope_sums(self._db, scope, cursor, node, versions)

    def stable_point(self, role: str, site: str) -> int:
        """The smallest cursor every live kiosk of the scope group acknowledged."""
        with self._lock:
            return scopes.stable_point(self._db, role, site)

    def facts(self, rid: bytes) -> tuple[int, str | None, bytes | None, str | None] | None:
        """A record's facts (type, location, subject, day), or None."""
        rows = self._q("SELECT type, location, subject, day FROM record_facts WHERE rid = ?",
                       [rid])
        if not rows:
            return None
        rtype, location, subject, day = rows[0]
        return rtype, location, None if subject is None else bytes(subject), day

    def door_sites(self) -> set[str]:
        """The sites with a live door kiosk."""
        return {str(s) for (s,) in self._q("SELECT DISTINCT site FROM devices WHERE role ="
                                           " 'door' AND state = 'approved'")}

    def site_patients(self, site: str) -> set[bytes]:
        """The patients named by a check-in at ``site``."""
        return {bytes(p) for (p,) in self._q(
            "SELECT DISTINCT subject FROM record_facts WHERE location = ? AND type = ?"
            " AND subject IS NOT NULL", [site, scopes.CHECKIN])}

    def visits_touched(self, cursor: int, upto: int) -> set[tuple[str, bytes]]:
        """(site, patient) of the check-ins, and of the patients' check-ins, written
        after ``cursor`` and by ``upto``."""
        return {(str(site), bytes(pid)) for site, pid in self._q(
            "SELECT f.location, f.subject FROM ops o JOIN record_facts f ON f.rid = o.rid"
            " WHERE o.hseq > ? AND o.hseq <= ? AND f.type = ? AND f.subject IS NOT NULL"
            " AND f.location IS NOT NULL UNION"
            " SELECT c.location, c.subject FROM ops o JOIN record_facts c ON c.subject = o.rid"
            " WHERE o.hseq > ? AND o.hseq <= ? AND c.type = ? AND c.location IS NOT NULL",
            [cursor, upto, scopes.CHECKIN, cursor, upto, scopes.CHECKIN])}

    def head(self) -> int:
        """The last arrival number (not a count: numbers follow the clock)."""
        with self._lock:
            return scopes.head(self._db)

    def count(self) -> int:
        """How many deltas the hub holds."""
        return int(self._q("SELECT COUNT(*) FROM ops")[0][0])

    def all_ops(self) -> Iterator[Op]:
        for rid, stamp, node, data in self._q(f"SELECT rid, stamp, node, {OPENED} FROM ops"):
            yield Op(bytes(rid), stamp, node, bytes(data))

    def current_records(self, where: str = "", args: tuple[Any, ...] = ()) -> list[Any]:
        """The current records (``current.rows``: each view and the arrival number of its
        last change), ``where`` an SQL condition on ``records r``."""
        return list(self.iter_current(where, args))

    def iter_current(self, where: str = "", args: tuple[Any, ...] = ()) -> Iterator[Any]:
        """``current_records`` one at a time, read in one statement (the store's lock held
        until the last)."""
        with self._lock:
            yield from current.rows(self._db, self._sealer, where, args)

    def ops_in(self, first: bytes, last: bytes) -> list[Op]:
        """Every delta held for the records ``first`` to ``last`` (ids in byte order: a
        kiosk's audit entries, ``host.hub.audit``)."""
        return [Op(bytes(rid), stamp, node, bytes(data)) for rid, stamp, node, data in self._q(
            f"SELECT rid, stamp, node, {OPENED} FROM ops WHERE rid BETWEEN ? AND ?"
            " ORDER BY rid, stamp, node", [first, last])]

    def record_ops(self, rid: bytes) -> list[Op]:
        """Every delta the hub holds for one record."""
        return [Op(rid, stamp, node, bytes(data)) for stamp, node, data in self._q(
            f"SELECT stamp, node, {OPENED} FROM ops WHERE rid = ?", [rid])]

    def record_ids(self, after: bytes, limit: int) -> list[bytes]:
        """Up to ``limit`` ids of records held that follow ``after``, in order."""
        return [bytes(rid) for (rid,) in self._q(
            "SELECT DISTINCT rid FROM ops WHERE rid > ? ORDER BY rid LIMIT ?", [after, limit])]

    def subject_records(self, subject: bytes) -> list[bytes]:
        """The records whose subject is ``subject``."""
        return [bytes(rid) for (rid,) in self._q(
            "SELECT rid FROM record_facts WHERE subject = ? ORDER BY rid", [subject])]

    def first_write(self, rid: bytes) -> tuple[int, int, int]:
        """The arrival number, node and stamp of the first delta held of ``rid``."""
        hseq, node, stamp = self._q("SELECT hseq, node, stamp FROM ops WHERE rid = ?"
                                    " ORDER BY hseq LIMIT 1", [rid])[0]
        return hseq, node, stamp

    def arrived_after(self, hseq: int, limit: int) -> list[tuple[int, bytes, int, int]]:
        """Up to ``limit`` deltas that arrived after ``hseq``, in order: (arrival number,
        record id, stamp, node), none opened."""
        return [(n, bytes(rid), stamp, node) for n, rid, stamp, node in self._q(
            "SELECT hseq, rid, stamp, node FROM ops WHERE hseq > ? ORDER BY hseq LIMIT ?",
            [hseq, limit])]

    def version_vector(self) -> dict[int, int]:
        """The greatest stamp held of each node. Deltas are never deleted and arrive in
        number order (``next_hseq``), so what arrived after the last look is added to
        the vector held: one look through the arrival index, not through every delta."""
        with self._lock:
            for node, stamp, last in self._q("SELECT node, MAX(stamp), MAX(hseq) FROM ops"
                                             " WHERE hseq > ? GROUP BY node", [self._vv_at]):
                self._vv[node] = max(self._vv.get(node, 0), stamp)
                self._vv_at = max(self._vv_at, last)
            return dict(self._vv)

    # Keys at rest (``at_rest``) -----------------------------------------------------

    def rotate_key(self, now: int) -> int:
        """A new data key seals from now on; the re-sealer starts over. Its version."""
        with self._tx() as db:
            version = at_rest.rotate(db, self._keys, now)
            self._sealing(db)
            changed(db)  # every hub process takes the new key, to open what it seals
            return version

    def keyring(self) -> dict[str, Any]:
        """The key versions held, the current one, and the re-sealer's progress."""
        return {"versions": [int(v) for (v,) in self._q(
                    "SELECT version FROM keyring WHERE version != ? ORDER BY version",
                    [at_rest.NAME_KEY])],
                "current": self._sealer.current, "resealing": self.get_meta(at_rest.PROGRESS)}

    def reseal_slice(self, limit: int = 500,
                     files: Callable[[at_rest.Sealer], bool] | None = None) -> bool:
        """Seal under the current key the next ``limit`` rows of the walk (ops, quarantine,
        held batches, in row order) that are plain or under an older key, in one
        transaction, the walk's place kept in ``meta``; True while the walk goes on. At its
        end, ``files`` re-seals what lives beside the database (True: all done), then the
        older keys are deleted and the log truncated. A walk cut short (a power cut) goes
        on from its last slice; a rotation meanwhile starts it over."""
        with self._tx() as db:
            sealer = self._sealing(db)
            progress = meta_get(db, at_rest.PROGRESS, lock=True)  # one walker at a time
            if progress is None:
                return False
            table, after = str(progress).split()
            if table in _RESEAL:
                select, column, ad_of, ops = _RESEAL[table]
                rows = db.execute(select + for_update(db), [int(after), limit]).fetchall()
                key = select.split()[1].rstrip(",")  # the walk's key: its first column
                db.conn.executemany(f"UPDATE {table} SET {column} = ? WHERE {key} = ?", [
                    (sealer.reseal(ad_of(*r[1:-1]), bytes(r[-1]), ops), r[0])
                    for r in rows if not sealer.is_current(ad_of(*r[1:-1]), bytes(r[-1]), ops)])
                tables = list(_RESEAL)
                place = (f"{table} {rows[-1][0]}" if len(rows) == limit else
                         f"{tables[tables.index(table) + 1]} 0" if table != tables[-1] else
                         "files 0")
                meta_set(db, at_rest.PROGRESS, place)
                return True
            place = str(progress)
        # files (document chunks) are re-sealed outside the store's lock: syncs go on
        if files is not None and not files(sealer):
            return True
        with self._tx() as db:
            progress = meta_get(db, at_rest.PROGRESS)
            if progress is None or str(progress) != place or self._sealing(db) is not sealer:
                return True  # a rotation meanwhile: the walk starts over
            meta_delete(db, at_rest.PROGRESS)
            meta_set(db, at_rest.ALL_SEALED, 1)
            db.execute("DELETE FROM keyring WHERE version NOT IN (?, ?)",
                       [at_rest.NAME_KEY, sealer.current])
            self._sealer = at_rest.load(db, self._keys)
            at_rest.register(self._db, self._sealer)
        self.checkpoint()
        return False

    def checkpoint(self) -> bool:
        """Everything in the main file, and the write-ahead log emptied; False if a reader
        (another connection) kept it from being emptied whole."""
        if is_postgres(self._db):
            return True  # the server's own checkpoints
        with self._lock:
            return not self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]

    # Log and quarantine -----------------------------------------------------------

    def log(self, device_id: str | None, code: str, detail: str, now: int) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO log (at, device_id, code, detail) VALUES (?, ?, ?, ?)",
                       [now, device_id, code, detail[:500]])

    def events(self, limit: int = 100) -> list[dict[str, Any]]:
        return [{"at": at, "device": dev, "code": code, "detail": detail}
                for at, dev, code, detail in self._q(
                    "SELECT at, device_id, code, detail FROM log ORDER BY id DESC LIMIT ?",
                    [limit])]

    def quarantined_delta(self, qid: int) -> tuple[str | None, str, bytes] | None:
        """One quarantined delta: (kiosk, code, bytes), or None."""
        rows = self._q("SELECT device_id, code, data FROM quarantine WHERE id = ?", [qid])
        return (rows[0][0], rows[0][1], self._sealer.open(
            at_rest.quarantine_ad(qid), bytes(rows[0][2]))) if rows else None

    def release_quarantined(self, qid: int, delta: Delta, data: bytes, detail: str,
                            now: int) -> bool:
        """Apply quarantined delta ``qid`` as if it had just arrived, and log it, in one
        transaction; False if it is gone (released or dropped meanwhile)."""
        with self._tx() as db:
            row = db.execute("DELETE FROM quarantine WHERE id = ? RETURNING device_id",
                             [qid]).fetchone()
            if row is None:
                return False
            (_, data), = husking.husked(db, [(delta, data)])
            blob = self._sealing(db).seal_ops([(delta.record_id, delta.stamp, delta.node,
                                                data)])[0]
            hseq, = insert_ops(db, [(_sealed(delta, blob), row[0] or "hub", delta.is_delete)])
            if hseq is not None:
                scopes.note_commit(db, [(hseq, delta)])
                current.apply(db, self._sealer,
                              current.as_stored(db, [(hseq, delta)], [(delta, data)]))
            db.execute("INSERT INTO log (at, device_id, code, detail) VALUES (?, ?, ?, ?)",
                       [now, row[0], "quarantine-released", detail[:500]])
            return True

    def drop_quarantined(self, qid: int, detail: str, now: int) -> bool:
        """Delete quarantined delta ``qid`` and log it; False if there is none."""
        with self._tx() as db:
            row = db.execute("DELETE FROM quarantine WHERE id = ? RETURNING device_id",
                             [qid]).fetchone()
            if row is None:
                return False
            db.execute("INSERT INTO log (at, device_id, code, detail) VALUES (?, ?, ?, ?)",
                       [now, row[0], "quarantine-dropped", detail[:500]])
            return True

    def quarantined(self) -> list[dict[str, Any]]:
        return [{"id": i, "at": at, "device": dev, "batch": seq, "code": code, "reason": r}
                for i, at, dev, seq, code, r in self._q(
                    "SELECT id, at, device_id, seq, code, reason FROM quarantine ORDER BY id")]

    # The server's looks (push and revocation) -------------------------------------

    def nodes_since(self, hseq: int) -> set[int]:
        """The nodes that wrote deltas arriving after ``hseq``."""
        return {int(n) for (n,) in self._q("SELECT DISTINCT node FROM ops WHERE hseq > ?",
                                           [hseq])}

    # Technicians (``host.hub.technician``) ---------------------------------------------

    def add_technician(self, name: str, sites: list[str], kiosks: list[str],
                       actions: list[str], not_before: int, expires: int, ed25519: bytes,
                       now: int) -> int:
        """Record a technician certificate about to be signed; returns its serial."""
        with self._tx() as db:
            return int(db.execute(
                "INSERT INTO technicians (name, sites, kiosks, actions, not_before, expires,"
                " ed25519, issued_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING serial",
                [name, json.dumps(sites), json.dumps(kiosks), json.dumps(actions), not_before,
                 expires, ed25519, now]).fetchone()[0])

    def revoke_technician(self, serial: int, now: int) -> bool | None:
        """Mark ``serial`` revoked: True, False if it was already, None if unknown."""
        with self._tx() as db:
            row = db.execute("SELECT revoked_at FROM technicians WHERE serial = ?",
                             [serial]).fetchone()
            if row is None:
                return None
            if row[0] is not None:
                return False
            db.execute("UPDATE technicians SET revoked_at = ? WHERE serial = ?", [now, serial])
            return True

    def technicians(self) -> list[dict[str, Any]]:
        return [{"serial": s, "name": n, "sites": json.loads(si), "kiosks": json.loads(k),
                 "actions": json.loads(a), "not_before": nb, "expires": ex,
                 "issued_at": at, "revoked_at": rv}
                for s, n, si, k, a, nb, ex, at, rv in self._q(
                    "SELECT serial, name, sites, kiosks, actions, not_before, expires,"
                    " issued_at, revoked_at FROM technicians ORDER BY serial")]

    def technician_revocations(self) -> tuple[int, bytes] | None:
        """The signed revocation list of technicians' certificates and its number."""
        number, doc = self.get_meta(REVOCATIONS_NUMBER), self.get_meta(REVOCATIONS_LIST)
        return (int(number), bytes(doc)) if number is not None and doc is not None else None

    def set_technician_revocations(self, number: int, doc: bytes) -> None:
        with self._tx() as db:
            meta_set(db, REVOCATIONS_NUMBER, number)
            meta_set(db, REVOCATIONS_LIST, doc)

    def revoked_technicians(self) -> list[int]:
        return [int(s) for (s,) in self._q(
            "SELECT serial FROM technicians WHERE revoked_at IS NOT NULL ORDER BY serial")]

    def revoked_devices(self) -> set[str]:
        return {str(d) for (d,) in self._q("SELECT device_id FROM devices WHERE state = ?",
                                           ["revoked"])}


#: What the re-sealer walks: table -> (rows after a key, as (key, what the associated data
#: is made of..., sealed column); that column; the associated data; a delta?).
_RESEAL: dict[str, tuple[str, str, Callable[..., bytes], bool]] = {
    "ops": ("SELECT hseq, rid, stamp, node, data FROM ops WHERE hseq > ? ORDER BY hseq"
            " LIMIT ?", "data", lambda rid, stamp, node: at_rest.op_ad(bytes(rid), stamp, node),
            True),
    "quarantine": ("SELECT id, id, data FROM quarantine WHERE id > ? ORDER BY id LIMIT ?",
                   "data", at_rest.quarantine_ad, False),
    "held_batches": ("SELECT rowid, device_id, hash, payload FROM held_batches WHERE rowid > ?"
                     " ORDER BY rowid LIMIT ?", "payload",
                     lambda device_id, hash_: at_rest.held_ad(device_id, bytes(hash_)), False),
    "record_fields": (current.RESEAL_SELECT, "value", current.value_ad, False),
}


def insert_ops(db: Db, rows: list[tuple[Op, str, bool]]) -> list[int | None]:
    """Keep deltas (each: its row, ``data`` sealed; where it came from; a delete?) under
    the next arrival numbers, in order; returns each one's number, None for a delta the
    hub held already (or twice in ``rows``). Every writer of ``ops`` comes here: under
    the arrival lock (``next_hseq``), no other writer adds a delta meanwhile, so the
    look for those held and the inserts, one statement for all, agree."""
    if not rows:
        return []
    hseq = next_hseq(db)
    held = {(bytes(r), s, n) for r, s, n in rows_in(
        db, "SELECT rid, stamp, node FROM ops WHERE rid IN ({marks})",
        sorted({op.rid for op, _, _ in rows}))}
    given: list[int | None] = []
    new = []
    for op, origin, deleted in rows:
        if (op.rid, op.stamp, op.node) in held:
            given.append(None)
            continue
        held.add((op.rid, op.stamp, op.node))
        new.append((hseq, op.rid, op.stamp, op.node, op.data, origin, int(deleted)))
        given.append(hseq)
        hseq += 1
    if new:
        db.conn.executemany("INSERT INTO ops (hseq, rid, stamp, node, data, origin, del)"
                            " VALUES (?, ?, ?, ?, ?, ?, ?)", new)
        used_hseq(db, hseq - 1)
    return given


def _sealed(delta: Delta, blob: bytes) -> Op:
    return Op(delta.record_id, delta.stamp, delta.node, blob)


def drop_superseded(db: Db, sealer: at_rest.Sealer, device_id: str,
                    accepted: list[Delta], now: int) -> None:
    """Drop the kiosk's quarantined ``clock-ahead`` deltas that a delta just accepted
    from it issues again (``protocol.sync.reissue``), and log each, in the caller's
    transaction. A kiosk with nothing quarantined costs one indexless look-up."""
    rows = db.execute("SELECT id, data FROM quarantine WHERE device_id = ?"
                      " AND code = 'clock-ahead'", [device_id]).fetchall()
    if not rows:
        return
    by_record: dict[bytes, list[Delta]] = {}
    for d in accepted:
        by_record.setdefault(d.record_id, []).append(d)
    for qid, data in rows:
        try:
            original = decode(sealer.open(at_rest.quarantine_ad(qid), bytes(data)))
        except RemoteProtocolError:
            continue
        again = next((d for d in by_record.get(original.record_id, ())
                      if is_reissue(original, d)), None)
        if again is not None:
            db.execute("DELETE FROM quarantine WHERE id = ?", [qid])
            db.execute("INSERT INTO log (at, device_id, code, detail) VALUES (?, ?, ?, ?)",
                       [now, device_id, "quarantine-superseded",
                        f"quarantined delta {qid} ({original.node:08x}-{original.stamp:016x})"
                        f" issued again as {again.node:08x}-{again.stamp:016x}"])


class HubReader(HubStore):
    """A connection of its own to the hub's database (read-only for ``hub.db``), for a
    watcher beside the store. ``data_version`` moves whenever another connection (any
    process) commits a change the watcher reports (arrivals, revocations)."""

    def __init__(self, target: Path | str) -> None:
        self._lock = threading.RLock()
        if isinstance(target, Path):
            self._db = open_database(target, readonly=True)
        else:
            from host.hub.database.postgres import PgDb
            self._db = PgDb(target)

    def data_version(self) -> int:
        if not is_postgres(self._db):
            return int(self._q("PRAGMA data_version")[0][0])
        # what a look reports: the last arrival, the kiosks revoked, the data key
        return hash(tuple(self._q(
            "SELECT (SELECT num FROM meta WHERE key = ?), (SELECT COUNT(*) FROM devices"
            " WHERE state = 'revoked'), (SELECT num FROM meta WHERE key = ?)",
            [LAST_HSEQ, at_rest.CURRENT])[0]))
