"""The store's SQLite connection.

Theory of operation
-------------------
``connect`` opens ``store.db`` through ``protocol.driver.database`` with
WAL journaling and ``synchronous=FULL``: a commit appends to the WAL and
fsyncs it once, so a confirmed write survives a power cut. Writes run in
``immediate`` transactions on the writer thread (``writer``). With
``migrate``, the store's numbered migrations (``tables.MIGRATIONS``) are
applied, and a file from a newer release is refused before anything is
written to it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import sqlite_utils

from device.store.tables import MIGRATIONS
from protocol.driver.database import open_database

WAL_LIMIT = 4 << 20


def connect(path: Path | str, *, readonly: bool = False,
            migrate: bool = False) -> sqlite_utils.Database:
    # New databases use 1 KiB pages: a check-in touches some twenty pages of different
    # tables, and every commit writes each of them whole to the WAL (28 KB a check-in
    # instead of 70 KB with 4 KiB pages, fewer bytes for an SD card to write).
    db = open_database(path, MIGRATIONS if migrate else None, synchronous="FULL",
                       page_size=1024, readonly=readonly, busy_ms=5000)
    db.conn.execute("PRAGMA foreign_keys = ON")
    # A WAL that once grew (a big merge, a garbage-collection pass that dropped much)
    # is cut back to this when it starts over after a checkpoint, not kept at its peak.
    db.conn.execute(f"PRAGMA journal_size_limit = {WAL_LIMIT}")
    return db


@contextlib.contextmanager
def secure_delete(db: sqlite_utils.Database, mode: str) -> Iterator[None]:
    """``PRAGMA secure_delete`` at ``mode`` (``ON``: deleted bytes are zeroed, and a
    page freed is zeroed whole; ``FAST``: zeroed only in the pages written anyway) for
    the block, then as it was."""
    was = db.execute("PRAGMA secure_delete").fetchone()[0]
    db.execute(f"PRAGMA secure_delete = {mode}")
    try:
        yield
    finally:
        db.execute(f"PRAGMA secure_delete = {'FAST' if was == 2 else int(was)}")


def migrate(db: sqlite_utils.Database) -> list[int]:
    """Apply the store's migrations that ``db`` lacks; returns their numbers."""
    return MIGRATIONS.apply(db)
