"""``haven-kiosk`` commands, driven through main(argv) and once through the entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from device.cli import COMMANDS, build_parser, main
from device.store import Store


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def kiosk(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    data = str(tmp_path / "kiosk")
    assert run(capsys, "init", "--data", data, "--site", "North", "--letter", "b")[0] == 0
    return data


def test_every_command_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    for name in COMMANDS:
        with pytest.raises(SystemExit) as exit_:
            parser.parse_args([name, "--help"])
        assert exit_.value.code == 0
        out = capsys.readouterr().out
        assert "--data" in out and len(out) > 80
    with pytest.raises(SystemExit):
        parser.parse_args(["--version"])
    assert "haven-kiosk" in capsys.readouterr().out


def test_checkin_put_delete_dump_status(kiosk: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "checkin", "--data", kiosk, "--passport", "AB123456",
                       "--name", "Ada Lovelace", "--birth-year", "1815", "--reason", "cough",
                       "--json")
    assert code == 0
    ci = json.loads(out)
    assert ci["queue_number"] == "B-001" and {"record_id", "patient_id"} <= set(ci)
    code, out, _ = run(capsys, "checkin", "--data", kiosk, "--name", "No Papers")
    assert code == 0 and out.startswith("queue number B-002")
    code, out, _ = run(capsys, "put", "--data", kiosk, "--type", "patient", "--id",
                       ci["patient_id"], "allergies+=latex", "telecom=555-0100")
    assert code == 0 and out.strip() == ci["patient_id"]
    code, out, _ = run(capsys, "put", "--data", kiosk, "--type", "note", "text=temporary")
    note = out.strip()
    assert run(capsys, "delete", "--data", kiosk, note)[0] == 0
    code, out, _ = run(capsys, "dump", "--data", kiosk)
    dump = json.loads(out)
    records = {r["id"]: r for r in dump["records"]}
    ada = records[ci["patient_id"]]
    # What was typed at check-in is a claim on the check-in, never the patient's record.
    assert ada["fields"] == {"telecom": "555-0100", "allergies": ["latex"]}
    claim = records[ci["record_id"]]["fields"]
    assert (claim["claimName"], claim["claimBirthDate"], claim["identity"]) == (
        "Ada Lovelace", "1815", "unknown")
    assert records[note]["deleted"] is True
    assert records[ci["record_id"]]["fields"]["reasonCode"] == "cough"
    assert out == json.dumps(dump, sort_keys=True, separators=(",", ":")) + "\n"
    code, out, _ = run(capsys, "status", "--data", kiosk, "--json")
    status = json.loads(out)
    assert status["letter"] == "B" and status["outbox"]["lanes"]["2"]["entries"] >= 3
    code, out, _ = run(capsys, "status", "--data", kiosk)
    assert "lane 2 (checkin/appointment)" in out and "conflicts: 0" in out


def test_schema_json(capsys: pytest.CaptureFixture[str], kiosk: str) -> None:
    code, out, _ = run(capsys, "schema", "--data", kiosk, "--json")
    desc = json.loads(out)
    assert desc["prescription"]["lane"] == 0 and "fields" in desc["lab_result"]
    assert desc["patient"]["fields"]["conditions"]["policy"] == "add-wins"
    code, out, _ = run(capsys, "schema")
    assert "MedicationRequest" in out


def _exchange(a: str, b: str) -> None:
    with Store(Path(a)) as sa, Store(Path(b)) as sb:
        da = [e.data for e in sa.outbox_batch(max_bytes=10**6)]
        db = [e.data for e in sb.outbox_batch(max_bytes=10**6)]
        sa.merge(db)
        sb.merge(da)


def test_two_kiosks_conflict_and_resolve(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    key = tmp_path / "fleet.key"
    key.write_bytes(os.urandom(32))
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    for data, letter in ((a, "A"), (b, "B")):
        assert run(capsys, "init", "--data", data, "--site", "S", "--letter", letter,
                   "--fleet-key", str(key))[0] == 0
    pa = json.loads(run(capsys, "checkin", "--data", a, "--passport", "X1234567", "--name",
                        "Ada", "--json")[1])
    pb = json.loads(run(capsys, "checkin", "--data", b, "--passport", "x123 4567", "--name",
                        "Ada", "--json")[1])
    assert pa["patient_id"] == pb["patient_id"]
    rx = run(capsys, "put", "--data", a, "--type", "prescription", "medication=amoxicillin",
             f"subject={pa['patient_id']}")[1].strip()
    _exchange(a, b)
    run(capsys, "put", "--data", a, "--type", "prescription", "--id", rx,
        "dosageInstruction=500 mg")
    run(capsys, "put", "--data", b, "--type", "prescription", "--id", rx,
        "dosageInstruction=250 mg")
    _exchange(a, b)
    dump_a = run(capsys, "dump", "--data", a)[1]
    assert dump_a == run(capsys, "dump", "--data", b)[1]
    status = json.loads(run(capsys, "status", "--data", b, "--json")[1])
    assert status["conflicts_held"] == 1
    # Both kiosks registered Ada concurrently, with the same name: no conflict there.
    (conflict,) = status["conflicts"]
    record = next(r for r in json.loads(dump_a)["records"] if r["id"] == rx)
    assert record["held"] and record["conflicts"][0]["id"] == conflict["id"]
    assert [v["id"] for v in record["conflicts"][0]["versions"]] == conflict["versions"]
    code, _, err = run(capsys, "put", "--data", b, "--type", "prescription", "--id", rx,
                       "note=x")
    assert code == 1 and "held for review" in err
    code, _, err = run(capsys, "resolve", "--data", b, conflict["id"], "--keep", "nonsense")
    assert code == 1 and "no version" in err
    code, out, _ = run(capsys, "resolve", "--data", b, conflict["id"], "--set",
                       "dosageInstruction=375 mg")
    assert code == 0 and out.strip() == rx
    _exchange(a, b)
    dump_a = run(capsys, "dump", "--data", a)[1]
    assert dump_a == run(capsys, "dump", "--data", b)[1]
    record = next(r for r in json.loads(dump_a)["records"] if r["id"] == rx)
    assert not record["held"] and record["fields"]["dosageInstruction"] == "375 mg"


def test_errors_are_one_clear_line(tmp_path: Path, kiosk: str,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "status", "--data", str(tmp_path / "none"))
    assert code == 1 and "run: haven-kiosk init" in err
    code, _, err = run(capsys, "put", "--data", kiosk, "--type", "patient", "birthDate=soon")
    assert code == 1 and err.count("\n") == 1 and "birthDate" in err
    code, _, err = run(capsys, "put", "--data", kiosk, "--type", "patient", "allergies=x")
    assert code == 1 and "allergies+=" in err
    code, _, err = run(capsys, "delete", "--data", kiosk, "not-an-id")
    assert code == 1
    with pytest.raises(SystemExit) as exit_:
        main(["put", "--data", kiosk, "--type", "spaceship"])
    assert exit_.value.code == 2
    Path(kiosk, "store.key").chmod(0o640)
    code, _, err = run(capsys, "dump", "--data", kiosk)
    assert code == 1 and "chmod 600" in err
    fleet = tmp_path / "other.key"
    fleet.write_bytes(os.urandom(32))
    Path(kiosk, "store.key").chmod(0o600)
    run(capsys, "checkin", "--data", kiosk, "--passport", "AB123456", "--name", "Ada")
    code, _, err = run(capsys, "init", "--data", kiosk, "--site", "S", "--fleet-key", str(fleet))
    assert code == 1 and "another fleet key" in err


def test_entry_point_and_nothing_at_rest(tmp_path: Path) -> None:
    data = tmp_path / "k"
    exe = [sys.executable, "-m", "device.cli"]
    subprocess.run([*exe, "init", "--data", str(data), "--site", "S"], check=True,
                   capture_output=True)
    out = subprocess.run([*exe, "checkin", "--data", str(data), "--passport", "ZQ9988776",
                          "--name", "Bartholomew Quisling", "--reason", "Xylophage bite",
                          "--json"], check=True, capture_output=True, text=True).stdout
    assert json.loads(out)["queue_number"] == "A-001"
    dump = subprocess.run([*exe, "dump", "--data", str(data)], check=True,
                          capture_output=True).stdout
    assert b"Bartholomew Quisling" in dump
    for path in data.rglob("*"):
        blob = path.read_bytes()
        for s in (b"Bartholomew", b"Quisling", b"ZQ9988776", b"Xylophage"):
            assert s not in blob, (s, path.name)


def test_enrolment_through_both_clis_and_an_unwritable_certificate(
        tmp_path: Path, kiosk: str, capsys: pytest.CaptureFixture[str]) -> None:
    from host.cli import main as haven

    hub = str(tmp_path / "hub")
    assert haven(["hub", "init", "--data", hub]) == 0
    request = str(Path(kiosk, "enrolment.req"))
    code = haven(["hub", "enroll", "--data", hub, request, "--out",
                  str(tmp_path / "missing" / "kiosk.cert")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "cannot write" in err and "again" in err
    cert = tmp_path / "kiosk.cert"  # the same request again, to a place that exists
    assert haven(["hub", "enroll", "--data", hub, request, "--out", str(cert)]) == 0
    code, out, _ = run(capsys, "enroll", "--data", kiosk, str(cert))
    assert code == 0 and "enrolled: site 'North', letter B" in out
    code, _, err = run(capsys, "enroll", "--data", kiosk, str(tmp_path / "none.cert"))
    assert code == 1 and err.count("\n") == 1 and "cannot read" in err
