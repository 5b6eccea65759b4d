"""The hub's copy: a stale record's whole write set, and a whole scope's snapshot.

Theory of operation
-------------------
A record merged without the bodies of its writes (``records.partial``) can
take only writes that saw all of it (``covering``); one that did not makes
it ``stale``, kept as it was with that write's body, until the hub sends the
record's whole write set (``replace``). Each record is then rebuilt by the
reference merge from the hub's writes plus this kiosk's own writes the hub
may not have yet (those still in the outbox), every body kept: its log is
whole again.

A whole-scope snapshot (``rebase``: the kiosk's checksum disagreed with the
hub's, its role changed, or it fell too far behind) is first checked against
the checksum the hub sent with it; a snapshot that does not match changes
nothing (``BadSnapshot``). Then, in one transaction, only what disagrees with
it within the scope changes: a record of the snapshot is rebuilt as above
unless it holds exactly the hub's writes already, with the same heads (one
with an unsent write of this kiosk's own always is), and a record of the
scope the snapshot lacks goes. A record the snapshot lacks but this kiosk
wrote and has not sent stays as it is (it is the kiosk's to send), as does an
erasure record (a hub restored from a backup taken before the erasure would
otherwise bring the patient back; ``erasure``). Records
out of the scope are left as they are, to the garbage collector
(``collect``), which prunes them in short slices: a full kiosk turned door
would otherwise drop nearly all it holds in this one transaction (seconds
to minutes, with a WAL as large, while check-ins wait). They do not count
in the scope's checksum (``scope_state.held_heads``), so the next hello's
sum agrees with the hub's all the same. The kiosk's audit chain is never
dropped: it is read from the store (``device.audit``) and is in no scope.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import sqlite_utils

from device.store import seen, shed
from device.store.exc import BadSnapshot
from device.store.keys import FieldCipher
from device.store.materialise import insert_bodies, refresh
from device.store.scope_state import ScopeReader, record_heads
from protocol.crdt.delta import Delta, decode
from protocol.crdt.schema import ERASURE
from protocol.errors import RemoteProtocolError
from protocol.sync import audit as sync_audit
from protocol.sync.scope import Scope, heads_of, scope_checksum, scope_checksum_v1

#: The rows of a record, in every table that has them by record id.
RECORD_TABLES = ("records", "field_values", "conflicts", "ops")
#: ``ops`` rows that are not this kiosk's own writes waiting in the outbox.
NOT_UNSENT = ("(local = 0 OR NOT EXISTS (SELECT 1 FROM outbox o WHERE o.rid = ops.rid"
              " AND o.stamp = ops.stamp AND o.node = ops.node))")


def decoded(deltas: Iterable[bytes]) -> list[tuple[Delta, bytes]]:
    """The hub's deltas, strictly decoded; ``BadSnapshot`` for any that does not decode."""
    out = []
    for data in deltas:
        try:
            out.append((decode(data), data))
        except RemoteProtocolError as exc:
            raise BadSnapshot(f"the hub's copy holds a delta that does not decode ({exc}): "
                              "nothing was changed") from None
    return out


def check_sum(items: list[tuple[Delta, bytes]], hub_sum: bytes, version: int = 2,
              db: sqlite_utils.Database | None = None, lost: int | None = None) -> None:
    """``BadSnapshot`` unless the snapshot sums to ``hub_sum`` (``scope_checksum``, every
    head of each record; ``version`` 1: ``scope_checksum_v1``, from a hub before it) and
    is causally closed: the hub keeps every delta it took, so every write a snapshot's
    write saw on its record is in it too (the sum covers heads only; this catches an
    older one left out), but for a write this kiosk holds (in ``db``) that came
    neither from the hub nor with its arrival number (a batch of a copy of this kiosk's,
    held for review: a later write of this kiosk's saw it, and the hub took that one), nor
    for a write of the hub's own node ``lost``: the hub keeps every write it made, so
    one it lacks is lost (a hub restored from a backup taken before it); a later write
    that saw it is taken without it, as if it had been superseded."""
    dots = {(d.record_id, d.dot) for d, _ in items}
    missing = {(d.record_id, c) for d, _ in items for c in d.ctx
               if c.node != lost} - dots
    if any(db is None or db.execute(
            "SELECT 1 FROM ops WHERE rid = ? AND stamp = ? AND node = ?"
            " AND arrived IS NULL", [rid, c.stamp, c.node]).fetchone() is None
           for rid, c in missing):
        raise BadSnapshot("the hub's snapshot lacks writes that its records' writes saw: "
                          "nothing was changed")
    heads = heads_of((d.record_id, d.stamp, d.node, d.is_delete, d.ctx) for d, _ in items)
    got = (scope_checksum if version == 2 else scope_checksum_v1)(heads)
    if got != hub_sum:
        raise BadSnapshot(f"the hub's snapshot does not match its checksum (it sums to "
                          f"{got.hex()[:16]}..., the hub said {bytes(hub_sum).hex()[:16]}...):"
                          " nothing was changed")


def by_record(items: list[tuple[Delta, bytes]]) -> dict[bytes, list[tuple[Delta, bytes]]]:
    out: dict[bytes, list[tuple[Delta, bytes]]] = {}
    for item in items:
        out.setdefault(item[0].record_id, []).append(item)
    return out


def drop(db: sqlite_utils.Database, rids: list[bytes]) -> None:
    """Every row of these records."""
    for table in RECORD_TABLES:
        db.conn.executemany(f"DELETE FROM {table} WHERE rid = ?", [(r,) for r in rids])


def rebuild(db: sqlite_utils.Database, cipher: FieldCipher, own_node: int, rid: bytes,
            hub: list[tuple[Delta, bytes]], at: int) -> None:
    """Record ``rid`` from the hub's write set ``hub`` (cursor ``at``) and this kiosk's
    own unsent writes, every body kept."""
    conn = db.conn
    conn.execute(f"DELETE FROM ops WHERE rid = ? AND {NOT_UNSENT}", [rid])
    insert_bodies(conn, cipher, hub, at, own_node)
    if conn.execute("SELECT 1 FROM ops WHERE rid = ? LIMIT 1", [rid]).fetchone() is None:
        drop(db, [rid])
        return
    refresh(db, cipher, rid)
    conn.execute("UPDATE records SET stale = 0, partial = 0, seen = ?, seen_at = ?"
                 " WHERE rid = ?", [seen.packed({(d.stamp, d.node) for d, _ in hub}), at, rid])


def replace(db: sqlite_utils.Database, cipher: FieldCipher, own_node: int,
            items: list[tuple[Delta, bytes]], rids: Iterable[bytes], at: int) -> int:
    """Rebuild ``rids`` from the hub's write sets in ``items`` (deltas of other records
    are ignored); a record the hub sent nothing of is left as it is, no longer stale
    (out of scope: ``collect`` prunes it once synced). Returns how many were rebuilt."""
    groups = by_record(items)
    done = 0
    for rid in dict.fromkeys(rids):
        hub = groups.get(rid)
        if hub:
            rebuild(db, cipher, own_node, rid, hub, at)
            done += 1
        else:
            db.execute("UPDATE records SET stale = 0 WHERE rid = ?", [rid])
    return done


def holds_hubs(db: sqlite_utils.Database, cipher: FieldCipher, rid: bytes,
               hub: list[tuple[Delta, bytes]]) -> bool:
    """Whether record ``rid`` (with no unsent write of this kiosk's own) holds exactly the
    hub's writes ``hub``, with their heads, and is not stale: a rebuild would give the
    rows it has, and it sums as the snapshot does."""
    row = db.execute("SELECT type, deleted, n_conflicts, has_delete, heads, extra, stale,"
                     " seen FROM records WHERE rid = ?", [rid]).fetchone()
    if row is None or row[6]:
        return False
    held = {(d.stamp, d.node) for d in seen.dots(row[7])}
    held.update(db.execute("SELECT stamp, node FROM ops WHERE rid = ?", [rid]).fetchall())
    if held != {(d.stamp, d.node) for d, _ in hub}:
        return False
    return sorted(record_heads(db, cipher, rid, *row[:6])) == sorted(
        heads_of((rid, d.stamp, d.node, d.is_delete, d.ctx) for d, _ in hub))


@dataclass(frozen=True)
class Held:
    """The records of a scope held (by their facts), and a clinician's patients."""
    rids: frozenset[bytes]
    patients: frozenset[bytes]


def held_in(db: sqlite_utils.Database, cipher: FieldCipher, scope: Scope) -> Held:
    """The records of ``scope`` held: read before the rebase's transaction, off the
    writer (the facts of every check-in are opened: seconds on a kiosk that held all)."""
    reader = ScopeReader(db, cipher, scope)
    return Held(frozenset(rid for rid, rtype in _typed(db, scope) if reader.holds(rid, rtype)),
                frozenset(reader.patients()))


def _typed(db: sqlite_utils.Database, scope: Scope | None) -> list[tuple[bytes, int]]:
    """(rid, type) of the records of the types ``scope`` may hold (None: all)."""
    never = shed.never_held(scope) if scope is not None else ()
    skip = f" WHERE type NOT IN ({','.join(map(str, never))})" if never else ""
    return db.execute(f"SELECT rid, type FROM records{skip}").fetchall()


def rebase(db: sqlite_utils.Database, cipher: FieldCipher, own_node: int,
           items: list[tuple[Delta, bytes]], upto: int, scope: Scope | None = None,
           held: Held | None = None) -> dict[str, Any]:
    """The scope rebuilt from a checked snapshot (in the caller's transaction): records
    of the snapshot that hold other writes than the hub's rebuilt, records of ``scope``
    (None: every record) it lacks dropped, records out of ``scope`` left as they are.
    ``held``: ``held_in`` read before the transaction (None: read now); a record that
    entered the scope since (by a write of this kiosk's own) is left as it is, and one
    that may have left it is looked at again."""
    groups = by_record(items)
    unsent = {r for (r,) in db.execute("SELECT DISTINCT rid FROM outbox").fetchall()}
    differ = [rid for rid, hub in groups.items()
              if rid in unsent or not holds_hubs(db, cipher, rid, hub)]
    for rid in differ:
        rebuild(db, cipher, own_node, rid, groups[rid], upto)
    reader, in_scope = None, frozenset[bytes]()
    if scope is not None:
        held = held or held_in(db, cipher, scope)
        reader, in_scope = ScopeReader(db, cipher, scope, set(held.patients)), held.rids
    gone = [rid for rid, rtype in _typed(db, scope)
            if rid not in groups and rid not in unsent and not sync_audit.is_audit_id(rid)
            and rtype != ERASURE.number  # never forgotten: a hub restored from an older backup
            and (reader is None or (rid in in_scope and reader.holds(rid, rtype)))]
    drop(db, gone)
    return {"dropped": len(gone), "rebuilt": len(differ), "kept": len(groups) - len(differ)}
