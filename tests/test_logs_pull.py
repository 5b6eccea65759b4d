"""The runtime's logs end to end: distinctive fake patients go through check-ins, staff
actions, errors and a crash; ``haven tech logs`` pulls over the console (a pty pair); the
runtime restarts, keeps its logs, and the next pull goes on from the last index; no name,
passport number, year or note reaches any log file, pulled or kept. A pull folder of
another kiosk, a broken record and a bad ``--since`` get one line each; bad arguments to the
kiosk's ``logs`` command are refused."""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from device.runtime import Runtime
from device.tech.trusted_time import SYNC, TrustedClock
from host import tech_log
from host.cli import main
from host.hub import technician
from host.hub.hub import Hub
from host.tech.client import CommandRefused, TechClient
from host.tech.logs import LINES, STATE
from protocol.sync import credential as c

from .console_helpers import Cable, console_runtime, run_beside_technician
from .test_ui_helpers import make_kiosk

BOUND = 30.0
PIN = "482915"
NAMES = ("Zaphira Quonsett", "Bartholomew Xyloquist", "Ondine Farquharsonne")
PASSPORTS = ("QX7781234", "ZK0099887")
YEARS = ("1931", "1917")
NOTE = "allergic to penicillin since the flood"
PHI = (*NAMES, *PASSPORTS, *YEARS, NOTE)


def _post(base: str, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(base + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, {}


def _get(base: str, path: str, token: str) -> dict[str, Any]:
    req = urllib.request.Request(base + path, headers={"x-staff-token": token})
    with urllib.request.urlopen(req, timeout=10) as r:
        return dict(json.loads(r.read()))


def _patients_through_every_flow(rt: Runtime) -> None:
    """Check-ins, staff actions, errors and a crash, each carrying fake patient data."""
    assert rt.address is not None
    base = "http://{}:{}".format(*rt.address)
    statuses = [
        _post(base, "/api/checkin", {"name": NAMES[0], "year": YEARS[0], "reason": "sick",
                                     "consent": True})[0],
        _post(base, "/api/checkin", {"passport": PASSPORTS[0], "year": YEARS[1],
                                     "reason": "injury"})[0],
        _post(base, "/api/checkin", {"passport": PASSPORTS[1], "year": "19x1",
                                     "reason": "sick"})[0],  # refused: a bad year
        _post(base, "/api/staff/login", {"pin": YEARS[0] + "00"})[0],  # a wrong PIN
    ]
    assert statuses == [200, 200, 400, 403]
    _, login = _post(base, "/api/staff/login", {"pin": PIN})
    token = login["token"]
    queue = _get(base, "/api/staff/overview", token)["queue"]
    assert _post(base, "/api/staff/queue", {"token": token, "checkin": queue[0]["id"],
                                            "action": "call"})[0] == 200
    _post(base, "/api/staff/identity", {"token": token, "checkin": queue[-1]["id"],
                                        "action": "correct", "name": NAMES[2],
                                        "year": YEARS[1]})
    # Errors as the code logs them, with values in the arguments, in an f-string and in
    # an exception's message; then an unhandled exception in a thread of the runtime.
    log = logging.getLogger("device.ui.app")
    log.error("check-in refused: %s", OSError(f"{NAMES[1]} {PASSPORTS[1]} {NOTE}"))
    log.warning(f"a note for {NAMES[1]}: {NOTE}")
    try:
        raise ValueError(f"passport {PASSPORTS[1]} born {YEARS[0]}")
    except ValueError:
        log.exception("check-in not saved for %s", NAMES[1])

    def crash() -> None:
        raise RuntimeError(f"{NAMES[0]} {PASSPORTS[0]} {NOTE}")
    t = threading.Thread(target=crash, name="crasher")
    t.start()
    t.join(BOUND)


def _logs(port: str, cred: Path, out: Path, *extra: str) -> int:
    return main(["tech", "logs", port, "--credential", str(cred), "--out", str(out),
                 "--timeout", "5", *extra])


def _restart(port: str, cred: Path) -> None:
    assert main(["tech", "restart", port, "--credential", str(cred), "--timeout", "5"]) == 0


def _visit(rt: Runtime, cable: Cable, technician: Callable[[], dict[str, Any]]
           ) -> dict[str, Any]:
    """The runtime run while ``technician`` works at its console, which it ends."""
    try:
        got = run_beside_technician(rt, technician, BOUND)
    finally:
        cable.close()
    assert "failed" not in got, got
    return got


def _runtime(kiosk_dir: Path, cable: Cable) -> Runtime:
    rt: Runtime = console_runtime(kiosk_dir, cable, staff_pin=PIN, log_max_mib=1.0)
    return rt


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_logs_survive_a_restart_pull_on_from_the_last_index_and_hold_no_patient_data(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(tech_log.ENV, str(tmp_path / "tech.log"))
    hub_dir, kiosk_dir = make_kiosk(tmp_path)
    now = int(time.time() * 1000)
    TrustedClock(kiosk_dir).note(SYNC, now)
    with Hub(hub_dir) as hub:
        _, doc = technician.issue(hub, name="Amina", sites=["North"], now_ms=now)
    cred = tmp_path / "amina.cred"
    cred.write_bytes(c.dump_file(c.load_file(doc)))
    out, out2, other = tmp_path / "pulled", tmp_path / "recent", tmp_path / "other"

    cable = Cable()
    rt = _runtime(kiosk_dir, cable)

    def first_visit() -> dict[str, Any]:
        _patients_through_every_flow(rt)
        code = _logs(cable.b, cred, out, "--json")
        printed = capsys.readouterr()
        assert code == 0, printed.err
        first = json.loads(printed.out.splitlines()[-1])  # after the runtime's own line
        _restart(cable.b, cred)
        return {"code": code, "first": first}

    got = _visit(rt, cable, first_visit)
    first = got["first"]
    assert got["code"] == 0 and first["entries"] > 5 and first["gaps"] == []
    state = json.loads((out / STATE).read_bytes())
    assert state["next"] == first["next"] == first["from"] + first["entries"]

    cable = Cable()
    rt = _runtime(kiosk_dir, cable)

    def second_visit() -> dict[str, Any]:
        assert rt.address is not None
        _post("http://{}:{}".format(*rt.address), "/api/checkin",
              {"name": NAMES[1], "year": YEARS[1], "reason": "child", "consent": True})
        codes = [_logs(cable.b, cred, out, "--json")]
        again = json.loads(capsys.readouterr().out.splitlines()[-1])
        codes.append(_logs(cable.b, cred, out2, "--since", str(first["next"])))
        text = capsys.readouterr().out
        (other / STATE).parent.mkdir()
        (other / STATE).write_text(json.dumps({"kiosk": "ffffffff", "next": 3, "bytes": 0}))
        codes.append(_logs(cable.b, cred, other))
        (tmp_path / "junk").mkdir()
        (tmp_path / "junk" / STATE).write_text("{not json")
        codes.append(_logs(cable.b, cred, tmp_path / "junk"))
        codes.append(_logs(cable.b, cred, out2, "--since", "-4"))
        record = json.loads((out / STATE).read_bytes())
        lines = b"{}\n" * 9  # what an earlier pull got: kept
        for name, files in (("cut", {STATE: json.dumps(record).encode(), LINES: lines}),
                            ("unrecorded", {LINES: lines}),
                            ("negative", {STATE: json.dumps({**record, "bytes": -1}).encode()})):
            (tmp_path / name).mkdir()
            for file, data in files.items():
                (tmp_path / name / file).write_bytes(data)
            codes.append(_logs(cable.b, cred, tmp_path / name))
        errors = capsys.readouterr().err
        refused = []
        with TechClient(cable.b, c.load_file(cred.read_bytes()), timeout=5) as tool:
            for args in ({"since": -1}, {"since": "0"}, {"since": 1.5}, {"max": 1 << 30},
                         {"max": 10}):
                with pytest.raises(CommandRefused) as e:
                    tool.fetch("logs", args, tmp_path / "refused")
                refused.append(e.value.code)
        _restart(cable.b, cred)
        return {"codes": codes, "again": again, "text": text, "errors": errors,
                "refused": refused}

    got = _visit(rt, cable, second_visit)
    again = got["again"]
    assert got["codes"] == [0, 0, 2, 2, 2, 2, 2, 2], got
    assert got["refused"] == ["bad-args"] * 5
    assert again["from"] == first["next"] and again["entries"] > 0
    lines = [json.loads(line) for line in (out / LINES).read_bytes().splitlines()]
    indexes = [e["i"] for e in lines]
    assert indexes == list(range(first["from"], again["next"]))  # once each, in order
    starts = [e for e in lines if e["ev"] == "page at http://%s:%d"]
    assert len(starts) == 2  # both runs, one file
    assert any(e.get("crash") == "thread" and e["exc"] == "RuntimeError" for e in lines)
    assert any(e.get("outcome") == "offline" for e in lines)
    assert f"entries ({first['next']} to" in got["text"] and "next pull starts at" in got["text"]
    errors = got["errors"].splitlines()
    assert "kiosk ffffffff, not" in errors[0] and "unreadable" in errors[1] \
        and "--since" in errors[2], errors
    assert "says " in errors[3] and "(it is missing)" in errors[4], errors
    assert "not a log pull's record" in errors[5], errors
    for name in ("cut", "unrecorded"):
        assert (tmp_path / name / LINES).read_bytes() == b"{}\n" * 9
    recent = [json.loads(x) for x in (out2 / LINES).read_bytes().splitlines()]
    assert recent and recent[0]["i"] >= first["next"]

    kept = [p for p in (kiosk_dir / "logs").iterdir() if p.is_file()]
    pulled = [p for d in (out, out2) for p in d.iterdir() if p.is_file()]
    assert kept and pulled
    for path in kept + pulled:
        data = path.read_bytes()
        for value in PHI:
            assert value.encode() not in data, (value, path)
            assert value.lower().encode() not in data.lower(), (value, path)
