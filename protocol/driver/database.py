"""SQLite databases for both sides: opening, numbered migrations, IMMEDIATE transactions.

Theory of operation
-------------------
Every database the kiosk and the hub keep (``store.db``, ``sync.db``,
``documents.db``, ``hub.db``, the transfer index) opens through
``open_database``: a ``sqlite_utils.Database`` on a connection in
autocommit mode, WAL journaling, the ``synchronous`` level its owner asks
for, and a file created owner-only before SQLite writes its first byte.

Each database has one ``Migrations`` set, like sqlite-utils' own: numbered
migrations registered with a decorator (``@MIGRATIONS(1)``, then 2, ...),
or as plain SQL statements (``MIGRATIONS.sql(1, ...)``),
each applied in its own transaction together with the version it brings
the database to, recorded in the file's header (``PRAGMA user_version``).
A database already at the newest version is only read: opening it writes
nothing. A database at a version above the newest this code knows was
made by a newer release: ``DatabaseTooNew``, raised before anything is
written to it, so the file stays byte for byte as it was. A set may adopt
databases that recorded their version some other way (``adopt``), inside
the first migration's transaction.

Transactions are sqlite-utils' ``atomic()``, whose nested blocks are
savepoints. ``immediate`` is the one helper on top of it, for the
outermost block of a writer: ``BEGIN IMMEDIATE`` takes the write lock up
front, so a transaction that reads before it writes never fails half-way
on a lock upgrade when another connection wrote meanwhile. It can also
commit with a ``synchronous`` level of its own (``NORMAL``: no fsync for
this commit; ``FULL``: an fsync, which makes durable whatever came before
it too), and restores the connection's level afterwards. A failed commit (a
full disk) rolls back, so a connection is never left inside a transaction.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import sqlite_utils

from protocol.driver.errors import DriverError

Migration = Callable[[sqlite_utils.Database], None]
M = TypeVar("M", bound=Migration)
SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")


class DatabaseTooNew(DriverError, RuntimeError):
    """The database was made by a newer release (its version is above every migration
    this code knows); it was not changed."""

    code = "database-too-new"


class Migrations:
    """The numbered migrations of one database.

    ``adopt(db)``, if given, returns the version of a database that recorded it
    some other way (0: none), for a database whose header says version 0."""

    def __init__(self, name: str, *,
                 adopt: Callable[[sqlite_utils.Database], int] | None = None) -> None:
        self.name = name
        self.adopt = adopt
        self.steps: list[Migration] = []

    def __call__(self, version: int) -> Callable[[M], M]:
        """Register the decorated function as migration number ``version``."""
        def register(fn: M) -> M:
            if version != len(self.steps) + 1:
                raise ValueError(f"{self.name}: migration {version} registered after "
                                 f"{len(self.steps)} (numbers go 1, 2, 3... in order)")
            self.steps.append(fn)
            return fn
        return register

    def sql(self, version: int, *statements: str) -> None:
        """Register migration ``version`` as SQL statements, run in order."""
        def run(db: sqlite_utils.Database) -> None:
            for statement in statements:
                db.execute(statement)
        run.__name__ = f"m{version:03d}_sql"
        self(version)(run)

    @property
    def latest(self) -> int:
        return len(self.steps)

    def version(self, db: sqlite_utils.Database) -> int:
        """The database's version; ``DatabaseTooNew`` if above ``latest``."""
        version = int(db.conn.execute("PRAGMA user_version").fetchone()[0])
        if version > self.latest:
            path = db.conn.execute("PRAGMA database_list").fetchone()[2] or self.name
            raise DatabaseTooNew(
                f"{path} ({self.name}) is at version {version}, made by a newer release"
                f" (this one knows versions up to {self.latest}); it was left as it is: run"
                " the newer release, or restore a backup made by this one")
        return version

    def apply(self, db: sqlite_utils.Database) -> list[int]:
        """Apply the migrations the database lacks, each in its own transaction;
        returns their numbers."""
        applied: list[int] = []
        while self.version(db) < self.latest:
            with immediate(db):
                version = self.version(db)  # again, under the write lock
                if version == self.latest:
                    break  # another connection migrated it meanwhile
                if version == 0 and self.adopt is not None:
                    version = self.adopt(db)
                if version < self.latest:
                    self.steps[version](db)
                    version += 1
                    applied.append(version)
                db.conn.execute(f"PRAGMA user_version = {version:d}")
        return applied


def open_database(path: Path | str, migrations: Migrations | None = None, *,
                  synchronous: str = "FULL", page_size: int | None = None,
                  readonly: bool = False, busy_ms: int = 10_000) -> sqlite_utils.Database:
    """Open (creating it owner-only) and migrate a WAL database.

    ``page_size`` applies to a new file only. ``readonly`` opens an existing file
    for reading and migrates nothing. ``DatabaseTooNew`` before anything is written."""
    if synchronous not in SYNCHRONOUS:
        raise ValueError(f"synchronous must be one of {SYNCHRONOUS}")
    path = Path(path)
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None,
                               check_same_thread=False)
    else:
        if not path.exists():
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        conn.execute(f"PRAGMA busy_timeout = {busy_ms:d}")
        db = sqlite_utils.Database(conn)
        deadline = time.monotonic() + busy_ms / 1000
        while True:
            try:
                _set_up(db, migrations, page_size=page_size, readonly=readonly,
                        synchronous=synchronous)
                break
            except sqlite3.OperationalError as exc:
                # Turning a new file to WAL while another process opens it too can be
                # refused at once, without the busy handler: try again until busy_ms.
                if (exc.sqlite_errorcode & 0xFF not in (sqlite3.SQLITE_BUSY,
                                                        sqlite3.SQLITE_LOCKED)
                        or time.monotonic() > deadline):
                    raise
                time.sleep(0.01)
    except BaseException:
        conn.close()
        raise
    return db


def _set_up(db: sqlite_utils.Database, migrations: Migrations | None, *,
            page_size: int | None, readonly: bool, synchronous: str) -> None:
    """``open_database``'s steps on an open connection; each may be run again."""
    conn = db.conn
    if migrations is not None:
        migrations.version(db)  # refuses a newer release's file before any write
    if page_size is not None:
        conn.execute(f"PRAGMA page_size = {page_size:d}")
    if not readonly:
        conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    if migrations is not None and not readonly:
        migrations.apply(db)


@contextmanager
def immediate(db: sqlite_utils.Database, *,
              synchronous: str | None = None) -> Iterator[sqlite_utils.Database]:
    """``db.atomic()`` whose outermost block begins ``IMMEDIATE``; with ``synchronous``,
    that block commits at this level. Nested blocks are ``atomic()``'s savepoints."""
    conn = db.conn
    if conn.in_transaction:
        with db.atomic():
            yield db
        return
    if synchronous is not None and synchronous not in SYNCHRONOUS:
        raise ValueError(f"synchronous must be one of {SYNCHRONOUS}")
    previous = conn.execute("PRAGMA synchronous").fetchone()[0] if synchronous else None
    if synchronous:
        conn.execute(f"PRAGMA synchronous = {synchronous}")
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield db
            conn.execute("COMMIT")
        except BaseException:
            # SQLite may have rolled back already (SQLITE_FULL, SQLITE_IOERR): rollback()
            # does nothing then, and the error that matters goes up.
            db.rollback()
            raise
    finally:
        if previous is not None:
            conn.execute(f"PRAGMA synchronous = {int(previous):d}")
