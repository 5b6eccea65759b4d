"""The hub's scope sum at a hello, for a full scope: ``python -m tools.benchmarks._scope_sum
[OPS] [SHARE]`` (default 100,000 ops, a tenth of the records written by two nodes).

Compares the greatest dots alone (v1), every head found by reading the contexts of the
deltas of records more than one node wrote at sum time (``host.hub.scopes.scope_sums``,
what the hub does), and every head found through a table of covered dots that ingest
would fill (a prototype here: one row per context dot, the node's own earlier writes by
the ops index). Best of five runs each, in CPU time, in a temporary database.
"""

from __future__ import annotations

import os
import random
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from host.hub import at_rest, scopes
from host.hub.storage import MIGRATIONS
from protocol.crdt.delta import Delta, encode
from protocol.driver.database import open_database
from protocol.sync.scope import Scope, scope_checksum, scope_checksum_v1

T = 1764900000000000
COVERED = """SELECT o.rid, o.stamp, o.node, o.del FROM ops o
 WHERE (o.hseq <= :c OR o.node = :k)
 AND NOT EXISTS (SELECT 1 FROM covered v WHERE v.rid = o.rid AND v.stamp = o.stamp
  AND v.node = o.node AND (v.by_hseq <= :c OR v.by_node = :k))
 AND NOT EXISTS (SELECT 1 FROM ops p WHERE p.rid = o.rid AND p.stamp > o.stamp
  AND p.node = o.node AND (p.hseq <= :c OR p.node = :k))"""


def history(n: int, share: float, rng: random.Random) -> list[Delta]:
    """Check-ins by ten kiosks, each put then updated 0 to 2 times by its kiosk; ``share``
    of them updated once more by another kiosk, half of those having seen the last."""
    out: list[Delta] = []
    stamp = T
    while len(out) < n:
        rid, a = os.urandom(16), rng.randrange(1, 11)
        stamp += 1
        ds = [Delta(rid, 2, a, stamp, 0, {4: "2026-12-05T10:00:00Z", 5: "North", 2: "arrived"})]
        for _ in range(rng.choice((0, 1, 1, 2))):
            stamp += 1
            ds.append(Delta(rid, 2, a, stamp, 0, {2: "seen"}))
        if rng.random() < share:
            stamp += 1
            ctx = (ds[-1].dot,) if rng.random() < 0.5 else ()
            ds.append(Delta(rid, 2, a % 10 + 1, stamp, 0, {2: "done"}, ctx=ctx))
        out += ds
    return out[:n]


def best(fn: Callable[[], Any], runs: int = 5) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(runs):  # CPU time: SQLite runs in this process, and others' load
        start = time.process_time()  # moves it less than the wall clock
        result = fn()
        times.append(time.process_time() - start)
    return min(times), result


def main(n: int, share: float) -> None:
    deltas = history(n, share, random.Random(7))
    with tempfile.TemporaryDirectory() as tmp:
        db = open_database(os.path.join(tmp, "hub.db"), MIGRATIONS, synchronous="OFF")
        with db.conn:
            db.conn.executemany(
                "INSERT INTO ops (hseq, rid, stamp, node, data, origin, del)"
                " VALUES (?,?,?,?,?,?,?)",
                [(T + i, d.record_id, d.stamp, d.node, encode(d), "bench", d.is_delete)
                 for i, d in enumerate(deltas)])
        at_rest.register(db, at_rest.PLAIN)  # the deltas plain: the sums' work alone
        cursor, kiosk, full = T + n, 3, Scope("full", "North", "2026-12-05")
        v1, _ = best(lambda: scopes.scope_sums(db, full, cursor, kiosk, (1,)))
        v2, sums = best(lambda: scopes.scope_sums(db, full, cursor, kiosk, (2,)))
        start = time.perf_counter()
        with db.conn:
            db.execute("CREATE TABLE covered (rid BLOB, stamp INTEGER, node INTEGER,"
                       " by_hseq INTEGER, by_node INTEGER,"
                       " PRIMARY KEY (rid, stamp, node, by_hseq)) WITHOUT ROWID")
            db.conn.executemany("INSERT INTO covered VALUES (?,?,?,?,?)", [
                (d.record_id, c.stamp, c.node, T + i, d.node)
                for i, d in enumerate(deltas) for c in d.ctx])
        fill = time.perf_counter() - start
        table, by_table = best(lambda: scope_checksum(
            (rid, s, node, bool(deleted))
            for rid, s, node, deleted in db.execute(COVERED, {"c": cursor, "k": kiosk})))
        assert by_table == sums[2], "the table and the contexts disagree"
        assert scope_checksum_v1([]) != sums[2]
        rows = db.execute("SELECT COUNT(*) FROM covered").fetchone()[0]
        db.conn.close()
    print(f"{n} ops, {len({d.record_id for d in deltas})} records, {share:.0%} of them"
          f" written by two nodes")
    print(f"v1, greatest dots:          {v1 * 1000:7.1f} ms")
    print(f"v2, contexts at sum time:   {v2 * 1000:7.1f} ms")
    print(f"v2, covered-dots table:     {table * 1000:7.1f} ms"
          f" (its {rows} rows filled in {fill * 1000:.0f} ms)")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000,
         float(sys.argv[2]) if len(sys.argv) > 2 else 0.1)
