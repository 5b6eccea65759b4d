"""Quarantine release and drop, on the hub and the kiosk, and a kiosk whose clock ran
ahead before its first sync: it learns the hub's time, issues its writes again, and the
hub drops the quarantined originals (SPEC.md "Quarantine and clocks")."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from device import audit
from device.cli import main as kiosk_main
from device.run_lock import hold
from device.store import BadRequest, Store, init_store
from device.store import quarantine as kiosk_quarantine
from device.sync import engine
from host.cli import main as haven_main
from host.hub import quarantine as hub_quarantine
from protocol.crdt.clock import DEFAULT_MAX_AHEAD_MS, pack
from protocol.crdt.delta import Delta, encode
from protocol.crdt.schema import type_by_name
from protocol.driver.wall_clock import wall_ms
from protocol.sync.reissue import is_reissue

from .test_sync_helpers import Kiosk, served_hub

pytestmark = pytest.mark.usefixtures("hub_backend")

HOUR = 3600_000
DAY = 24 * HOUR


def _cli(main: object, argv: list[str], capsys: pytest.CaptureFixture[str]
         ) -> tuple[int, str, str]:
    code = main(argv)  # type: ignore[operator]
    out, err = capsys.readouterr()
    return code, out, err


def test_hub_quarantine_list_release_drop(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    with served_hub(tmp_path) as (hub, url):
        k = Kiosk(tmp_path, "k", hub, "A")
        for _ in range(2):
            k.store.put("note", values={}, now_ms=wall_ms() + HOUR)  # an hour ahead
        assert k.sync(url).quarantined == 2
        k.close()
        data = str(tmp_path / "hub")
        code, out, _ = _cli(haven_main, ["hub", "quarantine", "list", "--data", data,
                                         "--json"], capsys)
        listed = json.loads(out)
        assert code == 0 and [q["code"] for q in listed] == ["clock-ahead"] * 2
        first, second = (str(q["id"]) for q in listed)
        held = hub.store.count()
        # Still an hour ahead of the hub's clock: refused, saying how far.
        code, _, err = _cli(haven_main, ["hub", "quarantine", "release", first, "--data",
                                         data], capsys)
        assert code == 2 and "still 60.0 minutes ahead" in err and len(err.splitlines()) == 1
        assert hub.store.count() == held
        # Once the hub's clock is there, it is applied as if it had just arrived.
        assert "released" in hub_quarantine.release(hub.store, first,
                                                    now_ms=wall_ms() + HOUR + 1000)
        assert hub.store.count() == held + 1
        code, out, _ = _cli(haven_main, ["hub", "quarantine", "drop", second, "--data", data],
                            capsys)
        assert code == 0 and "dropped" in out
        assert hub.store.quarantined() == [] and hub.store.count() == held + 1
        codes = [e["code"] for e in hub.store.events()]
        assert "quarantine-released" in codes and "quarantine-dropped" in codes
        for bad in ("x", first, "-1", "1" * 40, "١"):
            code, _, err = _cli(haven_main, ["hub", "quarantine", "drop", bad, "--data",
                                             data], capsys)
            assert code == 2 and len(err.splitlines()) == 1 and "quarantine" in err


def _ahead_note(node: int, ms: int) -> bytes:
    return encode(Delta(os.urandom(16), type_by_name("note").number, node, pack(ms),
                        set={2: "from elsewhere"}))


def test_kiosk_quarantine_list_release_drop(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "k"
    with init_store(data, "North", "A") as store:
        assert store.merge([_ahead_note(7, wall_ms() + HOUR),
                            _ahead_note(7, wall_ms() + HOUR)]).quarantined == 2
        before = store.dump()
    code, out, _ = _cli(kiosk_main, ["quarantine", "list", "--data", str(data), "--json"],
                        capsys)
    listed = json.loads(out)
    assert code == 0 and [q["code"] for q in listed] == ["clock-ahead"] * 2
    first, second = (str(q["id"]) for q in listed)
    code, _, err = _cli(kiosk_main, ["quarantine", "release", first, "--data", str(data)],
                        capsys)
    assert code == 1 and "still 60.0 minutes ahead" in err and len(err.splitlines()) == 1
    with hold(data):  # a runtime holds the folder: refused, nothing done
        code, _, err = _cli(kiosk_main, ["quarantine", "drop", second, "--data", str(data)],
                            capsys)
        assert code == 1 and "another haven-kiosk run" in err
    with Store(data) as store:
        text = kiosk_quarantine.release(store, first, "operator-1",
                                        now_ms=wall_ms() + HOUR + 1000)
        assert "merged" in text and store.dump() != before
    code, out, _ = _cli(kiosk_main, ["quarantine", "drop", second, "--data", str(data)],
                        capsys)
    assert code == 0 and "dropped" in out
    with Store(data) as store:  # a value that misfits its field is refused, whenever
        store.merge([encode(Delta(os.urandom(16), type_by_name("note").number, 7,
                                  pack(wall_ms()), set={2: 7}))])
        misfit, = (str(q["id"]) for q in kiosk_quarantine.listing(store))
        with pytest.raises(BadRequest, match="still refused.*field-value"):
            kiosk_quarantine.release(store, misfit, "local")
        kiosk_quarantine.drop(store, misfit, "local")
    for bad in ("x", second, "", "9" * 30):
        code, _, err = _cli(kiosk_main, ["quarantine", "release", bad, "--data", str(data)],
                            capsys)
        assert code == 1 and len(err.splitlines()) == 1 and "quarantine" in err
    code, _, err = _cli(kiosk_main, ["quarantine", "drop", first, "--who", "no one",
                                     "--data", str(data)], capsys)
    assert code == 1 and "who" in err
    with Store(data) as store:
        assert kiosk_quarantine.listing(store) == []
        done = [(e["who"], e["what"], e["result"]) for e in audit.entries(store)]
    assert done == [("local", "quarantine.release", "refused:clock-ahead"),
                    ("operator-1", "quarantine.release", "ok"),
                    ("local", "quarantine.drop", "ok"),
                    ("local", "quarantine.release", "refused:field-value"),
                    ("local", "quarantine.drop", "ok")]


def test_a_kiosk_whose_clock_ran_ahead_converges(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    def skewed() -> int:  # the kiosk's wall clock: booted two days ahead, never synced
        return wall_ms() + 2 * DAY

    monkeypatch.setattr(engine, "wall_ms", skewed)  # what its sync rounds read
    with served_hub(tmp_path) as (hub, url):
        k = Kiosk(tmp_path, "k", hub, "A")
        k.store.clock = skewed
        checkin = k.store.checkin(name="Ada", birth_year=1980)
        k.store.set_checkin_status(checkin.record_id, "in-progress")
        first = k.sync(url)
        # The hub quarantined every write; told the hub's time, the kiosk wrote them again.
        assert first.quarantined >= 3 and first.reissued == first.quarantined
        assert {q["code"] for q in hub.store.quarantined()} == {"clock-ahead"}
        limit = pack(wall_ms() + DEFAULT_MAX_AHEAD_MS)
        assert k.store.hlc.last < limit  # its clock no longer runs from its own stamps
        assert abs(k.state.clock_offset + 2 * DAY) < 60_000  # what the welcome said
        # The runtime's clock follows the hub's from then on (``Runtime._offset``).
        k.store.clock = lambda: skewed() + k.state.clock_offset
        second = k.sync(url)
        assert (second.pushed, second.quarantined, second.reissued) == (first.reissued, 0, 0)
        assert hub.store.quarantined() == []  # the originals were superseded, and dropped
        assert [e["code"] for e in hub.store.events()].count(
            "quarantine-superseded") == first.quarantined
        assert hub.dump() == k.store.dump()
        view = k.store.view(checkin.record_id)
        assert view is not None and view.fields  # the check-in, as it was written
        assert all(op.stamp < limit for op in hub.store.all_ops())
        # What it writes next goes through.
        k.store.checkin(name="Bea")
        assert k.sync(url).quarantined == 0 and hub.dump() == k.store.dump()
        k.close()


def test_a_reissue_is_the_same_write_by_its_author_under_another_stamp() -> None:
    note = type_by_name("note").number
    original = Delta(b"r" * 16, note, 5, pack(wall_ms() + 2 * DAY), set={2: "x"})
    assert is_reissue(original, dataclasses.replace(original, stamp=pack(wall_ms())))
    for other in (dataclasses.replace(original, stamp=pack(wall_ms()), set={2: "y"}),
                  dataclasses.replace(original, stamp=pack(wall_ms()), node=6),
                  dataclasses.replace(original, stamp=pack(wall_ms()), record_id=b"s" * 16),
                  original):
        assert not is_reissue(original, other)


def test_a_kiosk_whose_clock_is_behind_takes_in_what_the_hub_sends(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another kiosk's writes, stamped at the hub's time, are more than 5 minutes ahead
    of a kiosk whose clock is an hour behind: checked against its own clock they would
    all be quarantined. They are checked against the hub's time of the welcome."""
    def behind() -> int:
        return wall_ms() - HOUR

    with served_hub(tmp_path) as (hub, url):
        writer = Kiosk(tmp_path, "w", hub, "A")
        late = Kiosk(tmp_path, "l", hub, "B")
        for name in ("Ada", "Bea", "Cy"):
            writer.store.checkin(name=name, birth_year=1980)
        assert writer.sync(url).quarantined == 0
        monkeypatch.setattr(engine, "wall_ms", behind)  # what the late kiosk's round reads
        late.store.clock = behind
        got = late.sync(url)
        assert got.pulled == 6 and late.store.status()["quarantine"] == []
        assert late.store.dump() == hub.dump()
        writer.close()
        late.close()
