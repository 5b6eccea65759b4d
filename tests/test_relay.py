"""Relay bundles: a kiosk with no link syncs through a field team's stick.

The stick is a small file system the test mounts (vfat when this machine can make
and mount one, else tmpfs; a plain folder when it cannot mount at all). The hub's
side runs as ``haven hub relay import`` beside a hub serving live kiosks over TCP.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from device.cli import main as kiosk_main
from device.relay.answers import import_answers
from device.relay.export import export
from device.tech.revocations import RevocationList
from device.tech.trusted_time import SIGNED, TrustedClock
from host.cli import main as hub_main
from host.hub import technician
from host.hub.hub import DATABASE_ENV, Hub, init_hub
from protocol.sync.relay import UP, Bundle, seal_bundle

from .test_sync_helpers import Kiosk, served_hub

pytestmark = pytest.mark.usefixtures("hub_backend")

#: Fake patient data that must never be readable on the stick.
PHI = ["Zelda Quixotic-Marrow", "ZQ7781234", "Unusual note: left ear tinnitus"]


@contextmanager
def stick(where: Path, kib: int = 2048) -> Iterator[tuple[Path, str]]:
    """A small stick mounted at ``where``: (its folder, "vfat", "tmpfs" or "folder")."""
    where.mkdir()
    kind = _mounted(where, kib)
    print(f"stick: {kind}")
    try:
        yield where, kind
    finally:
        if kind != "folder":
            subprocess.run(["umount", "--lazy", str(where)], timeout=20.0, check=True)


def _mounted(where: Path, kib: int) -> str:
    if os.geteuid() != 0:
        return "folder"
    for kind, cmd in _mounts(where, kib):
        if subprocess.run(cmd, capture_output=True, timeout=20.0).returncode == 0:
            return kind
    return "folder"


def _mounts(where: Path, kib: int) -> Iterator[tuple[str, list[str]]]:
    mkfs = shutil.which("mkfs.vfat")
    if mkfs is not None:
        image = where.with_suffix(".img")
        with image.open("wb") as f:
            f.truncate(kib * 1024)
        if subprocess.run([mkfs, str(image)], capture_output=True, timeout=20.0).returncode == 0:
            yield "vfat", ["mount", "-t", "vfat", "-o", "loop", str(image), str(where)]
    yield "tmpfs", ["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(where)]


def hub_import(hub: Hub, directory: Path) -> int:
    """``haven hub relay import``, as a field team runs it beside the serving hub."""
    return hub_main(["hub", "relay", "import", "--data", str(hub.data), str(directory)])


def trip(k: Kiosk, hub: Hub, directory: Path) -> None:
    """One round trip by stick: export, the hub's import, the kiosk's import."""
    export(k.store, k.state, k.ident, directory)
    assert not _phi_in(directory)
    assert hub_import(hub, directory) == 0
    assert not _phi_in(directory)
    got = import_answers(k.store, k.state, k.ident, directory)
    assert got.problems == [] and got.answers >= 1


def _phi_in(directory: Path) -> list[str]:
    blob = b"".join(p.read_bytes() for p in directory.iterdir() if p.is_file())
    return [s for s in PHI if s.encode() in blob]


def _once(hub: Hub) -> int:
    ops = list(hub.store.all_ops())
    assert len(ops) == len({(o.rid, o.stamp, o.node) for o in ops})
    return len(ops)


def test_two_stick_trips_bring_an_offline_kiosk_in_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with served_hub(tmp_path) as (hub, url), stick(tmp_path / "stick") as (usb, _):
        a, b = Kiosk(tmp_path, "a", hub, "A"), Kiosk(tmp_path, "b", hub, "B")
        rx = b.store.put("prescription", values={"medication": "amoxicillin",
                                                 "status": "active"})
        b.sync(url)
        a.sync(url)  # the last time kiosk a had a link
        ids = [a.store.checkin(name=PHI[0] if i == 0 else f"P{i}",
                               passport=PHI[1] if i == 0 else f"PA{i:06d}").record_id
               for i in range(12)]
        a.store.put("prescription", values={"medication": "ibuprofen", "note": PHI[2]})
        a.store.put("prescription", rx, {"dosageInstruction": "500 mg twice daily"})
        b.store.put("prescription", rx, {"dosageInstruction": "250 mg three times daily"})
        b.sync(url)
        serial, _ = technician.issue(hub, name="Field", sites=["North"])
        technician.revoke(hub, serial)

        trip(a, hub, usb)  # first trip: a's writes in, b's edit out: the conflict is held
        # The answer brought the technicians' revocation list and the hub-signed time.
        assert serial in RevocationList(a.store.data, hub.ed_public).serials
        assert TrustedClock(a.store.data).anchor(SIGNED) is not None
        held = [c for c in hub.conflicts() if c["severity"] == "hold"]
        assert len(held) == 1 and a.store.view(rx).held  # type: ignore[union-attr]
        keep = held[0]["versions"][0]["id"]
        assert hub_main(["review", "resolve", "--data", str(hub.data), held[0]["id"],
                         "--keep", keep]) == 0

        trip(a, hub, usb)  # second trip: the resolution reaches a
        b.sync(url)
        assert not a.store.view(rx).held  # type: ignore[union-attr]
        assert hub.conflicts() == []
        assert a.store.dump() == b.store.dump() == hub.dump()
        assert {r["id"] for r in json.loads(hub.dump())["records"]} >= set(ids)
        assert a.store.status()["outbox"]["lanes"] == {}
        count = _once(hub)
        assert list(usb.iterdir()) == []  # every file applied was removed
        # A third trip with nothing new moves nothing and adds nothing.
        trip(a, hub, usb)
        assert _once(hub) == count
        said = capsys.readouterr()
        assert not [s for s in PHI if s in said.out + said.err]
        a.close()
        b.close()


def test_one_stick_carries_many_kiosks_pieces_and_gaps(tmp_path: Path) -> None:
    init_hub(tmp_path / "hub")
    with Hub(tmp_path / "hub") as hub, stick(tmp_path / "stick") as (usb, _):
        kiosks = [Kiosk(tmp_path, name, hub, name.upper()) for name in "abc"]
        a = kiosks[0]
        for n, k in enumerate(kiosks):
            for i in range(15):
                k.store.checkin(name=f"K{n}P{i}", passport=f"K{n}{i:06d}")
        pocket = tmp_path / "pocket"
        pocket.mkdir()
        first = export(a.store, a.state, a.ident, usb).files[0]
        shutil.move(first, pocket)  # forgotten in a pocket
        for i in range(15):
            a.store.checkin(name=f"late{i}")
        # Exported again before the hub saw the first: both batches, cut into pieces of
        # one batch each (pieces under 4 GiB are the same thing, larger); the first lost.
        cut = export(a.store, a.state, a.ident, usb, piece_bytes=1)
        assert len(cut.files) == cut.batches == 2
        cut.files[0].unlink()
        for k in kiosks[1:]:
            export(k.store, k.state, k.ident, usb)
        assert hub_import(hub, usb) == 0
        assert _once(hub) == 2 * 15 * 2  # kiosk a's second batch waits for its first
        for k in kiosks:
            got = import_answers(k.store, k.state, k.ident, usb)
            assert got.problems == [] and got.answers == 1
            assert got.acked == (0 if k is a else 1)
        trip(a, hub, usb)  # both batches again: applied in order
        assert _once(hub) == 4 * 15 * 2
        assert a.store.dump() == hub.dump()  # with the others' check-ins
        shutil.move(pocket / first.name, usb)  # the forgotten copy turns up
        assert hub_import(hub, usb) == 3  # reported: an older bundle, applied as a copy
        assert _once(hub) == 4 * 15 * 2
        before = a.store.dump()
        assert import_answers(a.store, a.state, a.ident, usb).acked == 0  # nothing new
        assert a.store.dump() == before == hub.dump() and list(usb.iterdir()) == []
        # A role changed at the hub: the next answer rebases the kiosk on its new scope.
        door = kiosks[1]
        hub.set_role(door.device, "door")
        export(door.store, door.state, door.ident, usb)
        assert hub_import(hub, usb) == 0
        got = import_answers(door.store, door.state, door.ident, usb)
        assert got.problems == [] and got.rebased > 0 and not door.state.rebase_owed
        for k in kiosks:
            k.close()


def _lines(err: str, prefix: str) -> list[str]:
    lines = err.strip().splitlines()
    assert all(line.startswith(prefix) for line in lines), lines
    return lines


def test_bad_bundles_change_nothing_and_are_reported(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    init_hub(tmp_path / "hub")
    with monkeypatch.context() as env:  # another hub: its own database, an SQLite file
        env.delenv(DATABASE_ENV, raising=False)
        init_hub(tmp_path / "other")
    with Hub(tmp_path / "hub") as hub, stick(tmp_path / "stick") as (usb, _):
        a = Kiosk(tmp_path, "a", hub, "A")
        for i in range(10):
            a.store.checkin(name=f"P{i}")
        good = export(a.store, a.state, a.ident, usb).files[0]
        data = good.read_bytes()
        (usb / "0a.hvr").write_bytes(data[: len(data) // 2])  # truncated
        (usb / "0b.hvr").write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])
        (usb / "0c.hvr").write_bytes(data)  # a duplicate
        forged = Bundle(UP, a.ident.cert.device_id, hub.x_public, 9, 0, [])
        (usb / "0d.hvr").write_bytes(seal_bundle(forged, Ed25519PrivateKey.generate(),
                                                 hub.x_public)[0])
        junk = Bundle(UP, a.ident.cert.device_id, hub.x_public, 50, 0, [b"\x00junk"])
        (usb / "0e.hvr").write_bytes(seal_bundle(junk, a.ident.ed_key, hub.x_public)[0])
        capsys.readouterr()
        # Another hub refuses it all, and leaves it there for the right one.
        assert hub_main(["hub", "relay", "import", "--data", str(tmp_path / "other"),
                         str(usb)]) == 3
        lines = _lines(capsys.readouterr().err, "haven hub relay import: ")
        assert sum("made for another hub" in line for line in lines) == 6
        assert len(list(usb.iterdir())) == 6
        assert hub_import(hub, usb) == 3
        lines = _lines(capsys.readouterr().err, "haven hub relay import: ")
        said = {line.split(": ")[1]: line for line in lines}
        assert len(said) == 5 and "0d.hvr" in said and "not signed" in said["0d.hvr"]
        assert "bundle 50 refused" in said["0e.hvr"]  # signed, but not sync messages
        assert all("truncated or altered" in said[n] for n in ("0a.hvr", "0b.hvr"))
        assert sum("second copy" in line for line in lines) == 1  # either copy, once
        assert _once(hub) == 20
        answer = next(p for p in usb.iterdir() if p.name not in said)
        kept = answer.read_bytes()
        assert import_answers(a.store, a.state, a.ident, usb).acked == 1
        # The same bundle and the same answer again: refused, nothing changes.
        before = a.store.dump()
        good.write_bytes(data)
        answer.write_bytes(kept)
        assert hub_import(hub, usb) == 3
        assert "applied already" in capsys.readouterr().err
        got = import_answers(a.store, a.state, a.ident, usb)
        assert [p for p in got.problems if "applied already" in p] and got.acked == 0
        assert _once(hub) == 20 and a.store.dump() == before == hub.dump()
        a.close()


def test_full_read_only_pulled_stick_and_foreign_files(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    init_hub(tmp_path / "hub")
    with Hub(tmp_path / "hub") as hub, stick(tmp_path / "small", kib=4) as (small, kind):
        if kind != "tmpfs":
            pytest.skip("needs a small tmpfs to fill and make read-only (root)")
        a = Kiosk(tmp_path, "a", hub, "A")
        for i in range(150):
            a.store.checkin(name=f"P{i}", passport=f"PA{i:06d}")
        a.close()
        data = str(a.store.data)
        capsys.readouterr()
        assert kiosk_main(["relay", "export", "--data", data, "--to", str(small)]) == 1
        err = capsys.readouterr().err
        assert "the stick is full" in err and len(err.strip().splitlines()) == 1
        assert list(small.iterdir()) == []  # nothing half-written left behind
        gone = tmp_path / "pulled"
        assert kiosk_main(["relay", "export", "--data", data, "--to", str(gone)]) == 1
        assert "pulled out" in capsys.readouterr().err
        usb = tmp_path / "usb"
        usb.mkdir()
        assert kiosk_main(["relay", "export", "--data", data, "--to", str(usb)]) == 0
        bundle = next(usb.iterdir())
        remount(small, "rw,size=64k")
        shutil.copy(bundle, small)
        remount(small, "ro")
        capsys.readouterr()
        assert hub_import(hub, small) == 1  # read-only: nothing applied
        err = capsys.readouterr().err
        assert "read-only" in err and len(err.strip().splitlines()) == 1
        assert _once(hub) == 0
        remount(small, "rw,size=8k")  # room for the bundle, none for the answer
        assert hub_import(hub, small) == 1
        err = capsys.readouterr().err
        assert "the stick is full" in err and len(err.strip().splitlines()) == 1
        assert _once(hub) == 300 and [p.name for p in small.iterdir()] == [bundle.name]
        remount(small, "size=64k")
        assert hub_import(hub, small) == 0  # acknowledged again, not applied; answered
        assert _once(hub) == 300
        (usb / "photo.jpg").write_bytes(b"\xff\xd8 not ours")
        (usb / "1f.hvr").write_bytes(os.urandom(5000))
        (usb / ".2e.hvr.part").write_bytes(b"HAVEN-RELAY\x01\x00 cut")
        capsys.readouterr()
        assert hub_import(hub, usb) == 3  # the copy and the strangers: one line each
        lines = _lines(capsys.readouterr().err, "haven hub relay import: ")
        assert len(lines) == 4 and "half-written" in lines[0]
        assert {line.split(": ")[1] for line in lines[1:3]} == {"1f.hvr", "photo.jpg"}
        assert "applied already" in lines[3] and _once(hub) == 300
        assert kiosk_main(["relay", "import", "--data", data, str(small)]) == 0
        assert "1 answer(s) applied: 1 batches acknowledged" in capsys.readouterr().out
        assert kiosk_main(["relay", "export", "--data", data, "--to", str(small)]) == 0
        assert "0 batches" in capsys.readouterr().out  # everything was acknowledged


def remount(where: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(where)], check=True,
                   timeout=20.0)


def test_relay_and_live_sync_mix(tmp_path: Path) -> None:
    with served_hub(tmp_path) as (hub, url), stick(tmp_path / "stick") as (usb, _):
        a, b = Kiosk(tmp_path, "a", hub, "A"), Kiosk(tmp_path, "b", hub, "B")
        for i in range(5):
            a.store.checkin(name=f"P{i}")
            b.store.checkin(name=f"Q{i}")
        b.sync(url)
        trip(a, hub, usb)  # one trip by stick, then live: nothing goes twice
        live = a.sync(url)
        assert (live.pushed, live.batches, live.pulled) == (0, 0, 0)
        a.store.checkin(name="live")
        assert a.sync(url).pushed == 2
        assert export(a.store, a.state, a.ident, usb).batches == 0
        assert hub_import(hub, usb) == 0 and import_answers(
            a.store, a.state, a.ident, usb).acked == 0
        # Exported, then a link came back before the stick reached the hub: the batch
        # goes live (the hub never saw it), the stick's copy is acknowledged, not applied.
        a.store.checkin(name="both ways")
        assert export(a.store, a.state, a.ident, usb).batches == 1
        assert a.sync(url).pushed == 2
        count = _once(hub)
        assert hub_import(hub, usb) == 0
        assert import_answers(a.store, a.state, a.ident, usb).problems == []
        assert _once(hub) == count == 2 * 5 * 2 + 4
        # The other way: the hub read the stick, but the ack came live first. The answer
        # names an older checkpoint than the kiosk's: overtaken, not taken for a hub
        # restored from a backup (which would send everything again).
        a.store.checkin(name="overtaken")
        export(a.store, a.state, a.ident, usb)
        assert hub_import(hub, usb) == 0
        assert a.sync(url).pushed == 2  # acknowledged as the hub's copy, not applied
        got = import_answers(a.store, a.state, a.ident, usb)
        assert len(got.problems) == 1 and "overtaken" in got.problems[0]
        assert a.store.status()["outbox"]["lanes"] == {} and _once(hub) == count + 2
        assert export(a.store, a.state, a.ident, usb).batches == 0
        b.sync(url)
        assert a.store.dump() == b.store.dump() == hub.dump()
        a.close()
        b.close()


def test_an_approved_kiosk_is_enrolled_by_stick_and_once_revoked_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from device import enrol
    from device.store import init_store
    from device.sync.state import SyncState
    from protocol.driver.wall_clock import wall_ms

    init_hub(tmp_path / "hub")
    with Hub(tmp_path / "hub") as hub, stick(tmp_path / "stick") as (usb, _):
        doc = hub.approve("North", 1, 24, wall_ms())[0]
        store = init_store(tmp_path / "k", "Unset")
        enrol.install_approval(store, doc, hub.ed_public, wall_ms())
        state = SyncState(store.data)
        try:
            export(store, state, enrol.load(store.data), usb)  # its hello: the approval
            assert hub_import(hub, usb) == 0
            got = import_answers(store, state, enrol.load(store.data), usb)
            assert got.problems == [] and got.answers == 1
            ident = enrol.load(store.data)  # the certificate the answer carried
            assert ident.enrol is None and store.fleet_key == hub.fleet_key
            store.checkin(name="first by stick")
            export(store, state, ident, usb)
            assert hub_import(hub, usb) == 0
            count = _once(hub)
            assert count >= 2  # the check-in (and the enrolment's audit entry)
            import_answers(store, state, ident, usb)
            hub.revoke(ident.cert.device_id)
            store.checkin(name="after the revocation")
            export(store, state, ident, usb)
            capsys.readouterr()
            assert hub_import(hub, usb) == 3 and _once(hub) == count
            err = capsys.readouterr().err
            assert "was revoked" in err and len(err.strip().splitlines()) == 1
        finally:
            state.close()
            store.close()


def test_a_pipe_link_or_huge_file_under_a_relay_files_name_is_passed_over(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A courier's stick (one that is not FAT) with a pipe, a link, a folder and a file
    of 3 GiB (sparse, a relay file's header first) named as relay files: each reported as
    not a relay file, none opened (a pipe would block the reader for good, the large file
    would be read whole into memory)."""
    import threading

    from protocol.sync.relay import MAGIC, UP

    init_hub(tmp_path / "hub")
    usb = tmp_path / "usb"
    usb.mkdir()
    os.mkfifo(usb / "5c.hvr")
    (usb / "6d.hvr").symlink_to(tmp_path / "hub" / "hub.db")
    (usb / "7e.hvr").mkdir()
    with (usb / "8f.hvr").open("wb") as f:
        f.write(MAGIC + bytes((UP,)))
        f.truncate(3 << 30)
    codes: list[int] = []
    with Hub(tmp_path / "hub") as hub:
        worker = threading.Thread(target=lambda: codes.append(hub_import(hub, usb)),
                                  daemon=True)
        worker.start()
        worker.join(20.0)
        if worker.is_alive():  # let the blocked reader go before failing
            os.close(os.open(usb / "5c.hvr", os.O_WRONLY | os.O_NONBLOCK))
            worker.join(5.0)
        assert codes == [3]  # problems reported
    lines = _lines(capsys.readouterr().err, "haven hub relay import: ")
    assert {line.split(": ")[1] for line in lines} == {"5c.hvr", "6d.hvr", "7e.hvr", "8f.hvr"}
    assert all("not a relay file" in line for line in lines)
