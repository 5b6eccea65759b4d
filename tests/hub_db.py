"""The hub's database behind the hub's back, on either backend: what a test reads or
alters directly (a row deleted, a table compared)."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from host.hub.hub import database_of


def connect_hub_db(data: Path) -> Any:
    """A connection to the hub's database in ``data``, as ``sqlite3.connect`` gives one
    (``execute`` with ``?`` placeholders, ``commit``, ``close``) on either backend."""
    target = database_of(data)
    if isinstance(target, Path):
        return sqlite3.connect(target)
    from host.hub.database.postgres import PgDb

    class Committing(PgDb):
        def commit(self) -> None:  # each statement is committed as it runs
            pass

    return Committing(target)


@contextlib.contextmanager
def hub_db(data: Path) -> Iterator[Any]:
    """``connect_hub_db``, committed and closed at the end."""
    db = connect_hub_db(data)
    try:
        yield db
        db.commit()
    finally:
        db.close()
