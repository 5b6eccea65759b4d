"""Staff unlock: a kiosk whose keys are under a passphrase boots locked, still checks
patients in (sealed, across power cuts), and merges them when staff unlock it.

Real store files, the real ``haven-kiosk run`` over HTTP on 127.0.0.1, SIGKILL for a
power cut. The unlock's time and peak RSS are printed, not asserted.
"""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from device.store import Store, StoreError, init_store, unlock
from device.store.locked import LockableStore
from device.store.pending import DB_NAME as PENDING_DB
from device.store.pending import PendingCheckins
from device.store.pending import sealing_info as pending_info
from protocol import strict_cbor
from protocol.crdt import schema
from protocol.sync.certificate import seal

from .test_runtime import call
from .test_ui_helpers import ROOT, free_port, run_kiosk

PASS = "correct horse battery staple"
C = {f.name: f.number for f in schema.CHECKIN.fields}
#: What patients type while the kiosk is locked: none of it may lie on the card in clear.
SECRETS = [b"Zainab Quarantino", b"Yusuf Lockwood", b"LK7654321", b"Quarantino", b"Lockwood"]


def passphrase_kiosk(data: Path) -> unlock.PassphraseKeys:
    data.mkdir(mode=0o700, parents=True)
    keys = unlock.init_keys(data, PASS)
    init_store(data, "North", "B", key_provider=keys, fleet=keys).close()
    return keys


def open_unlocked(data: Path) -> Store:
    keys = unlock.PassphraseKeys(data, unlock.unwrap(data, PASS))
    return Store(data, keys, fleet=keys)


def checkins(store: Any) -> dict[str, dict[str, Any]]:
    """Every check-in by queue number: its claim, time and subject."""
    out = {}
    for view in store.views():
        if view.type == schema.CHECKIN.number and not view.deleted:
            f = view.fields
            out[f[C["queueNumber"]]] = {"name": f.get(C["claimName"]),
                                        "year": f.get(C["claimBirthDate"]),
                                        "start": f[C["periodStart"]], "id": view.record_id}
    return out


def files_of(data: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(data.rglob("*")) if p.is_file()}


def test_the_keys_file_holds_no_key_in_clear_and_a_wrong_passphrase_changes_nothing(
        tmp_path: Path) -> None:
    data = tmp_path / "k"
    keys = passphrase_kiosk(data)
    names = {p.name for p in data.iterdir()}
    assert "store.key" not in names and "fleet.key" not in names
    doc = json.loads((data / unlock.KEYS_FILE).read_text())
    assert doc["kdf"] == {**doc["kdf"], "name": "scrypt", "n": 2**14, "r": 8, "p": 1}
    held = (data / unlock.KEYS_FILE).read_bytes()
    for secret in (keys.key(), keys.keys.fleet_key):
        for form in (secret, secret.hex().encode(), base64.b64encode(secret)):
            assert form not in held
    before = files_of(data)
    with pytest.raises(unlock.WrongPassphrase, match="wrong passphrase"):
        unlock.unwrap(data, "correct horse battery stapler")
    gate = LockableStore(data)
    with pytest.raises(unlock.WrongPassphrase):
        gate.unlock("not the passphrase")
    assert gate.locked
    with pytest.raises(unlock.Locked, match="unlock"):
        gate.status()
    gate.close()
    after = files_of(data)
    after.pop(PENDING_DB, None)  # made empty by the gate
    assert after == before


@pytest.mark.parametrize("bad", ["", 7, None, "x" * 257])
def test_an_empty_or_oversized_passphrase_is_refused_before_any_key(
        tmp_path: Path, bad: Any) -> None:
    data = tmp_path / "k"
    passphrase_kiosk(data)
    with pytest.raises(unlock.BadPassphrase):
        unlock.unwrap(data, bad)
    with pytest.raises(unlock.BadPassphrase, match="at least 8"):
        unlock.change_passphrase(data, PASS, "short")
    with pytest.raises(unlock.BadPassphrase, match="control"):
        unlock.change_passphrase(data, PASS, "two\nlines here")


def _damage(path: Path, how: str) -> None:
    raw = path.read_bytes()
    doc = json.loads(raw)
    if how == "truncated":
        path.write_bytes(raw[:len(raw) // 2])
    elif how == "garbage":
        path.write_bytes(os.urandom(300))
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "no store key":
        del doc["store_key"]
        path.write_text(json.dumps(doc))
    elif how == "short store key":
        doc["store_key"] = doc["store_key"][:20]
        path.write_text(json.dumps(doc))
    elif how == "huge n":
        doc["kdf"]["n"] = 2**24
        path.write_text(json.dumps(doc))
    elif how == "fleet key flipped":
        blob = bytearray(base64.b64decode(doc["fleet_key"]))
        blob[-1] ^= 1
        doc["fleet_key"] = base64.b64encode(bytes(blob)).decode()
        path.write_text(json.dumps(doc))


@pytest.mark.parametrize("how", ["truncated", "garbage", "empty", "no store key",
                                 "short store key", "huge n", "fleet key flipped"])
def test_a_damaged_keys_file_says_so_and_is_not_taken_for_a_wrong_passphrase(
        tmp_path: Path, how: str) -> None:
    data = tmp_path / "k"
    passphrase_kiosk(data)
    _damage(data / unlock.KEYS_FILE, how)
    with pytest.raises(StoreError) as caught:
        unlock.unwrap(data, PASS)
    assert caught.value.code == "bad-key-file" and "damaged" in str(caught.value)
    assert not isinstance(caught.value, unlock.WrongPassphrase)


def test_changing_the_passphrase_rewraps_the_store_key_only(tmp_path: Path) -> None:
    data = tmp_path / "k"
    passphrase_kiosk(data)
    with open_unlocked(data) as store:
        first = store.checkin(name="Amina Before", birth_year=1970, reason="sick")
    db = (data / "store.db").read_bytes()
    doc = json.loads((data / unlock.KEYS_FILE).read_text())
    with pytest.raises(unlock.WrongPassphrase):
        unlock.change_passphrase(data, "not the passphrase", "a new passphrase")
    unlock.change_passphrase(data, PASS, "a new passphrase", n=2**15)
    new = json.loads((data / unlock.KEYS_FILE).read_text())
    assert new["kdf"]["n"] == 2**15 and new["kdf"]["salt"] != doc["kdf"]["salt"]
    assert new["fleet_key"] == doc["fleet_key"] and new["pending_key"] == doc["pending_key"]
    assert (data / "store.db").read_bytes() == db
    with pytest.raises(unlock.WrongPassphrase):
        unlock.unwrap(data, PASS)
    keys = unlock.PassphraseKeys(data, unlock.unwrap(data, "a new passphrase"))
    with Store(data, keys, fleet=keys) as store:
        assert checkins(store)[first.queue_number]["name"] == "Amina Before"


def test_the_cli_sets_up_and_changes_the_passphrase_from_files_never_argv(
        tmp_path: Path) -> None:
    data, old, new = tmp_path / "k", tmp_path / "old", tmp_path / "new"
    old.write_text(PASS + "\n")
    new.write_text("another good passphrase\n")
    exe = [sys.executable, "-m", "device.cli"]
    done = subprocess.run([*exe, "init", "--data", str(data), "--site", "North", "--letter",
                           "B", "--key-provider", "passphrase", "--passphrase-file", str(old)],
                          capture_output=True, text=True, cwd=ROOT, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    assert (data / unlock.KEYS_FILE).exists()
    assert not (data / "fleet.key").exists() and not (data / "store.key").exists()
    again = subprocess.run([*exe, "init", "--data", str(data), "--site", "North",
                            "--key-provider", "passphrase"], capture_output=True, text=True,
                           cwd=ROOT, stdin=subprocess.DEVNULL)  # no terminal, no file
    assert again.returncode == 1 and "--passphrase-file" in again.stderr
    wrong = subprocess.run([*exe, "passphrase", "change", "--data", str(data),
                            "--passphrase-file", str(new), "--new-passphrase-file", str(old)],
                           capture_output=True, text=True, cwd=ROOT, stdin=subprocess.DEVNULL)
    assert wrong.returncode == 1 and "wrong passphrase" in wrong.stderr
    asked = subprocess.run([*exe, "passphrase", "change", "--data", str(data)],
                           capture_output=True, text=True, cwd=ROOT, stdin=subprocess.DEVNULL)
    assert asked.returncode == 1 and "--passphrase-file" in asked.stderr
    done = subprocess.run([*exe, "passphrase", "change", "--data", str(data),
                           "--passphrase-file", str(old), "--new-passphrase-file", str(new)],
                          capture_output=True, text=True, cwd=ROOT, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    unlock.unwrap(data, "another good passphrase")


def test_check_ins_while_locked_survive_power_cuts_and_merge_at_the_unlock(
        tmp_path: Path) -> None:
    data = tmp_path / "k"
    passphrase_kiosk(data)
    with open_unlocked(data) as store:
        store.checkin(name="Early Bird", birth_year=1960, reason="sick")  # B-001
    hub = f"tcp://127.0.0.1:{free_port()}"  # no hub answers: a locked kiosk does not try
    proc, url = run_kiosk(data, hub, idle=300, args=("--staff-pin-wait", "1"))
    try:
        assert call(url, "/api/config")[2]["unlock"] is True
        assert call(url, "/api/status")[2]["locked"] is True
        numbers = []
        for body in ({"name": "Zainab Quarantino", "year": "1981", "reason": "sick",
                      "consent": True},
                     {"passport": "LK7654321", "year": "1982", "reason": "injury"}):
            status, _, answer = call(url, "/api/checkin", body)
            assert status == 200 and answer["locked"] is True and "code" not in answer
            numbers.append(answer["queue_number"])
        assert numbers == ["B-002", "B-003"]
    finally:
        proc.p.kill()  # a power cut
        proc.p.wait(15)
    proc, url = run_kiosk(data, hub, idle=300, args=("--staff-pin-wait", "1"))
    try:
        status, _, answer = call(url, "/api/checkin", {"name": "Yusuf Lockwood", "year": "1990",
                                                       "reason": "child", "consent": True})
        assert status == 200 and answer["queue_number"] == "B-004"
        token = call(url, "/api/staff/login", {"pin": "246810"})[2]["token"]
        status, _, answer = call(url, "/api/staff/overview", headers={"X-Staff-Token": token})
        assert (status, answer["error"]) == (409, "locked")
        shown = subprocess.run([sys.executable, "-m", "device.cli", "status", "--data",
                                str(data)], capture_output=True, text=True, cwd=ROOT,
                               stdin=subprocess.DEVNULL)
        assert shown.returncode == 0, shown.stderr
        assert "3 check-ins sealed while locked" in shown.stdout and "LOCKED" in shown.stdout
        # at rest while locked: no file holds what the patients typed
        for name, blob in files_of(data).items():
            for secret in SECRETS:
                assert secret not in blob, (secret, name)
        before = files_of(data)
        status, _, answer = call(url, "/api/unlock", {"passphrase": "wrong horse battery"})
        assert (status, answer["error"]) == (403, "wrong-passphrase")
        assert (call(url, "/api/unlock", {"passphrase": ""})[0],
                call(url, "/api/unlock", {"passphrase": "y" * 5000})[0]) == (400, 400)
        assert files_of(data) == before  # a wrong passphrase changed nothing
        assert call(url, "/api/status")[2]["locked"] is True
        status, _, answer = call(url, "/api/unlock", {"passphrase": PASS})
        assert (status, answer) == (200, {"pending": 3})  # merged in the background
        assert call(url, "/api/status")[2]["locked"] is False
        status, _, answer = call(url, "/api/checkin", {"passport": "LK1112223", "year": "1975",
                                                       "reason": "sick"})
        assert (status, answer["queue_number"], answer.get("locked")) == (200, "B-005", None)
        deadline = time.monotonic() + 15
        while True:
            status, _, answer = call(url, "/api/staff/overview",
                                     headers={"X-Staff-Token": token})
            queue = [r["number"] for r in answer["queue"]] if status == 200 else []
            if len(queue) == 5 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert queue == [f"B-00{i}" for i in range(1, 6)]
    finally:
        assert proc.stop() == 0
    with open_unlocked(data) as store:
        held = checkins(store)
        assert {n: (held[n]["name"], held[n]["year"]) for n in held} == {
            "B-001": ("Early Bird", "1960"), "B-002": ("Zainab Quarantino", "1981"),
            "B-003": (None, "1982"), "B-004": ("Yusuf Lockwood", "1990"),
            "B-005": (None, "1975")}
        assert sorted(held, key=lambda n: held[n]["start"]) == sorted(held)
    with PendingCheckins(data) as pending:
        assert pending.count() == 0


def _lock_three(data: Path) -> list[str]:
    passphrase_kiosk(data)
    gate = LockableStore(data)
    numbers = [gate.checkin(name=n, birth_year=1980 + i, reason="sick").queue_number
               for i, n in enumerate(("Ada Locked", "Bea Locked", "Cyd Locked"))]
    gate.close()
    return numbers


def test_a_merge_cut_by_a_power_cut_loses_none_and_doubles_none(tmp_path: Path) -> None:
    data = tmp_path / "k"
    numbers = _lock_three(data)
    # the unlock in a process that dies right after the store took the second check-in,
    # before that entry was erased from pending.db
    code = ("import os\n"
            "from device.store.locked import LockableStore\n"
            "from device.store.store import Store\n"
            "taken = Store.checkin\n"
            "def checkin(self, *a, **kw):\n"
            "    out = taken(self, *a, **kw)\n"
            "    if kw.get('queue_number') == 'B-002':\n"
            "        os._exit(9)\n"
            "    return out\n"
            "Store.checkin = checkin\n"
            f"LockableStore({str(data)!r}).unlock({PASS!r})\n")
    died = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True)
    assert died.returncode == 9, died.stderr
    with PendingCheckins(data) as pending:
        assert pending.count() == 3  # a session's entries are erased once all merged
    gate = LockableStore(data)
    merge = gate.unlock(PASS)
    assert (merge.merged, merge.already, merge.refused, merge.missing) == (1, 2, [], [])
    held = checkins(gate)
    assert sorted(held) == numbers
    assert [held[n]["name"] for n in numbers] == ["Ada Locked", "Bea Locked", "Cyd Locked"]
    assert gate.unlock(PASS).merged == 0  # unlocked already: nothing left to merge
    with pytest.raises(StoreError, match="held already"):  # an id is taken once
        gate.checkin(name="Ada Again", reason="sick", checkin_id=held["B-001"]["id"],
                     queue_number="B-001")
    assert gate.checkin(name="Dee After", reason="sick").queue_number == "B-004"
    gate.close()


def test_garbage_pending_entries_are_kept_with_why_and_the_others_merge(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = tmp_path / "k"
    numbers = _lock_three(data)
    db = sqlite3.connect(data / PENDING_DB)
    with db:
        cids = [r[0] for r in db.execute("SELECT cid FROM checkins ORDER BY at_ms")]
        db.execute("UPDATE checkins SET sealed = ? WHERE cid = ?", [os.urandom(90), cids[0]])
        db.execute("UPDATE checkins SET queue_number = 'B-099' WHERE cid = ?", [cids[1]])
        db.execute("INSERT INTO checkins (cid, at_ms, queue_number, sealed) VALUES"
                   " (?, 1, 'B-100', ?)", [b"short", b"x"])
    db.close()
    gate = LockableStore(data)
    merge = gate.unlock(PASS)
    assert merge.merged == 1 and len(merge.refused) == 3 and merge.missing == []
    assert sum("MAC does not hold" in why for why in merge.refused) == 2
    assert "not merged" in caplog.text
    assert sorted(checkins(gate)) == [numbers[2]]
    gate.close()
    with PendingCheckins(data) as pending:  # kept, each with why
        kept = pending.db.execute("SELECT queue_number, refused FROM checkins").fetchall()
    assert sorted(n for n, _ in kept) == [numbers[0], "B-099", "B-100"]
    assert all(why for _, why in kept)


def test_a_card_holder_cannot_alter_remove_or_slip_in_a_locked_check_in_unseen(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """With the card (pending.db and the public key the entries are sealed to), someone
    re-seals other values under a check-in's id, time and number, removes one, and slips
    one of their own into the session: each is refused or reported, none merged as real,
    and the genuine ones merge."""
    data = tmp_path / "k"
    passphrase_kiosk(data)
    gate = LockableStore(data)
    for i, name in enumerate(("Ada Chained", "Bea Chained", "Cyd Chained", "Dee Chained")):
        gate.checkin(name=name, birth_year=1980 + i, reason="sick")
    gate.close()
    public = unlock.pending_public(data)
    db = sqlite3.connect(data / PENDING_DB)
    with db:
        rows = db.execute("SELECT cid, at_ms, queue_number, session FROM checkins"
                          " ORDER BY seq").fetchall()
        cid, at_ms, number, session = rows[0]
        forged = strict_cbor.dumps({"name": "Mallory Forged", "reason": "sick"})
        db.execute("UPDATE checkins SET sealed = ? WHERE cid = ?",
                   [seal(forged, public, pending_info(cid, at_ms, number)), cid])
        db.execute("DELETE FROM checkins WHERE cid = ?", [rows[2][0]])
        slipped = bytes(16)
        db.execute("INSERT INTO checkins (cid, at_ms, queue_number, sealed, session, seq, mac)"
                   " VALUES (?, ?, 'B-009', ?, ?, 4, ?)",
                   [slipped, at_ms, seal(forged, public, pending_info(slipped, at_ms, "B-009")),
                    session, bytes(32)])
    db.close()
    gate = LockableStore(data)
    merge = gate.unlock(PASS)
    assert (merge.merged, merge.already) == (2, 0)
    assert sorted(why.split(":")[0] for why in merge.refused) == ["B-001", "B-009"]
    assert all("MAC does not hold" in why for why in merge.refused)
    assert merge.missing and "1 of its 4 entries are missing" in merge.missing[0]
    assert "number 3" in merge.missing[0] and "missing" in caplog.text
    assert {c["name"] for c in checkins(gate).values()} == {"Bea Chained", "Dee Chained"}
    again = gate.merge_pending()  # reported once; the refused stay kept, with why
    assert (again.merged, again.refused, again.missing) == (0, [], [])
    gate.close()
    with PendingCheckins(data) as pending:
        kept = pending.db.execute("SELECT queue_number FROM checkins WHERE refused IS NOT NULL"
                                  ).fetchall()
    assert sorted(n for n, in kept) == ["B-001", "B-009"]


def test_a_session_whose_count_was_cut_says_so_and_merges_what_is_there(
        tmp_path: Path) -> None:
    data = tmp_path / "k"
    _lock_three(data)
    db = sqlite3.connect(data / PENDING_DB)
    with db:
        last = db.execute("SELECT cid FROM checkins ORDER BY seq DESC LIMIT 1").fetchone()[0]
        db.execute("DELETE FROM checkins WHERE cid = ?", [last])
        db.execute("UPDATE sessions SET count = 2")  # the last removed, the count cut
    db.close()
    with LockableStore(data) as gate:
        merge = gate.unlock(PASS)
        assert (merge.merged, merge.refused) == (2, [])
        assert len(merge.missing) == 1 and "count of entries was altered" in merge.missing[0]


def test_check_ins_taken_locked_by_the_release_before_the_chain_merge(tmp_path: Path) -> None:
    """pending.db from before its entries were chained (tests/fixtures/locked-485bb0f,
    made by that release): upgraded, its entries merged as they were, counted unchained."""
    fixture = Path(__file__).parent / "fixtures" / "locked-485bb0f"
    expected = json.loads((fixture / "expected.json").read_text())
    data = tmp_path / "k"
    data.mkdir(mode=0o700)
    for name in ("store.db", "pending.db", "passphrase.keys"):
        (data / name).write_bytes((fixture / name).read_bytes())
        (data / name).chmod(0o600)
    with LockableStore(data) as gate:
        merge = gate.unlock(expected["passphrase"])
        assert (merge.merged, merge.unchained, merge.refused, merge.missing) == (3, 3, [], [])
        held = checkins(gate)
        assert {n: (held[n]["name"], held[n]["year"]) for n in held} == {
            n: (c.get("name"), str(c["birth_year"])) for n, c in expected["checkins"].items()}


def test_unlock_time_and_memory(tmp_path: Path) -> None:
    """Printed, not asserted: the unlock's scrypt and the RSS it adds (its own process)."""
    data = tmp_path / "k"
    passphrase_kiosk(data)
    # VmHWM, reset after the imports (ru_maxrss would carry the parent's across exec)
    code = ("import time\n"
            "from device.store import unlock\n"
            "def rss():\n"
            "    d = dict(line.split(':', 1) for line in open('/proc/self/status'))\n"
            "    return int(d['VmRSS'].split()[0]), int(d['VmHWM'].split()[0])\n"
            "open('/proc/self/clear_refs', 'w').write('5')\n"
            "before = rss()[0]\n"
            "t = time.perf_counter()\n"
            f"unlock.unwrap({str(data)!r}, {PASS!r})\n"
            "took = time.perf_counter() - t\n"
            "print(took, before, *rss())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, check=True).stdout.split()
    took, before, after, peak = float(out[0]), int(out[1]), int(out[2]), int(out[3])
    print(f"\nunlock (scrypt n=2**14 r=8 p=1 + AES-GCM): {took * 1000:.0f} ms; RSS "
          f"{before / 1024:.1f} MiB before, peak {peak / 1024:.1f} MiB during, "
          f"{after / 1024:.1f} MiB after")


def test_revocation_destroys_the_keys_file_and_the_locked_check_ins_stay_unreadable(
        tmp_path: Path) -> None:
    from device import wipe

    data = tmp_path / "k"
    _lock_three(data)
    assert unlock.KEYS_FILE in wipe.wipe_on_revocation(data, "revoked in a test")
    assert not (data / unlock.KEYS_FILE).exists()
    with PendingCheckins(data) as pending:
        assert pending.count() == 3  # kept, sealed to a key that no longer exists
    for blob in files_of(data).values():
        assert b"Locked" not in blob


def test_a_locked_kiosk_is_wiped_without_its_passphrase_its_locked_check_ins_counted(
        tmp_path: Path) -> None:
    """``haven-kiosk wipe`` of a kiosk still locked: the store does not open without the
    passphrase, so the wipe counts what is unsynced from the files, the check-ins taken
    while locked among it, refuses while any is, and destroys the keys when told to."""
    from device import wipe

    data = tmp_path / "k"
    _lock_three(data)
    with pytest.raises(wipe.UnsyncedData, match="3 check-ins taken while locked"):
        wipe.wipe_folder(data, who="test")
    assert (data / unlock.KEYS_FILE).exists()
    report = wipe.wipe_folder(data, who="test", discard_unsynced=True)
    assert report.discarded.locked == 3 and unlock.KEYS_FILE in report.keys
    assert not (data / unlock.KEYS_FILE).exists()
    for blob in files_of(data).values():
        assert b"Locked" not in blob


def test_once_unlocked_the_sync_merges_the_hubs_deltas_into_the_store(tmp_path: Path) -> None:
    """The sync engine calls ``store.merge(deltas, now_ms=...)`` on what the runtime holds:
    the unlocked gate hands that to the store (the pending check-ins' merge has a name of
    its own), so the sync thread does not die at its first pull after the unlock."""
    other = init_store(tmp_path / "other", "North", "C")
    other.checkin(name="Olu Elsewhere", birth_year=1970, reason="sick")
    deltas = other.deltas_since({})
    other.close()
    data = tmp_path / "k"
    numbers = _lock_three(data)
    gate = LockableStore(data)
    assert gate.unlock(PASS).merged == 3
    report = gate.merge(deltas, now_ms=time.time_ns() // 10**6)
    assert report.applied == len(deltas)
    held = checkins(gate)
    assert sorted(held) == sorted([*numbers, "C-001"])
    assert held["C-001"]["name"] == "Olu Elsewhere"
    gate.close()


def test_a_passphrase_kiosk_is_enrolled_with_its_passphrase_from_a_file(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Set up from a script (no terminal): enroll takes --passphrase-file as init does."""
    from device.cli import main as kiosk
    from host.cli import main as haven

    data, hub, cert, right, wrong = (tmp_path / n for n in ("k", "hub", "cert", "ok", "no"))
    right.write_text(PASS + "\n")
    wrong.write_text("not the passphrase\n")
    assert kiosk(["init", "--data", str(data), "--site", "North", "--key-provider",
                  "passphrase", "--passphrase-file", str(right)]) == 0
    assert haven(["hub", "init", "--data", str(hub)]) == 0
    assert haven(["hub", "enroll", "--data", str(hub), str(data / "enrolment.req"),
                  "--out", str(cert)]) == 0
    capsys.readouterr()
    for file, code, says in ((wrong, 1, "wrong passphrase"), (right, 0, "enrolled")):
        assert kiosk(["enroll", "--data", str(data), str(cert), "--passphrase-file",
                      str(file)]) == code
        out = capsys.readouterr()
        assert says in out.out + out.err


def test_init_under_a_passphrase_refuses_a_store_made_with_key_files(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A new passphrase.keys beside a file kiosk's store would wrap a new store key that
    opens none of its data (and leave store.key on the card): refused, nothing written."""
    from device.cli import main as kiosk

    data, passphrase = tmp_path / "k", tmp_path / "pass"
    passphrase.write_text(PASS + "\n")
    with init_store(data, "North", "B") as store:
        store.checkin(name="Fay Filekey", birth_year=1980, reason="sick")
    held = files_of(data)
    capsys.readouterr()
    assert kiosk(["init", "--data", str(data), "--site", "North", "--key-provider",
                  "passphrase", "--passphrase-file", str(passphrase)]) == 1
    assert "file key provider" in capsys.readouterr().err
    assert files_of(data) == held
    with Store(data) as store:
        assert [c["name"] for c in checkins(store).values()] == ["Fay Filekey"]


def test_a_new_passphrase_the_page_keyboard_cannot_type_is_refused(tmp_path: Path) -> None:
    """Staff unlock on the on-screen keyboard (small letters, digits, space, - and .): a
    passphrase with anything else would leave the kiosk locked for good."""
    data = tmp_path / "k"
    passphrase_kiosk(data)
    before = files_of(data)
    for new in ("Correct Horse Battery", "correct horse battery!", "grüne äpfel sind gut"):
        with pytest.raises(unlock.BadPassphrase, match="keyboard"):
            unlock.change_passphrase(data, PASS, new)
    with pytest.raises(unlock.BadPassphrase, match="keyboard"):
        unlock.init_keys(tmp_path / "other", "Open-Sesame-42")
    assert files_of(data) == before
    unlock.unwrap(data, PASS)
