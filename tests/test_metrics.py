"""Metrics and usage on the kiosk (``device.metrics``): counts per hour on the card,
bounded; health each minute; telemetry records that reach the hub and no kiosk.

Real SQLite stores, a hub served over TCP on 127.0.0.1 (``test_sync_helpers``), a real
``haven-kiosk run`` for the page's usage; clocks are injected, never waited on."""

from __future__ import annotations

import json
import os
import signal
import uuid
from pathlib import Path
from typing import Any

from device.metrics import reader
from device.metrics import telemetry as kiosk_telemetry
from device.metrics.collector import HOUR_MS, Metrics
from device.metrics.samples import FAILING, Sample, cpu_temperature
from device.store import init_store
from protocol.crdt.delta import decode
from protocol.crdt.schema import TELEMETRY
from protocol.sync import telemetry
from protocol.sync.scope import Facts, Scope, in_scope

from .test_runtime import call
from .test_sync_helpers import Kiosk, served_hub
from .test_ui_helpers import free_port, make_kiosk, run_kiosk

#: Distinctive fake patient data: none of it may reach metrics or telemetry.
NAME, PASSPORT, YEAR = "Zephyrine Okonkwo-Lindqvist", "XQ9184467", 1937
PHI = {"name": NAME, "passport": PASSPORT}
T0 = 1_800_000_000_000 - 1_800_000_000_000 % HOUR_MS
VECTORS = Path(__file__).resolve().parents[1] / "protocol/vectors/telemetry.json"


class Clock:
    def __init__(self) -> None:
        self.s = 1000.0

    def __call__(self) -> float:
        return self.s


def sample(free_mib: float = 900.0, thermal: str = "ok") -> Sample:
    return Sample(50 << 20, 300 << 20, int(free_mib * (1 << 20)), 51.5, thermal, 0.4)


def all_bytes(*dirs: Path) -> bytes:
    return b"".join(p.read_bytes() for d in dirs for p in sorted(d.rglob("*")) if p.is_file())


def phi_absent(blob: bytes) -> None:
    """No name or passport number (a year of birth is four digits: metrics are numbers,
    and times and byte counts would hold any four digits now and then)."""
    for value in (NAME, PASSPORT, NAME.split()[0], NAME.split()[1]):
        assert value.encode() not in blob


def test_hours_on_the_card_are_counts_only_and_bounded(tmp_path: Path) -> None:
    clock = Clock()
    m = Metrics(tmp_path, start_ms=T0, clock=clock, max_bytes=8192)
    summary = type("S", (), {"bytes_sent": 900, "bytes_received": 300, "frames_sent": 10,
                             "frames_lost": 1, "pushed": 2, "pulled": 0, "rtt_ms": 42.0,
                             "seconds": 0.5})()
    m.round("synced", summary, 0.5)
    m.round("synced", None, 0.01)  # idle: only counted
    m.round("offline", None, 2.0)
    m.checkin("fr", 41.5)
    m.checkin(PHI["name"], 1e9)  # not a language: other; a time: clamped to an hour
    m.abandoned("s-year", "ar")
    m.abandoned(PHI["passport"], "sw")  # not a screen: other
    m.sample(sample(), {"storage": "ok", "memory": "ok", "printer": "none"})
    clock.s += 3600  # the next hour: the first goes to the card
    m.checkin("en", 30)
    got = m.read()
    first, now = got["hours"]
    assert first["start_ms"] == T0 and first["end_ms"] == T0 + HOUR_MS
    assert first["sync"]["rounds"] == 3 and first["sync"]["ok"] == 2
    assert first["sync"]["outcomes"] == {"offline": 1, "synced": 2}
    assert first["sync"]["bytes_sent"] == 900 and first["sync"]["rtt_ms_max"] == 42.0
    assert first["usage"]["languages"] == {"ar": 0, "fr": 1, "other": 1, "sw": 0} or \
        first["usage"]["languages"] == {"fr": 1, "other": 1}
    assert first["usage"]["abandoned"] == {"other": 1, "s-year": 1}
    assert first["usage"]["checkin_seconds"] == {"count": 2, "total": 3641.5, "max": 3600.0}
    assert [r["outcome"] for r in got["rounds"]] == ["synced", "offline"]
    assert first["health"][0]["disk_free_mib"] == 900.0 and first["health"][0]["temp_c"] == 51.5
    assert now["usage"]["checkins"] == 1  # the hour in memory
    assert reader.read(tmp_path)["hours"] == []  # the hours wait to be written together
    m.flush()  # as the runtime stops
    assert reader.read(tmp_path)["hours"][0] == first  # a stopped kiosk's, from the card
    for _ in range(200):  # bounded: old hours go, the card holds about max_bytes
        m.sample(sample(), {})
        clock.s += 3600
        m.round("synced", summary, 0.1)
    assert m.file.size() <= 8192 + 1024
    assert len(m.read()["hours"]) < 100
    (m.file.path).open("a").write('{"start_ms": 1, "cut sh')  # a torn line is passed over
    assert m.read()["hours"]
    phi_absent(all_bytes(tmp_path))


def test_cpu_temperature_absent_failing_and_hottest(tmp_path: Path) -> None:
    assert cpu_temperature(tmp_path / "none") == (None, "absent")
    for i, text in enumerate(("48312\n", "61000\n")):
        (tmp_path / f"thermal_zone{i}").mkdir()
        (tmp_path / f"thermal_zone{i}" / "temp").write_text(text)
    assert cpu_temperature(tmp_path) == (61.0, "ok")
    for i in range(2):
        (tmp_path / f"thermal_zone{i}" / "temp").write_text("garbage")
    assert cpu_temperature(tmp_path) == (None, FAILING)


def test_telemetry_is_due_at_start_on_a_change_and_every_period(tmp_path: Path) -> None:
    clock = Clock()
    m = Metrics(tmp_path, start_ms=T0, clock=clock, min_gap_s=600, telemetry_every_s=24 * 3600)
    assert not m.telemetry_due()  # nothing measured yet
    m.sample(sample(), {"storage": "ok", "memory": "ok", "printer": "ok"})
    assert not m.telemetry_due()  # the start settles first
    clock.s += 600
    assert m.telemetry_due()
    values = m.take_telemetry()
    assert values["storage"] == "ok" and json.loads(values["devices"])["printer"] == "ok"
    clock.s += 120
    m.sample(sample(10.0), {"storage": "low", "memory": "ok", "printer": "ok"})
    assert not m.telemetry_due()  # a change, within the gap
    clock.s += 600
    assert m.telemetry_due()
    m.take_telemetry()
    clock.s += 3600
    assert not m.telemetry_due()  # nothing changed
    clock.s += 23 * 3600
    assert m.telemetry_due()


def test_telemetry_reaches_the_hub_never_a_kiosk_and_leaves_the_card(tmp_path: Path) -> None:
    clock = Clock()
    with served_hub(tmp_path) as (hub, url):
        a, b = Kiosk(tmp_path, "a", hub, "A"), Kiosk(tmp_path, "b", hub, "B")
        door = Kiosk(tmp_path, "d", hub, "C", role="door")
        a.store.checkin(passport=PASSPORT, name=NAME, birth_year=YEAR, reason="sick")
        m = Metrics(a.store.data, start_ms=T0, clock=clock)
        m.checkin("sw", 52)
        m.sample(sample(), {"storage": "ok", "memory": "ok", "printer": "none"})
        clock.s += 600
        rid = kiosk_telemetry.write_due(m, a.store)
        assert rid is not None and kiosk_telemetry.write_due(m, a.store) is None
        lanes = a.store.status()["outbox"]["lanes"]
        assert any(int(k) == 5 and v["entries"] for k, v in lanes.items())
        first = a.sync(url)
        assert first.pushed == 2 + 1
        # what a round tells the metrics: its time and the session's round trip too
        assert first.seconds > 0 and first.rtt_ms is not None and first.frames_sent > 0
        for k in (b, door, a):
            k.sync(url)
            k.sync(url)  # a second round: the scope sums agreed (no rebase asked)
            assert k.state.rebase_owed is False
        raw = uuid.UUID(rid).bytes
        assert b.store.view(rid) is None and door.store.view(rid) is None
        ops = hub.store.ops_in(*telemetry.id_range(a.store.node))
        assert [op.rid for op in ops] == [raw]
        held = telemetry.from_fields(decode(ops[0].data).set)
        assert held["summary"]["usage"]["languages"] == {"sw": 1}
        phi_absent(json.dumps(held).encode())
        # acknowledged: the kiosk's collection drops it (no scope holds it)
        a.store.flush_acks()
        a.store.collect(Scope("full", "North", "2027-01-15"), stable=1 << 40, budget_s=5)
        assert a.store.view(rid) is None
        for k in (a, b, door):
            k.close()


def test_no_scope_holds_telemetry_and_ids_match_the_vectors() -> None:
    vectors = json.loads(VECTORS.read_text())
    for v in vectors["ids"]:
        rid = telemetry.telemetry_id(v["node"], v["minute"])
        assert rid.hex() == v["rid"] and telemetry.is_telemetry_id(rid)
        assert telemetry.id_range(v["node"])[0] <= rid <= telemetry.id_range(v["node"])[1]
    facts = Facts(bytes.fromhex(vectors["ids"][0]["rid"]), TELEMETRY.number)
    for role in ("full", "door", "clinician"):
        assert not in_scope(Scope(role, "North", "2027-01-15"), facts)
    assert telemetry.from_fields({1: 5, 3: 7, 8: "not json", 9: '{"usage": {}}'}) == {
        "start": 5, "summary": {"usage": {}}}


def test_page_usage_reaches_the_card_and_no_patient_value_does(tmp_path: Path) -> None:
    _, kiosk_dir = make_kiosk(tmp_path)
    proc, url = run_kiosk(kiosk_dir, f"tcp://127.0.0.1:{free_port()}", idle=300)
    try:
        body: dict[str, Any] = {"passport": PHI["passport"], "year": str(YEAR),
                                "reason": "sick", "name": PHI["name"],
                                "consent": False, "lang": "prs", "took_ms": 48_000}
        assert call(url, "/api/checkin", body)[0] == 200
        for screen in ("s-reason", PHI["name"]):
            status, _, answer = call(url, "/api/usage", {"event": "abandon", "screen": screen,
                                                         "lang": "fr"})
            assert (status, answer) == (200, {"result": "ok"})
        assert call(url, "/api/usage", {"event": PHI["passport"]})[0] == 400
    finally:
        proc.p.send_signal(signal.SIGTERM)
        proc.p.wait(20)
    got = reader.read(kiosk_dir)
    usage = [h["usage"] for h in got["hours"] if h["usage"].get("checkins")
             or h["usage"].get("abandoned")]
    assert usage[-1]["languages"].get("prs") == 1
    assert usage[-1]["abandoned"] == {"other": 1, "s-reason": 1}
    assert usage[-1]["checkin_seconds"]["total"] == 48.0
    phi_absent(all_bytes(kiosk_dir / "metrics"))
    with init_store(kiosk_dir, "North", "B") as store:  # the telemetry written meanwhile
        rows = [decode(d) for d in store.deltas_in(*telemetry.id_range(store.node))]
        phi_absent(json.dumps([telemetry.from_fields(d.set) for d in rows]).encode())
    assert os.stat(kiosk_dir / "metrics").st_mode & 0o077 == 0
