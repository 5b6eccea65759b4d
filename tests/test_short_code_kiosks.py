"""Kiosk numbers and the short codes made from them: the hub numbers kiosks once and for
good, the kiosk counts its patients without documents in the check-in's transaction, a
code checks its patient in again on any kiosk, and a kiosk enrolled before kiosks had
numbers is given one by the hub's welcome."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from device import enrol
from device.store import BadRequest, Store, init_store
from device.sync.state import SyncState
from host.hub.hub import Hub, init_hub
from host.hub.storage import MIGRATIONS as HUB_MIGRATIONS
from host.hub.storage import Device, HubStore
from protocol.crdt import short_code
from protocol.crdt.ids import code_patient_id
from protocol.driver.database import Migrations, immediate, open_database
from protocol.sync import certificate as sync_cert

from .powercut import Replay, restore
from .test_store_powercut import traced_run
from .test_sync_helpers import Kiosk, served_hub

pytestmark = pytest.mark.usefixtures("hub_backend")


def request(tmp: Path, name: str, letter: str) -> tuple[Store, bytes]:
    store = init_store(tmp / name, "North", letter)
    return store, enrol.write_request(store).read_bytes()


def test_kiosk_numbers_are_unique_never_reused_and_survive_reenrolment(tmp_path: Path) -> None:
    init_hub(tmp_path / "hub")
    with Hub(tmp_path / "hub") as hub:
        kiosks = [request(tmp_path, n, n.upper()) for n in "abc"]
        certs = [sync_cert.read_certificate(hub.enroll(req)) for _, req in kiosks]
        assert [c.kiosk_number for c in certs] == [1, 2, 3]
        again = sync_cert.read_certificate(hub.enroll(kiosks[1][1]))  # same keys, again
        assert again.kiosk_number == 2 and again.serial > certs[2].serial
        hub.revoke(certs[2].device_id)
        store_d, req_d = request(tmp_path, "d", "C")  # takes the revoked kiosk's letter
        assert sync_cert.read_certificate(hub.enroll(req_d)).kiosk_number == 4
        assert sorted(k["kiosk_number"] for k in hub.status()["kiosks"]) == [1, 2, 3, 4]
        enrol.install(kiosks[0][0], hub.enroll(kiosks[0][1]))
    assert kiosks[0][0].kiosk_number == 1
    for store, _ in [*kiosks, (store_d, b"")]:
        store.close()


def test_codes_count_up_in_the_checkin_and_bring_the_patient_back(tmp_path: Path) -> None:
    init_hub(tmp_path / "hub")
    with Hub(tmp_path / "hub") as hub:
        a, b = Kiosk(tmp_path, "a", hub, "A"), Kiosk(tmp_path, "b", hub, "B")
    try:
        first = a.store.checkin(name="Amina Tester", birth_year=1990, reason="sick")
        second = a.store.checkin(name="Omar Tester", birth_year=1985)
        assert (first.code, second.code) == (short_code.display(short_code.encode(1, 1)),
                                             short_code.display(short_code.encode(1, 2)))
        assert first.patient_id == str(code_patient_id(a.store.fleet_key, str(first.code)))
        assert first.identity == "new"
        # Back with the code, typed in lower case: the same patient, the year a claim.
        back = a.store.checkin(code=str(first.code).lower(), birth_year=1990)
        assert (back.patient_id, back.identity, back.code) == (first.patient_id, "match", None)
        wrong_year = a.store.checkin(code=str(first.code), birth_year=1991)
        assert (wrong_year.patient_id, wrong_year.identity) == (first.patient_id, "mismatch")
        view = a.store.view(first.patient_id)
        assert view is not None and view.fields[2] == "1990"  # the record is not touched
        # Another kiosk of the fleet derives the same patient from the code alone.
        elsewhere = b.store.checkin(code=str(first.code), birth_year=1990)
        assert (elsewhere.patient_id, elsewhere.identity) == (first.patient_id, "unknown")
        assert b.store.checkin(name="Zara Tester").code == short_code.display(
            short_code.encode(2, 1))
        changed = str(first.code)[:5] + ("0" if str(first.code)[5] != "0" else "1") + \
            str(first.code)[6:]
        with pytest.raises(BadRequest) as refused:
            a.store.checkin(code=changed, birth_year=1990)
        assert refused.value.code == "code-check"
    finally:
        a.close()
        b.close()
    with Store(tmp_path / "a") as store:  # the counter is durable: no code twice
        assert store.checkin(name="After Restart").code == short_code.display(
            short_code.encode(1, 3))


def test_a_kiosk_enrolled_before_numbers_gets_one_from_the_welcome(tmp_path: Path) -> None:
    with served_hub(tmp_path) as (hub, url):
        store, req = request(tmp_path, "old", "A")
        cert = hub.enroll(req)  # the hub records it (and numbers it, as migration 3 does)
        parsed = sync_cert.read_certificate(cert)
        old_cert = sync_cert.issue(sync_cert.read_request(req), hub.ed_key, hub.x_public,
                                   hub.fleet_key, parsed.letter, parsed.issued_ms,
                                   parsed.serial)  # as a release before kiosk numbers made it
        assert sync_cert.read_certificate(old_cert).kiosk_number is None
        enrol.install(store, old_cert)
        store.close()
        kiosk = Kiosk.__new__(Kiosk)  # enrolled above, by hand: opened as the runtime does
        kiosk.store = Store(tmp_path / "old")
        kiosk.state = SyncState(kiosk.store.data)
        kiosk.ident = enrol.load(kiosk.store.data)
        try:
            before = kiosk.store.checkin(name="Before Number", birth_year=1980)
            assert before.code is None and before.identity == "new"  # a random id, as before
            kiosk.sync(url)
            assert kiosk.store.kiosk_number == parsed.kiosk_number == 1
            after = kiosk.store.checkin(name="After Number", birth_year=1981)
            assert after.code == short_code.display(short_code.encode(1, 1))
            kiosk.sync(url)  # told again: nothing changes
            assert kiosk.store.checkin(name="Next One").code == short_code.display(
                short_code.encode(1, 2))
        finally:
            kiosk.close()


def test_a_full_counter_gives_no_code_and_never_wraps(tmp_path: Path) -> None:
    with init_store(tmp_path / "k", "North", "A") as store:
        store.set_kiosk_number(short_code.MAX_KIOSK)
        store.writer.call(lambda db: db.execute(
            "UPDATE meta SET value = ? WHERE key = 'code_counter'",
            [short_code.MAX_COUNTER - 1]))
        last = store.checkin(name="Last One")
        assert last.code == short_code.display(short_code.encode(short_code.MAX_KIOSK,
                                                                 short_code.MAX_COUNTER))
        past = store.checkin(name="Past It")
        assert past.code is None and past.identity == "new"  # a ticket still, with no code
        store.set_kiosk_number(7)  # a new number (re-provisioned): its counter from 1
        assert store.checkin(name="New Number").code == short_code.display(
            short_code.encode(7, 1))



def test_a_kiosk_found_cloned_gives_no_code_until_it_has_a_number_of_its_own(
        tmp_path: Path) -> None:
    """Its copies share its number and counter: one code would name two patients."""
    with init_store(tmp_path / "k", "North", "A") as store:
        store.set_kiosk_number(5)
        assert store.checkin(name="Before").code == short_code.display(short_code.encode(5, 1))
        store.set_queue_label(2)  # the hub's sync-alert: a suspected clone
        told = store.checkin(name="Told")
        assert told.code is None and told.queue_number.startswith("A2-")
        store.take_new_node()  # re-provisioned: the old number goes with the old identity
        assert store.kiosk_number is None and store.checkin(name="New Node").code is None
        store.set_kiosk_number(6)  # its own enrolment's number
        assert store.checkin(name="Own").code == short_code.display(short_code.encode(6, 1))


def test_the_cli_gives_and_takes_codes_and_shows_the_number(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from device.cli import main as kiosk_main

    init_hub(tmp_path / "hub")
    with Hub(tmp_path / "hub") as hub:
        Kiosk(tmp_path, "k", hub, "A").close()
    data = str(tmp_path / "k")
    capsys.readouterr()
    assert kiosk_main(["checkin", "--data", data, "--name", "Cli Tester", "--json"]) == 0
    given = json.loads(capsys.readouterr().out)
    assert given["code"] == short_code.display(short_code.encode(1, 1))
    assert kiosk_main(["checkin", "--data", data, "--code", given["code"].lower(),
                       "--birth-year", "1970", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["patient_id"] == given["patient_id"]
    assert kiosk_main(["status", "--data", data]) == 0
    assert "number 1 " in capsys.readouterr().out


def test_migration_3_numbers_the_enrolled_kiosks_in_the_order_they_enrolled(
        tmp_path: Path) -> None:
    """On a hub.db at version 2 (the release before kiosk numbers), revoked kiosks too:
    their numbers are never given again. tests/test_migrations.py upgrades a real one."""
    before = Migrations("hub.db")
    before.steps = HUB_MIGRATIONS.steps[:2]
    db = open_database(tmp_path / "hub.db", before)
    with immediate(db):
        for i, (device, at, state) in enumerate([("0000000c", 30, "approved"),
                                                 ("0000000a", 10, "revoked"),
                                                 ("0000000b", 20, "approved"),
                                                 ("00000009", 20, "approved")]):
            db.execute("INSERT INTO devices (device_id, node, site, letter, x25519, ed25519,"
                       " state, enrolled_at, last_hash) VALUES (?, ?, 'S', ?, ?, ?, ?, ?, ?)",
                       [device, int(device, 16), "ABCD"[i], bytes([i]) * 32, bytes(32), state,
                        at, bytes(32)])
    db.close()
    store = HubStore(tmp_path / "hub.db")
    try:
        assert {d.device_id: d.kiosk_number for d in store.devices()} == {
            "0000000a": 1, "00000009": 2, "0000000b": 3, "0000000c": 4}
        assert store.add_device(Device("0000000d", 13, "S", "E", bytes([9]) * 32, bytes(32),
                                       "approved", 0, bytes(32), 0, None), 40) == 5
    finally:
        store.close()


@pytest.mark.usefixtures("strace")
def test_a_power_cut_never_gives_one_code_twice(tmp_path: Path) -> None:
    """The disk as a power cut would leave it right after each code was shown: the
    kiosk's next code is one no patient was shown (``test_store_powercut``'s replay)."""
    data = tmp_path / "kiosk"
    with init_store(data, "Power Site", "P") as store:
        store.set_kiosk_number(3)
    initial = {p.name: p.read_bytes() for p in data.iterdir()}
    cuts = Replay(data.resolve(), initial).run(traced_run(data, 6, "--new-patients"))
    shown = [line.split()[3] for line in cuts[-1].printed]
    assert shown == [short_code.display(short_code.encode(3, n)) for n in range(1, 7)]
    for i, cut in enumerate(cuts):
        into = tmp_path / f"cut{i}"
        restore(cut, into, {k: v for k, v in initial.items() if k.endswith(".key")})
        with Store(into) as store:
            after = store.checkin(name="After The Cut").code
        before = [line.split()[3] for line in cut.printed]  # shown before the cut
        assert after not in before and short_code.split(str(after))[1] == len(before) + 1
