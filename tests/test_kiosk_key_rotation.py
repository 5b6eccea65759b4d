"""A kiosk's store key rotates (``haven-kiosk keys rotate``, ``device.store.rotation``).

Every sealed value of the kiosk (the store's tables, the documents, the sync batches) is
sealed again under a new key while check-ins go on; a rotation cut at any step (the
folder copied between two steps, or the process killed with SIGKILL) opens every value
and resumes; afterwards the old key opens nothing and is gone from the folder. The file,
TPM (swtpm) and passphrase providers rotate; refusals exit 2. Real store files, no mocks.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from gpiozero.pins.mock import MockFactory

from device import cli
from device.config import KioskConfig
from device.hardware import panel as hw
from device.run_lock import hold
from device.runtime import Runtime
from device.store import Store, collect, init_store, rotation, unlock
from device.store.keys import FieldCipher
from device.store.locked import LockableStore
from device.store.tpm_key import TpmKey
from device.sync.document_store import attach
from device.sync.state import SEAL_LABEL, SyncState
from device.wipe import REVOKED, destroy_keys
from protocol.driver.secret_files import promote_secret
from tests.swtpm_helpers import SoftTpm, soft_tpm
from tests.test_runtime import call
from tests.test_ui_helpers import free_port, runtime_in_thread

ROOT = Path(__file__).resolve().parents[1]
PASS = "correct horse battery staple"
#: Bounds every loop that waits for a rotation to end.
MAX_STEPS = 1000


def kiosk(data: Path, checkins: int = 12) -> Store:
    """A file-provider kiosk holding check-ins, a document, a quarantined delta and an
    unacknowledged sync batch: a value of every sealed column."""
    store = init_store(data, "Riverside", "A")
    first = None
    for i in range(checkins):
        r = store.checkin(name=f"Patient {i}", passport=f"RV{i:06d}" if i % 2 else None,
                          reason="cough")
        first = first or r
    assert first is not None
    store.merge([b"\x85not a delta"])
    scan = data.parent / f"{data.name}-scan.bin"
    scan.write_bytes(os.urandom(20_000))
    attach(store, scan, patient=first.patient_id, title="scan",
           content_type="application/octet-stream")
    state = SyncState(data)
    state.save_batch(1, b"\0" * 32, b"\1" * 32, 0, [1],
                     store.cipher.seal_blob(SEAL_LABEL, b"batch payload"), b"sig")
    state.close()
    return store


def walk(store: Store) -> int:
    """Walk a rotation under way to its end; the steps it took."""
    with rotation.files_of(store) as files:
        for n in range(1, MAX_STEPS):
            if not rotation.step(store, files):
                return n
    raise AssertionError("the rotation did not end")


def assert_rotated(data: Path, old: bytes, new: bytes) -> None:
    opened, failed = rotation.opening(data, FieldCipher(new))
    assert opened > 0 and failed == 0
    assert rotation.opening(data, FieldCipher(old)) == (0, opened)
    leftovers = {p.name for p in data.iterdir()} & {
        "store.key.next", "store.key.old", "store.next.tpm", "store.tpm.old",
        "passphrase.keys.new", "passphrase.keys.old"}
    assert not leftovers
    assert rotation.progress(data) is None


def test_rotation_while_checkins_go_on_loses_nothing(tmp_path: Path) -> None:
    data = tmp_path / "k"
    store = kiosk(data)
    old = (data / "store.key").read_bytes()
    early = Store(data)  # opened before the rotation began: seals under the old key
    rotation.start(store)
    new = (data / "store.key.next").read_bytes()
    done: list[str] = [store.checkin(name="Before the walk").record_id]

    def checkins() -> None:
        for i in range(30):
            done.append(store.checkin(name=f"During {i}", reason="fever").record_id)

    worker = threading.Thread(target=checkins)
    with rotation.files_of(store) as files:
        assert rotation.step(store, files)
        worker.start()
        done.append(early.checkin(name="From the early store").record_id)
        early.close()
        for _ in range(MAX_STEPS):
            done.append(store.checkin(name="Between slices").record_id)
            if not rotation.step(store, files):
                break
    worker.join(timeout=60)
    assert not worker.is_alive()
    assert (data / "store.key").read_bytes() == new
    assert len(done) > 32 and all(store.view(rid) is not None for rid in done)
    dump = store.dump()
    store.close()
    assert_rotated(data, old, new)
    with Store(data) as again:
        assert again.dump() == dump and not again.cipher.rotating


def snapshot(data: Path, into: Path) -> None:
    """The folder as a power cut would find it now that every job has returned (the
    shared-memory index aside, which SQLite rebuilds)."""
    shutil.copytree(data, into, ignore=shutil.ignore_patterns("*-shm", "run.lock"))


@pytest.mark.parametrize("slice_s", [0.0, 60.0], ids=["a-chunk-a-slice", "one-slice"])
def test_a_rotation_cut_at_every_step_opens_everything_and_resumes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, slice_s: float) -> None:
    # Where the slices end is set here, not by the machine's load: a slice of one chunk
    # (many steps), or the whole walk in one slice (the step before it is the start).
    monkeypatch.setattr(collect, "SLICE_S", slice_s)
    monkeypatch.setattr(collect, "BUSY_SLICE_S", slice_s)
    data = tmp_path / "k"
    store = kiosk(data)
    expected = store.dump()
    old = (data / "store.key").read_bytes()
    cuts = [tmp_path / "cut-0"]
    snapshot(data, cuts[0])  # before the next key: nothing to resume
    rotation.start(store)
    new = (data / "store.key.next").read_bytes()
    cuts.append(tmp_path / "cut-1")
    snapshot(data, cuts[-1])
    with rotation.files_of(store) as files:
        for n in range(2, MAX_STEPS):
            more = rotation.step(store, files)
            cuts.append(tmp_path / f"cut-{n}")
            snapshot(data, cuts[-1])
            if not more:
                break
    store.close()
    # and inside the swap: the old key linked aside; then the new one renamed over it.
    # The swap begins only once the walk's end is durable (every value found under the
    # new key), a step of its own: a swap cut from an earlier cut is no state a power
    # cut leaves (values under the old key, the old key gone).
    last_walked = cuts[-2]
    assert (rotation.progress(last_walked) or {}).get("swapping"), last_walked.name
    for name, steps in (("swap-linked", 1), ("swap-renamed", 2)):
        cut = tmp_path / name
        snapshot(last_walked, cut)
        os.link(cut / "store.key", cut / "store.key.old")
        if steps == 2:
            os.replace(cut / "store.key.next", cut / "store.key")
        cuts.append(cut)
    assert len(cuts) > 5
    for cut in cuts:
        with Store(cut) as resumed:
            assert resumed.dump() == expected, cut.name
            walk(resumed)
            assert resumed.dump() == expected, cut.name
        key = (cut / "store.key").read_bytes()
        assert key == (old if cut.name == "cut-0" else new), cut.name
        if cut.name != "cut-0":
            assert_rotated(cut, old, new)


CHILD = """
import sys
from pathlib import Path
from device.store import Store, rotation
store = Store(Path(sys.argv[1]))
rotation.start(store)
print("started", flush=True)
with rotation.files_of(store) as files:
    while True:
        store.checkin(name="Walk-in")  # check-ins keep the slices short: many steps
        if not rotation.step(store, files):
            break
        print("step", flush=True)
print("done", flush=True)
"""


def test_a_rotation_killed_mid_walk_resumes_with_the_command(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = 3  # killed after two slices (right after the next key: the test above)
    data = tmp_path / "k"
    kiosk(data, checkins=150).close()
    old = (data / "store.key").read_bytes()
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(data)], cwd=ROOT,
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    seen = [child.stdout.readline() for _ in range(lines)]
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    assert seen[0] == "started\n" and seen[-1] in ("started\n", "step\n")
    new = (data / "store.key.next").read_bytes()
    with Store(data) as cut:
        expected = cut.dump()  # every value opens
    assert expected.count(b"Walk-in") >= 2 * (lines - 1)  # its patient and check-in
    capsys.readouterr()
    assert cli.main(["keys", "rotate", "--data", str(data)]) == 0  # resumes, no new key
    said = capsys.readouterr().out
    assert "resumes" in said and "new store key made" not in said, said
    assert (data / "store.key").read_bytes() == new
    assert_rotated(data, old, new)
    with Store(data) as after:
        assert after.dump() == expected


def test_the_runtime_thread_walks_a_rotation_begun_after_it_opened(tmp_path: Path) -> None:
    data = tmp_path / "k"
    store = kiosk(data)
    expected = store.dump()
    old = (data / "store.key").read_bytes()
    stop = threading.Event()
    thread = threading.Thread(target=rotation.keep_rotating, args=(store, stop, 0.02))
    thread.start()
    try:
        with hold(data):  # as the runtime does: the command leaves the walk to it
            assert cli.main(["keys", "rotate", "--data", str(data)]) == 0
            new = (data / "store.key.next").read_bytes()
            for _ in range(MAX_STEPS):
                if not rotation.under_way(store):
                    break
                stop.wait(0.02)
    finally:
        stop.set()
        thread.join(timeout=60)
    assert not rotation.under_way(store)
    assert store.dump() == expected
    store.close()
    assert_rotated(data, old, new)


def test_the_runtime_resumes_a_rotation_while_the_page_checks_patients_in(
        tmp_path: Path) -> None:
    data = tmp_path / "k"
    kiosk(data, checkins=60).close()
    old = (data / "store.key").read_bytes()
    with hold(data):  # a runtime's power was cut right after the next key was made
        assert cli.main(["keys", "rotate", "--data", str(data)]) == 0
    new = (data / "store.key.next").read_bytes()
    cfg = KioskConfig(data=data, hub=[f"tcp://127.0.0.1:{free_port()}"], ui="127.0.0.1:0",
                      retry_max=0.5, interval=0.5, hardware="simulated")
    rt = Runtime(cfg, hardware=hw.Hardware(pin_factory=MockFactory()))
    taken = []
    with runtime_in_thread(rt):
        assert rt.address is not None
        url = "http://{}:{}".format(*rt.address)
        for i in range(MAX_STEPS):
            name = "Walkin " + chr(97 + i % 26) * (1 + i // 26)  # letters only
            status, _, answer = call(url, "/api/checkin", {
                "passport": None, "year": "1990", "reason": "child", "name": name,
                "consent": True})
            assert status == 200, answer
            taken.append(answer["queue_number"])
            if rotation.progress(data) is None:
                break
    assert len(taken) > 1  # one at least while it re-sealed
    with Store(data) as store:
        dump = store.dump().decode()
    assert all(f'"queueNumber":"{number}"' in dump for number in taken)
    assert_rotated(data, old, new)


def test_refusals_exit_2_and_status_shows_progress(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "k"
    kiosk(data).close()
    with hold(data):  # a runtime serves the folder
        assert cli.main(["keys", "rotate", "--data", str(data)]) == 0
        assert cli.main(["keys", "rotate", "--data", str(data)]) == 2
    assert "under way already" in capsys.readouterr().err
    assert cli.main(["status", "--data", str(data), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)["key_rotation"]
    assert shown["pass"] == 1 and shown["values"] > 10 and not shown["swapping"]
    assert cli.main(["status", "--data", str(data)]) == 0
    assert "store key rotation: pass 1 (re-sealing)" in capsys.readouterr().out
    assert cli.main(["keys", "rotate", "--data", str(tmp_path / "none")]) == 2


@pytest.fixture
def passphrase_kiosk(tmp_path: Path) -> Iterator[Path]:
    data = tmp_path / "p"
    data.mkdir(mode=0o700)
    keys = unlock.init_keys(data, PASS)
    init_store(data, "North", "B", key_provider=keys, fleet=keys).close()
    (tmp_path / "pass").write_text(PASS + "\n")
    (tmp_path / "wrong").write_text("not the passphrase\n")
    yield data


def test_passphrase_kiosk_rotates_and_its_locked_checkins_still_merge(
        passphrase_kiosk: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = passphrase_kiosk
    with LockableStore(data) as locked:  # a power cut at night: check-ins sealed meanwhile
        taken = [locked.checkin(name=f"Night {i}").record_id for i in range(3)]
    keys = unlock.PassphraseKeys(data, unlock.unwrap(data, PASS))
    with Store(data, keys, fleet=keys) as store:
        taken.append(store.checkin(name="Day patient", reason="cough").record_id)
    before = (data / "passphrase.keys").read_bytes()
    old = unlock.unwrap(data, PASS).store_key
    args = ["keys", "rotate", "--data", str(data), "--passphrase-file"]
    assert cli.main([*args, str(tmp_path / "wrong")]) == 2
    assert "wrong passphrase" in capsys.readouterr().err
    assert (data / "passphrase.keys").read_bytes() == before  # nothing written
    assert cli.main([*args, str(tmp_path / "pass")]) == 0
    new = unlock.unwrap(data, PASS).store_key
    assert new != old
    assert_rotated(data, old, new)
    with LockableStore(data) as store:
        merged = store.unlock(PASS)
        assert merged.merged == 3 and not merged.refused
        assert all(store.view(cid) is not None for cid in taken)


def test_passphrase_change_during_a_rotation_keeps_the_next_key(passphrase_kiosk: Path
                                                                ) -> None:
    data = passphrase_kiosk
    held = unlock.unwrap(data, PASS)
    later = os.urandom(32)  # a later generation of the fleet key, under the store key too
    unlock.PassphraseKeys(data, held).install_later([later], "North")
    unlock.add_next_key(data, PASS)
    upcoming = unlock.next_store_key(data, unlock.unwrap(data, PASS).store_key)
    unlock.change_passphrase(data, PASS, "another passphrase here", n=2**10)
    keys = unlock.PassphraseKeys(data, unlock.unwrap(data, "another passphrase here"))
    with Store(data, keys, fleet=keys) as store:
        assert store.cipher.rotating
        walk(store)
    after = unlock.unwrap(data, "another passphrase here")
    assert after.store_key == upcoming
    assert (after.fleet_key, after.fleet_later) == (held.fleet_key, (later,))


def test_passphrase_swap_cut_short_is_finished(passphrase_kiosk: Path) -> None:
    data = passphrase_kiosk
    old = unlock.unwrap(data, PASS)
    unlock.add_next_key(data, PASS)
    upcoming = unlock.next_store_key(data, old.store_key)
    # a swap cut after it wrote the new file beside and linked the old one aside
    (data / "passphrase.keys.new").write_bytes(b"half a file")
    (data / "passphrase.keys.new").chmod(0o600)
    os.link(data / "passphrase.keys", data / "passphrase.keys.old")
    keys = unlock.PassphraseKeys(data, unlock.unwrap(data, PASS))
    with Store(data, keys, fleet=keys) as store:
        store.checkin(name="Ann Lee")
        walk(store)
    after = unlock.unwrap(data, PASS)
    assert after.store_key == upcoming and after.fleet_key == old.fleet_key
    assert_rotated(data, old.store_key, upcoming)


@pytest.fixture(scope="module")
def tpm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoftTpm]:
    with soft_tpm(tmp_path_factory.mktemp("swtpm")) as t:
        yield t


def test_tpm_kiosk_rotates(tpm: SoftTpm, tmp_path: Path) -> None:
    data = tmp_path / "t"
    with init_store(data, "Riverside", "C", provider="tpm", tcti=tpm.tcti) as store:
        for i in range(5):
            store.checkin(name=f"Patient {i}")
        expected = store.dump()
    shutil.copy2(data / "store.tpm", tmp_path / "old.tpm")
    old = TpmKey(tmp_path, "old").key()
    assert cli.main(["keys", "rotate", "--data", str(data)]) == 0
    new = TpmKey(data, "store").key()
    assert new != old
    assert_rotated(data, old, new)
    with Store(data) as store:
        assert store.dump() == expected


def test_promote_secret_finishes_from_any_cut(tmp_path: Path) -> None:
    key, nxt, old = tmp_path / "k", tmp_path / "k.next", tmp_path / "k.old"
    for cut in range(3):
        for p in (key, nxt, old):
            p.unlink(missing_ok=True)
        key.write_bytes(b"A" * 32)
        nxt.write_bytes(b"B" * 32)
        if cut >= 1:
            os.link(key, old)
        if cut >= 2:
            os.replace(nxt, key)
        promote_secret(key, nxt)
        assert key.read_bytes() == b"B" * 32 and not nxt.exists() and not old.exists()


def test_a_revocation_mid_rotation_destroys_the_next_key_too(tmp_path: Path) -> None:
    data = tmp_path / "k"
    with kiosk(data, checkins=2) as store:
        rotation.start(store)
    os.link(data / "store.key", data / "store.key.old")  # as a swap cut short leaves it
    gone = destroy_keys(data, REVOKED, detail="revoked")
    assert {"store.key", "store.key.next", "store.key.old"} <= set(gone)
    assert not {"store.key", "store.key.next", "store.key.old"} & {p.name for p in
                                                                   data.iterdir()}
