"""The priority outbox: compact CBOR deltas waiting for the hub, in lanes.

Theory of operation
-------------------
Each local write adds one entry in the same transaction as the write
itself. An entry names the write (record id and dot); the bytes are the
sealed delta in ``ops``, so nothing is stored twice. Entries go out by lane
(0 prescriptions first ... 5 telemetry), oldest first within a lane,
batched up to a byte budget. A patient travels in the lane of whatever needs
it first: a write that refers to a patient pulls the patient's waiting
entries up to its own lane.

An entry leaves the outbox only through ``ack``, which the sync engine calls
after the hub's authenticated acknowledgement of a durable commit. A failed
send schedules a retry with exponential backoff and jitter
(``backoff_ms``); an entry the hub rejects goes to quarantine, out of the
way of every entry behind it, and ``status`` shows it.
"""

from __future__ import annotations

import random
from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import sqlite_utils

from device.store.keys import FieldCipher
from device.store.materialise import op_label
from protocol.crdt.clock import Dot
from protocol.crdt.delta import Delta

BASE_DELAY_MS = 2_000
MAX_DELAY_MS = 15 * 60 * 1000
DEFAULT_BATCH_BYTES = 16 * 1024


@dataclass(frozen=True)
class Entry:
    seq: int
    lane: int
    attempts: int
    data: bytes


def backoff_ms(attempts: int, rng: random.Random) -> int:
    """Delay before retry number ``attempts``: doubling, capped, half of it random."""
    ceiling = min(MAX_DELAY_MS, BASE_DELAY_MS << min(max(attempts - 1, 0), 20))
    return ceiling // 2 + rng.randrange(ceiling // 2 + 1)


def enqueue_many(db: sqlite_utils.Database, entries: Iterable[tuple[int, Delta, int]]) -> None:
    """Queue each (lane, delta, size), in order, in one statement."""
    db.conn.executemany(
        "INSERT INTO outbox (lane, rid, stamp, node, size) VALUES (?, ?, ?, ?, ?)",
        [(lane, d.record_id, d.stamp, d.node, size) for lane, d, size in entries])


def requeue_local(db: sqlite_utils.Database, lanes: dict[int, int], default_lane: int,
                  overhead: int) -> int:
    """Queue again every write made here that is not queued: the hub lost it (it was
    restored from a backup). Returns how many; the hub keeps each write once."""
    case = " ".join(f"WHEN {t} THEN {lane}" for t, lane in sorted(lanes.items()))
    return db.execute(
        "INSERT INTO outbox (lane, rid, stamp, node, size)"
        f" SELECT CASE type {case} ELSE {default_lane} END, rid, stamp, node,"
        " length(sealed) - ? FROM ops WHERE local = 1"
        " AND (rid, stamp, node) NOT IN (SELECT rid, stamp, node FROM outbox)"
        " ORDER BY id", [overhead]).rowcount


def promote(db: sqlite_utils.Database, rid: bytes, lane: int) -> None:
    db.execute("UPDATE outbox SET lane = ? WHERE rid = ? AND lane > ? AND state = 'queued'",
               [lane, rid, lane])


def batch(db: sqlite_utils.Database, cipher: FieldCipher, now_ms: int,
          max_bytes: int = DEFAULT_BATCH_BYTES, max_entries: int = 1000,
          skip: Container[int] = ()) -> list[Entry]:
    """The next entries to send: by lane, then age; at least one if any is due.
    Entries in ``skip`` (acknowledged, not yet deleted) are passed over."""
    out: list[Entry] = []
    total = 0
    rows = db.execute(
        "SELECT o.seq, o.lane, o.attempts, o.size, o.rid, o.stamp, o.node, p.sealed"
        " FROM outbox o JOIN ops p ON p.rid = o.rid AND p.stamp = o.stamp AND p.node = o.node"
        " WHERE o.state = 'queued' AND o.next_at <= ? ORDER BY o.lane, o.seq", [now_ms])
    try:
        for seq, lane, attempts, size, rid, stamp, node, sealed in rows:
            if seq in skip:
                continue
            if len(out) >= max_entries or out and total + size > max_bytes:
                break
            data = cipher.open_blob(op_label(rid, Dot(stamp, node)), sealed)
            out.append(Entry(seq, lane, attempts, data))
            total += size
    finally:
        rows.close()  # ends the read at once, rows not read or not
    return out


def _marks(seqs: list[int]) -> str:
    return ",".join("?" * len(seqs))


def ack(db: sqlite_utils.Database, seqs: Iterable[int],
        arrived: Mapping[int, int | None] | None = None) -> int:
    """Remove acknowledged entries; ``arrived``: seq -> the arrival number the hub gave
    the entry's write, kept on its ``ops`` row (the stable point is counted in them)."""
    seqs = list(seqs)
    if not seqs:
        return 0
    for seq, at in (arrived or {}).items():
        if at is not None:
            db.execute("UPDATE ops SET arrived = ? WHERE (rid, stamp, node) IN"
                       " (SELECT rid, stamp, node FROM outbox WHERE seq = ?)", [at, seq])
    return db.execute(f"DELETE FROM outbox WHERE seq IN ({_marks(seqs)})", seqs).rowcount


def retry(db: sqlite_utils.Database, seqs: Iterable[int], now_ms: int,
          rng: random.Random) -> None:
    for seq in seqs:
        row = db.execute("SELECT attempts FROM outbox WHERE seq = ?", [seq]).fetchone()
        if row is None:
            continue
        attempts = row[0] + 1
        db.execute("UPDATE outbox SET attempts = ?, next_at = ? WHERE seq = ?",
                   [attempts, now_ms + backoff_ms(attempts, rng), seq])


def reject(db: sqlite_utils.Database, seq: int, code: str) -> None:
    db.execute("UPDATE outbox SET state = 'quarantined', error = ? WHERE seq = ?",
               [code[:64], seq])


def summary(db: sqlite_utils.Database, now_ms: int) -> dict[str, Any]:
    lanes: dict[str, Any] = {}
    for lane, n, size, waiting in db.execute(
        "SELECT lane, COUNT(*), SUM(size), SUM(next_at > ?) FROM outbox"
        " WHERE state = 'queued' GROUP BY lane ORDER BY lane", [now_ms]
    ).fetchall():
        lanes[str(lane)] = {"entries": n, "bytes": size, "waiting_retry": waiting}
    quarantined = [
        {"seq": seq, "lane": lane, "attempts": attempts, "error": error}
        for seq, lane, attempts, error in db.execute(
            "SELECT seq, lane, attempts, error FROM outbox WHERE state = 'quarantined'"
            " ORDER BY seq").fetchall()
    ]
    return {"lanes": lanes, "quarantined": quarantined}
