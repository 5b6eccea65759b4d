"""The check-in API under attack, over real HTTP to ``haven-kiosk run``: no oracle, no
lockout, no overwrite, and a staff PIN that raises an alert but never locks staff out."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from device.store import init_store
from device.ui.app import KioskApp
from device.ui.live import LiveStatus
from protocol.crdt import schema
from protocol.crdt.ids import patient_id

from .test_runtime import call
from .test_ui_helpers import free_port, make_kiosk, run_kiosk

C = {f.name: f.number for f in schema.CHECKIN.fields}
#: Registered at the kiosk, with their years of birth; the others are unknown to it.
KNOWN = {f"KN{i:06d}": 1950 + i for i in range(40)}
UNKNOWN = [f"UN{i:06d}" for i in range(40)]


@pytest.fixture(scope="module")
def kiosk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    _, kiosk_dir = make_kiosk(tmp_path_factory.mktemp("identity"))
    with init_store(kiosk_dir, "North", "B") as store:
        for passport, year in KNOWN.items():
            store.put("patient", str(patient_id(store.fleet_key, passport)),
                      {"name": f"Secret {passport}", "birthDate": f"{year}-03-04"})
    proc, url = run_kiosk(kiosk_dir, f"tcp://127.0.0.1:{free_port()}", idle=300,
                          args=("--staff-pin-wait", "1"))
    try:
        yield url, kiosk_dir
    finally:
        proc.stop()


def flow(url: str, passport: str, year: int) -> list[tuple[int, Any]]:
    """passport -> year -> reason -> ticket, as the page calls the API; queue numbers
    and ticket counters (which count every check-in alike) are masked."""
    out = []
    for path, body in (("/api/verify", {"passport": passport, "year": str(year)}),
                       ("/api/checkin", {"passport": passport, "year": str(year),
                                         "reason": "sick", "name": None, "consent": False})):
        status, _, answer = call(url, path, body)
        if isinstance(answer, dict):
            answer = {k: ("#" if k in ("queue_number", "ticket") else v)
                      for k, v in answer.items()}
        out.append((status, answer))
    return out


def test_wrong_right_and_unknown_get_the_same_answers(kiosk: tuple[str, Path]) -> None:
    url, _ = kiosk
    wrong = flow(url, "KN000001", 1999)
    right = flow(url, "KN000002", KNOWN["KN000002"])
    unknown = flow(url, "UN999999", 1980)
    assert wrong == right == unknown == [(200, {"result": "ok"}),
                                         (200, {"queue_number": "#", "ticket": "#"})]


def test_3000_calls_in_a_burst_reveal_nothing(kiosk: tuple[str, Path]) -> None:
    url, _ = kiosk
    passports = [*KNOWN, *UNKNOWN]
    calls = [(passports[i % 80], 1940 + i % 80) for i in range(3000)]

    def one(c: tuple[str, int]) -> tuple[int, Any]:
        status, _, answer = call(url, "/api/verify", {"passport": c[0], "year": str(c[1])})
        return status, answer

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, calls))
    known = {a for c, a in zip(calls, answers, strict=True) if c[0] in KNOWN
             for a in [json.dumps(a)]}
    unknown = {json.dumps(a) for c, a in zip(calls, answers, strict=True) if c[0] not in KNOWN}
    assert known == unknown == {json.dumps([200, {"result": "ok"}])}


def test_wrong_years_over_40_passports_do_not_slow_a_patient(kiosk: tuple[str, Path]) -> None:
    url, kiosk_dir = kiosk
    wrong = [(p, 2000 + i % 20) for i in range(4) for p in KNOWN]  # 160 wrong check-ins

    def one(c: tuple[str, int]) -> int:
        return call(url, "/api/checkin", {"passport": c[0], "year": str(c[1]),
                                          "reason": "other"})[0]

    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(one, wrong)) == {200}  # never refused, never a 429
    for passport in ("KN000007", "KN000008"):  # the patient attacked, and another one
        start = time.monotonic()
        status, _, answer = call(url, "/api/checkin", {"passport": passport,
                                                        "year": str(KNOWN[passport]),
                                                        "reason": "sick"})
        took = time.monotonic() - start
        assert status == 200 and answer["queue_number"].startswith("B-"), answer
        assert took < 2.0, took  # at once (a check-in is one commit), not after a wait


def test_the_record_is_unchanged_and_staff_see_the_claim(kiosk: tuple[str, Path]) -> None:
    url, _ = kiosk
    status, _, answer = call(url, "/api/checkin", {"passport": "KN000011", "year": "2002",
                                                    "name": "Other Person", "reason": "sick"})
    assert status == 200 and set(answer) == {"queue_number", "ticket"}
    number = answer["queue_number"]
    token = call(url, "/api/staff/login", {"pin": "246810"})[2]["token"]
    _, _, view = call(url, "/api/staff/overview", headers={"X-Staff-Token": token})
    [row] = [r for r in view["identity"] if r["number"] == number]
    assert row["identity"] == "mismatch"
    assert row["claim"] == {"name": "Other Person", "birthDate": "2002"}
    assert row["record"] == {"name": "Secret KN000011", "birthDate": "1961-03-04"}
    status, _, done = call(url, "/api/staff/identity", {"token": token, "checkin": row["id"],
                                                        "action": "confirm"})
    assert status == 200 and done == {"checkin": row["id"]}
    _, _, view = call(url, "/api/staff/overview", headers={"X-Staff-Token": token})
    assert row["id"] not in {r["id"] for r in view["identity"]}
    assert call(url, "/api/staff/identity", {"token": "nope", "checkin": row["id"],
                                             "action": "confirm"})[0] == 403


def test_a_pin_burst_raises_an_alert_and_the_right_pin_gets_in(
        kiosk: tuple[str, Path]) -> None:
    url, _ = kiosk
    statuses = [call(url, "/api/staff/login", {"pin": f"{100000 + i}"})[0] for i in range(40)]
    assert set(statuses) <= {403, 429} and 403 in statuses
    end = time.monotonic() + 2.0  # the longest wait after a miss: --staff-pin-wait 1
    while True:
        status, _, answer = call(url, "/api/staff/login", {"pin": "246810"})
        if status == 200 or time.monotonic() > end:
            break
        assert status == 429 and answer["wait"] == 1
        time.sleep(0.1)
    assert status == 200
    _, _, view = call(url, "/api/staff/overview", headers={"X-Staff-Token": answer["token"]})
    assert view["pin_alert"]["misses"] >= 5  # what staff see when they log in


def test_no_pin_no_staff_button(tmp_path: Path) -> None:
    with init_store(tmp_path / "k", "North", "B") as store:
        app = KioskApp(store, LiveStatus())
        assert app.config()["staff"] is False
        (tmp_path / "k" / "staff-pin").write_text("not a hash\n")
        (tmp_path / "k" / "staff-pin").chmod(0o600)
        assert app.config()["staff"] is False  # a broken file: off, and logged
        from device.ui.pin import write_pin_file
        write_pin_file(tmp_path / "k", "135790")
        assert app.config()["staff"] is True  # set while running: on, no restart
