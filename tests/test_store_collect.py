"""The store without a sealed row per delta from the hub: exact duplicates, stale records,
snapshots, garbage collection, pruning out of scope, and the door kiosk's verifier."""

from __future__ import annotations

import os
import random
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from device.store import BadSnapshot, Store, init_store, shed
from device.store import collect as gc
from device.store.covering import after, extends
from device.store.writer import BULK
from protocol.crdt.delta import decode
from protocol.crdt.ids import patient_id, verifier_record_id, year_verifier
from protocol.crdt.record import RecordLog, RecordView, canonical_json
from protocol.crdt.replica import Replica
from protocol.crdt.schema import CHECKIN, VERIFIER
from protocol.sync.scope import Scope, heads_of, scope_checksum

from .crdt_sim import T0
from .test_store_merge import _fleet_log

LONG = os.environ.get("HAVEN_LONG") == "1"
SITE = "North"
DAY = time.strftime("%Y-%m-%d", time.gmtime(T0 / 1000))
FULL = Scope("full", SITE, DAY)
DOOR = Scope("door", SITE, DAY)
HUB = 0x4855_4201
#: How many dots of deltas from elsewhere the store holds.
SEEN = "SELECT COALESCE(SUM(LENGTH(seen)), 0) / 12 FROM records"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = init_store(tmp_path / "kiosk", SITE, "K")
    yield s
    s.close()


def rid_of(n: int) -> bytes:
    return uuid.UUID(int=n).bytes


def count(store: Store, sql: str) -> int:
    return int(store.reader.execute(sql).fetchone()[0])


def live_dump(store: Store | Replica) -> bytes:
    """A dump without deleted records (a kiosk drops them once stable)."""
    return canonical_json(v for v in store.views() if not v.deleted)


def collect_all(store: Store, passes: int = 10_000) -> None:
    """Door collection passes of one slice each until one is done (at most ``passes``)."""
    for _ in range(passes):
        if store.collect(DOOR, stable=0, budget_s=0).done:
            return
    raise AssertionError(f"collection not done after {passes} passes")


def synced(store: Store, arrived: int) -> None:
    """The hub acknowledged every queued write, giving them arrival ``arrived``."""
    entries = store.outbox_batch(now_ms=1 << 60, max_bytes=1 << 30)
    store.outbox_ack([e.seq for e in entries], arrived=arrived)
    store._flush_acks()
    assert count(store, "SELECT COUNT(*) FROM outbox") == 0


def settle(store: Store, received: Iterable[bytes]) -> None:
    """What a sync round does after its pull: records left stale (a write concurrent
    with writes merged without their bodies) get the hub's write set of them; the hub
    here holds what the store was given."""
    stale = set(store.stale_records(limit=1 << 20))
    if stale:
        store.replace_records([d for d in received if decode(d).record_id in stale], stale)
    assert store.stale_records() == []


@settings(max_examples=100 if LONG else 20, deadline=None)
@given(st.integers(0, 2**32), st.integers(3, 5), st.integers(5, 60))
def test_covering_gives_the_reference_view(seed: int, n: int, steps: int) -> None:
    log, _, _ = _fleet_log(seed, n, steps)
    deltas = sorted((decode(d) for d in log), key=lambda d: d.dot)
    logs: dict[bytes, RecordLog] = {}
    used = 0
    for d in deltas:
        held = logs.setdefault(d.record_id, RecordLog(d.record_id))
        before = held.view() if held.ops else None
        held.add(d)
        if extends(before, d):
            assert after(before, d) == held.view()
            used += 1
    assert used >= 1


@settings(max_examples=100 if LONG else 15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(0, 2**32), st.integers(3, 5), st.integers(5, 50), st.integers(1, 9))
def test_duplicates_are_exact_with_seen_rows(tmp_path_factory: pytest.TempPathFactory,
                                             seed: int, n: int, steps: int, pages: int) -> None:
    """Pages from the hub, in any order and again, some deltas twice in a page: each new
    delta counts once, every other is a duplicate, and the store ends as the reference."""
    log, ref, _ = _fleet_log(seed, n, steps)
    rng = random.Random(seed)
    order = log + rng.sample(log, len(log) // 2)
    rng.shuffle(order)
    cut = sorted(rng.sample(range(len(order) + 1), min(pages, len(order) + 1)))
    with init_store(tmp_path_factory.mktemp("k") / "d", SITE, "C") as store:
        held: set[bytes] = set()
        applied = duplicates = 0
        for i, (lo, hi) in enumerate(zip([0, *cut], [*cut, len(order)], strict=True)):
            page = order[lo:hi]
            report = store.merge(page, now_ms=T0 + 10**8, cursor=100 + i)
            applied += report.applied
            duplicates += report.duplicates
            assert report.applied == len(set(page) - held)
            held |= set(page)
            settle(store, held)
        assert applied == len(set(log)) and duplicates == len(order) - len(set(log))
        assert count(store, SEEN) == len(set(log))
        assert store.dump() == ref.dump()
        assert store.merge(log, now_ms=T0 + 10**8, cursor=999).applied == 0  # all again
        assert store.dump() == ref.dump()


def test_a_stale_record_keeps_its_view_until_the_hubs_write_set_replaces_it(
        store: Store) -> None:
    a, b, ref = Replica(11), Replica(12), Replica(13)
    rid = rid_of(7)
    first = a.put(rid, "note", T0, {"text": "one"})
    second = a.put(rid, "note", T0 + 1, {"text": "two"})
    b.receive(first, T0 + 2)
    aside = b.put(rid, "note", T0 + 3, {"authorString": "B"})  # concurrent with "two"
    store.merge([first, second], now_ms=T0 + 9, cursor=10)
    assert count(store, "SELECT COUNT(*) FROM ops") == 0  # no body kept
    before = store.dump()
    report = store.merge([aside], now_ms=T0 + 9, cursor=20)
    assert report.applied == 1 and store.stale_records() == [rid]
    assert store.dump() == before and store.status()["stale"] == 1
    assert count(store, "SELECT COUNT(*) FROM ops") == 1  # its body, for the rebuild
    for data in (first, second, aside):
        ref.receive(data, T0 + 9)
    assert store.replace_records([first, second, aside], [rid], cursor=20) == 1
    assert store.dump() == ref.dump() and store.stale_records() == []
    assert store.merge([aside, first], now_ms=T0 + 9, cursor=30).applied == 0
    # A record whose log is whole again takes a concurrent write the reference way.
    late = a.put(rid, "note", T0 + 4, {"text": "three"})
    ref.receive(late, T0 + 9)
    store.merge([late], now_ms=T0 + 9, cursor=40)
    assert store.stale_records() == [] and store.dump() == ref.dump()


def test_a_snapshot_that_does_not_match_its_sum_changes_nothing(store: Store) -> None:
    hub = Replica(HUB)
    notes = [hub.put(rid_of(i), "note", T0 + i, {"text": f"n{i}"}) for i in range(1, 6)]
    store.merge(notes[:3], now_ms=T0 + 99, cursor=10)
    mine = store.put("note", values={"text": "unsent"}, now_ms=T0 + 50)
    before = store.dump()
    items = [(rid, d.stamp, d.node, d.is_delete) for rid, d in
             ((decode(n).record_id, decode(n)) for n in notes)]
    good = scope_checksum(items)
    with pytest.raises(BadSnapshot) as refused:
        store.rebase(notes[:4], 100, good)
    assert "checksum" in str(refused.value) and refused.value.code == "bad-snapshot"
    with pytest.raises(BadSnapshot):
        store.rebase([b"\xff junk"], 100, good)
    assert store.dump() == before
    store.rebase(notes, 100, good)
    ref = Replica(1)
    for n in notes:
        ref.receive(n, T0 + 99)
    view = store.view(mine)
    assert view is not None and view.fields  # the unsent write is kept
    held = {v.record_id for v in store.views()}
    assert held == {decode(n).record_id for n in notes} | {uuid.UUID(mine).bytes}
    synced(store, 200)
    assert store.scope_checksum(FULL) != good  # it holds its own note besides
    store.rebase(notes, 300, good)  # synced now, and not in the hub's snapshot: it goes
    assert store.dump() == ref.dump() and store.scope_checksum(FULL) == good


def checkin_at(hub: Replica, n: int, site: str, day: str = DAY, **values: str) -> bytes:
    return hub.put(rid_of(n), "checkin", T0, {"status": "arrived", "location": site,
                                              "periodStart": f"{day}T08:00:00Z", **values})


@pytest.mark.usefixtures("small_slices")
def test_a_full_kiosk_turned_door_rebases_its_scope_only_and_collect_prunes_the_rest(
        store: Store) -> None:
    """The rebase's transaction rebuilds the door's records whose writes differ from the
    snapshot's and drops those of the scope it lacks; every other record stays as it was
    (to the collector), outside the sum; then collect prunes them in slices. The
    kiosk's unsynced writes are kept throughout."""
    hub = Replica(HUB)
    fleet = store.fleet_key
    pid = patient_id(fleet, "P7654321").bytes
    notes = [hub.put(rid_of(100 + i), "note", T0, {"text": f"n{i}"}) for i in range(40)]
    south = checkin_at(hub, 1, "South")
    same = hub.put(verifier_record_id(fleet, SITE, pid), "verifier", T0, {
        "subject": str(uuid.UUID(bytes=pid)), "site": SITE,
        "birthYear": year_verifier(fleet, SITE, pid, "1980")})
    changed = checkin_at(hub, 2, SITE)
    lacked = checkin_at(hub, 3, SITE)  # the hub's moved it out since: no longer sent
    store.merge([*notes, south, same, changed, lacked], now_ms=T0 + 9, cursor=10)
    mine = store.checkin(passport="P1234567", birth_year=1980, now_ms=T0 + 20)
    unsent = store.put("note", values={"text": "unsent"}, now_ms=T0 + 21)
    out = {v.record_id: v for v in store.views() if v.type not in (CHECKIN.number,
                                                                  VERIFIER.number)}
    out[rid_of(1)] = _must(store.view(str(uuid.UUID(bytes=rid_of(1)))))
    snapshot = [same, changed, hub.put(rid_of(2), "checkin", T0 + 30, {"status": "fulfilled"}),
                checkin_at(hub, 4, SITE)]
    heads = heads_of((d.record_id, d.stamp, d.node, d.is_delete, d.ctx)
                     for d in map(decode, snapshot))
    result = store.rebase(snapshot, 100, scope_checksum(heads), scope=DOOR)
    assert result == {"dropped": 1, "rebuilt": 2, "kept": 1}  # nothing out of scope
    assert {v.record_id: v for v in store.views() if v.record_id in out} == out
    assert store.view(str(uuid.UUID(bytes=rid_of(3)))) is None
    assert store.reader.execute("SELECT seen_at FROM records WHERE rid = ?",
                                [decode(same).record_id]).fetchone()[0] == 10  # untouched
    assert store.view(mine.record_id) is not None and store.view(unsent) is not None
    synced(store, 200)
    own = _must(store.view(mine.record_id))
    assert store.scope_checksum(DOOR) == scope_checksum(
        [*heads, *((own.record_id, d.stamp, d.node, False) for d in own.heads)])
    unsent = store.put("note", values={"text": "unsent after"}, now_ms=T0 + 40)
    slices = 0
    for _ in range(200):
        report = store.collect(DOOR, stable=0, budget_s=0)
        slices += report.slices
        assert store.view(unsent) is not None and store.view(mine.record_id) is not None
        if report.done:
            break
    assert report.done and slices > 5
    held = {v.record_id for v in store.views()}
    assert held == {decode(d).record_id for d in snapshot} | {
        uuid.UUID(mine.record_id).bytes, uuid.UUID(unsent).bytes}


def test_a_clinicians_rebase_drops_its_patients_records_the_snapshot_lacks_only(
        store: Store) -> None:
    """A clinician's scope by its check-ins' patients: a record of a patient of the
    window the snapshot lacks goes; another patient's stay for the collector."""
    hub = Replica(HUB)
    ours, theirs = rid_of(7), rid_of(8)
    visit = checkin_at(hub, 1, SITE, subject=str(uuid.UUID(bytes=ours)))
    old = checkin_at(hub, 2, SITE, "2000-01-01", subject=str(uuid.UUID(bytes=theirs)))
    patients = [hub.put(p, "patient", T0, {"name": n}) for p, n in ((ours, "A"), (theirs, "B"))]
    lacked = hub.put(rid_of(9), "note", T0, {"subject": str(uuid.UUID(bytes=ours))})
    kept = hub.put(rid_of(10), "note", T0, {"subject": str(uuid.UUID(bytes=theirs))})
    store.merge([visit, old, *patients, lacked, kept], now_ms=T0 + 9, cursor=10)
    snapshot = [visit, patients[0]]
    heads = heads_of((d.record_id, d.stamp, d.node, d.is_delete, d.ctx)
                     for d in map(decode, snapshot))
    clinician = Scope("clinician", SITE, DAY)
    result = store.rebase(snapshot, 100, scope_checksum(heads), scope=clinician)
    assert result == {"dropped": 1, "rebuilt": 0, "kept": 2}
    assert {v.record_id for v in store.views()} == {rid_of(1), rid_of(2), ours, theirs,
                                                    rid_of(10)}
    assert store.scope_checksum(clinician) == scope_checksum(heads)
    assert store.collect(clinician, stable=0).pruned == 3
    assert {v.record_id for v in store.views()} == {rid_of(1), ours}


def _must(view: RecordView | None) -> RecordView:
    assert view is not None
    return view


def test_gc_drops_only_stable_rows_and_never_an_unsynced_write(store: Store) -> None:
    hub, other = Replica(HUB), Replica(21)
    early = [hub.put(rid_of(i), "note", T0 + i, {"text": f"e{i}"}) for i in range(1, 5)]
    gone = hub.delete(rid_of(1), T0 + 10)
    late = [hub.put(rid_of(i), "note", T0 + 20 + i, {"text": f"l{i}"}) for i in range(5, 7)]
    store.merge([*early, gone], now_ms=T0 + 99, cursor=10)
    store.merge(late, now_ms=T0 + 99, cursor=30)
    acked = store.put("note", values={"text": "acked"}, now_ms=T0 + 40)
    synced(store, 15)
    unsent = store.put("note", values={"text": "unsent"}, now_ms=T0 + 41)
    store.delete(unsent, now_ms=T0 + 42)  # even a delete of its own, unsent, stays
    before = live_dump(store)
    report = store.collect(FULL, stable=20)
    assert report.done and report.pruned == 0
    assert (report.compacted, report.dropped_deleted) == (4, 1)  # 2-4 and acked; 1 deleted
    assert store.view(str(uuid.UUID(bytes=rid_of(1)))) is None
    assert store.view(unsent) is not None and store.view(unsent).deleted  # type: ignore[union-attr]
    assert live_dump(store) == before
    left = {bytes(r) for (r,) in store.reader.execute(
        "SELECT rid FROM records WHERE seen IS NOT NULL UNION SELECT rid FROM ops").fetchall()}
    assert left == {rid_of(5), rid_of(6), uuid.UUID(unsent).bytes}
    assert store.collect(FULL, stable=20) == gc.CollectReport(slices=1)  # nothing more
    # Writes after the collection still merge as the reference merges them.
    ref = Replica(1)
    for data in [*early, gone, *late]:
        ref.receive(data, T0 + 99)
    other.receive(early[1], T0 + 99)
    more = [hub.put(rid_of(2), "note", T0 + 60, {"authorString": "H"}),
            hub.delete(rid_of(3), T0 + 61),
            other.put(rid_of(2), "note", T0 + 62, {"text": "concurrent"})]
    for data in more:
        ref.receive(data, T0 + 99)
    store.merge(more, now_ms=T0 + 99, cursor=50)
    assert store.stale_records() == [rid_of(2)]  # concurrent with a collected log
    settle(store, [*early, gone, *late, *more])
    ours = {uuid.UUID(acked).bytes, uuid.UUID(unsent).bytes}
    assert canonical_json(v for v in store.views() if not v.deleted and v.record_id not in ours
                          ) == live_dump(ref)


def test_a_crash_between_or_inside_slices_loses_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gc, "SLICE_RECORDS", 16)
    monkeypatch.setattr(gc, "SLICE_S", 0.0)  # one chunk a slice
    monkeypatch.setattr(gc, "BUSY_SLICE_S", 0.0)
    hub = Replica(HUB)
    deltas = [hub.put(rid_of(i), "note", T0 + i, {"text": f"n{i}"}) for i in range(1, 81)]
    deltas += [hub.delete(rid_of(i), T0 + 100 + i) for i in range(1, 81, 4)]
    with init_store(tmp_path / "k", SITE, "K") as store:
        store.merge(deltas, now_ms=T0 + 999, cursor=10)
        before = live_dump(store)
        first = store.collect(FULL, stable=10, budget_s=0)  # one slice, then out of time
        assert not first.done and first.slices == 1
    with Store(tmp_path / "k") as store:  # a restart between slices
        assert live_dump(store) == before

        def power_cut(*args: object) -> None:
            raise OSError("power cut inside a slice")

        monkeypatch.setattr(gc, "drop_runs", power_cut)
        rows = (count(store, SEEN),
                count(store, "SELECT COUNT(*) FROM records"))
        with pytest.raises(OSError):
            store.collect(FULL, stable=10)
        assert (count(store, SEEN),
                count(store, "SELECT COUNT(*) FROM records")) == rows  # rolled back whole
    monkeypatch.undo()
    with Store(tmp_path / "k") as store:
        report = store.collect(FULL, stable=10)
        assert report.done and live_dump(store) == before
        assert count(store, SEEN) == 0
        assert count(store, "SELECT COUNT(*) FROM records") == 60


def test_out_of_scope_records_are_pruned_only_once_synced(store: Store) -> None:
    hub = Replica(HUB)
    fleet = store.fleet_key
    pid = patient_id(fleet, "P1234567").bytes
    verifier = hub.put(verifier_record_id(fleet, SITE, pid), "verifier", T0, {
        "subject": str(uuid.UUID(bytes=pid)), "site": SITE,
        "birthYear": year_verifier(fleet, SITE, pid, "1980")})
    elsewhere = hub.put(verifier_record_id(fleet, "South", pid), "verifier", T0, {
        "subject": str(uuid.UUID(bytes=pid)), "site": "South",
        "birthYear": year_verifier(fleet, "South", pid, "1980")})
    yesterday = hub.put(rid_of(50), "checkin", T0 - 86_400_000, {
        "subject": str(uuid.UUID(bytes=pid)), "status": "arrived", "location": SITE,
        "periodStart": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(T0 / 1000 - 86_400))})
    lab = hub.put(rid_of(51), "lab_result", T0, {"code": "hb", "subject": str(uuid.UUID(
        bytes=pid))})
    store.merge([verifier, elsewhere, yesterday, lab], now_ms=T0 + 9, cursor=10)
    today = store.checkin(passport="P1234567", birth_year=1980, now_ms=T0 + 5)
    assert store.view(today.patient_id) is not None  # made by the check-in, unsent
    report = store.collect(DOOR, stable=0)
    assert report.pruned == 3  # the other site's verifier, yesterday's check-in, the lab
    assert store.view(today.patient_id) is not None and store.view(today.record_id)
    synced(store, 20)
    assert store.collect(DOOR, stable=0).pruned == 1  # the patient, now synced
    held = {v.record_id for v in store.views()}
    assert held == {uuid.UUID(today.record_id).bytes, decode(verifier).record_id}
    assert store.scope_checksum(DOOR) is not None
    typed = count(store, "SELECT COUNT(*) FROM field_values WHERE field IN (7, 8)")
    assert typed == 1  # the year typed at the check-in, until it is stable
    assert store.collect(DOOR, stable=20).compacted == 2
    assert count(store, "SELECT COUNT(*) FROM field_values WHERE field IN (7, 8)") == 0
    view = store.view(today.record_id)
    assert view is not None and view.fields[5] == SITE  # the rest stays


def test_the_door_kiosk_checks_the_year_against_the_sites_verifier(store: Store) -> None:
    hub = Replica(HUB)
    fleet = store.fleet_key
    pid = patient_id(fleet, "AB123456").bytes
    store.merge([hub.put(verifier_record_id(fleet, SITE, pid), "verifier", T0, {
        "subject": str(uuid.UUID(bytes=pid)), "site": SITE,
        "birthYear": year_verifier(fleet, SITE, pid, "1975")})], now_ms=T0 + 9, cursor=1)
    verdicts = [store.checkin(passport="AB123456", birth_year=year, now_ms=T0 + i).identity
                for i, year in enumerate((1975, 1976, None))]
    assert verdicts == ["match", "mismatch", "unknown"]
    assert store.checkin(passport="ZZ999999", birth_year=1975, now_ms=T0 + 5
                         ).identity == "unknown"  # no verifier, no record


def test_a_clinician_keeps_the_patients_of_its_window_and_prunes_the_rest(
        store: Store) -> None:
    hub = Replica(HUB)
    day_ms = 86_400_000
    old, recent = rid_of(101), rid_of(102)  # patients
    deltas = []
    for n, (pid, age) in enumerate(((old, 40), (recent, 3))):
        start = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime((T0 - age * day_ms) / 1000))
        deltas += [
            hub.put(pid, "patient", T0, {"name": f"P{n}"}),
            hub.put(rid_of(200 + n), "checkin", T0, {
                "subject": str(uuid.UUID(bytes=pid)), "status": "finished", "location": SITE,
                "periodStart": start}),
            hub.put(rid_of(300 + n), "lab_result", T0, {
                "code": "hb", "subject": str(uuid.UUID(bytes=pid))})]
    store.merge(deltas, now_ms=T0 + 9, cursor=10)
    report = store.collect(Scope("clinician", SITE, DAY, 30), stable=0)
    assert report.pruned == 3  # the check-in 40 days old, its patient, their lab result
    assert {v.record_id for v in store.views()} == {recent, rid_of(201), rid_of(301)}


def ops_of(store: Store, record_id: str) -> int:
    return int(store.reader.execute("SELECT COUNT(*) FROM ops WHERE rid = ?",
                                    [uuid.UUID(record_id).bytes]).fetchone()[0])


@pytest.fixture
def small_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    """One chunk of a few rows a slice, and one slice a pass (``budget_s=0``)."""
    monkeypatch.setattr(shed, "CHUNK_ROWS", 8)
    monkeypatch.setattr(gc, "SLICE_RECORDS", 8)
    monkeypatch.setattr(gc, "SLICE_S", 0.0)
    monkeypatch.setattr(gc, "BUSY_SLICE_S", 0.0)


@pytest.mark.usefixtures("small_slices")
def test_a_full_kiosk_turned_door_sheds_logs_then_prunes_in_bounded_slices(
        tmp_path: Path) -> None:
    """Everything a door never holds loses its write log in write order, then goes, a
    slice at a time; across restarts between slices every record held is as it was, and
    the unsynced write and its record stay whole throughout."""
    with init_store(tmp_path / "k", SITE, "K") as store:
        notes = [store.put("note", values={"text": f"n{i}"}, now_ms=T0 + i) for i in range(40)]
        today = [store.checkin(passport=f"P{i:07d}", birth_year=1980, now_ms=T0 + 100 + i)
                 for i in range(5)]
        synced(store, 10)
        unsent = store.put("note", values={"text": "unsent"}, now_ms=T0 + 200)
        before = {v.record_id: canonical_json([v]) for v in store.views()}
        records = count(store, "SELECT COUNT(*) FROM records")
    shed_first = False
    slices = 0
    for run in (2, 5, 9, 500):  # restarts between slices (a pass then begins again)
        with Store(tmp_path / "k") as store:
            for _ in range(run):
                report = store.collect(DOOR, stable=0, budget_s=0)
                slices += report.slices
                held = store.views()
                assert all(canonical_json([v]) == before[v.record_id] for v in held)
                assert ops_of(store, unsent) == 1 and store.view(unsent) is not None
                if count(store, "SELECT COUNT(*) FROM records") == records and \
                        ops_of(store, notes[-1]) == 0:
                    shed_first = True  # its log went before any record was pruned
                if report.done:
                    break
        if report.done:
            break
    assert report.done and shed_first and slices > 10
    with Store(tmp_path / "k") as store:
        assert {v.record_id for v in store.views()} == {
            uuid.UUID(c.record_id).bytes for c in today} | {uuid.UUID(unsent).bytes}
        assert count(store, "SELECT COUNT(*) FROM ops") == ops_of(store, unsent) + sum(
            ops_of(store, c.record_id) for c in today)
        synced(store, 20)
        collect_all(store)
        assert store.view(unsent) is None  # synced now: pruned


@pytest.mark.usefixtures("small_slices")
def test_a_record_whose_log_was_shed_takes_a_local_write_and_is_kept_until_synced(
        store: Store) -> None:
    note = store.put("note", values={"text": "one"}, now_ms=T0)
    synced(store, 10)
    walk = bytes([gc.PHASES.index("walk")])
    for _ in range(100):  # the pass up to the walk: every log of a type a door never holds
        if store.collect(DOOR, stable=0, budget_s=0).done or store.gc_from[1][:1] == walk:
            break
    assert store.gc_from[1][:1] == walk and ops_of(store, note) == 0
    store.put("note", note, {"authorString": "K"}, now_ms=T0 + 5)  # built on its rows
    view = store.view(note)
    assert view is not None and sorted(view.fields.values()) == ["K", "one"]
    collect_all(store)
    assert store.view(note) is not None  # its new write is unsynced
    synced(store, 20)
    assert store.collect(DOOR, stable=0).pruned == 1 and store.view(note) is None


def test_a_crash_inside_a_shedding_slice_changes_nothing(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    notes = [store.put("note", values={"text": f"n{i}"}, now_ms=T0 + i) for i in range(10)]
    synced(store, 10)
    rows = (count(store, "SELECT COUNT(*) FROM ops"),
            count(store, "SELECT COUNT(*) FROM records WHERE partial = 1"))
    real = shed.shed

    def power_cut(*args: object) -> object:
        real(*args)  # type: ignore[arg-type]
        raise OSError("power cut inside a slice")

    monkeypatch.setattr(shed, "shed", power_cut)
    with pytest.raises(OSError):
        store.collect(DOOR, stable=0)
    assert count(store, "SELECT COUNT(*) FROM ops") == rows[0]  # rolled back whole
    monkeypatch.undo()
    assert store.collect(DOOR, stable=0).pruned == len(notes)
    assert rows[1] == 0 and count(store, "SELECT COUNT(*) FROM records") == 0


def test_settle_waits_for_a_checkpoint_that_began_after_it(store: Store) -> None:
    store.put("note", values={"text": "x"}, now_ms=T0)
    runs = store.checkpointer.runs
    assert store.checkpointer.settle(30.0)
    assert store.checkpointer.runs > runs


def test_a_pass_settles_the_wal_without_the_writer(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """Between slices, the checkpoints that let the WAL start over run beside the writer:
    a check-in is never queued behind one (its fsync of the database file)."""
    monkeypatch.setattr(gc, "SETTLE_AFTER", -1)  # settle after every slice
    store.put("note", values={"text": "x"}, now_ms=T0)
    holding, release = threading.Event(), threading.Event()

    def hold(db: object) -> None:
        holding.set()
        release.wait(30)

    held = store.writer.submit(hold, BULK)
    try:
        assert holding.wait(30)
        runs = store.checkpointer.runs
        settling = threading.Thread(target=gc._settle, args=(store,), daemon=True)
        settling.start()
        settling.join(30)
        assert not settling.is_alive() and store.checkpointer.runs >= runs + 2
    finally:
        release.set()
        held.result(30)
