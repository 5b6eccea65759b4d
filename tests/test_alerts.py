"""``haven hub alerts``: each kind raised by its cause and gone with it.

A hub served over TCP on 127.0.0.1 and enrolled kiosks (``test_sync_helpers``), real
SQLite on both sides; a kiosk's health is read by the runtime's own monitors (memory,
disk) with limits set to trip; the hub's time is injected (``now_ms``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from device import audit
from device.health.memory import NAMES as MEMORY_NAMES
from device.health.memory import MemoryLimits, MemoryMonitor
from device.health.storage_guard import NAMES as STORAGE_NAMES
from device.health.storage_guard import StorageGuard, StorageLimits
from device.metrics import samples
from device.metrics import telemetry as kiosk_telemetry
from device.metrics.collector import Metrics
from host.cli import main as haven_main
from host.hub import alerts
from host.hub.hub import Hub
from protocol.driver.wall_clock import wall_ms
from protocol.sync import audit as chain
from tests.hub_db import connect_hub_db

from .test_clones import caught, two_copies
from .test_sync_helpers import Kiosk, served_hub

pytestmark = pytest.mark.usefixtures("hub_backend")

DAY = 86_400_000


class Clock:
    def __init__(self) -> None:
        self.s = 0.0

    def __call__(self) -> float:
        return self.s


def kinds(hub: Hub, now: int | None = None, kiosk: str | None = None) -> set[str]:
    return {a["kind"] for a in alerts.alerts(hub, now)
            if kiosk is None or a["kiosk"] == kiosk}


def report(k: Kiosk, m: Metrics, url: str, *, disk: StorageLimits, memory: MemoryLimits,
           printer: str, thermal: Path) -> None:
    """What the runtime does each minute: a look at memory and disk, a sample, the
    telemetry record when due; then a round takes it to the hub."""
    mem = MemoryMonitor(memory)
    reading = mem.check()
    guard = StorageGuard(k.store.data, disk)
    space = guard.check()
    m.sample(samples.take(reading.rss, reading.available, space.free, thermal),
             {"storage": STORAGE_NAMES[guard.level], "memory": MEMORY_NAMES[mem.level],
              "printer": printer})
    assert kiosk_telemetry.write_due(m, k.store) is not None
    k.sync(url)


def test_a_kiosks_own_troubles_raise_alerts_that_say_what_to_do_and_clear(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    thermal = tmp_path / "thermal"
    (thermal / "thermal_zone0").mkdir(parents=True)
    (thermal / "thermal_zone0" / "temp").write_text("not a number\n")
    clock = Clock()
    with served_hub(tmp_path) as (hub, url):
        k, idle = Kiosk(tmp_path, "a", hub, "A"), Kiosk(tmp_path, "b", hub, "B")
        assert kinds(hub, kiosk=idle.device) == {"not-seen"}  # enrolled, never synced
        idle.sync(url)
        m = Metrics(k.store.data, start_ms=wall_ms(), clock=clock)
        clock.s += 600  # a start has settled
        report(k, m, url, disk=StorageLimits(low_mib=1e9, critical_mib=0),
               memory=MemoryLimits(soft_mib=1, hard_mib=0), printer="paper-out",
               thermal=thermal)
        found = {a["kind"]: a for a in alerts.alerts(hub) if a["kiosk"] == k.device}
        assert set(found) == {"low-disk", "low-memory", "printer", "sensor"}
        assert "SD card" in found["low-disk"]["action"]
        assert found["printer"]["action"] == "load a paper roll"
        assert all(a["action"] and a["what"] for a in found.values())
        assert haven_main(["hub", "alerts", "--data", str(hub.data)]) == 1
        text = capsys.readouterr().out
        assert "low-disk" in text and "do: load a paper roll" in text
        assert haven_main(["hub", "status", "--data", str(hub.data), "--json"]) == 0
        shown = json.loads(capsys.readouterr().out)["alerts"]
        assert {a["kind"] for a in shown if a["kiosk"] == k.device} == set(found)
        # The causes go: the next record (within minutes of the change) clears them.
        (thermal / "thermal_zone0" / "temp").write_text("48000\n")
        clock.s += 600
        roomy = MemoryLimits(soft_mib=1 << 20, hard_mib=0, available_soft_mib=0,
                             available_hard_mib=0)  # this test's process is no kiosk
        report(k, m, url, disk=StorageLimits(), memory=roomy, printer="ok",
               thermal=thermal)
        assert kinds(hub) == set()
        assert haven_main(["hub", "alerts", "--data", str(hub.data), "--json"]) == 0
        assert json.loads(capsys.readouterr().out) == {"alerts": []}
        # Silent longer than its records come (24 h), and half as long again: not seen.
        seen = next(d.last_seen for d in hub.store.devices() if d.device_id == k.device)
        assert seen is not None
        assert "not-seen" not in kinds(hub, seen + 30 * 3600_000, k.device)
        assert "not-seen" in kinds(hub, seen + 40 * 3600_000, k.device)
        k.close()
        idle.close()


def test_quarantine_audit_gaps_and_waiting_conflicts_raise_and_clear(tmp_path: Path) -> None:
    with served_hub(tmp_path) as (hub, url):
        a, b = Kiosk(tmp_path, "a", hub, "A"), Kiosk(tmp_path, "b", hub, "B")
        # quarantine: a kiosk's write of a type only the hub writes
        a.store.put("verifier", None, {"birthYear": "0" * 32, "site": "North"})
        assert audit.record(a.store, "17", "config.set", "ok") == 1
        assert audit.record(a.store, "17", "restart", "ok") == 2
        rx = a.store.put("prescription", None, {"medication": "amoxicillin"})
        for k in (a, b, a):
            k.sync(url)
        b.store.put("prescription", rx, {"medication": "ampicillin"})
        a.store.put("prescription", rx, {"medication": "penicillin"})
        for k in (a, b):
            k.sync(url)
        now = wall_ms()
        assert {"quarantine"} == kinds(hub, now)  # the conflict is new
        assert kinds(hub, now + 2 * DAY) == {"quarantine", "conflict-waiting",
                                             "not-seen"}
        (q,) = hub.store.quarantined()
        assert haven_main(["hub", "quarantine", "drop", str(q["id"]), "--data",
                           str(hub.data)]) == 0
        assert kinds(hub, now) == set()
        # the conflict resolved: no longer waiting
        (conflict,) = hub.conflicts()
        hub.resolve(conflict["id"], keep=conflict["versions"][0]["id"])
        assert kinds(hub, now + 2 * DAY) == {"not-seen"}
        # an audit entry missing: a gap, until it is there again
        db = connect_hub_db(hub.data)
        rid = chain.audit_id(a.store.node, 1)
        row: Any = db.execute("SELECT * FROM ops WHERE rid = ?", [rid]).fetchone()
        db.execute("DELETE FROM ops WHERE rid = ?", [rid])
        db.commit()
        found = [x for x in alerts.alerts(hub, now) if x["kind"] == "audit-gap"]
        assert [x["kiosk"] for x in found] == [a.device] and "GAP" in found[0]["what"]
        db.execute(f"INSERT INTO ops VALUES ({', '.join('?' * len(row))})", row)
        db.commit()
        db.close()
        assert kinds(hub, now) == set()
        a.close()
        b.close()


def test_a_suspected_clone_raises_an_alert_until_cleared(tmp_path: Path) -> None:
    with two_copies(tmp_path) as (hub, url, a, b, _):
        turn = 0
        while not caught(hub):
            assert turn < 6
            for copy in (a, b):
                copy.checkin(f"{copy.data.name} {turn}")
                copy.sync(url)
            turn += 1
        device = a.ident.cert.device_id
        (found,) = [x for x in alerts.alerts(hub) if x["kind"] == "suspected-clone"]
        assert found["kiosk"] == device and "clear-clone" in found["action"]
        hub.clear_clone(device)
        assert "suspected-clone" not in kinds(hub)


def test_a_hostile_kiosks_telemetry_is_its_own_and_breaks_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Absurd values (a list for the printer's state, a time past year 9999, JSON nested
    past the parser's depth in telemetry and in an audit entry's detail) and a record on
    another kiosk's ids: alerts about the writer at most, never a traceback."""
    import uuid

    from device.audit.chain import HEAD_KEY, _keys
    from protocol.sync.telemetry import telemetry_id

    with served_hub(tmp_path) as (hub, url):
        bad, other = Kiosk(tmp_path, "bad", hub, "A"), Kiosk(tmp_path, "ok", hub, "B")
        other.sync(url)
        deep = "[" * 2000 + "]" * 2000  # JSON past the parser's depth
        for node, minute, devices in (
                (bad.store.node, 1, '{"printer": ["paper-out"], "thermal": {"x": 1}}'),
                (bad.store.node, 3, deep), (other.store.node, 2, deep)):
            bad.store.put("telemetry", str(uuid.UUID(bytes=telemetry_id(node, minute))), {
                "start": 0, "end": 2**63 - minute, "storage": "critical", "memory": "hard",
                "devices": devices, "summary": '{"contact_s": 99999999999999}'})
        entry = chain.Entry(1, 0, "17", "config.set", "ok", deep)  # past make_entry's checks

        def link(held: Any) -> tuple[bytes, str, dict[str, Any], bytes, int]:
            rid, signed, head = chain.next_link(
                _keys(bad.store)[1], bad.store.node, None if held is None else bytes(held),
                entry)
            return rid, "audit", signed.values(), head, signed.entry.seq
        bad.store.put_chained(HEAD_KEY, link)
        bad.sync(url)
        assert kinds(hub, kiosk=other.device) == set()
        assert kinds(hub, kiosk=bad.device) == {"low-disk", "low-memory"}
        capsys.readouterr()
        assert haven_main(["hub", "alerts", "--data", str(hub.data)]) == 1
        assert "low-disk" in capsys.readouterr().out
        bad.close()
        other.close()
