"""Fleet key rotation (SPEC.md "Fleet key rotation"): chained patient ids, the hub's
migration of patient ids to a new generation, and kiosks taking the new key at their
next sync."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from device.store import KeyMismatch, Store, init_store, unlock
from device.store.tpm_key import TpmFleetKeeper
from device.store.unlock import PassphraseKeys
from device.sync.connection import HubConnection
from device.sync.fleet_keys import KioskFleetKeys
from device.sync.state import scope_of
from host.cli import main as haven
from host.errors import UsageError
from host.hub.hub import Hub, init_hub
from host.hub.storage import Op
from protocol.crdt import ids
from protocol.crdt.clock import HLC
from protocol.crdt.delta import encode
from protocol.crdt.erasure import erasure_record_id
from protocol.crdt.schema import CHECKIN, ERASURE, PATIENT
from protocol.crdt.writes import build_put
from protocol.driver.tpm import Tpm
from protocol.sync.fleet_chain import (
    fingerprint,
    generation_of,
    seal_chain,
    valid_moves,
    writer_generation,
)

from .swtpm_helpers import require_swtpm, soft_tpm
from .test_hub_backup import key_backup
from .test_sync_helpers import Kiosk, served_hub

pytestmark = pytest.mark.usefixtures("hub_backend")

PASSPORT, OTHER = "XO1971555", "ZQ1990777"

VECTORS = json.loads((Path(__file__).parent.parent / "protocol/vectors/fleet_rotation.json")
                     .read_text())


def test_chained_ids_are_the_vectors() -> None:
    keys = [bytes.fromhex(k) for k in VECTORS["keys"]]
    for case in VECTORS["cases"]:
        first = (ids.patient_id if case["kind"] == "passport" else ids.code_patient_id)(
            keys[0], case["given"])
        expected = [uuid.UUID(i) for i in case["ids"]]
        assert first == expected[0]
        for g in range(1, len(keys)):
            assert ids.rotated_id(keys[g], expected[g - 1].bytes) == expected[g]
            assert ids.chained_id(first, [ids.hmac_of(k) for k in keys[1:g + 1]]) == expected[g]


def test_moves_say_which_generation_each_write_was_made_under() -> None:
    moves = [[2, 100], [1, 200], [3, 300]]  # back to 1: a TPM kiosk's first key again
    assert valid_moves(moves) and generation_of(moves) == 3 and generation_of([]) == 1
    assert [writer_generation(moves, s) for s in (50, 150, 250, 350)] == [1, 2, 1, 3]
    for bad in ([[2, 100], [2, 200]], [[2, 100], [3, 100]], [[0, 1]], [[1, 1]], [[2]],
                [[2, "1"]], [[2, 1]] * 65, "moves"):
        assert not valid_moves(bad), bad


def run(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str]:
    capsys.readouterr()
    code = haven([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out + out.err


def live(dump: bytes) -> dict[str, dict[str, Any]]:
    """The live records of a dump, by id."""
    return {r["id"]: r for r in json.loads(dump)["records"] if not r["deleted"]}


def test_a_rotation_migrates_every_id_and_kiosks_follow_over_tcp(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with served_hub(tmp_path) as (hub, url):
        a, b, c = (Kiosk(tmp_path, n, hub, n.upper()) for n in "abc")
        door = Kiosk(tmp_path, "door", hub, "D", role="door")
        clinic = Kiosk(tmp_path, "clinic", hub, "E", role="clinician")
        try:
            first = hub.fleet_key
            x = a.store.checkin(name="Xavier Ortolan", passport=PASSPORT, birth_year=1971)
            y = a.store.checkin(name="Yolande Pimprenelle", birth_year=1980)  # gets a code
            assert y.code is not None
            a.store.put("prescription", values={"subject": x.patient_id, "medication": "M1"})
            for kiosk in (a, b, c, door, clinic):
                kiosk.sync(url)
            assert run(capsys, "hub", "promote", "--data", hub.data)[0] == 0
            for kiosk in (a, b, c, door, clinic):
                kiosk.sync(url)
            old_verifier = ids.verifier_record_id(first, "North", uuid.UUID(x.patient_id).bytes)
            assert str(uuid.UUID(bytes=old_verifier)) in live(hub.dump())

            # c is offline from here; the hub rotates the fleet key
            code, out = run(capsys, "hub", "keys", "rotate-fleet", "--data", hub.data)
            assert code == 0, out
            code, status = run(capsys, "hub", "status", "--data", hub.data)
            assert status.count("fleet key generation 1 (the hub's: 2)") == 5, status
            assert "generation 2" in out and "2 patients migrated" in out, out
            second = (hub.data / "fleet.2.key").read_bytes()
            assert (hub.data / "fleet.2.key").stat().st_mode & 0o077 == 0
            new_x = ids.rotated_id(second, uuid.UUID(x.patient_id).bytes)
            new_y = ids.rotated_id(second, uuid.UUID(y.patient_id).bytes)
            # c, still on the first key, sees X again and a new patient Z
            again = c.store.checkin(name="Xavier Ortolan", passport=PASSPORT, birth_year=1971)
            assert again.patient_id == x.patient_id and again.identity == "match"
            z = c.store.checkin(name="Zoe Quenouille", passport=OTHER, birth_year=1990)
            c.store.put("note", values={"subject": z.patient_id, "text": "offline note"})

            for kiosk in (a, b, door, clinic, c, a, b, door, clinic, c):
                kiosk.sync(url)
            for kiosk in (a, b, c, door, clinic):
                assert kiosk.store.fleet.generation == 2
            assert {k["fleet_generation"] for k in hub.status()["kiosks"]} == {2}
            # a returning patient at a rotated kiosk: by passport and by short code
            found = b.store.checkin(name="Xavier Ortolan", passport=PASSPORT, birth_year=1971)
            assert (found.patient_id, found.identity) == (str(new_x), "match")
            coded = b.store.checkin(code=y.code, name="Yolande Pimprenelle", birth_year=1980)
            assert (coded.patient_id, coded.identity) == (str(new_y), "match")
            at_door = door.store.checkin(passport=PASSPORT, birth_year=1971)
            assert (at_door.patient_id, at_door.identity) == (str(new_x), "match")
            assert run(capsys, "hub", "promote", "--data", hub.data)[0] == 0  # Z's claim
            for kiosk in (a, b, c, door, clinic, a, b, c, door, clinic):
                kiosk.sync(url)

            dump = hub.dump()
            records = live(dump)
            new_z = ids.rotated_id(second, ids.patient_id(first, OTHER).bytes)
            patients = {i for i, r in records.items() if r["type"] == "patient"}
            assert patients == {str(new_x), str(new_y), str(new_z)}
            assert records[str(new_x)]["fields"]["name"] == "Xavier Ortolan"
            assert records[str(new_z)]["fields"]["name"] == "Zoe Quenouille"
            subjects = [r["fields"]["subject"] for r in records.values()
                        if "subject" in r["fields"]]
            assert len(subjects) >= 9 and set(subjects) <= patients
            # the first key alone finds nobody in the new data
            gone = {str(ids.patient_id(first, PASSPORT)), str(ids.patient_id(first, OTHER)),
                    str(ids.code_patient_id(first, y.code))}
            assert not gone & set(records) and not gone & set(subjects)
            # door verifiers: the old one deleted, the new one under the new key
            assert str(uuid.UUID(bytes=old_verifier)) not in records
            assert str(uuid.UUID(bytes=ids.verifier_record_id(
                second, "North", new_x.bytes))) in records
            assert a.store.dump() == b.store.dump() == c.store.dump() == dump
            for kiosk in (a, door, clinic):  # scoped replicas agree with the hub too
                scope = scope_of(kiosk.store.data)
                assert scope is not None
                sums = hub.store.scope_sums(scope, kiosk.state.cursor, kiosk.store.node, (2,))
                assert kiosk.store.scope_checksum(scope) == sums[2], scope.role
            assert hub.status()["fleet_rotation"] == {"generation": 2, "patients": 2,
                                                       "done": True}
        finally:
            for kiosk in (a, b, c, door, clinic):
                kiosk.close()


def _seed(hub: Hub, count: int) -> tuple[list[bytes], list[bytes], bytes]:
    """``count`` patients, each with a check-in naming them, written by the hub, and
    one more patient with an erasure record: (patients, check-ins, the erased one)."""
    hlc, node, now = HLC(), hub.node, 1_760_000_000_000
    patients = [ids.patient_id(hub.fleet_key, f"PP{n:06d}").bytes for n in range(count)]
    erased = ids.patient_id(hub.fleet_key, "ERASED001").bytes
    checkins = [uuid.uuid4().bytes for _ in patients]
    deltas = [build_put(None, p, PATIENT, node, hlc.now(now),
                        {"name": f"Patient {n}", "birthDate": "1970-01-01"},
                        {"allergies": ["latex"]} if n % 2 else {})
              for n, p in enumerate([*patients, erased])]
    deltas += [build_put(None, c, CHECKIN, node, hlc.now(now),
                         {"subject": str(uuid.UUID(bytes=p)), "status": "arrived"})
               for c, p in zip(checkins, patients, strict=True)]
    deltas.append(build_put(None, erasure_record_id(erased), ERASURE, node, hlc.now(now),
                            {"subject": str(uuid.UUID(bytes=erased)), "requester": "dr.x"}))
    hub.store.add_local(*(Op(d.record_id, d.stamp, d.node, encode(d)) for d in deltas))
    return patients, checkins, erased


@pytest.mark.sqlite_only  # haven hub backup: PostgreSQL's hubs use its own tools
def test_a_rotation_cut_after_a_slice_resumes_with_nothing_lost(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "hub"
    init_hub(data)
    with Hub(data) as hub:
        patients, checkins, erased = _seed(hub, 24)
        before = live(hub.dump())
        assert hub.rotate_fleet() == 2
        assert hub.fleet_slice(limit=16)  # one slice, then the power goes
        with pytest.raises(UsageError, match="not done"):
            hub.rotate_fleet()  # a second rotation waits for the first's migration
        assert not (data / "fleet.3.key").exists()
    code, out = run(capsys, "hub", "status", "--data", data)
    assert code == 0 and "fleet key: generation 2, " in out and "under way" in out, out
    code, out = run(capsys, "hub", "keys", "rotate-fleet", "--data", data, "--resume")
    assert code == 0 and "24 patients migrated to generation 2" in out, out
    second = (data / "fleet.2.key").read_bytes()
    with Hub(data) as hub:
        after = live(hub.dump())
        for n, (p, c) in enumerate(zip(patients, checkins, strict=True)):
            new = str(ids.rotated_id(second, p))
            old = before[str(uuid.UUID(bytes=p))]
            assert str(uuid.UUID(bytes=p)) not in after
            assert after[new]["fields"] == old["fields"], n
            assert after[str(uuid.UUID(bytes=c))]["fields"]["subject"] == new
        # the erased patient is never migrated
        assert str(uuid.UUID(bytes=erased)) in after
        assert str(ids.rotated_id(second, erased)) not in after
        assert len(after) == len(before)
        assert hub.fleet.patient_id("PP000003") == ids.rotated_id(second, patients[3])
    # the key backup holds the new generation (a data backup never does); the keys
    # restored first, then the data, give the hub back at generation 2
    safe = key_backup(capsys, data, tmp_path / "hub.keys")
    code, out = run(capsys, "hub", "backup", "--data", data, "--to", tmp_path / "backup")
    assert code == 0 and not list((tmp_path / "backup").rglob("fleet*")), out
    restored = tmp_path / "restored"
    code, out = run(capsys, "hub", "keys", "restore", "--from", tmp_path / "hub.keys",
                    "--data", restored, "--recovery-key-file", safe)
    assert code == 0, out
    assert (restored / "fleet.2.key").read_bytes() == second
    assert (restored / "fleet.2.key").stat().st_mode & 0o077 == 0
    code, out = run(capsys, "hub", "restore", "--from", tmp_path / "backup", "--data",
                    restored)
    assert code == 0, out
    with Hub(restored) as back:
        assert back.fleet.generation == 2 and live(back.dump()) == after


def test_bad_input_is_refused_with_a_clear_error_and_nothing_written(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    data = tmp_path / "hub"
    init_hub(data)
    (data / "fleet.key").unlink()
    code, out = run(capsys, "hub", "keys", "rotate-fleet", "--data", data)
    assert code == 2 and "fleet.key is missing" in out, out
    assert not (data / "fleet.2.key").exists()
    code, out = run(capsys, "hub", "keys", "rotate-fleet", "--data", tmp_path / "hub2",
                    "--resume")
    assert code == 2, out

    # a kiosk offered a chain that goes on from another first key
    first, second = os.urandom(32), os.urandom(32)
    (tmp_path / "first.key").write_bytes(first)
    store = init_store(tmp_path / "kiosk", "North", "A", tmp_path / "first.key")
    x_key = X25519PrivateKey.generate()
    try:
        store.checkin(name="Held Before", passport=PASSPORT)
        fleet = KioskFleetKeys(store, x_key)
        fleet.offered(seal_chain(os.urandom(32), [second], x_key.public_key()
                                 .public_bytes_raw()))
        assert "fleet key chain was refused" in caplog.text
        assert "another first key" in caplog.text
        fleet.offered(b"\x00" * 80)  # does not open: refused the same way
        assert "does not open" in caplog.text
        with pytest.raises(KeyMismatch, match="another first key"):
            store.install_fleet_later(fingerprint(os.urandom(32)), [second])
        assert store.fleet.generation == 1 and store.fleet_generations() == []
        assert not (tmp_path / "kiosk" / "fleet.2.key").exists()
        # the right chain is taken, kept, and a different generation 2 refused after it
        fleet.offered(seal_chain(first, [second], x_key.public_key().public_bytes_raw()))
        assert store.fleet.generation == 2 and len(store.fleet_generations()) == 1
        with pytest.raises(KeyMismatch, match="another key"):
            store.install_fleet_later(fingerprint(first), [os.urandom(32)])
        assert not store.install_fleet_later(fingerprint(first), [second])  # held already
        assert store.fleet.patient_id(PASSPORT) == ids.rotated_id(
            second, ids.patient_id(first, PASSPORT).bytes)
        # a third generation: the moves go on growing, as the wire wants them
        third = os.urandom(32)
        assert store.install_fleet_later(fingerprint(first), [second, third])
        moves = store.fleet_generations()
        assert [m[0] for m in moves] == [2, 3] and valid_moves(moves)
        expected = ids.chained_id(ids.patient_id(first, PASSPORT),
                                  [ids.hmac_of(second), ids.hmac_of(third)])
        assert store.fleet.patient_id(PASSPORT) == expected
    finally:
        store.close()
    with Store(tmp_path / "kiosk") as again:
        assert again.fleet.patient_id(PASSPORT) == expected
        assert again.fleet.fingerprint() == fingerprint(first)


def test_the_passphrase_and_tpm_keepers_keep_the_chain(tmp_path: Path) -> None:
    keys = [bytes.fromhex(k) for k in VECTORS["keys"]]
    case = VECTORS["cases"][0]
    (tmp_path / "p").mkdir(mode=0o700)
    unlock.create(tmp_path / "p", "a long passphrase", keys[0], n=2**4)
    PassphraseKeys(tmp_path / "p", unlock.unwrap(tmp_path / "p", "a long passphrase")
                   ).install_later(keys[1:], "North")
    opened = unlock.unwrap(tmp_path / "p", "a long passphrase")
    assert opened.fleet_later == tuple(keys[1:])
    held = PassphraseKeys(tmp_path / "p", opened).load()
    assert str(held.patient_id(case["given"])) == case["ids"][2]
    require_swtpm()
    with soft_tpm(tmp_path / "swtpm") as tpm:
        before = Tpm(tpm.tcti).persistent_handles()
        (tmp_path / "t").mkdir(mode=0o700)
        keeper = TpmFleetKeeper(tmp_path / "t", tpm.tcti)
        keeper.install(keys[0], "North")
        fleet = keeper.install_later(keys[1:], "North")
        assert fleet.generation == 3 and keeper.load().generation == 3
        assert str(fleet.patient_id(case["given"])) == case["ids"][2]
        pid = uuid.UUID(case["ids"][2]).bytes
        assert fleet.year_verifier("North", pid, "1971") == held.year_verifier(
            "North", pid, "1971")
        assert fleet.verifier_record_id("North", pid) == ids.verifier_record_id(
            keys[2], "North", pid)
        # the first key again for another site: the later keys go (the hub sends them again)
        assert keeper.install(keys[0], "South").generation == 1
        assert keeper.load().generation == 1
        assert len(Tpm(tpm.tcti).persistent_handles() - before) == 2
        keeper.evict()
        assert Tpm(tpm.tcti).persistent_handles() == before


def test_a_kept_open_session_ends_at_a_rotation_and_the_next_takes_the_key(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with served_hub(tmp_path) as (hub, url):
        a = Kiosk(tmp_path, "a", hub, "A")
        conn = HubConnection(url, a.ident, keepalive=120.0)
        try:
            x = a.store.checkin(name="Xavier Ortolan", passport=PASSPORT, birth_year=1971)
            conn.round(a.store, a.state, limit=20.0)
            code, out = run(capsys, "hub", "keys", "rotate-fleet", "--data", hub.data)
            assert code == 0, out
            again = a.store.checkin(name="Xavier Ortolan", passport=PASSPORT)  # old id
            assert again.patient_id == x.patient_id
            conn.round(a.store, a.state, limit=20.0)  # the session ends; a new one moves
            assert a.store.fleet.generation == 2 and conn.handshakes >= 2
            conn.round(a.store, a.state, limit=20.0)
            new_x = str(ids.rotated_id((hub.data / "fleet.2.key").read_bytes(),
                                       uuid.UUID(x.patient_id).bytes))
            records = live(hub.dump())
            assert records[again.record_id]["fields"]["subject"] == new_x
            assert a.store.dump() == hub.dump()
        finally:
            conn.close()
            a.close()


def test_a_rotated_kiosk_finds_a_patient_the_hub_has_not_migrated_yet(tmp_path: Path) -> None:
    first, second = os.urandom(32), os.urandom(32)
    (tmp_path / "first.key").write_bytes(first)
    with init_store(tmp_path / "kiosk", "North", "A", tmp_path / "first.key") as store:
        old = str(ids.patient_id(first, PASSPORT))
        store.put("patient", old, {"name": "Xavier Ortolan", "birthDate": "1971-03-02"})
        store.install_fleet_later(fingerprint(first), [second])
        new = str(ids.rotated_id(second, uuid.UUID(old).bytes))
        found = store.checkin(name="Xavier Ortolan", passport=PASSPORT, birth_year=1971)
        assert (found.patient_id, found.identity) == (new, "match")  # by the old id
        wrong = store.checkin(passport=PASSPORT, birth_year=1972)
        assert (wrong.patient_id, wrong.identity) == (new, "mismatch")
