"""The SQL store against the reference merge: same deltas, same bytes."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from device.store import BadRequest, Store, init_store
from protocol.crdt.clock import pack
from protocol.crdt.delta import Delta, decode, encode
from protocol.crdt.replica import Replica
from protocol.errors import LocalProtocolError

from .crdt_sim import T0, Fleet


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = init_store(tmp_path / "kiosk", "Test Site", "B")
    yield s
    s.close()


def _fleet_log(seed: int, n: int, steps: int) -> tuple[list[bytes], Replica, random.Random]:
    rng = random.Random(seed)
    fleet = Fleet.make(rng, n)
    for _ in range(steps):
        fleet.step(rng)
    ref = Replica(12345)
    for data in fleet.log:
        ref.receive(data, fleet.now + 60_000)
    return fleet.log, ref, rng


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(0, 2**32), st.integers(3, 5), st.integers(5, 60), st.integers(1, 40))
def test_sql_merge_matches_reference(tmp_path_factory: pytest.TempPathFactory, seed: int,
                                     n: int, steps: int, slice_size: int) -> None:
    log, ref, rng = _fleet_log(seed, n, steps)
    order = log + rng.sample(log, len(log) // 2)
    rng.shuffle(order)
    with init_store(tmp_path_factory.mktemp("k") / "d", "Site", "C") as store:
        report = store.merge(order, now_ms=T0 + 10**8, slice_size=slice_size)
        assert report.applied == len(log) and report.quarantined == 0
        assert store.dump() == ref.dump()
        # Again: nothing changes.
        assert store.merge(order, now_ms=T0 + 10**8).applied == 0
        assert store.dump() == ref.dump()


def test_causal_order_takes_the_fast_path_and_still_agrees(store: Store) -> None:
    writer, ref = Replica(77), Replica(78)
    log = []
    rids = [uuid.UUID(int=i + 1).bytes for i in range(50)]
    for i, rid in enumerate(rids):
        for f in range(5):
            log.append(writer.put(rid, "lab_result", T0 + i, {"code": f"c{f}", "value": f + i}))
    for data in log:
        ref.receive(data, T0)
    statements: list[str] = []
    store.writer.call(lambda db: db.conn.set_trace_callback(statements.append))
    store.merge(log, now_ms=T0, slice_size=64)
    assert store.dump() == ref.dump()
    # Every write was a causal successor: no record was rebuilt from its log.
    assert not any(s.strip().startswith("DELETE FROM field_values") for s in statements)
    # The registers went through the SQL upsert (the greatest write of each, at least).
    assert sum("ON CONFLICT (rid, field)" in s for s in statements) >= 2 * len(rids)


def test_local_writes_reach_a_reference_replica(store: Store) -> None:
    ref = Replica(5)
    pid = store.checkin(name="Ada", passport="AB123456", now_ms=T0).patient_id
    store.put("patient", pid, add={"allergies": ["latex"]}, now_ms=T0 + 1)
    rx = store.put("prescription", values={"subject": pid, "medication": "m"}, now_ms=T0 + 2)
    for entry in store.outbox_batch(now_ms=T0 + 3):
        ref.receive(entry.data, T0 + 3)
    assert ref.dump() == store.dump()
    # And back: a concurrent remote edit of the prescription holds it in the store too.
    remote = ref.put(uuid.UUID(rx).bytes, "prescription", T0 + 4, {"dosageInstruction": "x"})
    store.put("prescription", rx, {"dosageInstruction": "y"}, now_ms=T0 + 4)
    store.merge([remote], now_ms=T0 + 5)
    for entry in store.outbox_batch(now_ms=T0 + 6):
        ref.receive(entry.data, T0 + 6)
    assert ref.dump() == store.dump()
    view = store.view(rx)
    assert view is not None and view.held
    status = store.status(now_ms=T0 + 6)
    assert status["held"] == 1
    (conflict,) = status["conflicts"]
    store.outbox_ack(e.seq for e in store.outbox_batch(now_ms=T0 + 6))
    store.resolve(conflict["id"], keep=conflict["versions"][0], now_ms=T0 + 7)
    entries = store.outbox_batch(now_ms=T0 + 8)
    assert len(entries) == 1
    assert decode(entries[0].data).resolves == bytes.fromhex(conflict["id"])
    for entry in entries:
        ref.receive(entry.data, T0 + 8)
    assert ref.dump() == store.dump()
    assert store.status(now_ms=T0 + 8)["held"] == 0


def test_bad_deltas_are_quarantined_and_the_rest_merge(store: Store) -> None:
    rep = Replica(9)
    good = [rep.put(uuid.uuid4().bytes, "note", T0, {"text": f"n{i}"}) for i in range(5)]
    future = Replica(10).put(uuid.uuid4().bytes, "note", T0 + 86_400_000, {"text": "later"})
    bad_value = encode(Delta(uuid.uuid4().bytes, 6, 11, pack(T0), set={2: 5}))
    bad = [b"\xff\x00", good[1][:-2], future, bad_value]
    report = store.merge([bad[0], good[0], bad[1], *good[1:], bad[2], bad[3]], now_ms=T0)
    assert report.applied == 5 and report.quarantined == 4
    codes = [q["code"] for q in store.status(now_ms=T0)["quarantine"]]
    assert {"clock-ahead", "field-value"} <= set(codes) and len(codes) == 4
    assert len(store.views()) == 5


class StoreReplica:
    """A store dressed as a ``Replica`` so the fleet simulation can drive it."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.node = store.node

    def _last(self) -> bytes:
        entries = self.store.outbox_batch(now_ms=2**62, max_bytes=2**30)
        self.store.outbox_ack(e.seq for e in entries)
        (entry,) = entries
        return entry.data

    def _call(self, fn, *args, **kwargs):  # type: ignore[no-untyped-def]
        try:
            fn(*args, **kwargs)
        except BadRequest as exc:
            raise LocalProtocolError(str(exc)) from None
        return self._last()

    def put(self, rid, tname, wall, values=None, add=None, remove=None):  # type: ignore[no-untyped-def]
        return self._call(self.store.put, tname, str(uuid.UUID(bytes=rid)), values, add, remove,
                          now_ms=wall)

    def delete(self, rid, wall):  # type: ignore[no-untyped-def]
        return self._call(self.store.delete, str(uuid.UUID(bytes=rid)), now_ms=wall)

    def resolve(self, cid, wall, keep=None, values=None):  # type: ignore[no-untyped-def]
        return self._call(self.store.resolve, cid, keep=keep, values=values, now_ms=wall)

    def receive(self, data: bytes, wall: int) -> None:
        self.store.merge([data], now_ms=wall)

    def view(self, rid):  # type: ignore[no-untyped-def]
        return self.store.view(str(uuid.UUID(bytes=rid)))

    def dump(self) -> bytes:
        return self.store.dump()


@settings(max_examples=12, deadline=None)
@given(st.integers(0, 2**32), st.integers(3, 4), st.integers(5, 50))
def test_a_store_in_a_fleet_of_reference_replicas(tmp_path_factory: pytest.TempPathFactory,
                                                   seed: int, n: int, steps: int) -> None:
    rng = random.Random(seed)
    fleet = Fleet.make(rng, n)
    with init_store(tmp_path_factory.mktemp("k") / "d", "Site", "D") as store:
        fleet.replicas[0] = StoreReplica(store)  # type: ignore[call-overload]
        for _ in range(steps):
            fleet.step(rng)
        fleet.deliver_everything(rng)
        dumps = {r.dump() for r in fleet.replicas}
        assert len(dumps) == 1


def test_version_vectors_send_only_what_is_missing(tmp_path: Path) -> None:
    with init_store(tmp_path / "a", "A", "A") as a, init_store(tmp_path / "b", "B", "B") as b:
        for i in range(5):
            a.put("note", values={"text": f"a{i}"}, now_ms=T0 + i)
        b.merge(a.deltas_since(b.version_vector()), now_ms=T0 + 10)
        assert dict(b.version_vector()) == dict(a.version_vector())
        assert a.deltas_since(b.version_vector()) == []
        a.put("note", values={"text": "late"}, now_ms=T0 + 20)
        missing = a.deltas_since(b.version_vector())
        assert len(missing) == 1
        b.merge(missing, now_ms=T0 + 21)
        assert a.dump() == b.dump()


def test_newer_schema_passes_through_the_sql_store(store: Store) -> None:
    rid = uuid.uuid4().bytes
    newer = [
        encode(Delta(rid, 1, 9, pack(T0), set={1: "Ada", 2: 1815, 20: "kept"}, schema=2,
                     extra={-9: "future"})),
        encode(Delta(uuid.uuid4().bytes, 40, 9, pack(T0, 1), set={3: [1, 2]})),
        encode(Delta(rid, 1, 9, pack(T0, 2), add={21: ("x",)}, schema=2)),
    ]
    ref = Replica(1)
    for data in newer:
        ref.receive(data, T0)
    assert store.merge(newer, now_ms=T0).applied == 3
    assert store.dump() == ref.dump()
    assert sorted(store.deltas_since({})) == sorted(newer)  # passed on byte for byte


class Twin:
    """A store and a reference replica with the same node id, driven in lockstep."""

    def __init__(self, store: Store) -> None:
        self.store = StoreReplica(store)
        self.ref = Replica(store.node)
        self.node = store.node

    def _both(self, name: str, *args, **kwargs):  # type: ignore[no-untyped-def]
        results = []
        for side in (self.store, self.ref):
            try:
                results.append(getattr(side, name)(*args, **kwargs))
            except LocalProtocolError:
                results.append(LocalProtocolError)
        assert results[0] == results[1], name  # the same write, byte for byte, or both refuse
        if results[0] is LocalProtocolError:
            raise LocalProtocolError("refused by both")
        return results[0]

    def put(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        return self._both("put", *args, **kwargs)

    def delete(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        return self._both("delete", *args, **kwargs)

    def resolve(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        return self._both("resolve", *args, **kwargs)

    def receive(self, data: bytes, wall: int) -> None:
        self.store.receive(data, wall)
        self.ref.receive(data, wall)

    def view(self, rid):  # type: ignore[no-untyped-def]
        return self.ref.view(rid)

    def dump(self) -> bytes:
        assert self.store.dump() == self.ref.dump()
        return self.ref.dump()


@settings(max_examples=12, deadline=None)
@given(st.integers(0, 2**32), st.integers(5, 50))
def test_store_writes_are_the_reference_writes(tmp_path_factory: pytest.TempPathFactory,
                                               seed: int, steps: int) -> None:
    rng = random.Random(seed)
    fleet = Fleet.make(rng, 3)
    with init_store(tmp_path_factory.mktemp("k") / "d", "Site", "E") as store:
        fleet.replicas[0] = Twin(store)  # type: ignore[call-overload]
        for _ in range(steps):
            fleet.step(rng)
        fleet.deliver_everything(rng)
        assert len({r.dump() for r in fleet.replicas}) == 1
