"""Kiosks and a hub over real TCP on 127.0.0.1: exactly once, convergence, review."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from device.sync.state import last_sync_of
from host.cli import main as hub_main

from .test_sync_helpers import Kiosk, held_prescription, served_hub

pytestmark = pytest.mark.usefixtures("hub_backend")


def test_checkins_arrive_once_and_replicas_converge(tmp_path: Path) -> None:
    with served_hub(tmp_path) as (hub, url):
        a, b = Kiosk(tmp_path, "a", hub, "A"), Kiosk(tmp_path, "b", hub, "B")
        ids = [a.store.checkin(name=f"P{i}", passport=f"PA{i:06d}").record_id for i in range(30)]
        ids += [b.store.checkin(name=f"Q{i}").record_id for i in range(20)]
        a.store.put("prescription", values={"medication": "amoxicillin"})
        s = a.sync(url)
        assert s.pushed == 61 and s.pulled == 0
        assert b.sync(url).pulled == 61
        assert a.sync(url).pulled == 40
        ops = list(hub.store.all_ops())
        assert len(ops) == len({(o.rid, o.stamp, o.node) for o in ops}) == 101
        assert hub.status()["deltas"] == 101  # a count, though arrival numbers follow the clock
        assert a.store.dump() == b.store.dump() == hub.dump()
        assert {r["id"] for r in json.loads(hub.dump())["records"]} >= set(ids)
        for k in (a, b):
            assert k.store.status()["outbox"]["lanes"] == {}
        # A round with nothing new moves no deltas.
        again = a.sync(url)
        assert (again.pushed, again.pulled) == (0, 0)
        # ... and, once the round before it saved where it stood, writes nothing at all.
        wals = [a.store.data / f"{name}-wal" for name in ("store.db", "sync.db")]
        before = [w.stat().st_size for w in wals]
        changes = a.state.db.conn.total_changes
        assert a.sync(url).pushed == 0
        assert a.state.db.conn.total_changes == changes
        assert [w.stat().st_size for w in wals] == before
        # The last sync waits in memory for a batch to carry it, or for the close.
        assert last_sync_of(a.store.data) is None
        a.close()
        assert last_sync_of(a.store.data) is not None
        assert last_sync_of(tmp_path / "nowhere") is None
        b.close()


def test_concurrent_prescription_edit_is_held_until_review(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with served_hub(tmp_path) as (hub, url):
        a, b = Kiosk(tmp_path, "a", hub, "A"), Kiosk(tmp_path, "b", hub, "B")
        rx = held_prescription(a, b, url)
        held = [c for c in hub.conflicts() if c["severity"] == "hold"]
        assert len(held) == 1
        assert all(k.store.view(rx).held for k in (a, b))  # type: ignore[union-attr]
        assert a.store.dump() == b.store.dump() == hub.dump()
        assert hub_main(["review", "list", "--data", str(hub.data), "--json"]) == 0
        listed = json.loads(capsys.readouterr().out)
        assert [c["id"] for c in listed] == [held[0]["id"]] and len(listed[0]["versions"]) == 2
        keep = listed[0]["versions"][0]["id"]
        assert hub_main(["review", "resolve", "--data", str(hub.data), held[0]["id"],
                         "--keep", keep]) == 0
        for k in (a, b):
            k.sync(url)
        assert hub.conflicts() == []
        assert not a.store.view(rx).held  # type: ignore[union-attr]
        assert a.store.dump() == b.store.dump() == hub.dump()
        a.close()
        b.close()
