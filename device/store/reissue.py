"""Writes stamped by a clock that ran ahead, issued again once the hub's time is known.

Theory of operation
-------------------
A kiosk whose clock ran ahead (a Pi has no battery clock) stamps its writes
ahead of real time, and its hybrid logical clock keeps handing out stamps
after the greatest it has seen, its own included: every later write is just
as far ahead, and the hub quarantines them all (``clock-ahead``) until real
time catches up. Once a sync round tells the kiosk the hub's time,
``reissue_ahead`` takes each of its own writes that is still stamped more
than ``max_ahead_ms`` ahead of it, queued or quarantined by the hub, and in
one transaction:

- removes the write from the write log and the outbox (no replica accepted
  it: the hub quarantined it or never saw it);
- sets the clock back to the greatest stamp left (the saved clock with it),
  so the clock no longer runs from its own far-future stamps; every stamp
  it merged stays counted, and so does any write of its own the hub
  accepted (had the hub's clock run ahead too, the clock stays with it);
- writes the same content again, oldest first, as new writes of its own with
  fresh stamps against the record as it stands, queued for the hub.

The hub drops the quarantined originals as the new writes arrive
(``protocol.sync.reissue``). Writes of this kiosk that the hub accepted are
never re-stamped, nor is anything another replica wrote.
"""

from __future__ import annotations

import sqlite_utils

from device.store.materialise import op_label
from device.store.store import Store, _as_node
from protocol.crdt.clock import DEFAULT_MAX_AHEAD_MS, LOGICAL_BITS, Dot
from protocol.crdt.delta import Delta, decode

#: The outbox entries that may be issued again: waiting, or quarantined by the hub.
AHEAD = ("SELECT o.seq, o.rid, o.stamp, p.sealed FROM outbox o JOIN ops p ON p.rid = o.rid"
         " AND p.stamp = o.stamp AND p.node = o.node WHERE o.node = ? AND o.stamp >= ?"
         " AND (o.state = 'queued' OR o.error = 'hub-quarantined') ORDER BY o.stamp")

#: The greatest stamp held once the writes to issue again are gone from the write log
#: (the merged values of their records still name them until they are rebuilt).
FLOOR = ("SELECT MAX(s) FROM (SELECT MAX(stamp) AS s FROM ops UNION ALL"
         " SELECT MAX(stamp) FROM field_values WHERE node != ? OR stamp < ?)")


def reissue_ahead(store: Store, hub_now_ms: int,
                  max_ahead_ms: int = DEFAULT_MAX_AHEAD_MS) -> int:
    """Issue again this kiosk's writes stamped too far ahead of ``hub_now_ms``; how many.
    Call it with nothing in flight to the hub (between rounds)."""
    limit = (hub_now_ms + max_ahead_ms + 1) << LOGICAL_BITS
    if store.hlc.last < limit:
        return 0  # the clock never ran ahead: nothing can be

    def job(db: sqlite_utils.Database) -> int:
        rows = db.execute(AHEAD, [store.node, limit]).fetchall()
        writes: list[Delta] = []
        for seq, rid, stamp, sealed in rows:
            rid = bytes(rid)
            writes.append(decode(store.cipher.open_blob(op_label(rid, Dot(stamp, store.node)),
                                                        sealed)))
            db.execute("DELETE FROM outbox WHERE seq = ?", [seq])
            db.execute("DELETE FROM ops WHERE rid = ? AND stamp = ? AND node = ?",
                       [rid, stamp, store.node])
        if not writes:
            return 0  # only writes the hub accepted are ahead: those stamps stand
        # The clock goes back to the greatest stamp left: every other write held here,
        # merged or its own, stays before it (the merged values count too, should their
        # write-log rows be gone).
        left = db.execute(FLOOR, [store.node, limit]).fetchone()[0]
        store.hlc.last = min(store.hlc.last, int(left or 0))
        db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('hlc', ?)",
                   [str(store.hlc.last)])
        # Each record is rebuilt from its write log, without the originals, as it is written.
        store._write(db, hub_now_ms, [(d.record_id, _as_node(d, store.node), False)
                                      for d in writes])
        return len(writes)

    return int(store._run(job))
