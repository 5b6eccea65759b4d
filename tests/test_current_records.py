"""The hub's current records (``host.hub.current``) equal the merge replayed over ``ops``.

Random fleets (``crdt_sim``) write puts, deletes, set changes, conflicts and their
resolutions; the hub takes their deltas in random batches through every path that
writes ``ops`` (a kiosk's batch, the hub's own writes, a released quarantined delta,
an erasure's husks), and after each the table, read back, equals the reference merge
of every delta held, record by record. A rebuild from ``ops`` gives the same rows; a
key rotation re-seals them; a value moved to another record or field does not open.
"""

from __future__ import annotations

import os
import random
import tempfile
import uuid
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from host.hub import current, erasure
from host.hub.at_rest import SealBroken
from host.hub.storage import HubStore, Op
from protocol.crdt.delta import decode
from protocol.crdt.record import RecordLog, RecordView, canonical_json
from protocol.crdt.replica import Replica

from .crdt_sim import RECORDS, Fleet


def replayed(store: HubStore) -> dict[bytes, RecordView]:
    logs: dict[bytes, RecordLog] = {}
    for op in store.all_ops():
        logs.setdefault(op.rid, RecordLog(op.rid)).add(decode(op.data))
    return {rid: log.view() for rid, log in logs.items()}


def materialised(store: HubStore) -> dict[bytes, RecordView]:
    return {view.record_id: view for view, _ in store.current_records()}


def assert_same(store: HubStore) -> None:
    want, got = replayed(store), materialised(store)
    assert got.keys() == want.keys()
    for rid, view in want.items():
        assert got[rid] == view, uuid.UUID(bytes=rid)
    assert canonical_json(got.values()) == canonical_json(want.values())


def feed(store: HubStore, rng: random.Random, log: list[bytes]) -> None:
    """Every delta of ``log`` (and some again) into the hub, in random batches by
    random paths, checking the table after each batch."""
    order = list(range(len(log))) + rng.sample(range(len(log)), len(log) // 4)
    rng.shuffle(order)
    seq = 0
    while order:
        take = order[:rng.randint(1, 6)]
        order = order[len(take):]
        batch = [decode(log[k]) for k in take]
        path = rng.random()
        if path < 0.6:
            seq += 1
            store.commit_batch("kiosk", seq, seq.to_bytes(32, "big"),
                               [(d, log[k]) for d, k in zip(batch, take, strict=True)], [],
                               seq, [])
        elif path < 0.85:
            store.add_local(*(Op(d.record_id, d.stamp, d.node, log[k])
                              for d, k in zip(batch, take, strict=True)))
        else:
            seq += 1
            store.commit_batch("kiosk", seq, seq.to_bytes(32, "big"), [],
                               [("clock-ahead", "held", log[k]) for k in take], seq, [])
            for qid in [q["id"] for q in store.quarantined()]:
                held = store.quarantined_delta(qid)
                assert held is not None
                store.release_quarantined(qid, decode(held[2]), held[2], "test", seq)
        if rng.random() < 0.1:  # an erasure's husks rewrite a record's deltas in place
            with store.writing() as (db, sealer):
                erasure._husk_ops(db, sealer, {rng.choice(RECORDS)[0]})
        assert_same(store)


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**32), st.integers(2, 4), st.integers(5, 40))
def test_the_table_equals_the_replayed_merge(seed: int, n: int, steps: int) -> None:
    rng = random.Random(seed)
    fleet = Fleet.make(rng, n)
    for _ in range(steps):
        fleet.step(rng)
    with tempfile.TemporaryDirectory() as tmp:
        store = HubStore(Path(tmp) / "hub.db")
        try:
            feed(store, rng, fleet.log)
            before = store.current_records()
            with store.writing() as (db, sealer):
                assert current.rebuild(db, sealer) == len(before)
            assert store.current_records() == before  # arrival numbers too
        finally:
            store.close()


@pytest.mark.parametrize("seed", [3, 8])
def test_the_table_equals_the_replayed_merge_on_either_backend(
        seed: int, hub_backend: str, tmp_path: Path) -> None:
    """The same on PostgreSQL (its statements, its types) as on SQLite: a few seeds."""
    from host.hub.database import is_url
    from host.hub.hub import DATABASE_ENV
    from protocol.driver.sealing import KeyFile

    rng = random.Random(seed)
    fleet = Fleet.make(rng, 3)
    for _ in range(40):
        fleet.step(rng)
    url = os.environ.get(DATABASE_ENV)
    target = url if url and is_url(url) else tmp_path / "hub.db"
    store = HubStore(target, KeyFile(tmp_path / "hub_store.key", "hub store key file"))
    try:
        feed(store, rng, fleet.log)
        before = store.current_records()
        with store.writing() as (db, sealer):
            assert current.rebuild(db, sealer) == len(before)
        assert store.current_records() == before
    finally:
        store.close()


def test_a_rotation_reseals_the_values_and_a_moved_value_does_not_open(
        tmp_path: Path) -> None:
    rng = random.Random(7)
    fleet = Fleet.make(rng, 3)
    for _ in range(40):
        fleet.step(rng)
    store = HubStore(tmp_path / "hub.db")
    try:
        feed(store, rng, fleet.log)
        dump = canonical_json(materialised(store).values())
        old = store.sealer.current
        store.rotate_key(1)
        for _ in range(1000):
            if not store.reseal_slice(7):
                break
        assert store.keyring()["versions"] == [store.sealer.current] != [old]
        assert {bytes(v)[0] for (v,) in store._q("SELECT value FROM record_fields")} == {
            store.sealer.current}
        assert canonical_json(materialised(store).values()) == dump
        (a, rid, va), (b, _, vb) = store._q(
            "SELECT id, rid, value FROM record_fields ORDER BY id LIMIT 2")
        store._q("UPDATE record_fields SET value = ? WHERE id = ?", [vb, a])
        with pytest.raises(SealBroken):
            store.current_records()
        store._q("UPDATE record_fields SET value = ?, field = field + 100 WHERE id = ?",
                 [va, a])  # the right value under another field
        with pytest.raises(SealBroken):
            store.current_records()
    finally:
        store.close()


def test_a_write_that_saw_every_head_settles_a_field_conflict(tmp_path: Path) -> None:
    """A note two kiosks wrote apart keeps its field conflict (severity info) through a
    later write to another field, and loses it once that field is written again: the
    paths that skip the replay must tell the two apart."""
    a, b, c = Replica(11), Replica(13), Replica(17)
    rid = uuid.UUID(int=9).bytes
    t = 1_790_000_000_000
    log = [a.put(rid, "note", t, {"text": "one"}), b.put(rid, "note", t, {"text": "two"})]
    for data in log:
        c.receive(data, t + 10)
    log.append(c.put(rid, "note", t + 20, {"authorString": "desk"}))
    log.append(c.put(rid, "note", t + 30, {"text": "settled"}))
    store = HubStore(tmp_path / "hub.db")
    try:
        for data in log:
            store.add_local(Op(rid, decode(data).stamp, decode(data).node, data))
            assert_same(store)
            if data == log[2]:
                assert [x.severity for x in materialised(store)[rid].conflicts] == ["info"]
        assert materialised(store)[rid].conflicts == ()
        assert materialised(store)[rid] == c.view(rid)
    finally:
        store.close()


def test_a_record_new_to_the_hub_arriving_in_one_batch(tmp_path: Path) -> None:
    """A record's first batch at the hub may hold several of its deltas: in turn (the
    later saw the earlier), apart (a conflict), a delete and a write that did not see it,
    or the later first: each gives what the merge gives."""
    a, b = Replica(11), Replica(13)
    t = 1_790_000_000_000
    cases = []
    for n in range(5):
        rid = uuid.UUID(int=100 + n).bytes
        first = a.put(rid, "prescription", t, {"medication": "m", "status": "active"},)
        b.receive(first, t)
        if n == 0:
            cases.append([first, a.put(rid, "prescription", t + 1, {"status": "stopped"})])
        elif n == 1:
            cases.append([first, a.put(rid, "prescription", t + 1, {"note": "a"}),
                          b.put(rid, "prescription", t + 1, {"note": "b"})])
        elif n == 2:
            gone = a.delete(rid, t + 1)
            cases.append([first, gone, b.put(rid, "prescription", t + 2, {"note": "apart"})])
        elif n == 3:
            cases.append([a.put(rid, "prescription", t + 1, {"note": "x"}), first])
        else:  # the hub never saw the put both had seen
            cases.append([a.delete(rid, t + 1), b.put(rid, "prescription", t + 2, {"note": "b"})])
    store = HubStore(tmp_path / "hub.db")
    try:
        for seq, batch in enumerate(cases, 1):
            store.commit_batch("kiosk", seq, seq.to_bytes(32, "big"),
                               [(decode(d), d) for d in batch], [], seq, [])
            assert_same(store)
        views = materialised(store)
        assert views[uuid.UUID(int=101).bytes].held
        assert not views[uuid.UUID(int=102).bytes].deleted
    finally:
        store.close()
