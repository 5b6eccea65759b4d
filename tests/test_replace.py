"""Replacing a dead kiosk (host/hub/replace.py): the new kiosk at its site takes over its
letter from a day, the old one is retired (revoked: replaced) and told so at its next
contact, queue numbers never clash on a day, the hub's log says it; hub.db migration 6
upgrades a database of an old release."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from device import enrol
from device.store import init_store
from device.sync.engine import SyncRefused
from host.cli import main as haven_main
from host.hub.hub import Hub, init_hub
from host.hub.replace import day_of
from host.hub.storage import MIGRATIONS as HUB_MIGRATIONS
from protocol.sync import certificate as sync_cert

from .test_sync_helpers import Kiosk, served_hub

pytestmark = pytest.mark.usefixtures("hub_backend")

DAY = 86_400_000
FIXTURE = Path(__file__).parent / "fixtures" / "release-c3497bc"


def request(tmp: Path, name: str, site: str = "North") -> Path:
    with init_store(tmp / name, site, None) as store:
        return enrol.write_request(store, hub_letter=True)


def test_enroll_replaces_gives_the_old_kiosks_letter_and_retires_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    init_hub(tmp_path / "hub")
    hub_dir = str(tmp_path / "hub")
    with Hub(tmp_path / "hub") as hub:
        old = Kiosk(tmp_path, "old", hub, "B")
        other = Kiosk(tmp_path, "other", hub, "A")
        held = hub.store.device(old.device)
        assert held is not None
        old_device, old_number = old.device, held.kiosk_number
        old.close()
        other.close()
    req = request(tmp_path, "new")
    assert haven_main(["hub", "enroll", "--data", hub_dir, str(req), "--out",
                       str(tmp_path / "new.cert"), "--replaces", old_device]) == 0
    out = capsys.readouterr().out
    assert "letter B" in out and f"kiosk {old_device} retired (revoked: replaced)" in out
    cert = sync_cert.read_certificate((tmp_path / "new.cert").read_bytes())
    assert cert.letter == "B" and cert.kiosk_number not in (None, old_number)
    with Hub(tmp_path / "hub") as hub:
        assert hub.store.device(old_device).state == "revoked"  # type: ignore[union-attr]
        done = hub.store.replacement(old_device)
        assert done is not None and (done["by"], done["site"], done["letter"]) == (
            cert.device_id, "North", "B")
        assert done["from_day"] == day_of(done["at"])  # today, by default
        logged = [e for e in hub.store.events() if e["code"] == "replaced"]
        assert len(logged) == 1 and f"by kiosk {cert.device_id}" in logged[0]["detail"]
        assert "letter B" in logged[0]["detail"]
        # The letter is the new kiosk's at the site now.
        assert hub.store.letters_taken("North")["B"] == f"kiosk {cert.device_id}"
    # Installed, the new kiosk numbers its queue with the old kiosk's letter.
    with init_store(tmp_path / "new", "North", None) as store:
        enrol.install(store, (tmp_path / "new.cert").read_bytes())
        assert store.checkin(name="First Patient").queue_number.startswith("B")


def test_the_old_kiosk_is_refused_as_revoked_at_its_next_contact(tmp_path: Path) -> None:
    with served_hub(tmp_path) as (hub, url):
        old = Kiosk(tmp_path, "old", hub, "C")
        old.sync(url)
        new = Kiosk(tmp_path, "new", hub, "D")
        seen = hub.store.device(old.device).last_seen  # type: ignore[union-attr]
        assert seen is not None
        from host.hub.replace import replace

        cert = replace(hub, old.device, new.device, day_of(seen + DAY), now_ms=seen + 2 * DAY)
        enrol.install(new.store, cert)
        assert new.store.status()["letter"] == "C"
        new.sync(url)  # the new kiosk, its certificate again, syncs as before
        with pytest.raises(SyncRefused) as refused:
            old.sync(url)
        assert refused.value.reason == "revoked"
        old.close()
        new.close()


def test_a_replacement_that_would_clash_is_refused_in_one_line_and_changes_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    init_hub(tmp_path / "hub")
    hub_dir = str(tmp_path / "hub")
    with Hub(tmp_path / "hub") as hub:
        old = Kiosk(tmp_path, "old", hub, "E")
        south = Kiosk(tmp_path, "south", hub, "A", site="South")
        enrolled = Kiosk(tmp_path, "enrolled", hub, "F")
        hub.store.seen(old.device, 1_767_225_600_000)  # last heard from on 2026-01-01
        devices = (old.device, south.device, enrolled.device)
        for k in (old, south, enrolled):
            k.close()
    req = request(tmp_path, "new")
    out = str(tmp_path / "new.cert")
    cases = {
        "heard from that day": (["enroll", str(req), "--out", out, "--replaces", devices[0],
                                 "--from", "2026-01-01"], 1, "last heard from on 2026-01-01"),
        "in the future": (["enroll", str(req), "--out", out, "--replaces", devices[0],
                           "--from", "2999-01-01"], 2, "after today"),
        "not a day": (["enroll", str(req), "--out", out, "--replaces", devices[0],
                       "--from", "soon"], 2, "YYYY-MM-DD"),
        "another site": (["enroll", str(req), "--out", out, "--replaces", devices[1]], 1,
                         "at site 'South'"),
        "unknown": (["enroll", str(req), "--out", out, "--replaces", "00000bad"], 2,
                    "no kiosk 00000bad"),
        "from alone": (["enroll", str(req), "--out", out, "--from", "2026-01-02"], 2,
                       "--from goes with --replaces"),
        "replace unknown new": (["replace", devices[0], "--by", "00000bad", "--out", out],
                                2, "no kiosk 00000bad"),
    }
    for name, (argv, code, words) in cases.items():
        assert haven_main(["hub", argv[0], "--data", hub_dir, *argv[1:]]) == code, name
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and words in err, (name, err)
    assert not Path(out).exists()
    with Hub(tmp_path / "hub") as hub:
        states = [getattr(hub.store.device(d), "state", None) for d in devices]
        assert states == ["approved"] * 3
        assert hub.store.replacement(devices[0]) is None
    # A day after it was last heard from: done, and the same again changes nothing.
    argv = ["replace", "--data", hub_dir, devices[0], "--by", devices[2], "--from", "2026-01-02",
            "--out", out]
    assert haven_main(["hub", *argv]) == 0 and haven_main(["hub", *argv]) == 0
    capsys.readouterr()
    assert haven_main(["hub", "status", "--data", hub_dir]) == 0
    status = capsys.readouterr().out
    assert f"{devices[0]} 'North' E number 1 revoked" in status
    assert f"replaced by {devices[2]} from 2026-01-02" in status
    with Hub(tmp_path / "hub") as hub:
        assert hub.store.replacement(devices[0])["from_day"] == "2026-01-02"  # type: ignore[index]
        assert len([e for e in hub.store.events() if e["code"] == "replaced"]) == 1
        assert hub.store.device(devices[2]).letter == "E"  # type: ignore[union-attr]
        assert "F" not in hub.store.letters_taken("North")  # its old letter is free
    capsys.readouterr()


def test_hub_db_migration_6_upgrades_an_old_release_and_a_replacement_works_on_it(
        tmp_path: Path) -> None:
    root = tmp_path / "copy"
    shutil.copytree(FIXTURE, root)
    for path in [root, *root.rglob("*")]:  # git keeps no modes: keys must be owner-only
        path.chmod(0o700 if path.is_dir() else 0o600)
    with Hub(root / "hub") as hub:
        (old,) = hub.store.devices()
        now = (old.last_seen or 0) + 2 * DAY
        with init_store(tmp_path / "new", old.site, None) as store:
            req = enrol.write_request(store, hub_letter=True).read_bytes()
        cert = sync_cert.read_certificate(hub.enroll(req, now, replaces=old.device_id))
        assert cert.letter == old.letter
        assert hub.store.device(old.device_id).state == "revoked"  # type: ignore[union-attr]
    conn = sqlite3.connect(root / "hub" / "hub.db")
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == HUB_MIGRATIONS.latest >= 6
        assert conn.execute("SELECT old_device, letter FROM replacements").fetchall() == [
            (old.device_id, old.letter)]
    finally:
        conn.close()
