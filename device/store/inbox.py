"""Deltas from elsewhere: checked, quarantined or merged in slices.

Theory of operation
-------------------
``merge`` decodes and checks every delta in the caller's thread (no
database needed): strict CBOR, the delta's shape, a stamp not too far ahead
of our clock, values that fit the fields this schema knows. A delta that
fails goes to quarantine, sealed, with its reason code; the rest go on.
The good ones are cut into slices of ``slice_size``; each slice is one
``BULK`` job on the writer thread and one transaction, so a check-in that
arrives meanwhile waits for one slice at most. Stamps are observed (the
clock moves past them) but never rewritten.
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
    good: list[tuple[Delta, bytes]] = []
    bad: list[tuple[str, str, bytes]] = []
    for data in deltas:
        try:
            delta = decode(data)
            if wall_of(delta.stamp) > now + DEFAULT_MAX_AHEAD_MS:
                raise RemoteProtocolError("stamp too far ahead of the local clock",
                                          "clock-ahead")
            check_known_fields(delta)
        except RemoteProtocolError as exc:
            bad.append((exc.code, str(exc), data))
            continue
        good.append((delta, data))
    futures = []
    for i in range(0, len(good), slice_size):
        part = good[i:i + slice_size]
        futures.append(store._writer.submit(functools.partial(_slice, store, part=part), BULK))
    if bad:
        futures.append(store._writer.submit(
            functools.partial(_quarantine, store, bad=bad, now=now), BULK))
    applied = duplicates = 0
    for fut in futures:
        new, dup = fut.result()
        applied += new
        duplicates += dup
    return MergeReport(applied, duplicates, len(bad))


def _slice(store: Store, db: sqlite_utils.Database, *,
           part: list[tuple[Delta, bytes]]) -> tuple[int, int]:
    with atomic(db):
        result = merge_slice(db, store.cipher, part)
        for delta, _ in part:
            if delta.stamp > store.hlc.last:
                store.hlc.last = delta.stamp
        db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('hlc', ?)",
                   [str(store.hlc.last)])
    return result


def _quarantine(store: Store, db: sqlite_utils.Database, *, bad: list[tuple[str, str, bytes]],
                now: int) -> tuple[int, int]:
    with atomic(db):
        for code, reason, data in bad:
            sealed = store.cipher.seal_blob(b"quarantine", strict_cbor.dumps([reason, data]))
            db.execute("INSERT INTO quarantine (received_at, code, sealed) VALUES (?, ?, ?)",
                       [now, code, sealed])
    return 0, 0
