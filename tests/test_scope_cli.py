"""The hub's role commands refuse what would change nothing or the wrong thing: an empty
--role (not the default role), a role or decommission for a kiosk already gone, a bad
--window, an unknown role or kiosk (one line each, nothing changed); a retired identity
enrolling again is told to make new keys; a decommissioned kiosk's quarantined write is
released only with --force; both statuses name their units and give times in UTC."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from device.cli import main as kiosk_main
from host.cli import main as haven_main
from host.hub.hub import Hub, init_hub
from protocol.crdt.delta import decode
from protocol.driver.wall_clock import utc_text, wall_ms

from .test_hub_late_pages import deleted_elsewhere, late_edit
from .test_hub_scopes import Session
from .test_sync_helpers import Kiosk, served_hub

pytestmark = pytest.mark.usefixtures("hub_backend")


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Hub]:
    init_hub(tmp_path / "hub")
    with Hub(tmp_path / "hub") as h:
        yield h


def _unchanged(hub: Hub, device: str) -> tuple[object, ...]:
    return hub.store.device(device), hub.store.events(1000)


def test_empty_role_is_refused_not_taken_for_full(hub: Hub, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    door = Kiosk(tmp_path, "d", hub, "D", role="door")
    request = tmp_path / "d" / "enrolment.req"
    try:
        before = _unchanged(hub, door.device)
        for role in ("", "  "):
            assert haven_main(["hub", "enroll", "--data", str(hub.data), str(request),
                               "--out", str(tmp_path / "x.cert"), "--role", role]) == 2
            assert haven_main(["hub", "approve", "--data", str(hub.data), "--site", "North",
                               "--count", "1", "--hours", "24", "--out",
                               str(tmp_path / "x.approvals"), "--role", role]) == 2
        assert capsys.readouterr().err.count("--role is empty: door, clinician or full") == 4
        assert _unchanged(hub, door.device) == before
        assert hub.store.device(door.device).role == "door"  # type: ignore[union-attr]
        assert not (tmp_path / "x.cert").exists() and not (tmp_path / "x.approvals").exists()
    finally:
        door.close()


def test_a_decommissioned_kiosk_gets_no_role_and_no_second_decommission(
        hub: Hub, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    kiosk = Kiosk(tmp_path, "k", hub, "A", role="clinician")
    try:
        data = str(hub.data)
        assert haven_main(["hub", "decommission", "--data", data, kiosk.device]) == 0
        capsys.readouterr()
        before = _unchanged(hub, kiosk.device)
        assert haven_main(["hub", "decommission", "--data", data, kiosk.device]) == 2
        assert haven_main(["hub", "role", "--data", data, kiosk.device, "door"]) == 2
        err = capsys.readouterr().err.splitlines()
        assert err == [f"haven hub: kiosk {kiosk.device} is decommissioned already: "
                       "decommissioning it changes nothing",
                       f"haven hub: kiosk {kiosk.device} is decommissioned already: "
                       "a role changes nothing"]
        assert _unchanged(hub, kiosk.device) == before
    finally:
        kiosk.close()


def test_role_refuses_bad_input_in_one_line_and_changes_nothing(
        hub: Hub, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    kiosk = Kiosk(tmp_path, "k", hub, "A", role="door")
    try:
        data = str(hub.data)
        before = _unchanged(hub, kiosk.device)
        cases = {
            ("door", "--window", "abc"): "--window is a number of days (a clinician "
            "station's: 1 to 3660), not 'abc'",
            ("clinician", "--window", ""): "not ''",
            ("clinician", "--window", "-3"): "not '-3'",
            ("clinician", "--window", "9" * 40): f"not '{'9' * 40}'",
            ("clinician", "--window", "0"): "--window is 1 to 3660 days, not 0",
            ("door", "--window", "5"): "--window goes with the clinician role, not door: a "
            "door kiosk has no window (leave --window out)",
            ("full", "--window", "5"): "not full",
            ("boss",): "unknown role 'boss': door, clinician or full",
            ("",): "unknown role",
        }
        for extra, said in cases.items():
            assert haven_main(["hub", "role", "--data", data, kiosk.device, *extra]) == 2
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and err.startswith("haven hub: ") and said in err, err
        for device in ("0badc0de", "", "x" * 5000):
            assert haven_main(["hub", "role", "--data", data, device, "door"]) == 2
            assert f"no kiosk {device!r}" in capsys.readouterr().err
        assert haven_main(["hub", "enroll", "--data", data, str(tmp_path / "k" / "enrolment.req"),
                           "--out", str(tmp_path / "x.cert"), "--role", "clinician",
                           "--window", "two weeks"]) == 2
        assert "not 'two weeks'" in capsys.readouterr().err
        assert _unchanged(hub, kiosk.device) == before and not (tmp_path / "x.cert").exists()
        assert haven_main(["hub", "role", "--data", data, kiosk.device, "clinician",
                           "--window", "14"]) == 0
        assert hub.store.device(kiosk.device).window_days == 14  # type: ignore[union-attr]
    finally:
        kiosk.close()


@pytest.mark.parametrize("gone", ["decommission", "revoke"])
def test_a_retired_identity_enrolling_again_is_told_to_make_new_keys(
        hub: Hub, tmp_path: Path, capsys: pytest.CaptureFixture[str], gone: str) -> None:
    kiosk = Kiosk(tmp_path, "k", hub, "A")
    try:
        data, request = str(hub.data), str(tmp_path / "k" / "enrolment.req")
        assert haven_main(["hub", gone, "--data", data, kiosk.device]) == 0
        capsys.readouterr()
        before = _unchanged(hub, kiosk.device)
        for role in ([], ["--role", "door"]):
            assert haven_main(["hub", "enroll", "--data", data, request, "--out",
                               str(tmp_path / "k.cert"), *role]) == 2
            err = capsys.readouterr().err
            state = "decommissioned" if gone == "decommission" else "revoked"
            assert err.startswith(f"haven hub: kiosk {kiosk.device} is {state}, and its "
                                  "identity never returns") and err.count("\n") == 1
            assert ("give it new keys in an empty folder (haven-kiosk init --data NEW_FOLDER "
                    "--site 'North')") in err
        assert _unchanged(hub, kiosk.device) == before and not (tmp_path / "k.cert").exists()
        # the way out it names: new keys in a new folder enrol as a kiosk of their own
        fresh = Kiosk(tmp_path, "fresh", hub, "B")
        assert fresh.device != kiosk.device
        fresh.close()
    finally:
        kiosk.close()


def test_releasing_a_decommissioned_kiosks_write_needs_force(
        hub: Hub, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """X writes a check-in, Y deletes it, X is decommissioned and then sends an edit that
    did not see the delete: quarantined. Releasing it would bring the record back, so it
    takes --force; without, the refusal says so and nothing changes."""
    now = wall_ms()
    x, y = Kiosk(tmp_path, "x", hub, "X"), Kiosk(tmp_path, "y", hub, "Y")
    try:
        history = deleted_elsewhere(hub, x, y, now)
        rid = decode(history[0]).record_id
        data = str(hub.data)
        assert haven_main(["hub", "decommission", "--data", data, x.device]) == 0
        late = late_edit(x, history)
        assert Session(hub, x, now).push([late]).get("quarantined") == [0]
        (held,) = hub.store.quarantined()
        capsys.readouterr()
        before = (hub.store.quarantined(), hub.store.count(), hub.dump())
        for bad in (["abc"], ["--max-ahead", "soon"], ["--max-ahead", "-1"], [""], ["9" * 30]):
            assert haven_main(["hub", "quarantine", "release", "--data", data, "--force",
                               *(bad if len(bad) == 1 else [str(held["id"]), *bad])]) == 2
            err = capsys.readouterr().err
            assert err.startswith("haven hub: ") and err.count("\n") == 1, err
        assert (hub.store.quarantined(), hub.store.count(), hub.dump()) == before
        assert haven_main(["hub", "quarantine", "release", "--data", data,
                           str(held["id"])]) == 2
        err = capsys.readouterr().err
        assert err == (f"haven hub: quarantined delta {held['id']} comes from kiosk "
                       f"{x.device}, which is decommissioned: record {rid.hex()} was deleted "
                       "at the hub and this write did not see it: releasing it brings the "
                       "record back (a delete-update conflict); drop it, or release it with "
                       "--force\n")
        assert (hub.store.quarantined(), hub.store.count(), hub.dump()) == before
        assert haven_main(["hub", "quarantine", "release", "--data", data, str(held["id"]),
                           "--force"]) == 0
        assert "forced" in capsys.readouterr().out
        assert hub.store.quarantined() == [] and hub.store.count() == before[1] + 1
        assert "forced" in hub.store.events(1)[0]["detail"]
        view = {r["id"]: r for r in json.loads(hub.dump())["records"]}[str(uuid.UUID(bytes=rid))]
        assert [c["class"] for c in view["conflicts"]] == ["delete-update"]
    finally:
        x.close()
        y.close()


ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def times_in(obj: object, where: str = "") -> list[str]:
    """What is wrong with the times of a status: each ``X_ms`` beside ``X`` as ISO 8601
    UTC of the same second (or both null), and no number under a time's bare name."""
    wrong = []
    if isinstance(obj, dict):
        for key, value in obj.items():
            if key.endswith("_ms") and key[:-3] in obj:
                text = obj[key[:-3]]
                if (value is None) != (text is None) or value is not None and (
                        not ISO_UTC.match(text) or text != utc_text(value)):
                    wrong.append(f"{where}.{key}")
            elif key in ("at", "last_seen", "received_at", "last_sync") and not (
                    value is None or isinstance(value, str) and ISO_UTC.match(value)):
                wrong.append(f"{where}.{key} = {value!r}")
            wrong += times_in(value, f"{where}.{key}")
    elif isinstance(obj, list):
        for n, value in enumerate(obj):
            wrong += times_in(value, f"{where}[{n}]")
    return wrong


def test_statuses_name_their_units_and_give_times_in_utc(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A hub, a door and a clinician kiosk that synced, one kiosk decommissioned with a
    write in quarantine: both statuses, as JSON and as text."""
    with served_hub(tmp_path) as (hub, url):
        door = Kiosk(tmp_path, "d", hub, "A", role="door")
        clinic = Kiosk(tmp_path, "c", hub, "B", role="clinician")
        gone = Kiosk(tmp_path, "g", hub, "C")
        try:
            for k in (door, clinic, door, door):
                k.store.checkin(name="Ada Lovelace", passport="P1234567", birth_year=1990)
                k.sync(url)
            # as a technician would: a round and the collection after it
            assert kiosk_main(["sync", "--data", str(door.store.data), "--hub", url,
                               "--once"]) == 0
            hub.decommission(gone.device)
            gone.store.checkin(name="Bea Okafor", passport="P7654321")
            gone.sync(url)
            capsys.readouterr()
            assert haven_main(["hub", "status", "--data", str(hub.data), "--json"]) == 0
            st = json.loads(capsys.readouterr().out)
            assert times_in(st) == []
            kiosks = {k["device"]: k for k in st["kiosks"]}
            assert {k: v["window_days"] for k, v in kiosks.items()} == {
                door.device: None, clinic.device: 30, gone.device: None}
            d = kiosks[door.device]
            # what it said it holds lags what it was sent by a round when the hub wrote
            # after its batch (the door's verifiers) while the round pulled
            assert d["last_seen"] and 0 < d["acked_cursor"] <= d["pull_cursor"]
            assert {"kiosk_number", "last_batch", "backlog_deltas"} <= d.keys()
            assert not {"number", "batches", "backlog", "acked", "cursor"} & d.keys()
            (point,) = [g for g in st["stable_points"] if g["role"] == "door"]
            assert point["reached_hub_by"] == utc_text(point["cursor"] // 1000)
            assert st["quarantine"] and st["log"] and "conflicts_held" in st
            assert haven_main(["hub", "status", "--data", str(hub.data)]) == 0
            text = capsys.readouterr().out
            assert f"last seen {d['last_seen']}" in text and "door  acked cursor" in text
            assert "clinician 30 days" in text and f"by {point['reached_hub_by']})" in text

            assert kiosk_main(["status", "--data", str(door.store.data), "--json"]) == 0
            ks = json.loads(capsys.readouterr().out)
            assert times_in(ks) == []
            assert ks["scope"]["window_days"] is None and ks["last_gc"]["at_ms"] > 0
            assert ks["stable_point_reached_hub_by"] == utc_text(ks["stable_point"] // 1000)
            assert {"conflicts_held", "stale_records", "held_from_batch"} <= ks.keys()
            assert not {"held", "stale", "held_upto"} & ks.keys()
            assert kiosk_main(["status", "--data", str(clinic.store.data), "--json"]) == 0
            assert json.loads(capsys.readouterr().out)["scope"]["window_days"] == 30
            assert kiosk_main(["status", "--data", str(door.store.data)]) == 0
            text = capsys.readouterr().out
            assert f"last sync {ks['last_sync']}" in text and "+00:00" not in text
            assert f"last GC: {ks['last_gc']['at']}, dropped" in text
        finally:
            for k in (door, clinic, gone):
                k.close()
