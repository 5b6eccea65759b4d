"""The kiosk's side of a vaccine fridge's node (``device.fridges``): readings stored once and
acknowledged after commit, unknown keys refused, bad frames and messages counted and
dropped, an alarm on the staff screen, the LED and the hub, and the FHIR export.

The node is a CPython initiator session (``fridge_helpers.NodeStandIn``) joined to a
``FridgeLink`` through ``tools.linksim`` on a simulated clock; the kiosk's store is real
SQLite, and the hub is served over TCP on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from device.cli import main as kiosk_cli
from device.config import KioskConfig
from device.enrol import ensure_keys
from device.enrol import load as enrol_keys
from device.fridges.link import COMMIT_EVERY, FridgeLink
from device.fridges.port import Fridges
from device.fridges.records import EnrolmentError, FridgeRecords
from device.fridges.tech_command import EXTRA as TECH_EXTRA
from device.hardware import panel as hw
from device.runtime import Runtime
from device.store import Store
from device.ui.live import LiveStatus
from device.ui.pin import PinSource
from device.ui.request import Request
from device.ui.staff import Staff, fridge_alarms
from host import tech_log
from host.cli import main as haven_main
from host.hub.alerts import alerts
from host.hub.fhir import export
from protocol import messages, sensor
from protocol.crdt.delta import decode
from protocol.crdt.schema import TEMPERATURE
from protocol.framing import encode_frame
from protocol.session.core import Closed
from protocol.sync import credential as c
from protocol.sync import sensor_records as ids
from protocol.sync.scope import Scope

from .fhir_r4 import validate
from .fridge_helpers import NodeStandIn, drive, joined, pty_pair, readings_held
from .tech_helpers import tech_kiosk
from .test_sync_helpers import Kiosk, served_hub
from .test_ui_helpers import make_kiosk, runtime_in_thread

T0 = 1_800_000_000  #: the kiosk's clock, Unix seconds


def public(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes_raw()


class Setup:
    def __init__(self, kiosk: Kiosk) -> None:
        self.kiosk = kiosk
        self.records = FridgeRecords(kiosk.store, clock=lambda: T0)
        self.node_key = X25519PrivateKey.generate()
        self.fridge = self.records.enrol("fridge-1", public(self.node_key), "ds18b20",
                                         "pharmacy")
        self.alarms: list[str] = []
        # Each readings message committed as it comes; batching has a test of its own.
        self.link = FridgeLink(self.records, kiosk.ident.x_key, clock=lambda: T0,
                               on_alarm=lambda e: self.alarms.append(e.name), commit_every=0)
        self.node = NodeStandIn(self.node_key, public(kiosk.ident.x_key))
        self.sim = joined(self.node, self.link)

    def until(self, cond: object, limit: float = 60.0) -> None:
        assert self.sim.run(lambda s: bool(cond()), limit)  # type: ignore[operator]

    def stored(self) -> list[int | str]:
        """The values of the fridge's readings held, in time order."""
        return [v for _, v in readings_held(
            ((v.record_id, v.fields) for v in self.kiosk.store.views()
             if v.type == TEMPERATURE.number), self.fridge.device)]


@pytest.fixture
def setup(tmp_path: Path):
    with served_hub(tmp_path) as (hub, url):
        s = Setup(Kiosk(tmp_path, "a", hub, "A"))
        s.url, s.hub = url, hub  # type: ignore[attr-defined]
        yield s
        s.kiosk.close()


def test_readings_are_stored_once_even_when_resent_and_acked_after_commit(setup) -> None:
    s = setup
    seen_at_ack: list[list[int]] = []
    s.node.on_message = lambda m: seen_at_ack.append(s.stored()) if (
        m.type == sensor.READINGS_ACK.number) else None
    s.node.readings(0, [[T0 + 60 * i, 450 + i] for i in range(10)])
    s.until(lambda: s.node.acks(sensor.READINGS_ACK) == [10])
    assert seen_at_ack == [[450 + i for i in range(10)]]  # the ack came after the commit
    # The link dropped before the ack reached the node: a new process sends 5..14 again.
    s.node.restart(s.sim.now)
    s.node.readings(5, [[T0 + 60 * i, 450 + i] for i in range(5, 15)] )
    s.until(lambda: s.node.acks(sensor.READINGS_ACK)[-1:] == [15])
    welcome = [m for m in s.node.received if m.type == sensor.WELCOME.number]
    assert [(w.get("time"), w.get("acked")) for w in welcome] == [(T0, 0), (T0, 10)]
    assert s.stored() == [450 + i for i in range(15)]
    assert s.link.counts.readings == 15 and s.link.counts.sessions == 2
    # one write of the hour's record per commit: the resent ones cost nothing
    status = s.kiosk.store.status()["outbox"]["lanes"]
    assert sum(v["entries"] for k, v in status.items() if int(k) == 5) == 2 + 1  # + device
    view = s.kiosk.store.view(str(uuid.UUID(bytes=ids.hour_id(s.fridge.device, T0 // 3600))))
    assert view.fields[1] == s.fridge.device and view.fields[2] == ids.iso_time(T0)
    assert view.fields[6] == 60 and view.fields[8] == (1 << 15) - 1 and 9 not in view.fields
    assert view.fields[7] == " ".join([str(450 + i) for i in range(15)] + 45 * ["E"])


def test_a_fault_is_recorded_as_a_fault_and_an_unknown_time_as_none(setup) -> None:
    s = setup
    s.node.readings(0, [[None, "reset-value"], [T0 + 60, "crc"], [T0 + 180, 412]])
    s.until(lambda: s.node.acks(sensor.READINGS_ACK) == [3])
    fault = s.kiosk.store.view(str(uuid.UUID(bytes=ids.reading_id(s.fridge.device, 0))))
    assert fault.fields.get(4) == "reset-value" and 3 not in fault.fields
    assert 2 not in fault.fields and fault.fields[5] == 0
    # In the hour's record, a fault's slot is told from one not received.
    hour = s.kiosk.store.view(str(uuid.UUID(bytes=ids.hour_id(s.fridge.device, T0 // 3600))))
    assert hour.fields[7].split()[:4] == ["E", "E", "E", "412"]
    assert hour.fields[8] == 0b1010 and hour.fields[9] == "1=crc"
    assert s.stored() == ["reset-value", "crc", 412]


def test_an_hour_collected_before_it_is_over_is_completed_and_an_older_one_never_overwritten(
        setup) -> None:
    """The hub acknowledged an hour's record and the kiosk collected it mid-hour: the
    hour's later readings are written with its earlier ones (the cursor's copy), so the
    hub's last write holds them all; a reading for an older hour collected since (the
    node's clock stepped back) or for a minute taken is a record of its own."""
    s = setup
    hour = T0 // 3600

    def collected() -> None:
        s.kiosk.sync(s.url)
        s.kiosk.store.flush_acks()
        s.kiosk.store.collect(Scope("full", "North", "2027-01-15"), stable=1 << 40,
                              budget_s=5)

    assert s.records.store_readings(s.fridge, 0, [[T0 - 60, 440], [T0, 450]]) == (2, 2)
    collected()
    assert s.stored() == []
    later = [[T0 + 60, 451], [T0 + 90, 452], [T0 + 120, 453], [T0 - 120, 439]]
    assert s.records.store_readings(s.fridge, 2, later) == (6, 4)
    assert s.records.store_readings(s.fridge, 2, later) == (6, 0)  # sent again: no write
    assert s.stored() == [439, 450, 451, 452, 453]  # 452 on a record of its own
    s.kiosk.sync(s.url)
    ops = s.hub.store.ops_in(ids.device_id(s.kiosk.store.node, 0),
                             ids.hour_id(s.fridge.device, ids.MAX_SEQ))
    latest = {op.rid: decode(op.data).set for op in ops}  # in stamp order: the last wins
    on_hub = readings_held(latest.items(), s.fridge.device)
    assert on_hub == [(ids.iso_time(T0 - 120), 439), (ids.iso_time(T0 - 60), 440),
                      (ids.iso_time(T0), 450), (ids.iso_time(T0 + 60), 451),
                      (ids.iso_time(T0 + 90), 452), (ids.iso_time(T0 + 120), 453)]
    assert ids.hour_id(s.fridge.device, hour) in latest
    assert s.records.cursor(s.fridge).latest_hour() == (hour, {0: 450, 1: 451, 2: 453})


def test_readings_wait_for_a_batch_commit_and_an_alarm_or_a_close_commits_them(setup) -> None:
    s = setup
    s.link.commit_every = 900.0
    s.until(lambda: s.node.welcomed)
    start = s.sim.now
    for i in range(5):  # a reading a minute, as the node sends them
        s.node.readings(i, [[T0 + 60 * i, 450 + i]])
        s.sim.run(lambda sim: False, 60)
    assert s.stored() == [] and s.node.acks(sensor.READINGS_ACK) == []
    s.until(lambda: s.node.acks(sensor.READINGS_ACK) == [5], limit=900)
    assert s.sim.now - start >= 900 and s.stored() == [450, 451, 452, 453, 454]
    assert s.link.counts.commits == 1  # one transaction for the five
    # An alarm commits the readings before it at once, then itself.
    s.node.readings(5, [[T0 + 300, 455]])
    s.sim.run(lambda sim: False, 5)
    s.node.send(sensor.ALARM_LANE, sensor.ALARM, seq=0, kind="high", state="raised",
                since=T0, minutes=30, extreme=1200)
    s.until(lambda: s.node.acks(sensor.ALARM_ACK) == [1], limit=30)
    assert s.stored() == [450 + i for i in range(6)] and s.node.acks(
        sensor.READINGS_ACK) == [5, 6]
    # A session that ends commits what waits: the node's next session finds it stored.
    s.node.readings(6, [[T0 + 360, 456]])
    s.sim.run(lambda sim: False, 5)
    s.link.session.close("done")
    s.sim.run(lambda sim: False, 5)
    assert s.stored() == [450 + i for i in range(7)]


def test_a_node_with_a_key_not_enrolled_is_refused(setup) -> None:
    s = setup
    stranger = NodeStandIn(X25519PrivateKey.generate(), public(s.kiosk.ident.x_key))
    stranger.readings(0, [[T0, 500]])
    sim = joined(stranger, s.link)
    assert sim.run(lambda sim: any(isinstance(e, Closed) for e in sim.events[0]), 30)
    closed = next(e for e in sim.events[0] if isinstance(e, Closed))
    assert closed.reason == "unknown-key" and closed.by_peer
    assert s.link.counts.refused_keys >= 1 and s.stored() == []
    # The line waits for the next handshake: the enrolled node gets through.
    s.sim.now = sim.now
    s.node.restart(sim.now)
    s.node.readings(0, [[T0, 500]])
    s.until(lambda: s.node.acks(sensor.READINGS_ACK) == [1])
    assert s.stored() == [500]


def test_bad_frames_and_bad_messages_are_counted_and_dropped(setup) -> None:
    s = setup
    s.until(lambda: s.node.welcomed)
    s.link.receive_data(b"\x00\x17garbage\xff\xfe\x00" + bytes(range(1, 200)) + b"\x00", s.sim.now)
    assert s.link.frames_dropped > 0
    # Well framed, but its tag fails: the session refuses it, and it is counted too.
    before = s.link.frames_dropped
    s.link.receive_data(encode_frame(b"\x10\x00\x05" + bytes(40), crc=False), s.sim.now)
    assert s.link.frames_dropped == before + 1
    assert s.link.session.stats.refused_frames == 1
    s.node.readings(0, [[T0, 450]])
    bad_value = messages.encode(messages.make("readings", first=1, readings=[[T0, 99999]]))
    s.node.send_raw(sensor.READINGS_LANE, bad_value)  # past what a sensor reads
    s.node.send_raw(sensor.ALARM_LANE, b"\xa1\x00")  # not a message
    s.node.send(sensor.ALARM_LANE, sensor.WELCOME, time=1, acked=0, alarms_acked=0)
    s.node.readings(1, [[T0 + 60, 451]])
    s.until(lambda: s.node.acks(sensor.READINGS_ACK)[-1:] == [2])
    assert s.link.counts.bad_messages == 3 and s.stored() == [450, 451]
    assert s.link.session.is_open


def test_enrolment_refuses_what_does_not_fit(setup) -> None:
    s = setup
    with pytest.raises(EnrolmentError, match="name"):
        s.records.enrol("fridge-1", public(X25519PrivateKey.generate()))
    with pytest.raises(EnrolmentError, match="key"):
        s.records.enrol("fridge-2", public(s.node_key))
    with pytest.raises(EnrolmentError, match="32 bytes"):
        s.records.enrol("fridge-2", b"short")
    gone = s.records.remove("fridge-1")
    again = s.records.enrol("fridge-1", public(s.node_key))
    assert again.slot == gone.slot + 1 and again.device != gone.device  # never reused
    assert [e.name for e in s.records.enrolments()] == ["fridge-1"]


def staff_overview(store: object, data: Path) -> dict:
    """The staff screen's overview, as the page asks for it (PIN, then token)."""
    staff = Staff(store, LiveStatus(), PinSource(data, "246810"))

    async def ask() -> dict:
        token = (await staff.login({"pin": "246810"}))["token"]
        return await staff.overview(Request("GET", "/api/staff/overview", {},
                                            {"x-staff-token": token}))
    return asyncio.run(ask())


def test_an_excursion_alarm_reaches_the_staff_screen_the_led_and_the_hub(
        setup, tmp_path: Path) -> None:
    s = setup
    kit = hw.Hardware(simulated=True)
    rt = Runtime(KioskConfig(data=tmp_path / "rt", hardware="simulated"), hardware=kit)
    rt.fridges = Fridges(s.kiosk.store, s.kiosk.ident.x_key, [], 115200,
                         wall=lambda: T0, on_change=rt._show)
    s.link = rt.fridges.link(s.sim.now)
    s.sim = joined(s.node, s.link, s.sim.now)
    rt._show()
    calm = kit.led.pattern
    assert calm != hw.FRIDGE_ALARM
    s.node.readings(0, [[T0 - 60 * i, 850 + i] for i in range(30, 0, -1)])
    s.node.send(sensor.ALARM_LANE, sensor.ALARM, seq=0, kind="high", state="raised",
                since=T0 - 1800, minutes=30, extreme=879)
    # The alarm overtakes the readings (lane 0); they wait for their batch's commit.
    s.until(lambda: s.node.acks(sensor.ALARM_ACK) == [1]
            and s.node.acks(sensor.READINGS_ACK) == [30], limit=COMMIT_EVERY + 60)
    # the staff screen, the LED
    alarm = {"fridge": "fridge-1", "location": "pharmacy", "kind": "high",
             "since": T0 - 1800, "minutes": 30, "extreme": 879, "seq": 0}
    assert staff_overview(s.kiosk.store, s.kiosk.store.data)["fridges"] == [alarm]
    assert kit.led.pattern == hw.FRIDGE_ALARM
    # the alarm waits in lane 0, ahead of everything; the readings in lane 5
    lanes = s.kiosk.store.status()["outbox"]["lanes"]
    assert lanes["0"]["entries"] == 1 and lanes["5"]["entries"] == 1 + 1  # an hour, a device
    # the hub: every record once; no other kiosk is sent any
    other = Kiosk(tmp_path, "b", s.hub, "B")
    s.kiosk.sync(s.url)
    for k in (other, s.kiosk):
        k.sync(s.url)
        k.sync(s.url)
        assert k.state.rebase_owed is False  # the scope sums agree
    lo, hi = ids.device_id(s.kiosk.store.node, 0), ids.hour_id(s.fridge.device, ids.MAX_SEQ)
    held = s.hub.store.ops_in(lo, hi)
    assert len(held) == len({op.rid for op in held}) == 1 + 1 + 1
    assert all(other.store.view(str(uuid.UUID(bytes=op.rid))) is None for op in held)
    (alert,) = [a for a in alerts(s.hub) if a["kind"] == "fridge-alarm"]
    assert alert["kiosk"] == s.kiosk.device and alert["severity"] == "critical"
    assert "fridge fridge-1: temperature alarm high, 8.79 °C" in alert["what"]
    # acknowledged, the kiosk's collection drops them (no scope holds them)
    s.kiosk.store.flush_acks()
    s.kiosk.store.collect(Scope("full", "North", "2027-01-15"), stable=1 << 40, budget_s=5)
    assert s.stored() == []
    # cleared: off the staff screen and the LED; the hub gets the clearing too
    s.node.send(sensor.ALARM_LANE, sensor.ALARM, seq=1, kind="high", state="cleared",
                since=T0 - 1800, minutes=45, extreme=912)
    s.until(lambda: s.node.acks(sensor.ALARM_ACK) == [1, 2])
    assert staff_overview(s.kiosk.store, s.kiosk.store.data)["fridges"] == []
    assert kit.led.pattern == calm
    s.kiosk.sync(s.url)
    assert [a for a in alerts(s.hub) if a["kind"] == "fridge-alarm"] == []
    other.close()
    kit.close()
    # the FHIR export: a Device, and Observations of it, valid R4
    manifest = export(s.hub, tmp_path / "fhir")
    found = {item["type"]: [json.loads(line) for line in (
        tmp_path / "fhir" / item["url"]).read_text().splitlines()]
        for item in manifest["output"]}
    (device,) = found["Device"]
    assert device["deviceName"][0]["name"] == "fridge-1"
    assert device["identifier"][0]["value"] == ids.fingerprint(public(s.node_key))
    observations = found["Observation"]
    assert len(observations) == 1 + 2
    for res in [device, *observations]:
        validate(res)
    (hour,) = [o for o in observations if "valueSampledData" in o]
    assert hour["effectiveDateTime"] == ids.iso_time(T0 - 3600)
    assert hour["valueSampledData"] == {
        "origin": {"value": 0, "unit": "°C", "system": "http://unitsofmeasure.org",
                   "code": "Cel"}, "period": 60000, "factor": 0.01, "dimensions": 1,
        "data": " ".join(30 * ["E"] + [str(880 - i) for i in range(30)])}
    assert hour["extension"] == [{"url": "urn:haven:fhir:sampled-slots",
                                  "valueString": "0" * 30 + "1" * 30}]
    assert all(o["subject"] == {"reference": f"Device/{device['id']}"} for o in observations)
    alarms = [o for o in observations if "interpretation" in o]
    assert {o["extension"][0]["valueCode"] for o in alarms} == {"raised", "cleared"}
    cleared = next(o for o in alarms if o["extension"][0]["valueCode"] == "cleared")
    assert cleared["effectivePeriod"] == {"start": ids.iso_time(T0 - 1800),
                                          "end": ids.iso_time(T0 + 900)}
    assert cleared["valueQuantity"]["value"] == 9.12


def test_the_fhir_export_of_a_fault_has_no_value_and_validates(setup, tmp_path: Path) -> None:
    s = setup
    s.node.readings(0, [[None, "no-sensor"], [T0 + 60, "crc"]])
    s.node.send(sensor.ALARM_LANE, sensor.ALARM, seq=0, kind="sensor", state="raised",
                since=T0, minutes=10)
    s.until(lambda: s.node.acks(sensor.ALARM_ACK) == [1]
            and s.node.acks(sensor.READINGS_ACK) == [2])
    s.kiosk.sync(s.url)
    export(s.hub, tmp_path / "fhir")
    lines = (tmp_path / "fhir" / "Observation.ndjson").read_text().splitlines()
    found = [json.loads(line) for line in lines]
    for res in found:
        validate(res)
    (hour,) = [res for res in found if "valueSampledData" in res]
    assert hour["valueSampledData"]["data"] == " ".join(60 * ["E"])
    assert hour["extension"] == [
        {"url": "urn:haven:fhir:sampled-slots", "valueString": "01" + "0" * 58},
        {"url": "urn:haven:fhir:sampled-faults", "valueString": "1=crc"}]
    for res in found:
        assert "valueQuantity" not in res and "interpretation" not in res
        assert res is hour or res["dataAbsentReason"]["coding"][0]["code"] == "error"


def test_the_cli_enrols_lists_and_removes_a_fridge(setup, capsys) -> None:
    s = setup
    data = str(s.kiosk.store.data)
    assert kiosk_cli(["fridge", "add", "fridge-2", "--generate", "--location", "ward",
                      "--data", data]) == 0
    out = capsys.readouterr().out
    private = bytes.fromhex(next(line.split()[1] for line in out.splitlines()
                                 if line.strip().startswith("key ")))
    assert f"kiosk {public(s.kiosk.ident.x_key).hex()}" in out
    node = X25519PrivateKey.from_private_bytes(private)
    assert s.records.by_key(public(node)).name == "fridge-2"
    assert private.hex() not in all_bytes(Path(data))  # printed once, kept nowhere
    assert kiosk_cli(["fridge", "add", "fridge-3", "--key", "abcd", "--data", data]) == 1
    assert "64 hex digits" in capsys.readouterr().err
    assert kiosk_cli(["fridge", "list", "--json", "--data", data]) == 0
    assert [r["name"] for r in json.loads(capsys.readouterr().out)] == ["fridge-1", "fridge-2"]
    assert kiosk_cli(["fridge", "remove", "fridge-2", "--data", data]) == 0
    assert s.records.by_key(public(node)) is None


def all_bytes(folder: Path) -> str:
    return b"".join(p.read_bytes() for p in folder.rglob("*") if p.is_file()).hex()


def test_several_fridges_on_serial_lines_in_the_runtime_s_threads(setup) -> None:
    """``Fridges``: a thread for each line (a pty here, as a USB serial device is), each
    node on its own, whichever line it is on."""
    s = setup
    second_key = X25519PrivateKey.generate()
    s.records.enrol("fridge-2", public(second_key))
    lines = [pty_pair() for _ in range(2)]
    fridges = Fridges(s.kiosk.store, s.kiosk.ident.x_key,
                      [os.ttyname(slave) for _, slave in lines], 115200, commit_every=0)
    nodes = [NodeStandIn(key, public(s.kiosk.ident.x_key), name, now=time.monotonic())
             for key, name in ((second_key, "fridge-2"), (s.node_key, "fridge-1"))]
    for i, node in enumerate(nodes):
        node.readings(0, [[T0, 400 + i], [T0 + 60, 410 + i]])
    fridges.start()
    try:
        drive(nodes, [master for master, _ in lines],
              lambda: all(n.acks(sensor.READINGS_ACK) == [2] for n in nodes))
    finally:
        fridges.stop()
        for fd in (fd for pair in lines for fd in pair):
            os.close(fd)
    assert [n.acks(sensor.READINGS_ACK) for n in nodes] == [[2], [2]]
    assert [fridges.records.cursor(e).acked for e in fridges.records.enrolments()] == [2, 2]


def test_the_runtime_serves_a_fridge_line_and_its_alarm_lights_the_led(tmp_path: Path) -> None:
    """``haven-kiosk run``'s runtime with ``fridges``: the line is served once the store
    is open, and an alarm the node raises blinks the LED until it is cleared."""
    _, data = make_kiosk(tmp_path)
    node_key = X25519PrivateKey.generate()
    with Store(data) as store:
        FridgeRecords(store, time.time).enrol("fridge-1", public(node_key))
    kiosk_public = public(ensure_keys(data)[0])
    master, slave = pty_pair()
    kit = hw.Hardware(simulated=True)
    rt = Runtime(KioskConfig(data=data, ui="127.0.0.1:0", retry_max=3600,
                             hardware="simulated", fridges=[os.ttyname(slave)]),
                 hardware=kit)
    node = NodeStandIn(node_key, kiosk_public, now=time.monotonic())
    rounds_asked: list[str] = []
    rt.sync_now = lambda: rounds_asked.append("now")  # type: ignore[method-assign]
    try:
        with runtime_in_thread(rt):
            node.send(sensor.ALARM_LANE, sensor.ALARM, seq=0, kind="low", state="raised",
                      since=T0, minutes=30, extreme=-150)
            # The LED blinks, and a round starts: the alarm goes to the hub at once.
            assert drive([node], [master],
                         lambda: kit.led.pattern == hw.FRIDGE_ALARM and bool(rounds_asked))
            assert [a["kind"] for a in fridge_alarms(rt.store)] == ["low"]
            node.send(sensor.ALARM_LANE, sensor.ALARM, seq=1, kind="low", state="cleared",
                      since=T0, minutes=42, extreme=-180)
            assert drive([node], [master], lambda: kit.led.pattern != hw.FRIDGE_ALARM)
            assert fridge_alarms(rt.store) == []
    finally:
        os.close(master)
        os.close(slave)


def test_haven_tech_fridge_enrols_a_node_through_the_kiosk_s_console(
        tmp_path: Path, capsys, monkeypatch) -> None:
    """The technician's tool on the console: the node's key pair made on the kiosk, its
    private key printed by the tool once and in no log, the audit entry without it."""
    log = tmp_path / "tech.log"
    monkeypatch.setenv(tech_log.ENV, str(log))
    with tech_kiosk(tmp_path) as k:
        kiosk_public = public(enrol_keys(k.store.data).x_key)
        k.env.extra[TECH_EXTRA] = (k.store, kiosk_public)
        cred = tmp_path / "amina.cred"
        cred.write_bytes(c.dump_file(k.credential()))
        base = [k.port, "--credential", str(cred), "--timeout", "5"]
        assert haven_main(["tech", "fridge", *base, "add", "fridge-9", "--generate",
                           "--location", "ward"]) == 0
        out = capsys.readouterr().out
        private = next(line.split()[1] for line in out.splitlines()
                       if line.strip().startswith("key "))
        assert f"kiosk {kiosk_public.hex()}" in out
        node = X25519PrivateKey.from_private_bytes(bytes.fromhex(private))
        records = FridgeRecords(k.store, time.time)
        assert records.by_key(public(node)).location == "ward"
        assert haven_main(["tech", "fridge", *base, "add", "fridge-9", "--key",
                           public(node).hex()]) == 1  # taken
        assert "already" in capsys.readouterr().err
        assert haven_main(["tech", "fridge", *base, "list", "--json"]) == 0
        assert [f["name"] for f in json.loads(capsys.readouterr().out)["fridges"]] == [
            "fridge-9"]
        assert private not in log.read_text()
        assert private not in all_bytes(k.store.data)
