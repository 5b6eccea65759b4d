"""The SQLite connection: pragmas, transactions and migrations.

Theory of operation
-------------------
``connect`` opens a database through sqlite-utils in autocommit mode and
sets WAL journaling with ``synchronous=FULL``: a commit appends to the WAL
and fsyncs it once, so a confirmed write survives a power cut.

``atomic`` opens ``BEGIN IMMEDIATE`` (the write lock up front, so a
transaction never fails half-way on a lock upgrade) and nests with
savepoints, like sqlite-utils' own. An exception rolls back to where the
block began; the outermost block commits. A failed commit (a full disk) rolls
back too, so the connection is never left inside a transaction.

Migrations are registered in code with ``@migration``, applied in order
inside one transaction each, and recorded in ``_migrations``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlite_utils

Migration = Callable[[sqlite_utils.Database], None]
MIGRATIONS: list[tuple[str, Migration]] = []


def migration(fn: Migration) -> Migration:
    """Register ``fn`` as the next migration (its name is its identity)."""
    if any(name == fn.__name__ for name, _ in MIGRATIONS):
        raise ValueError(f"migration {fn.__name__} registered twice")
    MIGRATIONS.append((fn.__name__, fn))
    return fn


def connect(path: Path | str, *, readonly: bool = False) -> sqlite_utils.Database:
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None,
                               check_same_thread=False)
    else:
        conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout = 5000")
    # New databases use 1 KiB pages: a check-in touches some twenty pages of different
    # tables, and every commit writes each of them whole to the WAL (28 KB a check-in
    # instead of 70 KB with 4 KiB pages, fewer bytes for an SD card to write).
    conn.execute("PRAGMA page_size = 1024")
    if not readonly:
        conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA foreign_keys = ON")
    return sqlite_utils.Database(conn)


_depth: dict[int, int] = {}


@contextmanager
def atomic(db: sqlite_utils.Database) -> Iterator[sqlite_utils.Database]:
    """One transaction (``BEGIN IMMEDIATE``); nested blocks are savepoints."""
    key = id(db.conn)
    depth = _depth.get(key, 0)
    name = f"sp{depth}"
    db.conn.execute("BEGIN IMMEDIATE" if depth == 0 else f"SAVEPOINT {name}")
    _depth[key] = depth + 1
    try:
        yield db
        db.conn.execute("COMMIT" if depth == 0 else f"RELEASE {name}")
    except BaseException:
        # SQLite may have rolled back already (SQLITE_FULL, SQLITE_IOERR): a second
        # ROLLBACK would fail and hide the error that matters.
        if db.conn.in_transaction:
            if depth == 0:
                db.conn.execute("ROLLBACK")
            else:
                db.conn.execute(f"ROLLBACK TO {name}")
                db.conn.execute(f"RELEASE {name}")
        raise
    finally:
        if depth == 0:
            _depth.pop(key, None)
        else:
            _depth[key] = depth


def migrate(db: sqlite_utils.Database) -> list[str]:
    """Apply every registered migration not yet applied; returns their names."""
    with atomic(db):
        db.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, seq INTEGER)")
    done = {row[0] for row in db.execute("SELECT name FROM _migrations").fetchall()}
    applied = []
    for seq, (name, fn) in enumerate(MIGRATIONS):
        if name in done:
            continue
        with atomic(db):
            fn(db)
            db.execute("INSERT INTO _migrations (name, seq) VALUES (?, ?)", [name, seq])
        applied.append(name)
    return applied
