"""Check-ins taken while the store is locked, sealed until staff unlock it.

Theory of operation
-------------------
A kiosk whose keys are wrapped under a passphrase (``unlock``) boots locked:
the store cannot be opened, yet the page must go on checking patients in (a
power cut at night must not stop the morning). Each check-in taken then is
sealed with HPKE (X25519, HKDF-SHA256, AES-256-GCM: ``certificate.seal``)
to the public key kept in the clear in the keys file, whose private key is
wrapped under the store key: what the patient typed can be read only after
the unlock. The HPKE info binds the ciphertext to its row (check-in id,
time, queue number): moved to another row, it does not open.

The entries go to ``DATA/pending.db``, an SQLite file of its own (WAL,
``synchronous=FULL``: the commit is fsynced before the page shows the
number). What it keeps in the clear: the check-in's id (a time-ordered
random UUID), its time and its queue number, none of them a patient's.

Queue numbers are not secret. The store numbers a day's check-ins from its
plain ``queue_numbers`` table, under its plain letter (``meta``); a locked
kiosk reads both from ``store.db`` (read-only: no key needed) and gives the
next number past the store's and its own, counted in ``pending.db``. At
the unlock the store's counters are raised past every pending number
(``Store.raise_queue_numbers``) before the page's check-ins go to the
store, so no number is handed out twice.

Each entry is chained to the session of the process that took it
(``pending_chain``: a MAC under a key that is never on the card), so that
someone with the card cannot alter, reorder or remove an entry unseen.

``merge`` checks each session's chain, then turns each entry into an
ordinary ``Store.checkin`` at its original time, under its own check-in id
and number: the store keeps a check-in id once, so an entry merged before a
crash, and not yet erased here, is found and only erased when the merge runs
again (none lost, none doubled). A session's entries are erased, with it, in
one transaction once all are merged. An entry that does not open, decode or
pass its chain is kept, marked with why, and logged; the others merge, and
what a session misses is reported (``PendingMerge.missing``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sqlite3
import struct
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from device.store.exc import BadRequest, StoreError
from device.store.pending_chain import Chain, verify
from protocol import strict_cbor
from protocol.crdt.ids import time_ordered_id
from protocol.driver.database import Migrations, immediate, open_database
from protocol.driver.wall_clock import utc_text
from protocol.errors import ProtocolError
from protocol.sync.certificate import open_sealed, seal

DB_NAME = "pending.db"
INFO = b"haven/pending-checkin/v1\x00"
#: The most bytes a sealed entry may have: a name of 60 characters (240 bytes) and a
#: passport, a year and a reason in CBOR, with HPKE's 48 bytes.
MAX_SEALED = 1024
FIELDS = ("name", "passport", "code", "birth_year", "reason")

MIGRATIONS = Migrations("pending.db")
MIGRATIONS.sql(
    1,
    "CREATE TABLE checkins (cid BLOB PRIMARY KEY, at_ms INTEGER NOT NULL,"
    " queue_number TEXT NOT NULL, sealed BLOB NOT NULL, refused TEXT)",
    "CREATE TABLE queue_numbers (day TEXT PRIMARY KEY, last INTEGER NOT NULL)",
)
#: 2: each entry chained to its session (``pending_chain``); entries of 1 have none.
MIGRATIONS.sql(
    2,
    "CREATE TABLE sessions (sid BLOB PRIMARY KEY, started_ms INTEGER NOT NULL,"
    " sealed_key BLOB NOT NULL, count INTEGER NOT NULL, tag BLOB NOT NULL)",
    "ALTER TABLE checkins ADD COLUMN session BLOB",
    "ALTER TABLE checkins ADD COLUMN seq INTEGER",
    "ALTER TABLE checkins ADD COLUMN mac BLOB",
)
log = logging.getLogger("haven.store")


@dataclasses.dataclass(frozen=True)
class PendingCheckin:
    """What the page gets back from a check-in taken while locked."""

    record_id: str
    queue_number: str
    code: str | None = None
    identity: str = "locked"


@dataclasses.dataclass
class PendingMerge:
    merged: int = 0  #: entries now ordinary check-ins in the store
    already: int = 0  #: entries the store held already (a merge cut short before)
    refused: list[str] = dataclasses.field(default_factory=list)  #: kept, with why
    #: What sessions miss: entries removed from the file, in words.
    missing: list[str] = dataclasses.field(default_factory=list)
    unchained: int = 0  #: entries of a release before the chain, merged unchecked


def sealing_info(cid: bytes, at_ms: int, number: str) -> bytes:
    return INFO + cid + struct.pack(">Q", at_ms) + number.encode()


def _day(now_ms: int) -> str:
    return time.strftime("%Y-%m-%d", time.localtime(now_ms / 1000))


class PendingCheckins:
    """``DATA/pending.db``: check-ins sealed to ``public_key`` while the store is locked."""

    def __init__(self, data: Path, public_key: bytes | None = None) -> None:
        self.data = Path(data)
        self.public_key = public_key
        self.db = open_database(self.data / DB_NAME, MIGRATIONS)
        self.db.execute("PRAGMA secure_delete = ON")  # erased entries leave no bytes behind
        self._lock = threading.Lock()
        self._chain: Chain | None = None  #: this process's session, from its first entry

    def close(self) -> None:
        self.db.conn.close()

    def __enter__(self) -> PendingCheckins:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def count(self) -> int:
        with self._lock:
            return int(self.db.execute("SELECT COUNT(*) FROM checkins").fetchone()[0])

    def counters(self) -> dict[str, int]:
        """Each day's last queue number given while locked."""
        with self._lock:
            return dict(self.db.execute("SELECT day, last FROM queue_numbers").fetchall())

    def _store_numbering(self, day: str) -> tuple[str, int]:
        """The store's queue prefix (letter and label) and its last number of ``day``,
        read from ``store.db`` without a key; ``A`` and 0 for a store not made yet."""
        path = self.data / "store.db"
        if not path.exists():
            return "A", 0
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            meta = dict(conn.execute("SELECT key, value FROM meta WHERE key IN"
                                     " ('letter', 'queue_label')").fetchall())
            row = conn.execute("SELECT last FROM queue_numbers WHERE day = ?", [day]).fetchone()
        finally:
            conn.close()
        prefix = f"{meta.get('letter') or 'A'}{meta.get('queue_label') or ''}"
        return prefix, int(row[0]) if row else 0

    def add(self, *, now_ms: int, name: str | None = None, passport: str | None = None,
            code: str | None = None, birth_year: int | None = None,
            reason: str | None = None) -> PendingCheckin:
        """Seal and keep one check-in (durable before it returns) with its queue number."""
        if self.public_key is None:
            raise StoreError("no key to seal check-ins to while locked", "locked")
        if passport is None and code is None and not name:
            raise StoreError("a patient without documents needs a name", "bad-name")
        values = dict(zip(FIELDS, (name, passport, code, birth_year, reason), strict=True))
        plain = strict_cbor.dumps({k: v for k, v in values.items() if v is not None})
        cid = time_ordered_id(now_ms, os.urandom(10)).bytes
        day = _day(now_ms)
        with self._lock, immediate(self.db):
            prefix, store_last = self._store_numbering(day)
            row = self.db.execute("SELECT last FROM queue_numbers WHERE day = ?", [day]).fetchone()
            n = max(store_last, row[0] if row else 0) + 1
            self.db.execute("INSERT OR REPLACE INTO queue_numbers VALUES (?, ?)", [day, n])
            number = f"{prefix}-{n:03d}"
            sealed = seal(plain, self.public_key, sealing_info(cid, now_ms, number))
            chain = self._chain or Chain(self.public_key, now_ms)
            seq, mac, tag = chain.link(cid, now_ms, number, sealed)
            self.db.execute("INSERT INTO checkins (cid, at_ms, queue_number, sealed, session,"
                            " seq, mac) VALUES (?, ?, ?, ?, ?, ?, ?)",
                            [cid, now_ms, number, sealed, chain.sid, seq, mac])
            self.db.execute("INSERT OR REPLACE INTO sessions VALUES (?, ?, ?, ?, ?)",
                            [chain.sid, chain.started_ms, chain.sealed_key, seq + 1, tag])
        chain.advance()  # committed: the next entry's key replaces this one's
        self._chain = chain
        return PendingCheckin(str(uuid.UUID(bytes=cid)), number)

    def _open(self, row: tuple[Any, ...], key: X25519PrivateKey) -> dict[str, Any]:
        cid, at_ms, number, sealed = row
        if not isinstance(sealed, bytes) or len(sealed) > MAX_SEALED:
            raise ValueError("not a sealed check-in")
        plain = open_sealed(sealed, key, sealing_info(cid, at_ms, number))
        values = strict_cbor.loads(plain, max_size=MAX_SEALED)
        if not isinstance(values, dict) or not set(values) <= set(FIELDS):
            raise ValueError("not a check-in's values")
        return values

    def merge(self, store: Any, key: X25519PrivateKey) -> PendingMerge:
        """Every entry as an ordinary check-in at its time (see the module docstring)."""
        out = PendingMerge()
        store.raise_queue_numbers(self.counters())
        with self._lock:
            self._chain = None  # an entry added after this starts a session of its own
            rows = self.db.execute("SELECT cid, at_ms, queue_number, sealed, session, seq, mac"
                                   " FROM checkins WHERE refused IS NULL"
                                   " ORDER BY at_ms, cid").fetchall()
            sessions = self.db.execute("SELECT sid, started_ms, sealed_key, count, tag"
                                       " FROM sessions ORDER BY started_ms").fetchall()
        for session in sessions:
            entries = [r for r in rows if r[4] == session[0]]
            verdict = verify(key, session, [(*r[:4], *r[5:]) for r in entries])
            for missing in verdict.missing:
                when = utc_text(session[1]) if isinstance(session[1], int) else "?"
                out.missing.append(f"the session begun {when}: {missing}")
                log.error("check-ins taken while locked: the session begun %s: %s", when,
                          missing)
            merged = [r[0] for r in entries
                      if self._merge_one(store, key, r, out, verdict.bad.get(r[0]))]
            # checked and merged whole: the session goes, with the entries it merged, at
            # once (those it refused stay, marked), unless a process added to it meanwhile
            with self._lock, immediate(self.db):
                now = self.db.execute("SELECT count FROM sessions WHERE sid = ?",
                                      [session[0]]).fetchone()
                if now is not None and now[0] == session[3]:
                    for cid in merged:
                        self.db.execute("DELETE FROM checkins WHERE cid = ?", [cid])
                    self.db.execute("DELETE FROM sessions WHERE sid = ?", [session[0]])
        known = {s[0] for s in sessions}
        for row in (r for r in rows if r[4] not in known):
            unchained = row[4] is None  # from before the chain
            if self._merge_one(store, key, row, out, None if unchained else
                               "its session is gone (removed from the file)"):
                out.unchained += unchained
                with self._lock, immediate(self.db):
                    self.db.execute("DELETE FROM checkins WHERE cid = ?", [row[0]])
        with self._lock:
            if not self.db.execute("SELECT 1 FROM checkins LIMIT 1").fetchone():
                self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        return out

    def _merge_one(self, store: Any, key: X25519PrivateKey, row: tuple[Any, ...],
                   out: PendingMerge, bad: str | None) -> bool:
        """One entry into the store (True), or kept with why (False): ``bad`` says why
        its chain refused it."""
        cid = row[0]
        try:
            if bad is not None:
                raise ValueError(bad)
            values = self._open(row[:4], key)
            if store.view(str(uuid.UUID(bytes=cid))) is not None:
                out.already += 1
            else:
                store.checkin(now_ms=row[1], checkin_id=cid, queue_number=row[2], **values)
                out.merged += 1
            return True
        except (ProtocolError, ValueError, TypeError, BadRequest) as exc:
            # a full disk or a broken store (another StoreError) stops the merge with
            # every entry left kept; this one's own bytes or values are bad
            why = f"{type(exc).__name__}: {exc}"
            log.error("a check-in taken while locked (number %s, at %s ms) was not "
                      "merged; it stays in %s: %s", row[2], row[1], DB_NAME, why)
            with self._lock, immediate(self.db):
                self.db.execute("UPDATE checkins SET refused = ? WHERE cid = ?", [why, cid])
            out.refused.append(f"{row[2]}: {why}")
            return False
