"""Deltas from elsewhere: checked, quarantined or merged in slices.

Theory of operation
-------------------
``merge`` cuts the deltas into slices of ``slice_size``; each slice is one
``BULK`` job on the writer thread and one transaction, so a check-in that
arrives meanwhile waits for one slice at most. In its slice, every delta is
decoded and checked (strict CBOR, the delta's shape, a stamp not too far
ahead of our clock, values that fit the fields this schema knows); one that
fails goes to quarantine, sealed, with its reason code, and the rest go on.
Stamps are observed (the clock moves past them) but never rewritten.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import sqlite_utils

from protocol import strict_cbor
from protocol.crdt.clock import DEFAULT_MAX_AHEAD_MS, wall_of
from protocol.crdt.delta import Delta, decode
from protocol.crdt.replica import check_known_fields
from protocol.errors import RemoteProtocolError

from .db import atomic
from .materialise import merge_slice
from .writer import BULK

if TYPE_CHECKING:
    from .store import Store


@dataclass(frozen=True)
class MergeReport:
    applied: int
    duplicates: int
    quarantined: int


def merge(store: Store, deltas: Iterable[bytes], now: int, slice_size: int) -> MergeReport:
    # Decoding runs on the writer thread, slice by slice: a second CPU-bound thread
    # would make every check-in fight for the interpreter lock.
    items = list(deltas)
    futures = [
        store._writer.submit(
            functools.partial(_slice, store, part=items[i:i + slice_size], now=now), BULK)
        for i in range(0, len(items), slice_size)
    ]
    applied = duplicates = quarantined = 0
    for fut in futures:
        new, dup, bad = fut.result()
        applied += new
        duplicates += dup
        quarantined += bad
    return MergeReport(applied, duplicates, quarantined)


def check(data: bytes, now: int) -> Delta:
    """Decode and check one delta from elsewhere (``RemoteProtocolError`` if bad)."""
    delta = decode(data)
    if wall_of(delta.stamp) > now + DEFAULT_MAX_AHEAD_MS:
        raise RemoteProtocolError("stamp too far ahead of the local clock", "clock-ahead")
    check_known_fields(delta)
    return delta


def _slice(store: Store, db: sqlite_utils.Database, *, part: list[bytes],
           now: int) -> tuple[int, int, int]:
    good: list[tuple[Delta, bytes]] = []
    bad: list[tuple[str, str, bytes]] = []
    for data in part:
        try:
            good.append((check(data, now), data))
        except RemoteProtocolError as exc:
            bad.append((exc.code, str(exc), data))
    with atomic(db):
        new, dup = merge_slice(db, store.cipher, good)
        for code, reason, data in bad:
            sealed = store.cipher.seal_blob(b"quarantine", strict_cbor.dumps([reason, data]))
            db.execute("INSERT INTO quarantine (received_at, code, sealed) VALUES (?, ?, ?)",
                       [now, code, sealed])
        for delta, _ in good:
            if delta.stamp > store.hlc.last:
                store.hlc.last = delta.stamp
        db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('hlc', ?)",
                   [str(store.hlc.last)])
    store._after_commit(db)
    return new, dup, len(bad)
