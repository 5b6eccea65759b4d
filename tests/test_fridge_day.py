"""A day of a vaccine fridge: the node under MicroPython, its kiosk, the hub.

The node (``device.fridge_node`` under the unix port, stepped on a simulated clock
through ``tests.fridge_node_proc``) reads a temperature every minute and speaks to the
kiosk's ``FridgeLink`` (a real store) over ``tools.linksim``: 115200 baud, one byte in
10,000 damaged, two 10-minute outages and a power cut of the node. After 24 simulated
hours the kiosk syncs with a hub served on 127.0.0.1: the hub holds every reading the
node took, once, each in its minute's slot of an hour's record, and the excursion's
alarm, which the staff screen showed while it lasted.
"""

from __future__ import annotations

import uuid
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from device.fridges.link import COMMIT_EVERY
from device.fridges.port import Fridges
from device.ui.staff import fridge_alarms
from protocol.crdt.delta import decode
from protocol.crdt.schema import TEMPERATURE, TEMPERATURE_ALARM
from protocol.sync import sensor_records as ids
from tools.linkfaults import Faults
from tools.linksim import Line, LinkSim

from .fridge_helpers import readings_held
from .fridge_node_proc import NodeProcess, provision
from .test_sync_helpers import Kiosk, served_hub

T0 = 1_800_000_000  #: the kiosk's clock when the simulation starts, Unix seconds
DAY = 24 * 3600
OUTAGES = [(5 * 3600, 600), (17 * 3600, 600)]
POWER_CUT = 11 * 3600 + 1234  #: the node's power is cut here, and back a minute later


def line(name: str) -> Line:
    return Line(name=name, faults=Faults(corrupt=1e-4), outages=OUTAGES, seed=18)


def test_a_day_of_readings_reaches_the_hub_once_each_in_time_order(tmp_path: Path) -> None:
    with served_hub(tmp_path) as (hub, url):
        kiosk = Kiosk(tmp_path, "kiosk", hub, "A")
        sims: list[LinkSim] = []  # the kiosk's clock is the simulation's
        fridges = Fridges(kiosk.store, kiosk.ident.x_key, [], 115200,
                          wall=lambda: T0 + (sims[0].now if sims else 0.0))
        node_public = provision(tmp_path / "node",
                                kiosk.ident.x_key.public_key().public_bytes_raw(),
                                X25519PrivateKey.generate().private_bytes_raw(),
                                alarm_after=1800)
        fridge = fridges.records.enrol("fridge-1", node_public, "ds18b20", "pharmacy")
        link = fridges.link(0.0)
        with NodeProcess(tmp_path / "node", profile="steady:4.5,high:12.0:45") as node:
            sim = LinkSim(node, link, line("ab"), line("ba"))
            sims.append(sim)
            sim.run(lambda s: False, 40 * 60)  # 40 minutes above 8 °C: raised at 30
            assert [a["kind"] for a in fridge_alarms(kiosk.store)] == ["high"]
            assert fridges.alarm_raised  # the LED's fridge-alarm
            sim.run(lambda s: False, POWER_CUT - sim.now)
            node.kill()
            sim.run(lambda s: False, 60)
            node.start(sim.now)  # its sensor's script starts again: a second excursion
            sim.run(lambda s: False, DAY - sim.now)
            sim.run(lambda s: False, COMMIT_EVERY)  # the kiosk commits the last batch
            taken = node.status(sim.now)
        assert sim.lines[0].stats.corrupted > 0 and link.counts.sessions >= 3
        stored = fridges.records.cursor(fridge).acked
        assert stored >= DAY // 60 - 2 and taken["first"] == stored  # all but the last
        kiosk.sync(url)
        kiosk.sync(url)
        kiosk.close()
        held = [*hub.store.ops_in(ids.reading_id(fridge.device, 0),
                                  ids.reading_id(fridge.device, ids.MAX_SEQ)),
                *hub.store.ops_in(ids.hour_id(fridge.device, 0),
                                  ids.hour_id(fridge.device, ids.MAX_SEQ))]
        writes = [decode(op.data) for op in held]
        assert all(d.type == TEMPERATURE.number for d in writes)
        assert all(d.set[1] == uuid.UUID(bytes=fridge.device).bytes for d in writes)
        latest = {op.rid: d.set for op, d in zip(held, writes, strict=True)}  # the last write
        readings = readings_held(latest.items(), fridge.device)
        times = [t for t, _ in readings]  # in time order
        # every reading once, each in a minute of its own, on a record an hour
        assert len(readings) == stored and None not in times and len(set(times)) == stored
        assert len(latest) <= DAY // 3600 + 2
        alarms = [decode(op.data) for op in hub.store.ops_in(
            ids.alarm_id(fridge.device, 0), ids.alarm_id(fridge.device, ids.MAX_SEQ))]
        assert [(d.type, d.set[2], d.set[3]) for d in alarms] == 2 * [
            (TEMPERATURE_ALARM.number, "high", "raised"),
            (TEMPERATURE_ALARM.number, "high", "cleared")]
