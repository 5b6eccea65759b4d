"""Clocks, ids, schema, and the conflict rules, one scenario at a time."""

from __future__ import annotations

import json
import os
import uuid

import pytest

from protocol.crdt import schema
from protocol.crdt.clock import HLC, ClockAheadError, Dot, VersionVector, pack, wall_of
from protocol.crdt.delta import Delta, decode, encode
from protocol.crdt.ids import (
    normalise_passport,
    passport_lookup,
    patient_id,
    random_id,
    time_ordered_id,
)
from protocol.crdt.record import DELETE_UPDATE, HOLD, REVIEW, SCHEMA, UPDATE_UPDATE
from protocol.crdt.replica import Replica
from protocol.crdt.writes import RecordHeldError
from protocol.errors import LocalProtocolError, RemoteProtocolError

T = 1_790_000_000_000
KEY = bytes(range(32))


def pair_sync(*reps: Replica, log: list[bytes]) -> None:
    for rep in reps:
        for data in log:
            rep.receive(data, T + 60_000)


# Clocks ---------------------------------------------------------------------------


def test_hlc_is_monotonic_and_follows_the_wall() -> None:
    clock = HLC()
    a = clock.now(T)
    b = clock.now(T)
    c = clock.now(T - 5000)  # the wall clock stepped back
    assert a < b < c and wall_of(a) == T
    assert clock.now(T + 10) == pack(T + 10)


def test_hlc_observe_moves_forward_and_refuses_far_future() -> None:
    clock = HLC(max_ahead_ms=1000)
    remote = pack(T + 900, 7)
    clock.observe(remote, T)
    assert clock.now(T) == remote + 1
    with pytest.raises(ClockAheadError) as err:
        clock.observe(pack(T + 1001), T)
    assert err.value.code == "clock-ahead"
    assert clock.last == remote + 1


def test_logical_overflow_spills_into_the_next_millisecond() -> None:
    clock = HLC(pack(T, 0xFFFF))
    assert clock.now(T) == pack(T + 1, 0)


def test_version_vector() -> None:
    vv = VersionVector({1: 10, 2: 5})
    vv.add(Dot(7, 2))
    vv.add(Dot(3, 1))
    assert dict(vv) == {1: 10, 2: 7}
    assert vv.covers(Dot(10, 1)) and not vv.covers(Dot(11, 1)) and not vv.covers(Dot(1, 3))
    merged = vv.merge({3: 4, 1: 2})
    assert dict(merged) == {1: 10, 2: 7, 3: 4} and merged.dominates(vv)
    assert VersionVector.from_wire(merged.to_wire()) == merged
    with pytest.raises(RemoteProtocolError):
        VersionVector.from_wire({1: -1})


def test_a_kiosk_far_in_the_future_is_refused_and_nothing_is_rewritten() -> None:
    future = Replica(1)
    data = future.put(uuid.uuid4().bytes, "patient", T + 3_600_000, {"name": "X"})
    rep = Replica(2)
    with pytest.raises(ClockAheadError):
        rep.receive(data, T)
    assert rep.records == {} and rep.clock.last == 0
    rep.receive(data, T + 3_600_000)  # once our clock agrees, the same bytes are accepted
    (log,) = rep.records.values()
    assert encode(next(iter(log.ops.values()))) == data


# Ids ------------------------------------------------------------------------------


def test_patient_ids_agree_across_kiosks_and_normalise() -> None:
    a = patient_id(KEY, "ab 12-34567")
    assert a == patient_id(KEY, "AB1234567") and a.version == 8
    assert a != patient_id(bytes(32), "AB1234567")
    assert patient_id(KEY, "FR:AB1234567") != a
    assert normalise_passport("fr: ab1234567") == "FR:AB1234567"
    assert passport_lookup(KEY, "AB1234567") != a.bytes
    with pytest.raises(LocalProtocolError):
        patient_id(KEY, "12")
    with pytest.raises(LocalProtocolError):
        patient_id(b"short", "AB1234567")
    assert random_id(bytes(16)).version == 4


def test_time_ordered_ids_sort_by_time_and_follow_rfc_9562() -> None:
    # RFC 9562, appendix A.6: 2022-02-22 19:22:22 UTC, with its random bits.
    vector = time_ordered_id(0x017F22E279B0, bytes.fromhex("0cc3" "98c4dc0c0c07398f")[:10])
    assert str(vector) == "017f22e2-79b0-7cc3-98c4-dc0c0c07398f"
    assert vector.version == 7 and vector.variant == uuid.RFC_4122
    ids = [time_ordered_id(ms, os.urandom(10)) for ms in (5, 6, 1000, 1 << 40)]
    assert sorted(ids, key=lambda u: u.bytes) == ids
    for bad in ((-1, bytes(10)), (1 << 48, bytes(10)), (5, bytes(9))):
        with pytest.raises(LocalProtocolError):
            time_ordered_id(*bad)


# Schema ---------------------------------------------------------------------------


def test_schema_lanes_and_policies() -> None:
    desc = schema.describe()
    assert set(desc) == {"patient", "checkin", "prescription", "lab_result", "appointment",
                         "note", "document", "audit", "verifier", "erasure", "telemetry",
                         "device", "temperature", "temperature_alarm"}
    lanes = {name: t["lane"] for name, t in desc.items()}
    assert lanes == {"prescription": 0, "lab_result": 1, "checkin": 2, "appointment": 2,
                     "note": 3, "document": 3, "patient": 2, "audit": 3, "verifier": 2,
                     "erasure": 0, "telemetry": 5, "device": 5, "temperature": 5,
                     "temperature_alarm": 0}
    assert desc["patient"]["fields"]["allergies"]["policy"] == "add-wins"
    assert desc["patient"]["fields"]["name"]["policy"] == "lww"
    assert desc["prescription"]["held_on_conflict"] is True
    json.dumps(desc)


def test_invalid_local_values_are_refused() -> None:
    rep = Replica(1)
    rid = uuid.uuid4().bytes
    for bad in ({"birthDate": "yesterday"}, {"nosuch": "x"}, {"allergies": "x"}):
        with pytest.raises(LocalProtocolError):
            rep.put(rid, "patient", T, bad)
    with pytest.raises(LocalProtocolError):
        rep.put(rid, "spaceship", T, {})
    with pytest.raises(LocalProtocolError):
        rep.put(rid, "lab_result", T, {"value": "high"})
    assert rep.records == {} and rep.clock.last == 0


def test_invalid_remote_values_are_refused() -> None:
    rid = uuid.uuid4().bytes
    rep = Replica(2)
    for sets in ({2: "yesterday"}, {1: 5}, {8: "latex"}):
        with pytest.raises(RemoteProtocolError) as err:
            rep.receive(encode(Delta(rid, 1, 1, pack(T), set=sets)), T)
        assert err.value.code in ("field-value", "field-policy")
    assert rep.records == {}


# Conflicts ------------------------------------------------------------------------


def test_concurrent_prescription_edits_hold_until_resolved() -> None:
    a, b, c = Replica(1), Replica(2), Replica(3)
    rid = uuid.uuid4().bytes
    log = [a.put(rid, "prescription", T, {"medication": "amoxicillin",
                                            "dosageInstruction": "500 mg"})]
    pair_sync(b, c, log=log)
    log += [
        a.put(rid, "prescription", T + 1, {"dosageInstruction": "250 mg"}),
        b.put(rid, "prescription", T + 2, {"status": "stopped"}),
        c.put(rid, "prescription", T + 3, {"quantity": 20}),
    ]
    pair_sync(a, b, c, log=log)
    assert a.dump() == b.dump() == c.dump()
    view = a.view(rid)
    assert view is not None and view.held
    (conflict,) = view.conflicts
    assert conflict.cls == UPDATE_UPDATE and conflict.severity == HOLD
    assert len(conflict.versions) == 3  # three kiosks, three versions
    with pytest.raises(RecordHeldError):
        b.put(rid, "prescription", T + 4, {"note": "x"})
    keep = next(v for v in conflict.versions if v.fields.get(4) == "250 mg")
    log.append(b.resolve(conflict.id, T + 5, keep=keep.id))
    pair_sync(a, b, c, log=log)
    assert a.dump() == b.dump() == c.dump()
    view = c.view(rid)
    assert view is not None and not view.held and view.conflicts == ()
    assert view.fields == {3: "amoxicillin", 4: "250 mg"}
    # The resolution names the conflict it settles.
    assert decode(log[-1]).resolves == bytes.fromhex(conflict.id)


def test_a_resolution_that_missed_a_version_leaves_a_new_conflict() -> None:
    a, b, c = Replica(1), Replica(2), Replica(3)
    rid = uuid.uuid4().bytes
    base = [a.put(rid, "prescription", T, {"medication": "m"})]
    pair_sync(b, c, log=base)
    x, y, z = (r.put(rid, "prescription", T + i, {"note": str(i)})
               for i, r in enumerate((a, b, c), 1))
    pair_sync(a, b, log=[x, y])
    view = a.view(rid)
    assert view is not None
    res = a.resolve(view.conflicts[0].id, T + 9, values={"note": "agreed"})
    pair_sync(a, b, c, log=[*base, x, y, z, res])
    final = c.view(rid)
    assert final is not None and final.held
    assert {v.dot for v in final.conflicts[0].versions} == {decode(z).dot, decode(res).dot}
    assert a.dump() == b.dump() == c.dump()


def test_update_concurrent_with_delete_is_kept_and_flagged() -> None:
    a, b = Replica(1), Replica(2)
    rid = uuid.uuid4().bytes
    log = [a.put(rid, "patient", T, {"name": "Ada", "birthDate": "1815"})]
    pair_sync(b, log=log)
    log += [a.delete(rid, T + 1), b.put(rid, "patient", T + 2, {"telecom": "555-0100"})]
    pair_sync(a, b, log=log)
    assert a.dump() == b.dump()
    view = a.view(rid)
    assert view is not None and not view.deleted
    assert view.fields == {1: "Ada", 2: "1815", 4: "555-0100"}
    (conflict,) = view.conflicts
    assert conflict.cls == DELETE_UPDATE and conflict.severity == REVIEW
    deleted = next(v for v in conflict.versions if v.deleted)
    log.append(b.resolve(conflict.id, T + 3, keep=deleted.id))
    pair_sync(a, b, log=log)
    view = a.view(rid)
    assert view is not None and view.deleted and view.conflicts == ()
    with pytest.raises(LocalProtocolError):
        a.put(rid, "patient", T + 4, {"name": "again"})


def test_resolving_a_delete_update_by_values_keeps_the_older_fields() -> None:
    a, b = Replica(1), Replica(2)
    rid = uuid.uuid4().bytes
    log = [a.put(rid, "patient", T, {"name": "Ada"})]
    pair_sync(b, log=log)
    log += [a.delete(rid, T + 1), b.put(rid, "patient", T + 2, {"telecom": "1"})]
    pair_sync(a, b, log=log)
    view = a.view(rid)
    assert view is not None
    log.append(a.resolve(view.conflicts[0].id, T + 3, values={"address": "Main St"}))
    pair_sync(a, b, log=log)
    view = b.view(rid)
    assert view is not None and view.conflicts == ()
    assert view.fields == {1: "Ada", 4: "1", 5: "Main St"}


def test_add_wins_and_observed_remove() -> None:
    a, b = Replica(1), Replica(2)
    rid = uuid.uuid4().bytes
    log = [a.put(rid, "patient", T, add={"allergies": ["latex", "peanut"]})]
    pair_sync(b, log=log)
    log += [b.put(rid, "patient", T + 1, remove={"allergies": ["latex", "peanut"]}),
            a.put(rid, "patient", T + 2, add={"allergies": ["latex"]})]
    pair_sync(a, b, log=log)
    view = a.view(rid)
    assert view is not None and view.sets == {8: frozenset({"latex"})}
    assert a.dump() == b.dump()
    assert view.conflicts == ()  # sets merge; there is nothing to review


def test_concurrent_field_writes_on_a_patient_are_lww_and_reported() -> None:
    a, b = Replica(1), Replica(2)
    rid = uuid.uuid4().bytes
    log = [a.put(rid, "patient", T, {"name": "A"}), b.put(rid, "patient", T, {"name": "B"})]
    pair_sync(a, b, log=log)
    view = a.view(rid)
    assert view is not None and view.fields == {1: "B"}  # same stamp: the node id breaks it
    (conflict,) = view.conflicts
    assert conflict.field == 1 and conflict.severity == "info" and not view.held
    log.append(a.put(rid, "patient", T + 5, {"name": "C"}))
    pair_sync(a, b, log=log)
    view = b.view(rid)
    assert view is not None and view.conflicts == () and view.fields == {1: "C"}


def test_types_disagreeing_is_a_schema_conflict() -> None:
    a, b = Replica(1), Replica(2)
    rid = uuid.uuid4().bytes
    log = [a.put(rid, "note", T, {"text": "x"}), b.put(rid, "document", T, {"title": "y"})]
    pair_sync(a, b, log=log)
    view = a.view(rid)
    assert view is not None and view.held
    assert SCHEMA in {c.cls for c in view.conflicts}
    assert a.dump() == b.dump()


def test_newer_schema_fields_and_types_are_kept_and_passed_on() -> None:
    rid = uuid.uuid4().bytes
    newer = [
        encode(Delta(rid, 1, 9, pack(T), set={1: "Ada", 2: 1815, 20: "kept"}, schema=2,
                     extra={-9: "future"})),
        encode(Delta(uuid.uuid4().bytes, 40, 9, pack(T, 1), set={3: [1, 2]})),
    ]
    a, b = Replica(1), Replica(2)
    pair_sync(a, log=newer)
    # a passes on exactly the bytes it holds; b ends up the same.
    relay = [encode(op) for log in a.records.values() for op in log.ops.values()]
    assert sorted(relay) == sorted(newer)
    pair_sync(b, log=relay)
    dump = json.loads(a.dump())
    assert dump == json.loads(b.dump())
    types = {r["type"]: r for r in dump["records"]}
    assert types["patient"]["fields"] == {"name": "Ada", "birthDate": 1815, "#20": "kept"}
    assert types["#40"]["fields"] == {"#3": [1, 2]}
    # A local write to the patient keeps the unknown field.
    a.put(rid, "patient", T + 1, {"name": "Ada L"})
    view = a.view(rid)
    assert view is not None and view.fields[20] == "kept"


def test_dump_shape() -> None:
    rep = Replica(1)
    rid = uuid.uuid4().bytes
    rep.put(rid, "patient", T, {"name": "Ada"}, add={"conditions": ["asthma"]})
    dump = json.loads(rep.dump())
    (record,) = dump["records"]
    assert set(record) >= {"id", "type", "fields", "conflicts"}
    assert record["fields"] == {"name": "Ada", "conditions": ["asthma"]}
    assert rep.dump() == json.dumps(dump, sort_keys=True, separators=(",", ":")).encode() + b"\n"
