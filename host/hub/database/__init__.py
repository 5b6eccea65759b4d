"""The hub's database: an SQLite file (the embedded default) or PostgreSQL.

Theory of operation
-------------------
Every statement of the hub is written once, in a subset of SQL both engines
take (``?`` placeholders, ``ON CONFLICT``, ``RETURNING``, ``IS DISTINCT
FROM``; no function of one engine alone), and runs through ``Db``: on
SQLite, the ``sqlite_utils.Database`` that ``protocol.driver.database``
opens; on PostgreSQL, ``postgres.PgDb``, which turns the placeholders into
psycopg's and the migrations' words into PostgreSQL's (``postgres.ddl``), so
the same numbered migrations make both.

Where the engines differ the difference lives here, one function each:
opening a target (a path or a ``postgresql://`` URL, ``open_hub_database``),
a write transaction (``writing``), a row lock held to commit (``for_update``),
``meta`` (PostgreSQL has no column of any type: ``meta_get``/``meta_set``),
the integrity error a clash raises (``IntegrityError``), and telling every
hub process that something they push or enforce changed (``changed``: a
``NOTIFY`` sent at commit on PostgreSQL, which ``host.hub.change_feed``
listens for; SQLite's watchers see ``PRAGMA data_version`` move instead).

Deltas are sealed at rest (``host.hub.at_rest``) and opened by the SQL
function ``hub_open(rid, stamp, node, data)``: on SQLite a Python function of
the connection, on PostgreSQL a SQL function that returns the four columns as
one composite value, which the client opens as it reads it (``PgDb.opener``):
the key never leaves the hub's process.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import sqlite_utils

from host.errors import HavenError
from protocol.driver.database import Migrations, immediate, open_database

#: The schemes a database URL may have (anything else is a path to an SQLite file).
URL_SCHEMES = ("postgresql://", "postgres://")


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...
    def __iter__(self) -> Iterator[Any]: ...


class Db(Protocol):
    """What the hub's modules run their SQL on (either engine)."""

    @property
    def conn(self) -> Any: ...

    def execute(self, sql: str,
                parameters: Sequence[Any] | dict[str, Any] | None = None) -> Cursor: ...
    def close(self) -> None: ...


#: PostgreSQL advisory locks of the hub (64-bit numbers of ours), each a number of its own:
#: migrations run under the first; the leader of the background walks holds the second
#: (``change_feed``); the hub's own writes take the third (``HubStore.own_writes``).
MIGRATION_LOCK, BACKGROUND_LOCK, OWN_WRITES_LOCK = (0x6861_7665_6E00_0001 + i for i in range(3))


class ConnectionLost(HavenError):
    """The connection to the database broke in a transaction (the server went, or a
    failover): the transaction may or may not have committed. The next statement waits
    for a primary (``postgres.PgDb``)."""


#: The error a statement that breaks a constraint raises, on either engine (the
#: PostgreSQL adapter raises this one too: ``postgres.PgDb``).
IntegrityError = sqlite3.IntegrityError


def is_url(target: str | Path) -> bool:
    return isinstance(target, str) and target.startswith(URL_SCHEMES)


def is_postgres(db: Db) -> bool:
    return getattr(db, "dialect", "sqlite") == "postgresql"


def open_hub_database(target: str | Path, migrations: Migrations) -> Db:
    """The hub's database at ``target`` (a path: an SQLite file; a URL: PostgreSQL),
    migrated. A URL that is wrong, unreachable or read-only: ``UsageError``."""
    if is_url(target):
        from host.hub.database.postgres import PgDb
        return PgDb.open(str(target), migrations)
    db = open_database(Path(target), migrations, synchronous="FULL")
    db.execute("PRAGMA secure_delete = ON")  # pages a re-seal frees hold no old bytes
    return db


@contextmanager
def writing(db: Db) -> Iterator[Db]:
    """One write transaction (nested: a savepoint). SQLite takes its write lock up
    front (``BEGIN IMMEDIATE``); PostgreSQL locks rows as they are written, and where
    an order must hold, with ``for_update``."""
    if is_postgres(db):
        with db.transaction():  # type: ignore[attr-defined]
            yield db
        return
    assert isinstance(db, sqlite_utils.Database)
    with immediate(db):
        yield db


def for_update(db: Db) -> str:
    """SQL to append to a SELECT whose rows stay locked until commit (SQLite's write
    transaction holds the whole file already)."""
    return " FOR UPDATE" if is_postgres(db) else ""


#: The channel ``changed`` notifies on and every hub process's watch listens on.
CHANGES_CHANNEL = "haven_changes"


def changed(db: Db) -> None:
    """In a write transaction that gave arrival numbers or revoked a kiosk: every hub
    process looks at the store when it commits (PostgreSQL delivers a ``NOTIFY`` at
    commit, once per transaction, and never if it rolls back). Nothing on SQLite."""
    if is_postgres(db):
        db.execute(f"NOTIFY {CHANGES_CHANNEL}")


def meta_get(db: Db, key: str, *, lock: bool = False) -> Any:
    """A value of ``meta`` (an int, text or bytes as it was set), or None; ``lock``: its
    row stays locked until the transaction ends (``for_update``)."""
    if is_postgres(db):
        row = db.execute("SELECT num, value, bin FROM meta WHERE key = ?"
                         + for_update(db) * lock, [key]).fetchone()
        return None if row is None else next((v for v in row if v is not None), None)
    row = db.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
    return None if row is None else row[0]


def meta_set(db: Db, key: str, value: Any, *, replace: bool = True) -> None:
    """Set ``meta[key]`` (an int, text, bytes or None); ``replace=False`` keeps a value
    held."""
    if is_postgres(db):
        num = value if isinstance(value, int) else None
        text = value if isinstance(value, str) else None
        blob = bytes(value) if isinstance(value, bytes | bytearray | memoryview) else None
        db.execute("INSERT INTO meta (key, num, value, bin) VALUES (?, ?, ?, ?) ON CONFLICT"
                   " (key) DO " + ("UPDATE SET num = excluded.num, value = excluded.value,"
                                   " bin = excluded.bin" if replace else "NOTHING"),
                   [key, num, text, blob])
        return
    db.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO "
               + ("UPDATE SET value = excluded.value" if replace else "NOTHING"), [key, value])


def rows_in(db: Db, select: str, values: Sequence[Any], size: int = 500) -> Iterator[Any]:
    """The rows of ``select`` with ``values`` bound in its ``IN ({marks})`` list, ``size``
    of them a statement."""
    for at in range(0, len(values), size):
        part = list(values[at:at + size])
        yield from db.execute(select.replace("{marks}", ", ".join("?" * len(part))), part)


def meta_delete(db: Db, key: str) -> None:
    db.execute("DELETE FROM meta WHERE key = ?", [key])


def register_function(db: Db, name: str, arity: int, fn: Callable[..., Any]) -> None:
    """A Python function callable from SQL on SQLite (``hub_open`` on PostgreSQL is the
    adapter's own: ``PgDb.opener``)."""
    if is_postgres(db):
        db.opener = fn  # type: ignore[attr-defined]
        return
    db.conn.create_function(name, arity, fn, deterministic=True)
