"""The store's tables: its numbered migrations (``db.MIGRATIONS``).

Every change to a table is a new migration here, numbered after the last, and
comes with fixture databases from the release before it
(``tests/fixtures``, ``tests/test_migrations.py``).

``ops`` is the write log, the source of truth: every delta this kiosk holds,
sealed, keyed by record and dot. ``records``, ``field_values`` and
``conflicts`` are the merged state, kept up to date write by write (see
``materialise``). Dots, types and flags are plaintext metadata; every field
value, set, conflict version and delta is sealed (``keys.FieldCipher``).
"""

from __future__ import annotations

import sqlite_utils

from device.store import seen
from protocol.driver.database import Migrations


def adopt_named(db: sqlite_utils.Database) -> int:
    """The version reached by a release that named its migrations in a ``_migrations``
    table (up to c3497bc) instead of numbering the file; the table goes."""
    if not db["_migrations"].exists():
        return 0
    names = [row[0] for row in db.execute("SELECT name FROM _migrations ORDER BY seq")]
    if names != [fn.__name__ for fn in MIGRATIONS.steps[:len(names)]]:
        raise ValueError(f"store.db names migrations this release does not know: {names}")
    db.execute("DROP TABLE _migrations")
    return len(names)


MIGRATIONS = Migrations("store.db", adopt=adopt_named)


@MIGRATIONS(1)
def m001_initial(db: sqlite_utils.Database) -> None:
    for sql in (
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB)",
        """CREATE TABLE ops (
            rid BLOB NOT NULL, stamp INTEGER NOT NULL, node INTEGER NOT NULL,
            type INTEGER NOT NULL, local INTEGER NOT NULL, sealed BLOB NOT NULL,
            PRIMARY KEY (rid, stamp, node)) WITHOUT ROWID""",
        """CREATE TABLE records (
            rid BLOB PRIMARY KEY, type INTEGER NOT NULL, deleted INTEGER NOT NULL,
            held INTEGER NOT NULL, n_conflicts INTEGER NOT NULL, has_delete INTEGER NOT NULL,
            heads BLOB NOT NULL, extra BLOB) WITHOUT ROWID""",
        """CREATE TABLE field_values (
            rid BLOB NOT NULL, field INTEGER NOT NULL, stamp INTEGER NOT NULL,
            node INTEGER NOT NULL, sealed BLOB NOT NULL,
            PRIMARY KEY (rid, field)) WITHOUT ROWID""",
        """CREATE TABLE conflicts (
            id TEXT PRIMARY KEY, rid BLOB NOT NULL, class TEXT NOT NULL,
            severity TEXT NOT NULL, versions TEXT NOT NULL)""",
        "CREATE INDEX conflicts_rid ON conflicts (rid)",
        """CREATE TABLE outbox (
            seq INTEGER PRIMARY KEY AUTOINCREMENT, lane INTEGER NOT NULL,
            rid BLOB NOT NULL, stamp INTEGER NOT NULL, node INTEGER NOT NULL,
            size INTEGER NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
            next_at INTEGER NOT NULL DEFAULT 0, state TEXT NOT NULL DEFAULT 'queued',
            error TEXT)""",
        "CREATE INDEX outbox_ready ON outbox (state, lane, seq)",
        "CREATE INDEX outbox_rid ON outbox (rid)",
        """CREATE TABLE quarantine (
            id INTEGER PRIMARY KEY, received_at INTEGER NOT NULL, code TEXT NOT NULL,
            sealed BLOB NOT NULL)""",
        "CREATE TABLE queue_numbers (day TEXT PRIMARY KEY, last INTEGER NOT NULL)",
    ):
        db.execute(sql)


@MIGRATIONS(2)
def m002_no_outbox_rid_index(db: sqlite_utils.Database) -> None:
    """Three or four fewer pages written per check-in (of about 25, each a whole page
    in the WAL): the index on the outbox's record ids goes. Only a write that pulls its
    subject up to a more urgent lane looks entries up by record (a prescription or a lab
    result, never a check-in), and it reads the queued entries of the lanes behind it.
    (``AUTOINCREMENT`` stays, though its ``sqlite_sequence`` row costs a page: a
    sequence number must never come back, since an acknowledgement replayed after a
    crash names the entries by number.)"""
    db.execute("DROP INDEX outbox_rid")


@MIGRATIONS(3)
def m003_ops_in_write_order(db: sqlite_utils.Database) -> None:
    """The write log in a rowid table, rows in the order they were written, and its
    dots in an index beside it. Keyed by dot, each sealed delta (often over 200
    bytes, beyond what a 1 KiB index page keeps in place) landed on a random page
    of a tree that split on nearly every insert: seven pages for a check-in's two
    writes. Now the deltas append to the table's last page and only the small dot
    entries go to random pages."""
    for sql in (
        """CREATE TABLE ops_log (
            id INTEGER PRIMARY KEY, rid BLOB NOT NULL, stamp INTEGER NOT NULL,
            node INTEGER NOT NULL, type INTEGER NOT NULL, local INTEGER NOT NULL,
            sealed BLOB NOT NULL)""",
        "INSERT INTO ops_log (rid, stamp, node, type, local, sealed)"
        " SELECT rid, stamp, node, type, local, sealed FROM ops ORDER BY stamp, node",
        "DROP TABLE ops",
        "ALTER TABLE ops_log RENAME TO ops",
        "CREATE UNIQUE INDEX ops_dot ON ops (rid, stamp, node)",
    ):
        db.execute(sql)


@MIGRATIONS(4)
def m004_meta_without_rowid(db: sqlite_utils.Database) -> None:
    """One page, not two, for each write of a setting (the clock is saved with every
    acknowledgement and every merge): a text key in a rowid table kept a second tree
    to find it by."""
    for sql in (
        "CREATE TABLE meta_kv (key TEXT PRIMARY KEY, value BLOB) WITHOUT ROWID",
        "INSERT INTO meta_kv SELECT key, value FROM meta",
        "DROP TABLE meta",
        "ALTER TABLE meta_kv RENAME TO meta",
    ):
        db.execute(sql)


@MIGRATIONS(5)
def m005_seen_and_stale(db: sqlite_utils.Database) -> None:
    """Scopes and garbage collection. A delta from the hub is merged into the registers
    and leaves only its dot, packed in its record's row (``records.seen``, ``seen.py``;
    ``seen_at``, the greatest cursor they came with), not a sealed row in ``ops``: those
    dots and ``ops`` together tell a duplicate, exactly. ``ops.arrived`` is when a write
    reached the hub as far as this kiosk knows (its own: the hub's acknowledgement; one
    from the hub kept with its body: the page's cursor), for the stable point.
    ``records.partial``: the record's write log is not whole (merged without bodies, or
    collected), so a write concurrent with it waits for the hub's write set;
    ``records.stale``: one does. Deltas merged before this release count as arrived at 0
    (stable at once), as do this kiosk's acknowledged writes."""
    for sql in (
        "ALTER TABLE ops ADD COLUMN arrived INTEGER",
        "ALTER TABLE records ADD COLUMN stale INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE records ADD COLUMN partial INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE records ADD COLUMN seen BLOB",
        "ALTER TABLE records ADD COLUMN seen_at INTEGER NOT NULL DEFAULT 0",
        "CREATE INDEX records_stale ON records (rid) WHERE stale = 1",
        "UPDATE ops SET arrived = 0 WHERE local = 0 OR NOT EXISTS (SELECT 1 FROM outbox o"
        " WHERE o.rid = ops.rid AND o.stamp = ops.stamp AND o.node = ops.node)",
    ):
        db.execute(sql)
    by_record: dict[bytes, list[tuple[int, int]]] = {}
    for rid, stamp, node in db.execute("SELECT rid, stamp, node FROM ops WHERE local = 0"):
        by_record.setdefault(rid, []).append((stamp, node))
    db.conn.executemany("UPDATE records SET seen = ? WHERE rid = ?",
                        [(seen.packed(d), rid) for rid, d in by_record.items()])
