"""The kiosk's side of a vaccine fridge's node (``device.fridges``): readings stored once and
acknowledged after commit, unknown keys refused, bad frames and messages counted and
dropped, an alarm on the staff screen, the LED and the hub, and the FHIR export.

The node is a CPython initiator session (``fridge_helpers.NodeStandIn``) joined to a
``FridgeLink`` through ``tools.linksim`` on a simulated clock; the kiosk's store is real
SQLite, and the hub is served over TCP on 127.0.0.1.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from device.fridges.link import FridgeLink
from device.fridges.records import EnrolmentError, FridgeRecords
from protocol import messages, sensor
from protocol.crdt.schema import TEMPERATURE
from protocol.session.core import Closed
from protocol.sync import sensor_records as ids

from .fridge_helpers import NodeStandIn, joined
from .test_sync_helpers import Kiosk, served_hub

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
        self.link = FridgeLink(self.records, kiosk.ident.x_key, clock=lambda: T0,
                               on_alarm=lambda e: self.alarms.append(e.name))
        self.node = NodeStandIn(self.node_key, public(kiosk.ident.x_key))
        self.sim = joined(self.node, self.link)

    def until(self, cond: object, limit: float = 60.0) -> None:
        assert self.sim.run(lambda s: bool(cond()), limit)  # type: ignore[operator]

    def stored(self) -> list[int]:
        """The sequence numbers of the fridge's readings held, in order."""
        lo = ids.reading_id(self.fridge.device, 0)
        hi = ids.reading_id(self.fridge.device, ids.MAX_SEQ)
        return sorted(v.fields[5] for v in self.kiosk.store.views()
                      if lo <= v.record_id <= hi and v.type == TEMPERATURE.number)


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
    assert seen_at_ack == [list(range(10))]  # the ack came after the commit
    # The link dropped before the ack reached the node: a new process sends 5..14 again.
    s.node.restart(s.sim.now)
    s.node.readings(5, [[T0 + 60 * i, 450 + i] for i in range(5, 15)] )
    s.until(lambda: s.node.acks(sensor.READINGS_ACK)[-1:] == [15])
    welcome = [m for m in s.node.received if m.type == sensor.WELCOME.number]
    assert [(w.get("time"), w.get("acked")) for w in welcome] == [(T0, 0), (T0, 10)]
    assert s.stored() == list(range(15))
    assert s.link.counts.readings == 15 and s.link.counts.sessions == 2
    # one write per reading: the resent ones cost nothing
    status = s.kiosk.store.status()["outbox"]["lanes"]
    assert sum(v["entries"] for k, v in status.items() if int(k) == 5) == 15 + 1  # + device
    view = s.kiosk.store.view(str(uuid.UUID(bytes=ids.reading_id(s.fridge.device, 3))))
    assert view.fields[1] == s.fridge.device and view.fields[3] == 453
    assert view.fields[2] == ids.iso_time(T0 + 180)


def test_a_fault_is_recorded_as_a_fault_and_an_unknown_time_as_none(setup) -> None:
    s = setup
    s.node.readings(0, [[None, "reset-value"], [T0, 412]])
    s.until(lambda: s.node.acks(sensor.READINGS_ACK) == [2])
    fault = s.kiosk.store.view(str(uuid.UUID(bytes=ids.reading_id(s.fridge.device, 0))))
    assert fault.fields.get(4) == "reset-value" and 3 not in fault.fields
    assert 2 not in fault.fields


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
    assert s.stored() == [0]


def test_bad_frames_and_bad_messages_are_counted_and_dropped(setup) -> None:
    s = setup
    s.until(lambda: s.node.welcomed)
    s.link.receive_data(b"\x00\x17garbage\xff\xfe\x00" + bytes(range(1, 200)) + b"\x00", s.sim.now)
    assert s.link.frames_dropped > 0
    s.node.readings(0, [[T0, 450]])
    bad_value = messages.encode(messages.make("readings", first=1, readings=[[T0, 99999]]))
    s.node.send_raw(sensor.READINGS_LANE, bad_value)  # past what a sensor reads
    s.node.send_raw(sensor.ALARM_LANE, b"\xa1\x00")  # not a message
    s.node.send(sensor.ALARM_LANE, sensor.WELCOME, time=1, acked=0, alarms_acked=0)
    s.node.readings(1, [[T0 + 60, 451]])
    s.until(lambda: s.node.acks(sensor.READINGS_ACK) == [1, 2])
    assert s.link.counts.bad_messages == 3 and s.stored() == [0, 1]
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
