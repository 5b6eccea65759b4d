"""Convergence: random fleets, random writes, random delivery with duplicates.

Replicas that have seen the same deltas print the same bytes; merge is
commutative, associative and idempotent; conflicts appear exactly where an
oracle that tracks who had seen what says the writes were concurrent.
"""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.crdt.record import DELETE_UPDATE, UPDATE_UPDATE
from protocol.crdt.replica import Replica
from protocol.crdt.schema import TYPES

from .crdt_sim import RECORDS, T0, Fleet

SETTINGS = settings(max_examples=40, deadline=None)


def run_fleet(seed: int, n: int, steps: int) -> tuple[Fleet, random.Random]:
    rng = random.Random(seed)
    fleet = Fleet.make(rng, n)
    for _ in range(steps):
        fleet.step(rng)
    return fleet, rng


@SETTINGS
@given(st.integers(0, 2**32), st.integers(3, 5), st.integers(5, 60))
def test_replicas_converge_byte_for_byte(seed: int, n: int, steps: int) -> None:
    fleet, rng = run_fleet(seed, n, steps)
    fleet.deliver_everything(rng)
    dumps = {r.dump() for r in fleet.replicas}
    assert len(dumps) == 1
    # A fresh replica fed everything in yet another order agrees too.
    fresh = Replica(7)
    for data in reversed(fleet.log):
        fresh.receive(data, fleet.now)
    assert fresh.dump() in dumps


@SETTINGS
@given(st.integers(0, 2**32), st.integers(3, 5), st.integers(5, 60))
def test_conflicts_exactly_when_concurrent(seed: int, n: int, steps: int) -> None:
    fleet, rng = run_fleet(seed, n, steps)
    fleet.deliver_everything(rng)
    rep = fleet.replicas[0]
    for rid, _ in RECORDS:
        view = rep.view(rid)
        if view is None:
            continue
        heads = fleet.oracle_heads(rid)
        assert set(view.heads) == heads
        ops = rep.records[rid].ops
        updates = {d for d in heads if not ops[d].is_delete}
        deletes = heads - updates
        classes = {(c.cls, c.field) for c in view.conflicts}
        assert ((DELETE_UPDATE, None) in classes) == bool(updates and deletes)
        assert view.deleted == (not updates)
        spec = TYPES[view.type]
        if spec.held:
            assert ((UPDATE_UPDATE, None) in classes) == (len(updates) > 1)
            assert view.held == (len(updates) > 1 or bool(updates and deletes))
        elif not any(op.is_delete for op in ops.values()):
            # Field conflicts: assignments of one field that did not see each other.
            for key in {k for op in ops.values() for k in op.set}:
                writers = {d for d, op in ops.items() if key in op.set}
                tops = {d for d in writers if not any(d in fleet.past[w] for w in writers)}
                values = {repr(ops[d].set[key]) for d in tops}
                assert ((UPDATE_UPDATE, key) in classes) == (len(values) > 1)
        for c in view.conflicts:
            assert len(c.versions) >= 2
            assert all(v.dot in heads for v in c.versions) or c.field is not None


def _fed(deltas: list[bytes], now: int) -> Replica:
    rep = Replica(99)
    for data in deltas:
        rep.receive(data, now)
    return rep


@SETTINGS
@given(st.integers(0, 2**32), st.data())
def test_merge_commutative_associative_idempotent(seed: int, data: st.DataObject) -> None:
    fleet, rng = run_fleet(seed, 4, 40)
    log = fleet.log
    now = fleet.now + 10_000
    idx = st.lists(st.integers(0, max(len(log) - 1, 0)), max_size=len(log))
    a, b, c = ([log[k] for k in data.draw(idx)] if log else [] for _ in range(3))
    ab = _fed(a + b, now).dump()
    assert ab == _fed(b + a, now).dump()
    assert _fed((a + b) + c, now).dump() == _fed(a + (b + c), now).dump()
    assert _fed(c + b + a, now).dump() == _fed(a + b + c, now).dump()
    assert _fed(a + a + b + b, now).dump() == ab
    assert _fed(a + b + a, now).dump() == ab


def test_long_random_run_converges() -> None:
    fleet, rng = run_fleet(20261126, 5, 400)
    fleet.deliver_everything(rng)
    assert len({r.dump() for r in fleet.replicas}) == 1
    assert len(fleet.log) > 100
    assert fleet.now > T0
