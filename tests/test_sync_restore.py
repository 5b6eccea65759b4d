"""A hub restored from a backup: the kiosks give it back what it lost, and nobody
misses what arrives after (real TCP on 127.0.0.1, real stores)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from host.hub.hub import Hub, init_hub
from host.hub.serve import Server

from .test_sync_helpers import Kiosk, held_prescription


@contextmanager
def serving(data: Path) -> Iterator[tuple[Hub, str]]:
    hub = Hub(data)
    server = Server(hub, 5 * 60 * 1000)
    host, port = server.listen("tcp://127.0.0.1:0")
    try:
        yield hub, f"tcp://{host}:{port}"
    finally:
        server.shutdown()
        hub.close()


def checkins_on(hub: Hub) -> list[str]:
    return sorted(r["fields"]["queueNumber"] for r in json.loads(hub.dump())["records"]
                  if r["type"] == "checkin")


def test_a_hub_restored_from_a_backup_gets_back_what_it_lost(tmp_path: Path) -> None:
    data, backup = tmp_path / "hub", tmp_path / "backup"
    init_hub(data)
    with serving(data) as (hub, url):
        a, b, c = (Kiosk(tmp_path, name, hub, name.upper()) for name in "abc")
        for i in range(3):
            a.store.checkin(name=f"Early {i}", passport=f"EA{i:06d}")
        for k in (a, b, c):
            k.sync(url)
    shutil.copytree(data, backup)  # the night's backup
    with serving(data) as (hub, url):
        for i in range(4):
            a.store.checkin(name=f"Late {i}", passport=f"LA{i:06d}")
        b.store.checkin(name="Late B", passport="LB000001")
        for k in (a, b, c, a):
            k.sync(url)
        before = checkins_on(hub)
        assert len(before) == 8
    shutil.rmtree(data)
    shutil.copytree(backup, data)  # the hub's disk died; last night's backup goes back
    with serving(data) as (hub, url):
        assert len(checkins_on(hub)) == 3
        c.store.checkin(name="After C", passport="AC000001")
        c.sync(url)  # a kiosk that lost nothing goes first: the hub numbers its write anew
        for k in (a, b, c, a, b):
            k.sync(url)
        assert checkins_on(hub) == sorted([*before, "C-001"])
        ops = list(hub.store.all_ops())
        assert len(ops) == len({(o.rid, o.stamp, o.node) for o in ops})
        assert a.store.dump() == b.store.dump() == c.store.dump() == hub.dump()
        for k in (a, b, c):
            assert k.store.status()["outbox"]["lanes"] == {}
        # and the chains go on: the next batches are accepted
        a.store.checkin(name="Next A", passport="NA000001")
        assert a.sync(url).pushed == 2
        assert len(checkins_on(hub)) == 10
        # and none of it looks like a clone (SPEC.md "Clones"): nothing held, nobody
        # flagged or told, queue numbers as before
        status = hub.status()
        assert status["held_batches"] == [] and not any(
            k["suspected_clone"] for k in status["kiosks"])
        assert all(k.state.alert is None and k.store.queue_label is None for k in (a, b, c))
    for k in (a, b, c):
        k.close()



def test_a_kiosk_that_saw_a_write_the_restored_hub_lost_is_not_stuck(tmp_path: Path) -> None:
    """The hub resolves a held conflict after its backup; kiosk b takes the resolution
    and writes over it; the hub is then restored from the backup. b's write saw a write
    of the hub's that no longer exists anywhere, so the snapshot a (which held the
    resolution too) is asked to rebase on lacks it: the hub says its own missing writes
    are lost, and a takes the snapshot instead of refusing it at every sync. The
    conflict is back for review, b's note kept."""
    data, backup = tmp_path / "hub", tmp_path / "backup"
    init_hub(data)
    with serving(data) as (hub, url):
        a, b = Kiosk(tmp_path, "a", hub, "A"), Kiosk(tmp_path, "b", hub, "B")
        rx = held_prescription(a, b, url)
        [held] = hub.conflicts()
    shutil.copytree(data, backup)  # the night's backup: the conflict still held
    with serving(data) as (hub, url):
        hub.resolve(held["id"], keep=held["versions"][0]["id"])
        a.sync(url)
        b.sync(url)
        b.store.put("prescription", rx, {"note": "checked with the patient"})
        b.sync(url)
        a.sync(url)
        assert not a.store.view(rx).held  # type: ignore[union-attr]
    shutil.rmtree(data)
    shutil.copytree(backup, data)  # the resolution is gone with the hub's disk
    with serving(data) as (hub, url):
        for k in (b, a, b, a):  # b gives its note back first, then a rebases
            k.sync(url)
        assert a.store.dump() == b.store.dump() == hub.dump()
        assert all(k.store.view(rx).held for k in (a, b))  # type: ignore[union-attr]
        [again] = hub.conflicts()
        assert again["id"] == held["id"] or again["record_id"] == held["record_id"]
        assert any(v["fields"].get("note") == "checked with the patient"
                   for v in again["versions"])
    for k in (a, b):
        k.close()
