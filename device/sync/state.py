"""The kiosk's sync checkpoints: its batch chain and its pull cursor, in ``sync.db``.

Theory of operation
-------------------
A batch is saved here (sealed with the store's field cipher: no patient data
in plaintext on disk) with its sequence, hash and the outbox entries it
carries, and the chain head moves to it, in one transaction, before the
batch is first sent. So a kiosk that dies after sending sends the very same
bytes again. The batch is marked acknowledged after the outbox entries left
the store; if the kiosk dies in between, the batch is sent again and the
hub acknowledges it again without applying it twice. The pull cursor is
saved only after the pulled deltas were merged durably. The hub's clock
offset is kept too.

Only an adopted or rewound chain head gets an fsync of its own
(``synchronous=FULL``): a power cut can lose a saved batch, but the hub
either committed it (its welcome shows it as its checkpoint, and the kiosk
takes it as its head; its entries are still queued and the hub keeps each
write once) or never saw it, and the next batch takes its sequence: the
chain does not fork. Acknowledgements, the cursor, the clock offset and the
last sync wait in memory and are written with the next batch, by ``flush``
once they have waited ``FLUSH_AFTER_S``, or at close: lost, they only mean
work done again. A value that did not change is not written at all, so an
idle round writes nothing to the SD card. An idle round's time is saved
only when the saved one is an hour old, but ``last_sync_ms`` keeps every
round's in memory (the runtime shows it, and ``haven-kiosk status`` asks
the running runtime for it), and ``close`` saves the latest.

The scope the hub's last welcome named is written at once when it changes
(the status shows it); the stable point waits with the cursor. A rebase the
hub asked for is written at once and kept owed until the snapshot is taken,
so a round that fails half way through one takes it again. The last
garbage collection that dropped anything is written after it, for the
status.

A revocation (``mark_revoked``) is written at once with an fsync: a kiosk
the hub revoked must not try again after a restart. It names the
certificate it was said to: enrolling again (a new certificate) clears it.

The tables change only through numbered migrations (``MIGRATIONS``,
``protocol.driver.database``).
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from protocol.driver.database import Migrations, immediate, open_database
from protocol.errors import ProtocolError
from protocol.sync.batches import GENESIS
from protocol.sync.scope import Scope, utc_day

DB_NAME = "sync.db"
SEAL_LABEL = b"haven-sync-batch"
#: The hub's clock offset is saved again only when it moved more than this.
CLOCK_SLACK_MS = 1000
#: A round that moved nothing saves its time only if the saved one is this old.
LAST_SYNC_REFRESH_MS = 3600 * 1000
#: How long what waits in memory may wait for a batch to carry it (seconds).
FLUSH_AFTER_S = 60.0


MIGRATIONS = Migrations("sync.db")
#: 1: the tables as release c3497bc made them (``IF NOT EXISTS``: its files are at 1).
MIGRATIONS.sql(
    1,
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID",
    """CREATE TABLE IF NOT EXISTS batches (
        seq INTEGER PRIMARY KEY, prev BLOB NOT NULL, hash BLOB NOT NULL,
        lane INTEGER NOT NULL, entries TEXT NOT NULL, sealed BLOB, sig BLOB NOT NULL,
        acked INTEGER NOT NULL DEFAULT 0)""",
)


class SyncState:
    def __init__(self, data: Path, clock: Callable[[], float] = time.monotonic) -> None:
        """``clock`` (monotonic seconds) times how long unwritten values wait."""
        self.clock = clock
        # 1 KiB pages for a new file, as the store's; no fsync but where one is asked for.
        self.db = open_database(Path(data) / DB_NAME, MIGRATIONS, synchronous="NORMAL",
                                page_size=1024)
        self._later: dict[str, object] = {}  #: meta values not yet written
        self._acked_later: set[int] = set()  #: batches acknowledged, not yet marked
        self._waiting_since: float | None = None
        #: The wall time (ms) of the last round that worked, saved or not; None: none yet
        self.last_sync_ms: int | None = None
        #: A snapshot of the scope a round left half taken, (upto, the last page's cursor,
        #: its deltas), for the next round to go on with; in memory only (a restart
        #: starts it again).
        self.partial_snapshot: tuple[int, int, list[bytes]] | None = None
        self._closed = False

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.last_sync_ms is not None and self.last_sync_ms > self.get_int("last_sync"):
            self.set("last_sync", self.last_sync_ms)  # one write at the end, not a round's
        self.flush(force=True)
        self.db.close()

    def get_int(self, key: str) -> int:
        if key in self._later:
            return int(str(self._later[key]))
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
        return int(row[0]) if row else 0

    def set(self, key: str, value: object) -> None:
        """Remember ``value``; it is written with the next batch or by ``flush``."""
        self._later[key] = value
        self._wait()

    def _wait(self) -> None:
        if self._waiting_since is None:
            self._waiting_since = self.clock()

    def flush(self, force: bool = False) -> None:
        """Write what waits in memory, in one transaction without an fsync, if it has
        waited ``FLUSH_AFTER_S`` (or ``force``)."""
        since = self._waiting_since
        if since is None or not force and self.clock() - since < FLUSH_AFTER_S:
            return
        if self._later or self._acked_later:
            with immediate(self.db):
                self._write_later()

    def _write_later(self) -> None:
        for key, value in self._later.items():
            self.db.execute("INSERT OR REPLACE INTO meta SELECT ?, ? WHERE NOT EXISTS"
                            " (SELECT 1 FROM meta WHERE key = ? AND value IS ?)",
                            [key, value, key, value])
        self.db.conn.executemany("UPDATE batches SET acked = 1, sealed = NULL WHERE seq = ?",
                            [(seq,) for seq in sorted(self._acked_later)])
        self._later.clear()
        self._acked_later.clear()
        self._waiting_since = None

    def note_clock_offset(self, offset_ms: int) -> None:
        if abs(offset_ms - self.clock_offset) > CLOCK_SLACK_MS:
            self.set("clock_offset", offset_ms)

    def note_synced(self, now_ms: int, moved: bool) -> None:
        """A round ended with everything acknowledged both ways: kept in memory, and
        saved if it moved anything or the saved time is ``LAST_SYNC_REFRESH_MS`` old."""
        self.last_sync_ms = now_ms
        if moved or now_ms - self.get_int("last_sync") > LAST_SYNC_REFRESH_MS:
            self.set("last_sync", now_ms)

    @property
    def cursor(self) -> int:
        return self.get_int("cursor")

    @property
    def clock_offset(self) -> int:
        return self.get_int("clock_offset")

    # Scopes and garbage collection (SPEC.md) --------------------------------------------

    @property
    def scope(self) -> Scope | None:
        """The scope the hub's last welcome named; None before one did."""
        return _scope(self.db.execute("SELECT value FROM meta WHERE key = 'scope'").fetchone())

    def scope_at(self, hub_ms: int) -> Scope | None:
        """The scope as it stands at the hub's time ``hub_ms``: the last welcome's, its
        day moved on to that time's (UTC; never back, for a clock behind)."""
        scope = self.scope
        if scope is None:
            return None
        day = utc_day(hub_ms)
        return dataclasses.replace(scope, day=day) if day > scope.day else scope

    @property
    def stable(self) -> int | None:
        """The stable point's cursor the hub's last welcome carried (verified)."""
        if "stable" not in self._later and not self.db.execute(
                "SELECT 1 FROM meta WHERE key = 'stable'").fetchone():
            return None
        return self.get_int("stable")

    def note_scope(self, scope: Scope, stable: int | None) -> None:
        """The welcome's scope (written at once, if it changed) and stable point. A
        stable point is another scope group's once the role or site changed: without a
        new one, none is held."""
        held = self.scope
        if scope != held:
            regrouped = held is not None and (held.role, held.site) != (scope.role, scope.site)
            with immediate(self.db):
                self._write_later()
                self.db.execute("INSERT OR REPLACE INTO meta VALUES ('scope', ?)",
                                [json.dumps(scope.to_wire())])
                if regrouped and stable is None:
                    self.db.execute("DELETE FROM meta WHERE key = 'stable'")
        if stable is not None and stable != self.stable:
            self.set("stable", stable)

    @property
    def rebase_owed(self) -> bool:
        return bool(self.get_int("rebase"))

    def owe_rebase(self, owed: bool) -> None:
        """A rebase the hub asked for (True) or its snapshot taken (False): at once."""
        if owed != self.rebase_owed:
            with immediate(self.db):
                self._write_later()
                self.db.execute("INSERT OR REPLACE INTO meta VALUES ('rebase', ?)",
                                [int(owed)])

    def note_collected(self, when_ms: int, counts: dict[str, int]) -> None:
        """A garbage collection pass that dropped something: what, and when."""
        self.set("last_gc", json.dumps({"at": when_ms, **counts}, sort_keys=True))

    def mark_revoked(self, cert: bytes, detail: str) -> None:
        """The hub revoked the kiosk holding ``cert``: kept at once (see above)."""
        value = json.dumps({"cert": hashlib.sha256(cert).hexdigest(), "detail": detail})
        with immediate(self.db, synchronous="FULL"):
            self._write_later()
            self.db.execute("INSERT OR REPLACE INTO meta VALUES ('revoked', ?)", [value])

    def revoked(self, cert: bytes) -> str | None:
        """Why the hub revoked the kiosk holding ``cert`` (its detail), or None."""
        row = self.db.execute("SELECT value FROM meta WHERE key = 'revoked'").fetchone()
        if not row:
            return None
        try:
            saved = json.loads(row[0])
        except (TypeError, ValueError):
            return None
        if not isinstance(saved, dict) or saved.get("cert") != hashlib.sha256(cert).hexdigest():
            return None  # enrolled again since
        return str(saved.get("detail") or "revoked")

    def head(self) -> tuple[int, bytes]:
        row = self.db.execute("SELECT seq, hash FROM batches ORDER BY seq DESC LIMIT 1").fetchone()
        return (row[0], bytes(row[1])) if row else (0, GENESIS)

    def save_batch(self, seq: int, prev: bytes, hash_: bytes, lane: int, entries: list[int],
                   sealed: bytes, sig: bytes) -> None:
        with immediate(self.db):
            self._write_later()
            if self.head() != (seq - 1, prev):
                raise RuntimeError("the chain moved under this batch")
            self.db.execute("INSERT INTO batches (seq, prev, hash, lane, entries, sealed, sig)"
                            " VALUES (?, ?, ?, ?, ?, ?, ?)",
                            [seq, prev, hash_, lane, json.dumps(entries), sealed, sig])

    def pending(self) -> list[tuple[int, bytes, int, list[int], bytes, bytes]]:
        """Saved batches not yet acknowledged: (seq, prev, lane, entries, sealed, sig)."""
        return [(s, bytes(p), lane, json.loads(e), bytes(x), bytes(g))
                for s, p, lane, e, x, g in self.db.execute(
                    "SELECT seq, prev, lane, entries, sealed, sig FROM batches"
                    " WHERE acked = 0 ORDER BY seq") if s not in self._acked_later]

    def batch_hash(self, seq: int) -> bytes | None:
        row = self.db.execute("SELECT hash FROM batches WHERE seq = ?", [seq]).fetchone()
        return bytes(row[0]) if row else None

    def mark_acked(self, seq: int) -> None:
        """The hub committed it and its entries left the outbox: drop the payload
        (with the next batch, or ``flush``)."""
        self._acked_later.add(seq)
        self._wait()

    def drop_sent(self) -> None:
        """The payloads of acknowledged batches dropped now, not with the next batch, and
        the log cut: after an erasure they may hold the erased patient's values (a batch
        not acknowledged yet keeps its own: it is sent again as it was signed)."""
        self.db.execute("PRAGMA secure_delete = ON")
        self.flush(force=True)
        self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    def acked_head(self) -> int:
        """The last batch the hub acknowledged (0 if none)."""
        row = self.db.execute("SELECT MAX(seq) FROM batches WHERE acked = 1").fetchone()
        return max([row[0] or 0, *self._acked_later])

    def rewind(self, seq: int) -> None:
        """Forget the batches after ``seq``: the hub lost them (it was restored from a
        backup), and the chain goes on from its checkpoint. Their writes are queued
        again by the caller."""
        self._acked_later = {s for s in self._acked_later if s <= seq}
        with immediate(self.db, synchronous="FULL"):
            self._write_later()
            self.db.execute("DELETE FROM batches WHERE seq > ?", [seq])

    def adopt(self, seq: int, hash_: bytes) -> None:
        """Restart the chain from the hub's checkpoint (our own record of it was lost)."""
        with immediate(self.db, synchronous="FULL"):
            self._write_later()
            self.db.execute("INSERT OR REPLACE INTO batches (seq, prev, hash, lane, entries,"
                            " sig, acked) VALUES (?, ?, ?, 0, '[]', x'', 1)",
                            [seq, GENESIS, hash_])

    # A suspected clone (SPEC.md "Clones") --------------------------------------------

    @property
    def alert(self) -> str | None:
        """The hub's alert about this kiosk (``suspected-clone``), kept until a
        technician settles it (re-provisioning, or the hub's ``clone-cleared``)."""
        row = self.db.execute("SELECT value FROM meta WHERE key = 'alert'").fetchone()
        return str(row[0]) if row and row[0] else None

    def set_alert(self, code: str | None) -> None:
        """Keep the alert, at once with an fsync. None: a technician settled it; the
        count of checkpoints over writes we never made starts again too."""
        with immediate(self.db, synchronous="FULL"):
            self._write_later()
            self.db.execute("INSERT OR REPLACE INTO meta VALUES ('alert', ?)", [code])
            if code is None:
                self.db.execute("DELETE FROM meta WHERE key = 'foreign_adopts'")

    @property
    def held_upto(self) -> int:
        """Our last batch the hub holds for review (0: none): our chain left the hub's."""
        return self.get_int("held_upto")

    def note_held(self, seq: int) -> None:
        """Written at once (a technician's ``haven-kiosk status`` reads it), without an
        fsync: lost, the hub is only asked to hold a batch it holds already."""
        if seq > self.held_upto:
            with immediate(self.db):
                self._write_later()
                self.db.execute("INSERT OR REPLACE INTO meta VALUES ('held_upto', ?)", [seq])

    def note_foreign_adopt(self) -> int:
        """Count, at once with an fsync, one more checkpoint of the hub's that followed
        writes this kiosk never made; returns the count."""
        count = self.get_int("foreign_adopts") + 1
        with immediate(self.db, synchronous="FULL"):
            self._write_later()
            self.db.execute("INSERT OR REPLACE INTO meta VALUES ('foreign_adopts', ?)",
                            [count])
        return count

    def start_over(self) -> None:
        """A new identity (a clone re-provisioned): its chain starts from nothing, and
        it pulls from the start (the hub kept from the old identity the other copy's
        writes, which carry the node it shared); the alert goes. Last step of
        re-provisioning, so an interrupted one runs again."""
        self._later.clear()
        self._acked_later.clear()
        self._waiting_since = None
        with immediate(self.db, synchronous="FULL"):
            self.db.execute("DELETE FROM batches")
            self.db.execute("DELETE FROM meta WHERE key IN ('cursor', 'held_upto', 'alert',"
                            " 'foreign_adopts', 'stable')")


def last_sync_of(data: Path) -> str | None:
    """When this kiosk last finished a round (UTC, ISO 8601), or ``None``; reads only."""
    path = Path(data) / DB_NAME
    if not path.exists():
        return None
    db = open_database(path, readonly=True)
    try:
        row = db.execute("SELECT value FROM meta WHERE key = 'last_sync'").fetchone()
    except sqlite3.OperationalError:  # no meta table yet
        row = None
    finally:
        db.close()
    if not row:
        return None
    when = datetime.datetime.fromtimestamp(int(row[0]) / 1000, datetime.UTC)
    return when.isoformat(timespec="seconds")


def scope_of(data: Path) -> Scope | None:
    """``SyncState.scope`` of the kiosk in ``data``; reads only."""
    return _scope((_meta_of(data, "scope"),))


def stable_of(data: Path) -> int | None:
    """``SyncState.stable`` of the kiosk in ``data`` as last written; reads only."""
    value = _meta_of(data, "stable")
    return None if value is None else int(str(value))


def last_gc_of(data: Path) -> dict[str, int] | None:
    """The last garbage collection that dropped anything (its time, ``at``, in ms, and
    its counts), or None; reads only."""
    value = _meta_of(data, "last_gc")
    if not value:
        return None
    try:
        saved = json.loads(str(value))
    except ValueError:
        return None
    return saved if isinstance(saved, dict) else None


def _scope(row: tuple[object] | None) -> Scope | None:
    if not row or not row[0]:
        return None
    try:
        return Scope.from_wire(json.loads(str(row[0])))
    except (ValueError, ProtocolError):
        return None  # written by this code; a hand-edited file's next welcome mends it


def alert_of(data: Path) -> str | None:
    """``SyncState.alert`` of the kiosk in ``data`` (``suspected-clone``), or None;
    reads only, from any thread."""
    alert = _meta_of(data, "alert")
    return str(alert) if alert else None


def held_upto_of(data: Path) -> int:
    """``SyncState.held_upto`` of the kiosk in ``data``: its batches are held at the hub
    (it is the copy to re-provision) if above 0; reads only."""
    return int(str(_meta_of(data, "held_upto") or 0))


def _meta_of(data: Path, key: str) -> object:
    path = Path(data) / DB_NAME
    if not path.exists():
        return None
    db = open_database(path, readonly=True)
    try:
        row = db.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
    except sqlite3.OperationalError:  # no meta table yet
        row = None
    finally:
        db.close()
    return row[0] if row else None
