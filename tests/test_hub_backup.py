"""Hub backups and key backups: a hub whose machine is lost comes back whole from
``haven hub backup`` and ``haven hub keys backup`` (real TCP on 127.0.0.1, real
stores); a backup taken while kiosks sync is one moment of the hub; bad backups,
keys of another hub and mistyped recovery keys are refused, and nothing is
overwritten."""

from __future__ import annotations

import json
import os
import resource
import shutil
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from device.sync.document_store import attach
from host.cli import main as haven
from host.hub import backup, recovery_key
from host.hub.at_rest import STORE_KEY
from host.hub.document_inbox import DOCUMENTS_DIR
from host.hub.hub import DB, ED_KEY, SECRET_FILES, Hub, init_hub
from host.hub.storage import Device
from protocol.crdt import short_code

from .conftest import small_disk
from .swtpm_helpers import soft_tpm
from .test_sync_helpers import Kiosk
from .test_sync_restore import checkins_on, serving
from .test_ui_helpers import ROOT


def run(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str]:
    """``haven ARGV``: its exit status, and what it printed (out, then err)."""
    capsys.readouterr()
    code = haven([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out + out.err


def key_backup(capsys: pytest.CaptureFixture[str], data: Path, to: Path) -> Path:
    """``haven hub keys backup``; returns a file holding the recovery key it printed."""
    code, out = run(capsys, "hub", "keys", "backup", "--data", data, "--to", to)
    assert code == 0, out
    printed = [line.strip() for line in out.splitlines() if line.startswith("    ")]
    assert len(printed) == 1 and recovery_key.parse(printed[0])
    safe = to.with_suffix(".recovery")
    safe.write_text(printed[0] + "\n")
    return safe


def files_of(where: Path) -> dict[str, bytes]:
    """Each file's bytes (SQLite's own -wal and -shm beside a database read aside)."""
    return {str(p.relative_to(where)): p.read_bytes() for p in sorted(where.rglob("*"))
            if p.is_file() and not p.name.endswith(("-wal", "-shm"))}


def test_a_hub_whose_machine_is_lost_comes_back_from_its_backups_with_nothing_lost(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data, saved, keys = tmp_path / "hub", tmp_path / "backup", tmp_path / "hub.keys"
    init_hub(data)
    with serving(data) as (hub, url):
        a, b = Kiosk(tmp_path, "a", hub, "A"), Kiosk(tmp_path, "b", hub, "B")
        patient = a.store.checkin(name="Early A", passport="EA000001").patient_id
        b.store.checkin(name="Early B", passport="EB000001")
        scan = tmp_path / "scan.pdf"
        scan.write_bytes(os.urandom(40_000))
        attach(a.store, scan, patient=patient)
        for k in (a, b, a):
            k.sync(url)
        # while the hub serves
        code, out = run(capsys, "hub", "backup", "--data", data, "--to", saved)
        assert code == 0, out
        safe = key_backup(capsys, data, keys)
        for i in range(3):
            a.store.checkin(name=f"Late A{i}", passport=f"LA{i:06d}")
        b.store.checkin(name="Late B", passport="LB000001")
        late_scan = tmp_path / "late.pdf"
        late_scan.write_bytes(os.urandom(30_000))
        attach(b.store, late_scan, patient=patient)
        for k in (a, b, a):
            k.sync(url)
        before, hub_id = hub.dump(), hub.ed_public.hex()
        documents = hub.status()["documents"]
        assert documents["documents"] == 2
        assert len(checkins_on(hub)) == 6
    manifest = json.loads((saved / "manifest.json").read_text())
    assert manifest["hub_id"] == hub_id and manifest["head"] > 0
    assert not set(SECRET_FILES) & {Path(p).name for p in manifest["files"]}
    assert any(p.startswith(f"{DOCUMENTS_DIR}/") for p in manifest["files"])

    shutil.rmtree(data)  # the machine is lost
    new = tmp_path / "new-hub"
    code, out = run(capsys, "hub", "restore", "--from", saved, "--data", new)
    assert code == 0 and "haven hub keys restore" in out, out
    code, out = run(capsys, "hub", "keys", "restore", "--from", keys, "--data", new,
                    "--recovery-key-file", safe)
    assert code == 0, out
    for name in SECRET_FILES:
        assert (new / name).stat().st_mode & 0o777 == 0o600
    with serving(new) as (hub, url):
        assert len(checkins_on(hub)) == 2  # what the backup held
        assert hub.status()["documents"]["documents"] == 1
        for k in (a, b, a, b):
            k.sync(url)
        assert hub.dump() == before  # the kiosks gave back what it missed
        assert hub.status()["documents"] == documents  # the late scan's content too
        assert a.store.dump() == b.store.dump() == hub.dump()
        # and arrival numbers go on past every cursor the kiosks hold
        b.store.checkin(name="After B", passport="AB000001")
        b.sync(url)
        a.sync(url)
        assert len(checkins_on(hub)) == 7 and a.store.dump() == hub.dump()
        assert hub.status()["held_batches"] == []
    for k in (a, b):
        k.close()


def consistent(db_path: Path) -> None:
    """Every batch the copy records has all its deltas and no more; each kiosk's
    checkpoint is its last batch: no commit torn across the copy."""
    db = sqlite3.connect(db_path)
    try:
        for first, arrived in db.execute("SELECT first_hseq, arrived FROM batches"
                                          " WHERE arrived IS NOT NULL"):
            assert db.execute("SELECT COUNT(*) FROM ops WHERE hseq BETWEEN ? AND ?",
                              [first, arrived]).fetchone()[0] == arrived - first + 1
        last = db.execute("SELECT MAX(arrived) FROM batches").fetchone()[0]
        assert db.execute("SELECT MAX(hseq) FROM ops").fetchone()[0] == last
        assert db.execute("SELECT COUNT(*) FROM devices d WHERE last_seq != (SELECT"
                          " COALESCE(MAX(seq), 0) FROM batches b"
                          " WHERE b.device_id = d.device_id)").fetchone()[0] == 0
    finally:
        db.close()


def test_a_backup_taken_while_kiosks_sync_is_the_hub_at_one_moment(tmp_path: Path) -> None:
    data = tmp_path / "hub"
    init_hub(data)
    with serving(data) as (hub, url):
        a, b = Kiosk(tmp_path, "a", hub, "A"), Kiosk(tmp_path, "b", hub, "B")
        stop, going = threading.Event(), threading.Event()

        def checking_in() -> None:  # kiosk b syncs all along
            for i in range(200):
                if stop.is_set():
                    return
                b.store.checkin(name=f"Pat {i}", passport=f"PB{i:06d}")
                b.sync(url)
                going.set()

        thread = threading.Thread(target=checking_in)
        thread.start()
        try:
            assert going.wait(timeout=30)
            steps: list[int] = []

            def meanwhile(remaining: int, total: int) -> None:
                if not steps:  # kiosk a syncs a check-in between two steps of the copy
                    a.store.checkin(name="Meanwhile", passport="MW000001")
                    a.sync(url)
                steps.append(remaining)
                hub.store.log(None, "during-backup", f"{remaining} of {total}", 0)

            for n in range(3):
                manifest = backup.backup(data, tmp_path / f"b{n}", step_pages=4,
                                         progress=meanwhile)
                assert backup.verify(tmp_path / f"b{n}") == manifest
                consistent(tmp_path / f"b{n}" / DB)
        finally:
            stop.set()
            thread.join(timeout=60)
        assert len(steps) >= 6 and manifest.head > 0
        assert "A-001" in checkins_on(hub)
        copy = sqlite3.connect(tmp_path / "b0" / DB)  # the hub as the copy began
        assert copy.execute("SELECT COUNT(*) FROM log WHERE code = 'during-backup'"
                            ).fetchone()[0] == 0
        assert copy.execute("SELECT COUNT(*) FROM batches WHERE device_id = ?",
                            [a.device]).fetchone()[0] == 0
        copy.close()
        for k in (a, b):
            k.close()


@pytest.fixture
def hub_and_backups(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                    ) -> tuple[Path, Path, Path, Path]:
    """A hub with a document, its backup, its key backup and the recovery key's file."""
    data = tmp_path / "hub"
    init_hub(data)
    (data / DOCUMENTS_DIR).mkdir()
    (data / DOCUMENTS_DIR / ("0" * 32)).write_bytes(b"scan")
    code, out = run(capsys, "hub", "backup", "--data", data, "--to", tmp_path / "backup")
    assert code == 0, out
    safe = key_backup(capsys, data, tmp_path / "hub.keys")
    return data, tmp_path / "backup", tmp_path / "hub.keys", safe


def test_a_key_backup_of_another_hub_is_refused_and_nothing_is_overwritten(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        hub_and_backups: tuple[Path, Path, Path, Path]) -> None:
    _, saved, keys, safe = hub_and_backups
    other = tmp_path / "other"
    init_hub(other)
    held = files_of(other)
    for force in ([], ["--force"]):
        code, out = run(capsys, "hub", "keys", "restore", "--from", keys, "--data", other,
                        "--recovery-key-file", safe, *force)
        assert code == 2 and "belongs to hub" in out, out
    assert files_of(other) == held
    # the other hub's data restored beside this hub's keys: refused too
    new = tmp_path / "new"
    code, out = run(capsys, "hub", "keys", "restore", "--from", keys, "--data", new,
                    "--recovery-key-file", safe)
    assert code == 0, out
    other_backup = tmp_path / "other-backup"
    assert run(capsys, "hub", "backup", "--data", other, "--to", other_backup)[0] == 0
    code, out = run(capsys, "hub", "restore", "--from", other_backup, "--data", new)
    assert code == 2 and "keys" in out and not (new / DB).exists(), out
    # and a hub never opens a database of another hub
    shutil.copy(other / DB, new / DB)
    with pytest.raises(ValueError, match="belongs to hub|from another hub"):
        Hub(new)
    # keys first, then the data: the same hub's, taken
    n2 = tmp_path / "n2"
    assert run(capsys, "hub", "keys", "restore", "--from", keys, "--data", n2,
               "--recovery-key-file", safe)[0] == 0
    assert run(capsys, "hub", "restore", "--from", saved, "--data", n2)[0] == 0
    Hub(n2).close()  # its keys open its database


def test_a_mistyped_or_wrong_recovery_key_and_a_damaged_key_backup_are_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        hub_and_backups: tuple[Path, Path, Path, Path]) -> None:
    _, _, keys, safe = hub_and_backups
    new = tmp_path / "new"
    good = safe.read_text().strip()
    typo = good[:10] + ("0" if good[10] != "0" else "1") + good[11:]
    wrong = recovery_key.display(os.urandom(32))
    for text, says in ((typo, "mistyped"), (good[:-3], "characters"),
                       (good[:11] + "U" + good[12:], "not a character"),
                       (wrong, "does not open")):
        (tmp_path / "rk").write_text(text)
        code, out = run(capsys, "hub", "keys", "restore", "--from", keys, "--data", new,
                        "--recovery-key-file", tmp_path / "rk")
        assert code == 2 and says in out, (text, out)
    sealed = keys.read_bytes()
    for name, damaged in (("cut", sealed[:len(sealed) // 2]), ("garbage", os.urandom(300)),
                          ("flipped", sealed[:-40] + bytes([sealed[-40] ^ 1]) + sealed[-39:])):
        (tmp_path / name).write_bytes(damaged)
        code, out = run(capsys, "hub", "keys", "restore", "--from", tmp_path / name,
                        "--data", new, "--recovery-key-file", safe)
        assert code == 2 and ("damaged" in out or "altered" in out), (name, out)
    assert not new.exists() or not any(new.iterdir())
    # as a person types it: lower case, spaces, Crockford's aliases
    typed = good.lower().replace("-", " ").replace("0", "o").replace("1", "l")
    (tmp_path / "rk").write_text(typed)
    assert run(capsys, "hub", "keys", "restore", "--from", keys, "--data", new,
               "--recovery-key-file", tmp_path / "rk")[0] == 0
    # keys there already stay unless forced
    before = files_of(new)
    code, out = run(capsys, "hub", "keys", "restore", "--from", keys, "--data", new,
                    "--recovery-key-file", safe)
    assert code == 2 and "--force" in out and files_of(new) == before
    # and a damaged one is replaced when forced, owner-only
    (new / "fleet.key").write_bytes(b"damaged")
    assert run(capsys, "hub", "keys", "restore", "--from", keys, "--data", new,
               "--recovery-key-file", safe, "--force")[0] == 0
    assert files_of(new) == before and (new / "fleet.key").stat().st_mode & 0o777 == 0o600


def test_an_endless_key_backup_or_recovery_key_file_is_refused_unread(
        tmp_path: Path, hub_and_backups: tuple[Path, Path, Path, Path]) -> None:
    """/dev/zero given for either file (or a huge one): a clear error, not memory filled
    until the process dies (run under a 768 MiB address-space limit)."""
    _, _, keys, safe = hub_and_backups

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (768 << 20, 768 << 20))

    for source, key_file, says in (("/dev/zero", safe, "not a hub key backup"),
                                   (keys, "/dev/zero", "longer than")):
        done = subprocess.run(
            [sys.executable, "-m", "host.cli", "hub", "keys", "restore", "--from", str(source),
             "--data", str(tmp_path / "new"), "--recovery-key-file", str(key_file)],
            cwd=ROOT, capture_output=True, text=True, timeout=60, preexec_fn=limited)
        assert done.returncode == 2 and says in done.stderr, done.stderr[-500:]
        assert "Traceback" not in done.stderr
    assert not (tmp_path / "new").exists() or not any((tmp_path / "new").iterdir())


def test_restored_data_without_its_keys_points_to_keys_restore_and_init_writes_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        hub_and_backups: tuple[Path, Path, Path, Path]) -> None:
    """Keys forgotten after a restore: no command advises haven hub init, and init there
    is refused before it writes keys of a new hub that would bar the real ones."""
    _, saved, keys, safe = hub_and_backups
    new = tmp_path / "new"
    assert run(capsys, "hub", "restore", "--from", saved, "--data", new)[0] == 0
    held = files_of(new)
    code, out = run(capsys, "hub", "status", "--data", new)
    assert code == 2 and "keys restore" in out and "hub init" not in out, out
    code, out = run(capsys, "hub", "init", "--data", new)
    assert code == 2 and "keys restore" in out, out
    assert files_of(new) == held
    assert run(capsys, "hub", "keys", "restore", "--from", keys, "--data", new,
               "--recovery-key-file", safe)[0] == 0
    Hub(new).close()


def test_keys_restored_first_are_not_opened_into_an_empty_hub_before_the_data(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        hub_and_backups: tuple[Path, Path, Path, Path]) -> None:
    """Between keys restore and restore, a look at the hub (status, serve) made an empty
    database beside the keys, and the data's restore was then refused."""
    _, saved, keys, safe = hub_and_backups
    new = tmp_path / "new"
    assert run(capsys, "hub", "keys", "restore", "--from", keys, "--data", new,
               "--recovery-key-file", safe)[0] == 0
    for command in (["status"], ["keys", "rotate"]):
        code, out = run(capsys, "hub", *command, "--data", new)
        assert code == 2 and "haven hub restore" in out, out
    assert not (new / DB).exists()
    assert run(capsys, "hub", "restore", "--from", saved, "--data", new)[0] == 0
    Hub(new).close()


def test_a_restored_hub_gives_no_kiosk_number_the_lost_hub_may_have_given(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        hub_and_backups: tuple[Path, Path, Path, Path]) -> None:
    """A kiosk enrolled after the backup has a number the backup does not know; its short
    codes (number and count) name patients. The restored hub numbers new kiosks past a
    gap, so no number is given twice."""
    data, saved, keys, safe = hub_and_backups
    lost_hub = Hub(data)
    given_after_backup = lost_hub.store.add_device(_device(1), 1)
    lost_hub.close()
    new = tmp_path / "new"
    assert run(capsys, "hub", "keys", "restore", "--from", keys, "--data", new,
               "--recovery-key-file", safe)[0] == 0
    assert run(capsys, "hub", "restore", "--from", saved, "--data", new)[0] == 0
    restored = Hub(new)
    try:
        first = restored.store.add_device(_device(2), 2)
        assert first > given_after_backup and first > backup.RESTORE_NUMBER_GAP
        assert restored.store.add_device(_device(3), 3) == first + 1
    finally:
        restored.close()


def _device(i: int) -> Device:
    return Device(f"kiosk-{i}", 100 + i, "North", "ABC"[i - 1], bytes([i]) * 32,
                  bytes([i]) * 32, "approved", 0, bytes(32), 0, None)


def test_every_single_character_typo_in_a_recovery_key_is_caught() -> None:
    key = os.urandom(32)
    text = recovery_key.display(key)
    assert recovery_key.parse(text) == key
    chars = [c for c in text if c != "-"]
    for i, c in enumerate(chars):
        for other in short_code.ALPHABET:
            if other != c:
                with pytest.raises(recovery_key.RecoveryKeyError):
                    recovery_key.parse("".join(chars[:i] + [other] + chars[i + 1:]))


def test_a_damaged_backup_directory_is_refused_and_nothing_is_written(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        hub_and_backups: tuple[Path, Path, Path, Path]) -> None:
    data, saved, _, _ = hub_and_backups
    manifest = (saved / "manifest.json").read_text()
    doc = saved / DOCUMENTS_DIR / ("0" * 32)
    damages: dict[str, Callable[[], object]] = {
        "missing": lambda: doc.unlink(),
        "altered": lambda: doc.write_bytes(b"scam"),
        "database": lambda: (saved / DB).write_bytes((saved / DB).read_bytes()[:4096]),
        "manifest cut": lambda: (saved / "manifest.json").write_text(manifest[:50]),
        "manifest garbage": lambda: (saved / "manifest.json").write_bytes(os.urandom(200)),
        "manifest huge": lambda: os.truncate(saved / "manifest.json", 8 << 30),  # sparse
        "manifest nested": lambda: (saved / "manifest.json").write_text("[" * 100_000),
        "manifest key twice": lambda: (saved / "manifest.json").write_text(
            manifest.replace('"head": 0', '"head": 0, "head": 0')),
        "manifest fraction": lambda: (saved / "manifest.json").write_text(
            manifest.replace('"head": 0', '"head": 0.0')),
        "manifest gone": lambda: (saved / "manifest.json").unlink(),
        "manifest edited": lambda: (saved / "manifest.json").write_text(
            manifest.replace('"head": 0', '"head": 1')),
        "a key listed": lambda: (saved / "manifest.json").write_text(manifest.replace(
            f"{DOCUMENTS_DIR}/{'0' * 32}", f"{DOCUMENTS_DIR}/../{ED_KEY}")),
    }
    pristine = files_of(saved)
    for what, damage in damages.items():
        damage()
        target = tmp_path / "new"
        code, out = run(capsys, "hub", "restore", "--from", saved, "--data", target)
        assert code == 2 and str(saved) in out, (what, out)
        assert not target.exists() or not any(target.iterdir()), what
        for name, content in pristine.items():
            (saved / name).write_bytes(content)
    # a restore cut short after the documents moved is taken over by the next
    cut = tmp_path / "cut"
    (cut / ".restoring").mkdir(parents=True)
    (cut / DOCUMENTS_DIR).mkdir()
    (cut / DOCUMENTS_DIR / "half").write_bytes(b"x")
    assert run(capsys, "hub", "restore", "--from", saved, "--data", cut)[0] == 0
    assert files_of(cut / DOCUMENTS_DIR) == files_of(saved / DOCUMENTS_DIR)
    assert not (cut / ".restoring").exists()
    # a directory holding a backup is refused, and replaced only when forced
    code, out = run(capsys, "hub", "backup", "--data", data, "--to", saved)
    assert code == 2 and "already holds a backup" in out and files_of(saved) == pristine
    assert run(capsys, "hub", "backup", "--data", data, "--to", saved, "--force")[0] == 0
    # a restore into a directory holding a hub's data is refused, which stays as it was
    held = files_of(data)
    code, out = run(capsys, "hub", "restore", "--from", saved, "--data", data)
    assert code == 2 and "not overwriting" in out and files_of(data) == held


def test_a_backup_that_would_not_fit_is_refused_before_anything_is_written(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "hub"
    init_hub(data)
    with small_disk(tmp_path / "small", "4m") as small:
        code, out = run(capsys, "hub", "backup", "--data", data, "--to", small / "b")
        assert code == 2 and "MiB free" in out, out
        assert not (small / "b").exists()


def test_a_hub_whose_store_key_is_sealed_to_its_tpm_comes_back_on_another_machine(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data, new = tmp_path / "hub", tmp_path / "new"
    with soft_tpm(tmp_path / "tpm") as tpm:
        assert run(capsys, "hub", "init", "--data", data, "--key-provider", "tpm",
                   "--tpm-tcti", tpm.tcti)[0] == 0
        with Hub(data) as hub:
            hub.store.set_meta("serial", 7)
        assert run(capsys, "hub", "backup", "--data", data, "--to", tmp_path / "b")[0] == 0
        safe = key_backup(capsys, data, tmp_path / "hub.keys")
    shutil.rmtree(data)  # the machine and its TPM are gone
    assert run(capsys, "hub", "restore", "--from", tmp_path / "b", "--data", new)[0] == 0
    code, out = run(capsys, "hub", "keys", "restore", "--from", tmp_path / "hub.keys",
                    "--data", new, "--recovery-key-file", safe)
    assert code == 0 and STORE_KEY in out, out
    with Hub(new) as hub:  # the key file opens the keyring the TPM's key wrapped
        assert hub.store.get_meta("serial") == 7


def test_paths_that_are_no_directory_or_hold_other_files_are_refused_clearly(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        hub_and_backups: tuple[Path, Path, Path, Path]) -> None:
    """A file given for a directory (or standing where a parent should be), a directory
    that is missing, and a restore into a directory holding other files: each a clear
    error, exit 2, and nothing written or removed anywhere."""
    data, saved, keys, safe = hub_and_backups
    a_file = tmp_path / "notes.txt"
    a_file.write_text("not a directory")
    others = tmp_path / "others"
    others.mkdir()
    (others / "photo.jpg").write_bytes(b"mine")
    restore_keys = ["hub", "keys", "restore", "--from", keys, "--recovery-key-file", safe]
    cases = [
        (["hub", "restore", "--from", saved, "--data", a_file], "is not a directory"),
        (["hub", "restore", "--from", saved, "--data", a_file / "new"], "is a file"),
        (["hub", "restore", "--from", saved, "--data", others], "holds other files"),
        (["hub", "restore", "--from", a_file, "--data", tmp_path / "n"], "not a directory"),
        (["hub", "restore", "--from", tmp_path / "gone", "--data", tmp_path / "n"],
         "is missing"),
        (["hub", "backup", "--data", tmp_path / "gone", "--to", tmp_path / "b"], "is missing"),
        (["hub", "backup", "--data", a_file, "--to", tmp_path / "b"], "not a directory"),
        (["hub", "backup", "--data", data, "--to", a_file / "b"], "is a file"),
        ([*restore_keys, "--data", a_file], "is not a directory"),
        ([*restore_keys, "--data", a_file / "new"], "is a file"),
        (["hub", "keys", "restore", "--from", keys, "--data", tmp_path / "n",
          "--recovery-key-file", tmp_path], "Is a directory"),
        (["hub", "keys", "backup", "--data", data, "--to", a_file / "k"], "cannot write"),
    ]
    before = files_of(tmp_path)
    for argv, says in cases:
        code, out = run(capsys, *argv)
        assert code == 2 and says in out, (argv, out)
        assert files_of(tmp_path) == before, argv
    assert not (tmp_path / "n").exists() and not (tmp_path / "b").exists()


def test_a_key_backup_older_than_a_fleet_key_rotation_is_refused_for_data_after_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        hub_and_backups: tuple[Path, Path, Path, Path]) -> None:
    """Data backed up after a rotation of the fleet key, keys before: restored, the hub
    would have run at the first generation, its kiosks at the second (and a next
    rotation would have made another second key)."""
    data, _, old_keys, safe = hub_and_backups
    assert run(capsys, "hub", "keys", "rotate-fleet", "--data", data)[0] == 0
    assert run(capsys, "hub", "backup", "--data", data, "--to", tmp_path / "after")[0] == 0
    new, n2 = tmp_path / "new", tmp_path / "n2"
    assert run(capsys, "hub", "restore", "--from", tmp_path / "after", "--data", new)[0] == 0
    held = files_of(new)
    code, out = run(capsys, "hub", "keys", "restore", "--from", old_keys, "--data", new,
                    "--recovery-key-file", safe)
    assert code == 2 and "generation 2" in out and "fleet.2.key" in out, out
    assert files_of(new) == held
    # the old keys restored first, the data after: the hub does not open without them
    assert run(capsys, "hub", "keys", "restore", "--from", old_keys, "--data", n2,
               "--recovery-key-file", safe)[0] == 0
    assert run(capsys, "hub", "restore", "--from", tmp_path / "after", "--data", n2)[0] == 0
    for command in (["status"], ["keys", "rotate-fleet"]):
        code, out = run(capsys, "hub", *command, "--data", n2)
        assert code == 2 and "fleet.2.key" in out, out
    assert not (n2 / "fleet.2.key").exists()
    safe2 = key_backup(capsys, data, tmp_path / "after.keys")
    assert run(capsys, "hub", "keys", "restore", "--from", tmp_path / "after.keys",
               "--data", new, "--recovery-key-file", safe2)[0] == 0
    with Hub(new) as hub:
        assert hub.fleet.generation == 2
