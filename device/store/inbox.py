"""Deltas from elsewhere: checked, quarantined or merged in slices.

Theory of operation
-------------------
``merge`` cuts the deltas into slices of at most ``slice_size``; each slice
is one ``BULK`` job on the writer thread. A slice works through its deltas
in chunks of ``CHUNK``: each chunk is decoded as one batch
(``delta.decode_many``: strict, with the same answers as one by one) and
checked (a stamp not too far ahead of our clock, values that fit the fields
this schema knows); one that fails goes to quarantine, sealed, with its
reason code, and the rest merge. Chunks share a transaction until the slice
ends, its time budget has passed, or an urgent job (a check-in) is waiting;
then the transaction commits and waiting check-ins run before the next one.
The budget is ``QUIET_TXN_BUDGET_S`` while no check-in competes with the
merge and ``TXN_BUDGET_S`` while they come (``_busy``: one ran in the last
``BUSY_S`` since the merge began).
A transaction that starts right after a check-in skips its commit's fsync
(``synchronous=NORMAL``): the next check-in's commit fsyncs the WAL, and
with it that transaction; any other commits with its own fsync, so there
is never more than one merge transaction for a check-in to flush, and if
the merge's last commit was a relaxed one, one more commit fsyncs it:
``merge`` returns only when everything it merged is durable.
So a check-in waits for one chunk and one commit at most, while a merge
without company commits rarely; while check-ins keep coming, chunks are
shorter (``BUSY_CHUNK``). Stamps are observed (the clock moves past
them) but never rewritten.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import sqlite_utils

from device.store import erasure
from device.store.materialise import merge_slice
from device.store.writer import BULK
from protocol import strict_cbor
from protocol.crdt.delta import Delta
from protocol.driver.database import immediate
from protocol.errors import RemoteProtocolError
from protocol.sync.checks import check_remote_deltas

if TYPE_CHECKING:
    from device.store.store import Store

SAVE_CLOCK = "INSERT OR REPLACE INTO meta (key, value) VALUES ('hlc', ?)"

#: Deltas decoded and merged together; a waiting check-in waits for one chunk at most
#: (a few milliseconds here). Larger chunks spread each statement's and lookup's cost
#: over more deltas: 256 merged about 20% faster than 64 in ``./tools/bench store``.
CHUNK = 256
#: The chunk while check-ins are coming (``_busy``): shorter waits.
BUSY_CHUNK = 8
BUSY_S = 0.5
#: A merge transaction that starts this soon after a check-in commits without fsync.
RELAXED_S = 0.01
#: How long one merge transaction may grow before it commits anyway, while check-ins
#: are coming (``_busy``) ...
TXN_BUDGET_S = 0.02
#: ... and when none is: a commit writes every page the transaction touched and fsyncs,
#: so fewer, larger ones cost a merge less (100,000 deltas from the hub: 130 commits at
#: 20 ms, about a quarter of the merge's time, and 51 at 100 ms); the first check-in to
#: come waits for one such commit.
QUIET_TXN_BUDGET_S = 0.1


@dataclass(frozen=True)
class MergeReport:
    applied: int
    duplicates: int
    quarantined: int


def merge(store: Store, deltas: Iterable[bytes], now: int, slice_size: int,
          cursor: int | None = None) -> MergeReport:
    """Merge deltas from the hub that came in a page with ``cursor`` (``seen.at``), or
    from elsewhere (None: kept with their bodies, ``materialise.merge_slice``)."""
    # Decoding runs on the writer thread, chunk by chunk: a second CPU-bound thread
    # would make every check-in fight for the interpreter lock.
    items = list(deltas)
    started = time.monotonic()
    starts = range(0, len(items), slice_size)
    futures = [
        store.writer.submit(functools.partial(
            _slice, store, part=items[i:i + slice_size], now=now, at=cursor,
            last=i == starts[-1], started=started), BULK)
        for i in starts
    ]
    applied = duplicates = quarantined = 0
    for fut in futures:
        new, dup, bad = fut.result()
        applied += new
        duplicates += dup
        quarantined += bad
    return MergeReport(applied, duplicates, quarantined)


def _checked(part: list[bytes], now: int
             ) -> tuple[list[tuple[Delta, bytes]], list[tuple[str, str, bytes]]]:
    """The deltas of ``part`` that pass ``check_remote_deltas`` (the hub's check too;
    any node may write what comes from the hub), and those it refuses."""
    good: list[tuple[Delta, bytes]] = []
    bad: list[tuple[str, str, bytes]] = []
    for data, got in zip(part, check_remote_deltas(part, now), strict=True):
        if not isinstance(got, RemoteProtocolError):
            got = erasure.refusal(got) or got
        if isinstance(got, RemoteProtocolError):
            bad.append((got.code, str(got), data))
        else:
            good.append((got, data))
    return good, bad


def _slice(store: Store, db: sqlite_utils.Database, *, part: list[bytes],
           now: int, at: int | None, last: bool, started: float) -> tuple[int, int, int]:
    writer = store.writer
    totals = [0, 0, 0]  # new, duplicates, quarantined
    pos = 0
    synced = True
    while pos < len(part):
        first = pos
        # Right after a check-in, another is likely to follow (and to cut this
        # transaction short): skip this commit's fsync, the next check-in's commit
        # fsyncs the WAL and this transaction with it. Otherwise the merge fsyncs its
        # own commits, so a check-in never has more than one transaction to flush.
        relaxed = writer.urgent_lately(RELAXED_S)
        with erasure.guard(store, db), immediate(db, synchronous="NORMAL" if relaxed else None):
            pos = _transaction(store, db, part, pos, now, at, totals, started)
        synced = not relaxed
        store.after_commit(pos - first)
        writer.run_urgent(db)
    if last and not synced:
        with immediate(db):  # synchronous=FULL: this commit fsyncs what came before it
            db.conn.execute(SAVE_CLOCK, [str(store.hlc.last)])
    return totals[0], totals[1], totals[2]


def _busy(store: Store, started: float) -> bool:
    """Whether check-ins are coming: one ran in the last ``BUSY_S`` since the merge
    began (one before it, say the call that acknowledged the sync round's batch, tells
    nothing of check-ins competing with this merge)."""
    return store.writer.urgent_lately(min(BUSY_S, time.monotonic() - started))


def _transaction(store: Store, db: sqlite_utils.Database, part: list[bytes], pos: int,
                 now: int, at: int | None, totals: list[int], started: float) -> int:
    """Merge chunks of ``part`` from ``pos`` until done, out of time, or a check-in
    waits; returns where it stopped."""
    writer = store.writer
    busy = _busy(store, started)
    deadline = time.perf_counter() + (TXN_BUDGET_S if busy else QUIET_TXN_BUDGET_S)
    while pos < len(part):
        size = BUSY_CHUNK if busy or _busy(store, started) else CHUNK
        chunk = part[pos:pos + size]
        pos += len(chunk)
        good, bad = _checked(chunk, now)
        new, dup = merge_slice(db, store.cipher, erasure.arriving(store, db, good), at,
                               store.node)
        totals[0] += new
        totals[1] += dup
        totals[2] += len(bad)
        if bad:
            sealed = store.cipher.seal_blobs([
                (b"quarantine", strict_cbor.dumps([reason, data])) for _, reason, data in bad])
            db.conn.executemany(
                "INSERT INTO quarantine (received_at, code, sealed) VALUES (?, ?, ?)",
                [(now, code, blob) for (code, _, _), blob in zip(bad, sealed, strict=True)])
        if good:
            top = max(d.stamp for d, _ in good)
            if top > store.hlc.last:
                store.hlc.last = top
        if writer.urgent_waiting() or time.perf_counter() > deadline:
            break
    db.conn.execute(SAVE_CLOCK, [str(store.hlc.last)])
    return pos
