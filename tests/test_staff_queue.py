"""The staff queue: call, seen and no-show are replicated writes of a check-in's Encounter
status, which reach the hub over real sync rounds and merge by last writer wins.

Kiosks and a hub over real TCP on 127.0.0.1 (``test_sync_helpers``); the hub's audit is
``haven hub history``.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from device.store import BadRequest
from device.ui.staff import today_queue
from host.cli import main as hub_main
from host.hub.hub import Hub
from protocol.crdt import schema

from .test_sync_helpers import Kiosk, served_hub

pytestmark = pytest.mark.usefixtures("hub_backend")


def hub_status(hub: Hub, rid: str) -> Any:
    dump = json.loads(hub.dump())
    records = dump["records"] if isinstance(dump, dict) else dump
    return next(r for r in records if r["id"] == rid)["fields"].get("status")


def test_call_seen_and_no_show_reach_the_hub_and_another_kiosk(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with served_hub(tmp_path) as (hub, url):
        a, b = Kiosk(tmp_path, "a", hub, "A"), Kiosk(tmp_path, "b", hub, "B")
        seen, gone, waiting = (a.store.checkin(passport=f"QA{i:06d}", birth_year=1970 + i,
                                               reason="sick") for i in range(3))
        for status in ("in-progress", "in-progress", "finished"):  # called twice, then seen
            a.store.set_checkin_status(seen.record_id, status)
        a.store.set_checkin_status(gone.record_id, "cancelled")  # a no-show, never called
        assert a.sync(url).pushed == 10  # 3 patients, 3 check-ins, 4 moves
        assert {r: hub_status(hub, r.record_id) for r in (seen, gone, waiting)} == {
            seen: "finished", gone: "cancelled", waiting: "arrived"}

        # The hub's audit: each move, in order, by kiosk A.
        assert hub_main(["hub", "history", "--data", str(hub.data), seen.record_id,
                         "--json"]) == 0
        writes = json.loads(capsys.readouterr().out)
        assert [w["fields"].get("status") for w in writes] == [
            "arrived", "in-progress", "in-progress", "finished"]
        assert {w["by"] for w in writes} == {f"kiosk {a.device} (North A)"}
        assert hub_main(["hub", "history", "--data", str(hub.data), gone.record_id]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert len(lines) == 2 and lines[1].endswith(
            f'kiosk {a.device} (North A): checkin {{"status": "cancelled"}}'), lines
        for bad, says in (("B-001", "not a record id: 'B-001'"),
                          (str(uuid.uuid4()), "the hub holds no record")):
            assert hub_main(["hub", "history", "--data", str(hub.data), bad]) == 2
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and says in err, err

        # Kiosk B's staff screen: the waiting one first, those done with after.
        b.sync(url)
        assert [(r["number"], r["status"]) for r in today_queue(b.store)] == [
            ("A-003", "arrived"), ("A-001", "finished"), ("A-002", "cancelled")]
        # The no-show came back late: B undoes it, and the hub follows.
        b.store.set_checkin_status(gone.record_id, "arrived")
        b.sync(url)
        assert hub_status(hub, gone.record_id) == "arrived"
        a.sync(url)
        assert a.store.dump() == b.store.dump() == hub.dump()
        a.close()
        b.close()


def test_moves_the_status_held_does_not_allow_are_refused(tmp_path: Path) -> None:
    with served_hub(tmp_path) as (hub, _):
        a = Kiosk(tmp_path, "a", hub, "A")
        c = a.store.checkin(passport="QB000001", birth_year=1980)
        before = len(a.store.deltas_since({}))
        refused = [("arrived", "bad-transition"),  # undo of one still waiting
                   ("planned", "bad-status"), ("triaged", "bad-status")]
        for status, code in refused:
            with pytest.raises(BadRequest) as exc:
                a.store.set_checkin_status(c.record_id, status)
            assert exc.value.code == code
        a.store.set_checkin_status(c.record_id, "finished")
        for status in ("in-progress", "finished", "cancelled"):  # done with: only an undo
            with pytest.raises(BadRequest) as exc:
                a.store.set_checkin_status(c.record_id, status)
            assert exc.value.code == "bad-transition"
        for rid, code in ((c.patient_id, "no-checkin"), ("not-an-id", "bad-id")):
            with pytest.raises(BadRequest) as exc:
                a.store.set_checkin_status(rid, "in-progress")
            assert exc.value.code == code
        view = a.store.view(c.record_id)
        assert view is not None and view.fields[schema.CHECKIN.field("status").number] == (
            "finished")
        assert len(a.store.deltas_since({})) == before + 1  # a refused move writes nothing
        a.close()


@pytest.mark.parametrize("later", ["a", "b"])
def test_concurrent_moves_on_two_kiosks_merge_by_last_writer(tmp_path: Path,
                                                              later: str) -> None:
    """Seen on one kiosk, a no-show on the other, neither having seen the other's: every
    replica ends with the write of the greater dot (stamp, node), whichever syncs first."""
    with served_hub(tmp_path) as (hub, url):
        a, b = Kiosk(tmp_path, "a", hub, "A"), Kiosk(tmp_path, "b", hub, "B")
        c = a.store.checkin(passport="QC000001", birth_year=1990)
        a.sync(url)
        b.sync(url)
        now = int(time.time() * 1000)
        a.store.set_checkin_status(c.record_id, "finished",
                                   now_ms=now + (2000 if later == "a" else 1000))
        b.store.set_checkin_status(c.record_id, "cancelled",
                                   now_ms=now + (2000 if later == "b" else 1000))
        for k in (b, a, b):  # the earlier write reaches the hub last, for one of them
            k.sync(url)
        want = "finished" if later == "a" else "cancelled"
        assert hub_status(hub, c.record_id) == want
        assert a.store.dump() == b.store.dump() == hub.dump()
        # At the same wall time: the stamps and then the nodes decide, the same everywhere.
        d = b.store.checkin(passport="QC000002", birth_year=1991)
        b.sync(url)
        a.sync(url)
        a.store.set_checkin_status(d.record_id, "in-progress", now_ms=now + 5000)
        b.store.set_checkin_status(d.record_id, "finished", now_ms=now + 5000)
        for k in (a, b, a):
            k.sync(url)
        writes = hub.history(d.record_id)
        last = max(writes, key=lambda w: (w["stamp"], int(w["node"], 16)))
        assert hub_status(hub, d.record_id) == last["fields"]["status"]
        assert len(writes) == 3 and writes[-1] == last
        assert a.store.dump() == b.store.dump() == hub.dump()
        a.close()
        b.close()
