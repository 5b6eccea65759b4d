"""Scopes by role, the scope checksum, year verifiers and the signed stable point
(protocol/sync/scope.py), and the wire fields that carry them."""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import messages, strict_cbor
from protocol.crdt.delta import Delta
from protocol.crdt.record import RecordLog
from protocol.errors import LocalProtocolError, RemoteProtocolError
from protocol.sync import batches  # noqa: F401  (registers the sync messages)
from protocol.sync.scope import (
    Facts,
    Scope,
    ScopeError,
    StablePointError,
    checkin_in_scope,
    facts_of,
    heads_of,
    in_scope,
    open_stable_point,
    parse_role,
    scope_checksum,
    scope_checksum_v1,
    sign_stable_point,
    verifier_record_id,
    year_verifier,
)

VECTORS = json.loads((Path(__file__).parent.parent / "protocol/vectors/scope.json")
                     .read_text("utf-8"))
FLEET = bytes(range(32))
P1, P2 = uuid.UUID(int=1).bytes, uuid.UUID(int=2).bytes
DOOR = Scope("door", "North", "2026-12-05")
CLINICIAN = Scope("clinician", "North", "2026-12-05", 30)
FULL = Scope("full", "North", "2026-12-05")


def checkin(site: str, start: str, subject: bytes = P1) -> Facts:
    return facts_of(b"c" * 16, 2, {1: subject, 4: start, 5: site, 7: "Ada"})


# Roles and scopes ----------------------------------------------------------------------

def test_parse_role_knows_three_and_names_them_when_refusing() -> None:
    assert [parse_role(r) for r in ("door", " Clinician ", "FULL")] == [
        "door", "clinician", "full"]
    with pytest.raises(ScopeError, match="unknown role 'nurse': door, clinician or full"):
        parse_role("nurse")
    assert ScopeError("x").code == "bad-scope"


def test_facts_of_each_type() -> None:
    c = checkin("North", "2026-12-05T09:30:00Z")
    assert (c.type, c.location, c.subject, c.day) == (2, "North", P1, "2026-12-05")
    text_ref = facts_of(b"r" * 16, 3, {1: str(uuid.UUID(bytes=P2)), 3: "amoxicillin"})
    assert (text_ref.subject, text_ref.location, text_ref.day) == (P2, None, None)
    v = facts_of(b"v" * 16, 9, {1: P1, 2: "0" * 32, 3: "North"})
    assert (v.location, v.subject) == ("North", P1)
    assert facts_of(P1, 1, {1: "Ada", 2: "1980-01-01"}) == Facts(P1, 1)
    junk = facts_of(b"c" * 16, 2, {1: b"short", 4: 20261205, 5: 7})
    assert (junk.subject, junk.day, junk.location) == (None, None, None)


def test_door_holds_todays_checkins_of_its_site_and_its_verifiers_only() -> None:
    assert in_scope(DOOR, checkin("North", "2026-12-05T23:59:00Z"))
    assert not in_scope(DOOR, checkin("North", "2026-12-04T23:59:00Z"))
    assert not in_scope(DOOR, checkin("South", "2026-12-05T09:00:00Z"))
    assert not in_scope(DOOR, facts_of(b"c" * 16, 2, {1: P1, 5: "North"}))  # no day
    assert in_scope(DOOR, Facts(b"v" * 16, 9, "North", P1))
    assert not in_scope(DOOR, Facts(b"v" * 16, 9, "South", P1))
    for rtype in (1, 3, 4, 5, 6, 7, 8, 12):
        assert not in_scope(DOOR, Facts(P1 if rtype == 1 else b"r" * 16, rtype, None, P1),
                            patients={P1})


def test_clinician_holds_the_window_its_patients_and_their_records() -> None:
    assert in_scope(CLINICIAN, checkin("North", "2026-11-05T00:00:00Z"))  # D - 30
    assert not in_scope(CLINICIAN, checkin("North", "2026-11-04T23:59:59Z"))
    assert in_scope(CLINICIAN, checkin("North", "2026-12-06T08:00:00Z"))
    assert not in_scope(CLINICIAN, checkin("South", "2026-12-05T08:00:00Z"))
    assert CLINICIAN.first_day == "2026-11-05"
    assert Scope("clinician", "N", "2024-03-01", 1).first_day == "2024-02-29"
    patients = {P1}
    assert in_scope(CLINICIAN, Facts(P1, 1), patients)
    assert not in_scope(CLINICIAN, Facts(P2, 1), patients)
    for rtype in (3, 4, 5, 6, 7):
        assert in_scope(CLINICIAN, Facts(b"r" * 16, rtype, subject=P1), patients)
        assert not in_scope(CLINICIAN, Facts(b"r" * 16, rtype, subject=P2), patients)
        assert not in_scope(CLINICIAN, Facts(b"r" * 16, rtype), patients)
    for rtype in (8, 9, 12):
        assert not in_scope(CLINICIAN, Facts(b"r" * 16, rtype, "North", P1), patients)


def test_full_holds_everything_but_audit() -> None:
    for rtype in (1, 2, 3, 4, 5, 6, 7, 9, 12):
        assert in_scope(FULL, Facts(b"r" * 16, rtype))
    assert not in_scope(FULL, Facts(b"r" * 16, 8))
    assert checkin_in_scope(FULL, checkin("South", "1999-01-01T00:00:00Z"))
    assert not checkin_in_scope(FULL, Facts(P1, 1))


def test_scope_wire_round_trip_and_junk_refused_as_bad_scope() -> None:
    for scope in (DOOR, CLINICIAN, FULL, Scope("clinician", "S", "2024-02-29", 0)):
        assert Scope.from_wire(strict_cbor.loads(strict_cbor.dumps(scope.to_wire()))) == scope
    junk: list[Any] = [
        None, "door", [], ["door", "North", "2026-12-05"],
        ["door", "North", "2026-12-05", 30, 1], ["nurse", "North", "2026-12-05", 30],
        ["door", "", "2026-12-05", 30], ["door", "North", "2026-13-01", 30],
        ["door", "North", "2025-02-29", 30], ["door", "North", "05/12/2026", 30],
        ["door", "North", "2026-12-05", -1], ["door", "North", "2026-12-05", True],
        ["door", "North", "2026-12-05", 99999], [b"door", "North", "2026-12-05", 30],
    ]
    for obj in junk:
        with pytest.raises(RemoteProtocolError) as info:
            Scope.from_wire(obj)
        assert info.value.code == "bad-scope", obj
    with pytest.raises(RemoteProtocolError, match="unknown role 'nurse'"):
        Scope.from_wire(["nurse", "North", "2026-12-05", 30])
    with pytest.raises(ScopeError):
        Scope("door", "North", "today")


# The checksum -------------------------------------------------------------------------

def _head(stamp: int, node: int, deleted: bool) -> bytes:
    return stamp.to_bytes(8, "big") + node.to_bytes(4, "big") + bytes([deleted])


def test_checksum_takes_every_head_and_leaves_deleted_records_out() -> None:
    a, b, c = b"a" * 16, b"b" * 16, b"c" * 16
    expected = hashlib.sha256(
        b"haven-scope-2\x00" + a + (2).to_bytes(4, "big") + _head(5, 1, True)
        + _head(5, 2, False) + b + (1).to_bytes(4, "big") + _head(9, 1, False)).digest()
    heads = [(b, 9, 1, False), (a, 5, 2, False), (c, 7, 1, True), (a, 5, 1, True),
             (c, 3, 4, True)]
    assert scope_checksum(heads) == expected
    assert scope_checksum(reversed(heads)) == expected
    assert scope_checksum(heads + heads[:2]) == expected  # a head given twice: once
    assert scope_checksum([]) == hashlib.sha256(b"haven-scope-2\x00").digest()
    # A record deleted everywhere and one dropped are the same to the sum.
    assert scope_checksum([h for h in heads if h[0] != c]) == expected
    # A lesser concurrent head missing, or a head's delete flag changed: another sum.
    assert scope_checksum([(b, 9, 1, False), (a, 5, 2, False)]) != expected
    assert scope_checksum([(b, 9, 1, False), (a, 5, 2, False), (a, 5, 1, False)]
                          ) != expected
    for bad in ((b"short", 1, 1, False), (a, -1, 1, False), (a, 1, 1 << 32, False)):
        with pytest.raises(LocalProtocolError):
            scope_checksum([bad])
    with pytest.raises(LocalProtocolError, match="one dot"):
        scope_checksum([(a, 5, 1, True), (a, 5, 1, False)])


def test_checksum_v1_takes_each_records_greatest_dot_and_leaves_deletes_out() -> None:
    a, b, c = b"a" * 16, b"b" * 16, b"c" * 16
    expected = hashlib.sha256(
        b"haven-scope\x00" + a + (5).to_bytes(8, "big") + (2).to_bytes(4, "big")
        + b + (9).to_bytes(8, "big") + (1).to_bytes(4, "big")).digest()
    heads = [(b, 9, 1, False), (a, 5, 1, True), (a, 5, 2, False), (c, 7, 1, True),
             (c, 3, 4, False)]
    assert scope_checksum_v1(heads) == expected
    assert scope_checksum_v1(reversed(heads)) == expected
    assert scope_checksum_v1([]) == hashlib.sha256(b"haven-scope\x00").digest()
    # Its blind spot: a's lesser concurrent head missing adds up the same.
    assert scope_checksum_v1([(b, 9, 1, False), (a, 5, 2, False)]) == expected
    assert scope_checksum_v1([(b, 9, 1, False), (a, 5, 3, False)]) != expected


DOTS = st.lists(st.tuples(st.sampled_from([bytes([i]) * 16 for i in range(4)]),
                          st.integers(1, 2**64 - 1), st.integers(0, 2**32 - 1), st.booleans()),
                max_size=12)


@settings(max_examples=25, deadline=None)
@given(DOTS, st.randoms(use_true_random=False))
def test_checksum_is_the_heads_of_live_records_in_any_order(dots: list[Any], rng: Any
                                                            ) -> None:
    # A dot names one write: it is a delete or it is not, never both.
    dots = list({(rid, stamp, node): (rid, stamp, node, d)
                 for rid, stamp, node, d in reversed(dots)}.values())
    live = {rid for rid, _, _, d in dots if not d}
    kept = [h for h in dots if h[0] in live]
    shuffled = list(dots)
    rng.shuffle(shuffled)
    assert scope_checksum(shuffled) == scope_checksum(dots) == scope_checksum(kept)
    for i, (rid, stamp, node, d) in enumerate(kept):  # each head and each flag counts
        others = kept[:i] + kept[i + 1:]
        assert scope_checksum(others + [(rid, stamp, node, not d)]) != scope_checksum(kept)
        assert scope_checksum(others) != scope_checksum(kept)
    greatest: dict[bytes, tuple[int, int, bool]] = {}
    for rid, stamp, node, deleted in dots:
        if rid not in greatest or (stamp, node) > greatest[rid][:2]:
            greatest[rid] = (stamp, node, deleted)
    v1 = [(rid, s, n, False) for rid, (s, n, d) in greatest.items() if not d]
    assert scope_checksum_v1(shuffled) == scope_checksum_v1(v1)


WRITES = st.lists(st.tuples(st.sampled_from([bytes([i]) * 16 for i in range(2)]),
                            st.integers(0, 3), st.booleans(), st.integers(0, 2**16)),
                  min_size=1, max_size=10)


@settings(max_examples=25, deadline=None)
@given(WRITES)
def test_heads_of_are_the_reference_merges_heads(writes: list[Any]) -> None:
    """Random histories of two records by four nodes, each write having seen a random
    part of what was written before it: ``heads_of`` names the heads the reference
    merge (``protocol.crdt.record``) finds, with their delete flags."""
    logs: dict[bytes, RecordLog] = {}
    deltas: list[Delta] = []
    for i, (rid, node, deleted, seen_bits) in enumerate(writes):
        earlier = [d for d in deltas if d.record_id == rid and d.node != node]
        ctx = tuple(sorted({d.dot for j, d in enumerate(earlier) if seen_bits >> j & 1}))
        delta = Delta(rid, 2, node, 10 + i, int(deleted), {} if deleted else {2: f"v{i}"},
                      ctx=ctx)
        deltas.append(delta)
        logs.setdefault(rid, RecordLog(rid)).add(delta)
    expected = sorted((rid, h.stamp, h.node, log.ops[h].is_delete)
                      for rid, log in logs.items() for h in log.view().heads)
    got = heads_of((d.record_id, d.stamp, d.node, d.is_delete, d.ctx) for d in deltas)
    assert sorted(got) == expected


JUNK = st.recursive(st.none() | st.booleans() | st.integers(-2, 40000) | st.text(max_size=12)
                    | st.binary(max_size=17), lambda inner: st.lists(inner, max_size=5),
                    max_leaves=12)


@settings(max_examples=25, deadline=None)
@given(JUNK)
def test_junk_scopes_and_snapshots_give_clear_errors_only(obj: Any) -> None:
    try:
        scope = Scope.from_wire(obj)
    except RemoteProtocolError as exc:
        assert exc.code == "bad-scope"
    else:
        assert scope.to_wire() == obj
    try:
        messages.decode(strict_cbor.dumps({0: 85, 1: 0, 3: obj}))
    except RemoteProtocolError as exc:
        assert exc.code == "field-type"
    else:
        assert obj is True or (type(obj) is list and all(len(r) == 16 for r in obj))


# Verifiers ----------------------------------------------------------------------------

def test_year_verifier_and_record_id() -> None:
    v = year_verifier(FLEET, "North", P1, "1980")
    assert len(v) == 32 and int(v, 16) >= 0
    assert v != year_verifier(FLEET, "North", P1, "1981")
    assert v != year_verifier(FLEET, "South", P1, "1980")
    assert v != year_verifier(FLEET, "North", P2, "1980")
    rid = verifier_record_id(FLEET, "North", P1)
    assert len(rid) == 16 and uuid.UUID(bytes=rid).version == 8
    assert rid != verifier_record_id(FLEET, "South", P1)
    for year in ("80", "19800", "198O", "١٩٨٠"):
        with pytest.raises(LocalProtocolError, match="4 digits"):
            year_verifier(FLEET, "North", P1, year)
    with pytest.raises(LocalProtocolError, match="16 bytes"):
        verifier_record_id(FLEET, "North", b"x")
    with pytest.raises(LocalProtocolError, match="fleet key"):
        year_verifier(b"short", "North", P1, "1980")


# The stable point ---------------------------------------------------------------------

HUB = Ed25519PrivateKey.from_private_bytes(bytes(32))
HUB_PUB = HUB.public_key().public_bytes_raw()


def test_stable_point_opens_for_its_kiosk_only() -> None:
    doc = sign_stable_point(HUB, "0000002a", 1_764_900_000_000_123, 1_764_900_000_000)
    assert open_stable_point(doc, HUB_PUB, "0000002a") == (
        1_764_900_000_000_123, 1_764_900_000_000)
    with pytest.raises(StablePointError, match="for kiosk '0000002a', not this one") as info:
        open_stable_point(doc, HUB_PUB, "0000002b")
    assert info.value.code == "bad-stable-point"
    other = Ed25519PrivateKey.from_private_bytes(b"\x01" * 32)
    with pytest.raises(StablePointError, match="not signed by this kiosk's hub"):
        open_stable_point(doc, other.public_key().public_bytes_raw(), "0000002a")
    body, sig = strict_cbor.loads(doc)
    forged = strict_cbor.dumps([strict_cbor.dumps({1: "0000002a", 2: 2**62, 3: 0}), sig])
    with pytest.raises(StablePointError, match="not signed by this kiosk's hub"):
        open_stable_point(forged, HUB_PUB, "0000002a")
    # Another of the hub's documents, with the same key: another label.
    from protocol.sync.credential import sign_time
    with pytest.raises(StablePointError, match="not signed"):
        open_stable_point(sign_time(HUB, b"n" * 16, 5), HUB_PUB, "0000002a")
    for junk in (b"", b"\xff", strict_cbor.dumps([body]), strict_cbor.dumps("x"),
                 b"\x00" * 4096):
        with pytest.raises(StablePointError, match="stable point"):
            open_stable_point(junk, HUB_PUB, "0000002a")
    lacking = strict_cbor.dumps({1: "0000002a", 2: -1, 3: 0})
    with pytest.raises(StablePointError, match="lacks"):
        open_stable_point(strict_cbor.dumps([lacking, HUB.sign(b"haven-stable-point\x00"
                                                              + lacking)]),
                          HUB_PUB, "0000002a")
    with pytest.raises(LocalProtocolError):
        sign_stable_point(HUB, "0000002a", -1, 0)


# The wire -----------------------------------------------------------------------------

def round_trip(name: str, **fields: Any) -> messages.Message:
    return messages.decode(messages.encode(messages.make(name, **fields)))


def test_new_optional_fields_travel() -> None:
    hello = round_trip("sync-hello", cert=b"c", vv={}, cursor=0, seq=0, hash=b"\0" * 32,
                       sum=b"s" * 32)
    assert hello.get("sum") == b"s" * 32
    welcome = round_trip("sync-welcome", time=1, vv={}, seq=0, hash=b"\0" * 32,
                         scope=DOOR.to_wire(), stable=b"doc", rebase=True)
    assert Scope.from_wire(welcome.get("scope")) == DOOR
    assert (welcome.get("stable"), welcome.get("rebase")) == (b"doc", True)
    assert round_trip("sync-pull", cursor=5, snapshot=True, upto=9).get("upto") == 9
    assert round_trip("sync-pull", cursor=5, snapshot=[P1, P2]).get("snapshot") == [P1, P2]
    changes = round_trip("sync-changes", payload=b"\0\x80", cursor=9, more=False,
                         snapshot=True, sum=b"s" * 32, upto=9)
    assert (changes.get("snapshot"), changes.get("upto")) == (True, 9)
    assert round_trip("sync-ack", seq=3, arrived=77).get("arrived") == 77
    # An older peer's messages, without them, still read.
    assert round_trip("sync-pull", cursor=5).get("snapshot") is None


@pytest.mark.parametrize("fields", [
    {3: False}, {3: 1}, {3: []}, {3: [P1, P1]}, {3: [b"short"]}, {3: [str(P1)]},
    {3: [P1] * 0 + [uuid.UUID(int=i).bytes for i in range(257)]}, {3: {}},
])
def test_pull_snapshot_is_true_or_up_to_256_distinct_record_ids(fields: dict[int, Any]
                                                                 ) -> None:
    data = strict_cbor.dumps({0: 85, 1: 5, **fields})
    with pytest.raises(RemoteProtocolError) as info:
        messages.decode(data)
    assert info.value.code == "field-type"
    with pytest.raises(LocalProtocolError):
        messages.make("sync-pull", cursor=5, snapshot=fields[3])


def test_sums_are_32_bytes() -> None:
    for name, base in (("sync-hello", {0: 80, 1: b"c", 2: {}, 3: 0, 4: 0, 5: b"\0" * 32,
                                       10: b"s" * 31}),
                       ("sync-changes", {0: 86, 1: b"\0\x80", 2: 0, 3: False, 5: "s" * 32})):
        with pytest.raises(RemoteProtocolError, match=f"{name}: field sum"):
            messages.decode(strict_cbor.dumps(base))


# The vectors (protocol/vectors/scope.json) ----------------------------------------------

def edn(value: Any) -> Any:
    """A vector's value: ``h'..'`` text is a byte string (CBOR diagnostic notation)."""
    if isinstance(value, str) and value.startswith("h'") and value.endswith("'"):
        return bytes.fromhex(value[2:-1])
    if isinstance(value, list):
        return [edn(v) for v in value]
    if isinstance(value, dict):
        return {int(k): edn(v) for k, v in value.items()}
    return value


def test_verifier_vectors() -> None:
    key = bytes.fromhex(VECTORS["fleet_key"])
    for v in VECTORS["verifiers"]:
        pid = bytes.fromhex(v["pid"])
        assert verifier_record_id(key, v["site"], pid).hex() == v["record_id"], v
        assert year_verifier(key, v["site"], pid, v["year"]) == v["verifier"], v


def test_checksum_vectors() -> None:
    for key, checksum in (("checksums", scope_checksum), ("checksums_v1", scope_checksum_v1)):
        for v in VECTORS[key]:
            heads = [(bytes.fromhex(r), s, n, d) for r, s, n, d in v["heads"]]
            assert checksum(heads).hex() == v["sum"], v["about"]
    for v in VECTORS["heads_of"]:
        writes = [(bytes.fromhex(r), s, n, d, [tuple(c) for c in ctx])
                  for r, s, n, d, ctx in v["writes"]]
        assert sorted([r.hex(), s, n, d] for r, s, n, d in heads_of(writes)) == v["heads"]


def test_stable_point_vectors() -> None:
    v = VECTORS["stable_point"]
    hub = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(VECTORS["hub_seed"]))
    public = hub.public_key().public_bytes_raw()
    assert sign_stable_point(hub, v["device"], v["cursor"], v["time"]).hex() == v["doc"]
    assert open_stable_point(bytes.fromhex(v["doc"]), public, v["device"]) == (
        v["cursor"], v["time"])
    for bad in v["bad"]:
        with pytest.raises(StablePointError, match=bad["message"]):
            open_stable_point(bytes.fromhex(bad["doc"]), public, bad["device"])


def test_scope_vectors() -> None:
    v = VECTORS["scopes"]
    scopes = {role: Scope.from_wire(v[role]) for role in ("door", "clinician", "full")}
    patients = {bytes.fromhex(p) for p in v["patients"]}
    for record in v["records"]:
        facts = facts_of(bytes.fromhex(record["rid"]), record["type"], edn(record["fields"]))
        for role, scope in scopes.items():
            assert in_scope(scope, facts, patients) is record[role], (role, record["about"])
    for bad in VECTORS["bad_scopes"]:
        with pytest.raises(RemoteProtocolError) as info:
            Scope.from_wire(edn(bad["wire"]))
        assert info.value.code == "bad-scope", bad["about"]


def test_message_vectors() -> None:
    for v in VECTORS["messages"]:
        msg = messages.decode(bytes.fromhex(v["cbor"]))
        assert msg.name == v["name"] and msg.fields == edn(v["fields"]), v["about"]
        spec = msg.spec
        assert spec is not None
        names = {k: n for k, (n, _) in {**spec.required, **spec.optional}.items()}
        again = messages.make(v["name"], **{names[k]: x for k, x in msg.fields.items()})
        assert messages.encode(again).hex() == v["cbor"], v["about"]
    for v in VECTORS["bad_messages"]:
        with pytest.raises(RemoteProtocolError) as info:
            messages.decode(bytes.fromhex(v["cbor"]))
        assert info.value.code == v["code"], v["about"]
