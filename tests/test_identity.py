"""Typed identity is a claim: never an overwrite at the kiosk or at the hub; the staff PIN.

Real stores and a real hub store; deltas cross from kiosk to hub as a sync
round would carry them (each delta added once, in order), and back by the
kiosk's own merge.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from device import config as kconfig
from device.store import Store, init_store
from device.ui.pin import (
    MISSES_FILE,
    PinError,
    PinGuard,
    PinSource,
    hash_pin,
    parse_hash,
    read_pin_file,
    verify_pin,
    write_pin_file,
)
from host.hub.hub import Hub, init_hub
from host.hub.storage import Op
from protocol.crdt import schema
from protocol.crdt.delta import decode
from protocol.crdt.ids import patient_id

C = {f.name: f.number for f in schema.CHECKIN.fields}
P = {f.name: f.number for f in schema.PATIENT.fields}
T0 = 1_780_000_000_000


def to_hub(hub: Hub, store: Store) -> None:
    held = {(op.rid, op.stamp, op.node) for op in hub.store.all_ops()}
    for data in store.deltas_since({}):
        d = decode(data)
        if (d.record_id, d.stamp, d.node) not in held:
            hub.store.add_local(Op(d.record_id, d.stamp, d.node, data))


def from_hub(hub: Hub, store: Store) -> None:
    store.merge([op.data for op in hub.store.all_ops()])


def hub_record(hub: Hub, rid: str) -> dict[str, Any]:
    dump = json.loads(hub.dump())
    return next(r for r in (dump["records"] if isinstance(dump, dict) else dump)
                if r["id"] == rid)


@pytest.fixture
def fleet(tmp_path: Path) -> Any:
    init_hub(tmp_path / "hub")
    hub = Hub(tmp_path / "hub")
    key = tmp_path / "fleet.key"
    key.write_bytes((tmp_path / "hub" / "fleet.key").read_bytes())
    a = init_store(tmp_path / "a", "North", "A", key)
    b = init_store(tmp_path / "b", "North", "B", key)
    yield hub, a, b
    a.close()
    b.close()
    hub.close()


def pid(store: Store, passport: str) -> str:
    return str(patient_id(store.fleet_key, passport))


def test_a_claim_never_overwrites_the_record_on_the_kiosk(fleet: Any) -> None:
    _, a, _ = fleet
    zid = a.put("patient", pid(a, "ZZ998877"), {"name": "Zainab Real", "birthDate": "1977"})
    before = a.view(zid)
    wrong = a.checkin(passport="ZZ998877", name="Someone Else", birth_year=1990, reason="sick")
    right = a.checkin(passport="ZZ998877", birth_year=1977, reason="sick")
    unknown = a.checkin(passport="NN123456", birth_year=1980, reason="sick")
    assert (wrong.identity, right.identity, unknown.identity) == ("mismatch", "match", "unknown")
    assert a.view(zid) == before  # not one field, not one write more
    claim = a.view(wrong.record_id).fields  # type: ignore[union-attr]
    assert (claim[C["claimName"]], claim[C["claimBirthDate"]], claim[C["identity"]]) == (
        "Someone Else", "1990", "mismatch")
    new = a.view(unknown.patient_id)
    assert new is not None and new.fields == {}  # the record exists; nothing typed is on it


def test_a_claim_never_overwrites_the_record_at_the_hub(fleet: Any) -> None:
    """Kiosk A holds Zainab's record; kiosk B does not. A check-in at B with another name
    and year, carried to the hub after A's record, changes nothing there; the hub marks
    the claim mismatch, and the flag reaches A's staff list."""
    hub, a, b = fleet
    zid = a.put("patient", pid(a, "ZZ998877"), {"name": "Zainab Real", "birthDate": "1977"},
                now_ms=T0)
    to_hub(hub, a)
    squat = b.checkin(passport="ZZ998877", name="Squatter Name", birth_year=2001,
                      reason="other", now_ms=T0 + 60_000)  # a fresher stamp than the record
    assert squat.identity == "unknown"
    to_hub(hub, b)
    assert hub_record(hub, zid)["fields"] == {"name": "Zainab Real", "birthDate": "1977"}
    done = hub.promote_claims(now_ms=T0 + 120_000)
    assert done == [{"checkin": squat.record_id, "patient": zid, "identity": "mismatch"}]
    assert hub_record(hub, zid)["fields"] == {"name": "Zainab Real", "birthDate": "1977"}
    from_hub(hub, a)
    from device.ui.staff import identity_to_confirm
    [row] = identity_to_confirm(a)
    assert (row["id"], row["identity"], row["claim"], row["record"]) == (
        squat.record_id, "mismatch", {"name": "Squatter Name", "birthDate": "2001"},
        {"name": "Zainab Real", "birthDate": "1977"})
    assert hub.promote_claims(now_ms=T0 + 180_000) == []  # settled once


def test_the_hub_promotes_a_claim_where_no_record_exists(fleet: Any) -> None:
    hub, a, b = fleet
    first = a.checkin(passport="NEW12345", name="Amina New", birth_year=1985, now_ms=T0)
    again = b.checkin(passport="NEW12345", birth_year=1985, now_ms=T0 + 1000)
    other = b.checkin(passport="NEW12345", birth_year=1950, now_ms=T0 + 2000)
    to_hub(hub, a)
    to_hub(hub, b)
    done = {d["checkin"]: d["identity"] for d in hub.promote_claims(now_ms=T0 + 60_000)}
    assert done == {first.record_id: "promoted", again.record_id: "match",
                    other.record_id: "mismatch"}
    assert hub_record(hub, first.patient_id)["fields"] == {"name": "Amina New",
                                                           "birthDate": "1985"}
    from_hub(hub, b)  # the promotion is an ordinary write, pulled like any other
    assert b.view(first.patient_id).fields == {P["name"]: "Amina New",  # type: ignore[union-attr]
                                               P["birthDate"]: "1985"}


def test_squatting_harms_nobody(fleet: Any) -> None:
    """A squatter registers a passport first; its holder still checks in, alike, and
    staff see the disagreement; the squatter's claim stays a claim staff can correct."""
    hub, a, b = fleet
    squat = b.checkin(passport="HH123456", name="Squatter", birth_year=1999, now_ms=T0)
    to_hub(hub, b)
    hub.promote_claims(now_ms=T0 + 1000)
    from_hub(hub, a)
    holder = a.checkin(passport="HH123456", name="Hawa Holder", birth_year=1970,
                       reason="sick", now_ms=T0 + 2000)
    assert holder.queue_number == "A-001" and holder.identity == "mismatch"
    from device.ui.staff import identity_to_confirm
    assert [r["id"] for r in identity_to_confirm(a)] == [holder.record_id]
    # At the desk, staff see Hawa's passport and correct the record: a deliberate write.
    a.settle_identity(holder.record_id, "correct", name="Hawa Holder", birth_year=1970,
                      now_ms=T0 + 3000)
    to_hub(hub, a)
    assert hub_record(hub, holder.patient_id)["fields"] == {"name": "Hawa Holder",
                                                            "birthDate": "1970"}
    assert hub_record(hub, holder.record_id)["fields"]["identity"] == "corrected"
    assert squat.patient_id == holder.patient_id


def test_staff_actions_are_replicated_writes_the_hub_keeps(fleet: Any) -> None:
    hub, a, _ = fleet
    one = a.checkin(passport="CC111111", birth_year=1960, now_ms=T0)
    two = a.checkin(passport="CC222222", birth_year=1961, now_ms=T0 + 1)
    right = pid(a, "CC333333")
    a.settle_identity(one.record_id, "confirm", now_ms=T0 + 10)
    a.settle_identity(two.record_id, "attach", subject=right, now_ms=T0 + 20)
    with pytest.raises(Exception, match="no check-in"):
        a.settle_identity(str(uuid.uuid4()), "confirm")
    with pytest.raises(Exception, match="unknown identity action"):
        a.settle_identity(one.record_id, "delete")
    to_hub(hub, a)
    assert hub_record(hub, one.record_id)["fields"]["identity"] == "confirmed"
    attached = hub_record(hub, two.record_id)["fields"]
    assert (attached["identity"], attached["subject"]) == ("attached", right)
    # The hub's log of writes holds each, by the kiosk's node (the audit of who did what).
    nodes = {(str(uuid.UUID(bytes=op.rid)), op.node) for op in hub.store.all_ops()}
    assert {(one.record_id, a.node), (two.record_id, a.node)} <= nodes
    writes = [decode(op.data) for op in hub.store.record_ops(uuid.UUID(one.record_id).bytes)]
    assert [d.set.get(C["identity"]) for d in sorted(writes, key=lambda d: d.stamp)] == [
        "unknown", "confirmed"]


# The staff PIN ------------------------------------------------------------------------------

def test_pin_hash_is_scrypt_and_checks(tmp_path: Path) -> None:
    stored = hash_pin("246810")
    n, r, p, salt, key = parse_hash(stored)
    assert (n, r, p, len(salt), len(key)) == (2**14, 8, 1, 16, 32)
    assert "246810" not in stored and hash_pin("246810") != stored  # a random salt
    assert verify_pin("246810", stored) and not verify_pin("246811", stored)
    assert not verify_pin(None, stored) and not verify_pin("12", stored)
    for short in ("12345", "abcdef", "1234567890123"):
        with pytest.raises(PinError):
            hash_pin(short)
    (tmp_path / "d").mkdir(mode=0o700)
    path = write_pin_file(tmp_path / "d", "135790")
    assert path.stat().st_mode & 0o077 == 0 and b"135790" not in path.read_bytes()
    assert verify_pin("135790", read_pin_file(tmp_path / "d") or "")
    source = PinSource(tmp_path / "d")
    first = source.current()
    write_pin_file(tmp_path / "d", "975310")  # taken without a restart
    assert source.current() != first and verify_pin("975310", source.current() or "")
    assert PinSource(tmp_path / "nothing").current() is None


def test_plaintext_pin_in_the_toml_file_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "kiosk.toml"
    f.write_text('data = "/srv/k"\nstaff_pin = "135790"\n')
    with pytest.raises(kconfig.ConfigError, match="plaintext.*staff-pin set"):
        kconfig.load(f, {})
    f.write_text('data = "/srv/k"\nstaff_pin = 1234\n')
    with pytest.raises(kconfig.ConfigError, match="6 to 12 digits"):
        kconfig.load(f, {})
    f.write_text(f'data = "/srv/k"\nstaff_pin = "{hash_pin("135790")}"\n')
    assert verify_pin("135790", kconfig.load(f, {}).staff_pin or "")


def test_misses_alert_never_lock_out_and_are_written_once_a_minute(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "haven.staff")
    guard = PinGuard(tmp_path, free=2, base=0.5, cap=3.0, alert_after=5, persist_every=60.0)
    path = tmp_path / MISSES_FILE
    start = now = 1000.0
    waits = []
    for _ in range(1000):  # a minute's burst, as fast as the guard allows (bounded)
        if now + guard.wait(now) - start >= 59.0:
            break
        now += guard.wait(now)
        assert guard.wait(now) <= 3.0  # the right PIN would be checked within 3 s
        waits.append(guard.wait(now))
        guard.missed(now, wall=T0 / 1000)
        if len(waits) == 1:
            first = path.stat().st_mtime_ns
    assert 20 <= len(waits) < 100 and waits == [0.0] * len(waits)
    assert path.stat().st_mtime_ns == first  # one write for every miss of that minute
    assert json.loads(path.read_text())["misses"] == 1
    assert guard.alert() == {"misses": len(waits), "since": T0 / 1000}
    assert sum("wrong PINs" in r.message for r in caplog.records) == 1  # once a minute
    guard.missed(now + 61)  # a minute on: written again
    assert json.loads(path.read_text())["misses"] == len(waits) + 1
    again = PinGuard(tmp_path)  # a restart keeps the count and the alert
    assert again.alert() == {"misses": len(waits) + 1, "since": T0 / 1000}
    assert 0 < again.wait(time.monotonic()) <= 3.0
    again.succeeded(time.monotonic())  # staff log in: they see the alert, the count ends
    assert again.alert() == {"misses": len(waits) + 1, "since": T0 / 1000}
    assert not path.exists() and again.wait(time.monotonic()) == 0
    again.succeeded(time.monotonic())
    assert again.alert() is None


def test_no_overwrite_over_real_sync_rounds(tmp_path: Path) -> None:
    """The same over TCP with the hub serving: A's record reaches the hub, B's claim with
    a fresher stamp changes nothing there or at A, and A's staff see the flag."""
    from device.ui.staff import identity_to_confirm

    from .test_sync_helpers import Kiosk, served_hub

    with served_hub(tmp_path) as (hub, url):
        a, b = Kiosk(tmp_path, "a", hub, "A"), Kiosk(tmp_path, "b", hub, "B")
        try:
            zid = a.store.put("patient", pid(a.store, "ZZ998877"),
                              {"name": "Zainab Real", "birthDate": "1977"})
            a.sync(url)
            squat = b.store.checkin(passport="ZZ998877", name="Squatter", birth_year=2001,
                                    reason="other")
            b.sync(url)
            record = {"name": "Zainab Real", "birthDate": "1977"}
            assert hub_record(hub, zid)["fields"] == record
            assert [d["identity"] for d in hub.promote_claims()] == ["mismatch"]
            a.sync(url)
            b.sync(url)
            assert hub_record(hub, zid)["fields"] == record
            for k in (a, b):
                assert k.store.view(zid).fields == {  # type: ignore[union-attr]
                    P["name"]: "Zainab Real", P["birthDate"]: "1977"}
            assert [(r["id"], r["claim"]["name"]) for r in identity_to_confirm(a.store)] == [
                (squat.record_id, "Squatter")]
        finally:
            a.close()
            b.close()


def test_cli_checkin_keeps_the_claim(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from device.cli import main

    init_store(tmp_path / "k", "North", "B").close()
    assert main(["checkin", "--data", str(tmp_path / "k"), "--reason", "sick"]) == 1
    assert "needs a name" in capsys.readouterr().err
    assert main(["checkin", "--data", str(tmp_path / "k"), "--passport", "AB123456",
                 "--birth-year", "1980", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["queue_number"] == "B-001"


def test_the_serving_hub_promotes_claims_by_itself(tmp_path: Path) -> None:
    """haven hub serve --promote-interval: a new patient's claim becomes the record at the
    hub without a command, and comes back to the kiosk at its next round."""
    from host.hub.limits import Limits
    from host.hub.serve import Server

    from .test_sync_helpers import Kiosk

    init_hub(tmp_path / "hub")
    hub = Hub(tmp_path / "hub")
    server = Server(hub, 5 * 60 * 1000, Limits(promote_interval=0.1))
    host, port = server.listen("tcp://127.0.0.1:0")
    url = f"tcp://{host}:{port}"
    a = Kiosk(tmp_path, "a", hub, "A")
    try:
        new = a.store.checkin(passport="PR123456", name="Pili Promoted", birth_year=1991)
        a.sync(url)
        end = time.monotonic() + 10.0
        while hub_record(hub, new.patient_id)["fields"] == {} and time.monotonic() < end:
            time.sleep(0.05)
        assert hub_record(hub, new.patient_id)["fields"] == {"name": "Pili Promoted",
                                                             "birthDate": "1991"}
        a.sync(url)
        assert a.store.view(new.record_id).fields[C["identity"]] == "promoted"  # type: ignore[union-attr]
    finally:
        a.close()
        server.shutdown()
        hub.close()
