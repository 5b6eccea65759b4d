"""Offline approvals (SPEC.md "Offline approvals"): ``haven hub approve`` reserves a
letter, a node and a kiosk number for each; a kiosk provisioned with one becomes a
normal enrolment at its first sync; a second kiosk on the same approval is held as a
suspected clone. The hub's side runs on its real database (``Hub``, ``HubStore``); the
first sync is the hub's real role (``HubSync``) fed the kiosk's messages."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from device import enrol
from device.store import StoreError, init_store
from host.cli import main as hub_main
from host.errors import HavenError, UsageError
from host.hub.hub import Hub, init_hub
from host.hub.storage import MIGRATIONS as HUB_MIGRATIONS
from host.hub.storage import Device, HubStore
from protocol import messages
from protocol.crdt.replica import Replica
from protocol.driver.database import Migrations, immediate, open_database
from protocol.errors import LocalProtocolError, ProtocolError
from protocol.sync import approval as sync_approval
from protocol.sync import batches as sync
from protocol.sync import certificate as sync_cert
from protocol.sync.conversation import SUSPECTED_CLONE, HubSync

from .test_migrations import FIXTURES, user_version

pytestmark = pytest.mark.usefixtures("hub_backend")

NOW = 1_790_000_000_000
HOUR = 3600 * 1000
#: The hub.db migration that adds the approvals table.
APPROVALS_VERSION = 5


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Hub]:
    init_hub(tmp_path / "hub")
    h = Hub(tmp_path / "hub")
    yield h
    h.close()


# The document ------------------------------------------------------------------------

def test_an_approval_reads_back_and_refuses_forgery_expiry_and_other_hubs() -> None:
    hub_ed = Ed25519PrivateKey.generate()
    hub_pub = hub_ed.public_key().public_bytes_raw()
    doc = sync_approval.issue(hub_ed, bytes(range(32)), serial=3, site="North", letter="B",
                              node=0x1235, kiosk_number=7, issued=NOW, expires=NOW + HOUR)
    a = sync_approval.read_approval(doc, hub_pub, NOW + HOUR - 1)
    assert (a.serial, a.site, a.letter, a.node, a.kiosk_number, a.device_id) == (
        3, "North", "B", 0x1235, 7, "00001235")
    assert a.hub_x25519 == bytes(range(32)) and a.hub_ed25519 == hub_pub
    with pytest.raises(ProtocolError, match="expired") as caught:
        sync_approval.read_approval(doc, hub_pub, NOW + HOUR)
    assert caught.value.code == "expired"
    other = Ed25519PrivateKey.generate()
    forged = sync_approval.issue(other, bytes(32), serial=3, site="North", letter="B",
                                 node=0x1235, kiosk_number=7, issued=NOW, expires=NOW + HOUR)
    tampered = doc.replace(b"North", b"South")
    for bad in (forged, tampered):
        with pytest.raises(ProtocolError) as caught:
            sync_approval.read_approval(bad, hub_pub)
        assert caught.value.code == "bad-signature"
    with pytest.raises(ProtocolError):  # a certificate is no approval
        sync_approval.read_approval(sync_cert.issue(
            sync_cert.read_request(sync_cert.make_request(
                5, "North", "A", X25519PrivateKey.generate(), Ed25519PrivateKey.generate())),
            hub_ed, bytes(32), bytes(32), "A", NOW, 1), hub_pub)
    for junk in (b"", b"\xa0", os.urandom(50), bytes(2000)):
        with pytest.raises(ProtocolError):
            sync_approval.read_approval(junk, hub_pub)


@pytest.mark.parametrize("change", [{"letter": "AB"}, {"letter": "a"}, {"node": 0},
                                    {"node": 1 << 32}, {"kiosk_number": 40_000},
                                    {"expires": NOW}, {"expires": NOW + 32 * 24 * HOUR},
                                    {"site": ""}])
def test_an_approval_out_of_range_is_not_issued(change: dict[str, object]) -> None:
    values: dict[str, object] = {"serial": 1, "site": "North", "letter": "A", "node": 3,
                                 "kiosk_number": 1, "issued": NOW, "expires": NOW + HOUR}
    with pytest.raises(LocalProtocolError):
        sync_approval.issue(Ed25519PrivateKey.generate(), bytes(32),
                            **{**values, **change})  # type: ignore[arg-type]


def test_files_and_enrolments_refuse_what_they_are_not() -> None:
    assert sync_approval.load_file(sync_approval.dump_file([b"a", b"b"])) == [b"a", b"b"]
    assert sync_approval.read_enrolment(sync_approval.enrolment(b"a", b"r")) == (b"a", b"r")
    for bad in (b"", b"\x80", b"\x81\x01", b"\x61a"):
        with pytest.raises(ProtocolError):
            sync_approval.load_file(bad)
        with pytest.raises(ProtocolError):
            sync_approval.read_enrolment(bad)


# Issuing: what the hub reserves -------------------------------------------------------

def read_all(hub: Hub, docs: list[bytes]) -> list[sync_approval.Approval]:
    return [sync_approval.read_approval(d, hub.ed_public, NOW) for d in docs]


def test_n_approvals_reserve_n_distinct_letters_nodes_and_numbers(hub: Hub) -> None:
    hub.enroll(sync_cert.make_request(0x51, "North", None, X25519PrivateKey.generate(),
                                      Ed25519PrivateKey.generate()), NOW)  # A, number 1
    first = read_all(hub, hub.approve("North", 3, 24, NOW))
    again = read_all(hub, hub.approve("North", 2, 24, NOW))
    south = read_all(hub, hub.approve("South", 2, 24, NOW))
    every = first + again + south
    assert [a.letter for a in first + again] == ["B", "C", "D", "E", "F"]
    assert [a.letter for a in south] == ["A", "B"]  # each site its own letters
    assert len({a.node for a in every}) == len({a.serial for a in every}) == 7
    assert sorted(a.kiosk_number for a in every) == list(range(2, 9))  # after the kiosk's
    assert all(a.node & 1 and a.expires == NOW + 24 * HOUR for a in every)
    # A kiosk enrolled now takes neither a reserved letter nor a reserved number...
    cert = sync_cert.read_certificate(hub.enroll(sync_cert.make_request(
        0x53, "North", None, X25519PrivateKey.generate(), Ed25519PrivateKey.generate()), NOW))
    assert (cert.letter, cert.kiosk_number) == ("G", 9)
    with pytest.raises(HavenError, match=r"letter B is taken at site 'North' by approval "
                                         rf"{first[0].serial}"):
        hub.enroll(sync_cert.make_request(0x55, "North", "B", X25519PrivateKey.generate(),
                                          Ed25519PrivateKey.generate()), NOW)
    # ...and once the approvals expired unused, their letters are free again (not the
    # numbers: none is given twice).
    later = sync_cert.read_certificate(hub.enroll(sync_cert.make_request(
        0x57, "North", "B", X25519PrivateKey.generate(), Ed25519PrivateKey.generate()),
        NOW + 24 * HOUR))
    assert (later.letter, later.kiosk_number) == ("B", 10)


def test_approving_more_than_fits_or_out_of_range_is_refused(hub: Hub) -> None:
    hub.approve("North", 20, 1, NOW)
    with pytest.raises(HavenError, match="6 letters are free at site 'North'"):
        hub.approve("North", 7, 1, NOW)
    for site, count, hours in (("North", 0, 1), ("North", 27, 1), ("North", 1, 0),
                               ("North", 1, 745), (" ", 1, 1), ("No\nrth", 1, 1),
                               ("North\u202e", 1, 1)):
        with pytest.raises(UsageError):
            hub.approve(site, count, hours, NOW)
    assert len(hub.approve("North", 6, 1, NOW)) == 6  # nothing was reserved by a refusal


def test_haven_hub_approve_writes_the_file(tmp_path: Path, hub: Hub,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "north.approvals"
    assert hub_main(["hub", "approve", "--data", str(hub.data), "--site", "North",
                     "--count", "2", "--hours", "48", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    docs = sync_approval.load_file(out.read_bytes())
    assert len(docs) == 2 and "2 approvals for site 'North'" in printed
    for a in (sync_approval.read_approval(d, hub.ed_public) for d in docs):
        assert f"approval {a.serial}: kiosk {a.device_id}, letter {a.letter}, " \
               f"number {a.kiosk_number}" in printed
    assert hub_main(["hub", "approve", "--data", str(hub.data), "--site", "North",
                     "--count", "30", "--out", str(out)]) == 2
    assert "--count is 1 to 26" in capsys.readouterr().err


# The kiosk: provisioning from an approval ---------------------------------------------

def test_a_fresh_kiosk_takes_the_approvals_identity_without_the_fleet_key(
        tmp_path: Path, hub: Hub) -> None:
    doc = hub.approve("North", 1, 24, NOW)[0]
    a = sync_approval.read_approval(doc, hub.ed_public)
    with init_store(tmp_path / "k", "Unset") as store:
        fleet_before = store.fleet_key
        got = enrol.install_approval(store, doc, hub.ed_public, NOW + 1)
        assert got == a and store.node == a.node
        st = store.status()
        assert (st["site"], st["letter"], st["kiosk_number"]) == ("North", a.letter,
                                                                  a.kiosk_number)
        assert store.fleet_key == fleet_before != hub.fleet_key  # the hub's waits
        req = sync_cert.read_request((store.data / enrol.REQUEST).read_bytes())
        assert (req.node, req.site, req.letter) == (a.node, "North", a.letter)
        assert enrol.enrolment(store.data) == sync_approval.enrolment(
            doc, (store.data / enrol.REQUEST).read_bytes())
        # The first sync's certificate installs as any other, and brings the fleet key.
        x_key, _ = enrol.ensure_keys(store.data)
        made = hub.enroll_by_approval(enrol.enrolment(store.data) or b"",
                                      x_key.public_key().public_bytes_raw(), NOW + 2)
        assert made.cert is not None
        cert = enrol.install(store, made.cert)
        assert (cert.letter, cert.kiosk_number, cert.node) == (a.letter, a.kiosk_number, a.node)
        assert store.fleet_key == hub.fleet_key
        assert enrol.enrolment(store.data) is None  # enrolled: no approval in its hello


def test_provisioning_refuses_an_expired_forged_or_late_approval_and_changes_nothing(
        tmp_path: Path, hub: Hub) -> None:
    doc = hub.approve("North", 1, 1, NOW)[0]
    other = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    with init_store(tmp_path / "k", "South", "C") as store:
        node = store.node
        for bad_doc, key, now, code in ((doc, hub.ed_public, NOW + HOUR, "expired"),
                                        (doc, other, NOW, "bad-signature"),
                                        (doc[:-3], hub.ed_public, NOW, "bad-shape")):
            with pytest.raises(StoreError) as caught:
                enrol.install_approval(store, bad_doc, key, now)
            assert caught.value.code == code
        store.checkin(passport="P1234567", name="A. Patient", birth_year=1990)
        with pytest.raises(StoreError, match="written records already"):
            enrol.install_approval(store, doc, hub.ed_public, NOW)
        st = store.status()
        assert (store.node, st["site"], st["letter"]) == (node, "South", "C")
        assert not (store.data / enrol.APPROVAL).exists()


# The first sync: an approval becomes an enrolment, once -------------------------------

@dataclass
class Provisioned:
    """A kiosk provisioned with an approval: its keys, its request, its own replica."""

    approval: bytes
    x_key: X25519PrivateKey
    ed_key: Ed25519PrivateKey
    node: int
    site: str

    @property
    def x25519(self) -> bytes:
        return self.x_key.public_key().public_bytes_raw()

    def enrolment(self, node: int | None = None, letter: str | None = None) -> bytes:
        request = sync_cert.make_request(self.node if node is None else node, self.site,
                                         letter, self.x_key, self.ed_key)
        return sync_approval.enrolment(self.approval, request)

    def batch(self, seq: int, prev: bytes) -> sync.Batch:
        delta = Replica(self.node).put(os.urandom(16), "note", NOW, values={"text": "hi"})
        return sync.make_batch(self.ed_key, f"{self.node:08x}", seq, prev, [delta])


def provision(hub: Hub, doc: bytes) -> Provisioned:
    a = sync_approval.read_approval(doc, hub.ed_public)
    return Provisioned(doc, X25519PrivateKey.generate(), Ed25519PrivateKey.generate(), a.node,
                       a.site)


def say(role: HubSync, name: str, now: int = NOW + 1, **values: object) -> list[messages.Message]:
    replies = role.receive(messages.make(name, **values), now)
    return [messages.decode(data) for _, data in replies]


def hello(hub: Hub, kiosk: Provisioned, enrol_doc: bytes | None = None,
          now: int = NOW + 1) -> tuple[HubSync, list[messages.Message]]:
    role = HubSync(hub.store, hub.ed_public, kiosk.x25519, enrol=hub.enroll_by_approval)
    got = say(role, "sync-hello", now, cert=b"", vv={}, cursor=0, seq=0,
              hash=sync.GENESIS, time=now, enrol=enrol_doc or kiosk.enrolment())
    return role, got


def push(role: HubSync, kiosk: Provisioned) -> messages.Message:
    b = kiosk.batch(1, sync.GENESIS)
    (answer,) = say(role, "sync-batch", seq=1, payload=b.payload, sig=b.sig)
    return answer


def test_the_first_sync_enrols_the_kiosk_and_its_batches_are_committed(hub: Hub) -> None:
    kiosk = provision(hub, hub.approve("North", 1, 24, NOW)[0])
    role, got = hello(hub, kiosk)
    assert role.close is None and [m.name for m in got] == ["sync-welcome"]
    cert = sync_cert.read_certificate(got[0].get("cert"), hub.ed_public)
    assert (cert.node, cert.x25519, cert.site) == (kiosk.node, kiosk.x25519, "North")
    dev = hub.store.device(cert.device_id)
    assert dev is not None and dev.state == "approved" and dev.kiosk_number == \
        cert.kiosk_number and not dev.suspected_clone
    assert push(role, kiosk).name == "sync-ack"
    # Its certificate lost on the way, the kiosk presents the approval again: the same
    # kiosk (its key), the same enrolment, a certificate anew, and no suspicion.
    role2, got2 = hello(hub, kiosk)
    assert role2.close is None and got2[-1].get("cert") is not None
    assert sync_cert.read_certificate(got2[-1].get("cert")).kiosk_number == cert.kiosk_number
    assert [d.device_id for d in hub.store.devices()] == [cert.device_id]
    assert not hub.store.device(cert.device_id).suspected_clone  # type: ignore[union-attr]


def test_an_approval_used_twice_holds_the_second_kiosk_as_a_clone(hub: Hub) -> None:
    doc = hub.approve("North", 1, 24, NOW)[0]
    first, second = provision(hub, doc), provision(hub, doc)
    role1, _ = hello(hub, first)
    assert push(role1, first).name == "sync-ack"
    role2, got = hello(hub, second)
    assert role2.close is None and role2.held
    alert, welcome = got
    assert alert.name == "sync-alert" and alert.get("code") == SUSPECTED_CLONE
    assert alert.get("held") is True and alert.get("label") is not None
    assert welcome.get("cert") is None  # no certificate for the second
    answer = push(role2, second)  # signed by its own key: verified, held, never applied
    assert answer.name == "sync-reject" and answer.get("reason") == "held"
    dev = hub.store.device(f"{first.node:08x}")
    assert dev is not None and dev.suspected_clone and dev.x25519 == first.x25519
    assert dev.last_seq == 1  # the first kiosk's batch, not the second's
    held = hub.held_batches()
    assert len(held) == 1 and held[0]["seq"] == 1
    assert any(e["code"] == "approval-reused" for e in hub.store.events(20))


def test_a_bad_enrolment_in_a_hello_is_refused(hub: Hub) -> None:
    kiosk = provision(hub, hub.approve("North", 1, 1, NOW)[0])
    stranger = provision(hub, hub.approve("North", 1, 1, NOW)[0])
    other_hub = Ed25519PrivateKey.generate()
    forged = sync_approval.issue(other_hub, hub.x_public, serial=1, site="North",
                                 letter="A", node=kiosk.node, kiosk_number=1, issued=NOW,
                                 expires=NOW + HOUR)
    cases = [
        (kiosk.enrolment(), NOW + HOUR, "expired"),
        (sync_approval.enrolment(forged, sync_cert.make_request(
            kiosk.node, "North", None, kiosk.x_key, kiosk.ed_key)), NOW + 1, "signature"),
        (kiosk.enrolment(node=kiosk.node + 2), NOW + 1, "is not the approval's"),
        (kiosk.enrolment(letter="Z"), NOW + 1, "asks for letter Z"),
        (stranger.enrolment(), NOW + 1, "another key than this session's"),
        (b"\x82\x41a", NOW + 1, "enrolment"),
    ]
    for doc, now, why in cases:
        role, got = hello(hub, kiosk, doc, now)
        assert got == [] and role.close is not None, why
        assert role.close[0] == "bad-approval" and why in role.close[1]
    assert hub.store.devices() == []
    role = HubSync(hub.store, hub.ed_public, kiosk.x25519)  # a hub role that enrols none
    assert say(role, "sync-hello", cert=b"", vv={}, cursor=0, seq=0, hash=sync.GENESIS,
               enrol=kiosk.enrolment()) == []
    assert role.close is not None and role.close[0] == "bad-approval"


# The table: hub.db migration 5 --------------------------------------------------------

def test_the_release_fixture_hub_upgrades_and_approvals_number_past_its_kiosks(
        tmp_path: Path) -> None:
    """The release fixture's hub.db (before numbered migrations) upgraded through every
    migration: its kiosks kept, the approvals table empty, and approvals reserve
    numbers past the kiosks' and letters beside theirs."""
    fixture = sorted(FIXTURES.glob("release-*"))[0]
    root = tmp_path / "copy"
    shutil.copytree(fixture / "hub", root)
    for path in [root, *root.rglob("*")]:  # git keeps no modes: keys must be owner-only
        path.chmod(0o700 if path.is_dir() else 0o600)
    expected = json.loads((fixture / "expected.json").read_text())["hub"]["devices"]
    with Hub(root) as old:
        assert [d.device_id for d in old.store.devices()] == [d[0] for d in expected]
        numbers = [d.kiosk_number or 0 for d in old.store.devices()]
        site = old.store.devices()[0].site
        taken = {d.letter for d in old.store.devices() if d.site == site}
        made = read_all(old, old.approve(site, 2, 24, NOW))
        assert [a.kiosk_number for a in made] == [max(numbers) + 1, max(numbers) + 2]
        assert not {a.letter for a in made} & taken
    assert user_version(root / "hub.db") == HUB_MIGRATIONS.latest >= APPROVALS_VERSION


def test_migration_5_adds_the_approvals_table_to_a_version_4_hub(tmp_path: Path) -> None:
    """A hub.db at the migration before (kiosks enrolled and numbered): upgraded, the
    kiosk is kept and its number is never reserved again; a used approval cannot be
    used by another kiosk, a reserved node or number never goes twice (unique)."""
    before = Migrations("hub.db")
    before.steps = HUB_MIGRATIONS.steps[:APPROVALS_VERSION - 1]
    db = open_database(tmp_path / "hub.db", before)
    with immediate(db):
        db.execute("INSERT INTO devices (device_id, node, site, letter, x25519, ed25519,"
                   " state, enrolled_at, last_hash, kiosk_number) VALUES ('00000009', 9,"
                   " 'North', 'A', ?, ?, 'approved', 1, ?, 4)", [bytes(32), bytes(32),
                                                                  bytes(32)])
    db.close()
    store = HubStore(tmp_path / "hub.db")
    try:
        assert [d.kiosk_number for d in store.devices()] == [4]
        (serial, letter, node, number), = store.reserve_approvals(
            "North", 1, NOW, NOW + HOUR, iter([9, 9, 11]))
        assert (letter, node, number) == ("B", 11, 5)  # node 9 is the kiosk's
        dev = Device("0000000b", 11, "North", "B", bytes([1]) * 32, bytes(32), "approved",
                     0, bytes(32), 0, None)
        assert store.enrol_approved(serial, dev, NOW) == "enrolled"
        assert store.enrol_approved(serial, dev, NOW) == "same"
        other = Device("0000000b", 11, "North", "B", bytes([2]) * 32, bytes(32), "approved",
                       0, bytes(32), 0, None)
        assert store.enrol_approved(serial, other, NOW) == "other"
        assert store.device("0000000b").kiosk_number == 5  # type: ignore[union-attr]
    finally:
        store.close()
    conn = sqlite3.connect(tmp_path / "hub.db")
    try:
        for node, number in ((11, 99), (13, 5)):  # a node or a number reserved again
            sql = ("INSERT INTO approvals (site, letter, node, kiosk_number, issued_at,"
                   f" expires) VALUES ('S', 'A', {node}, {number}, 0, 1)")
            with pytest.raises(sqlite3.IntegrityError):
                conn.execute(sql)
    finally:
        conn.close()


# The vectors another implementation is held to ----------------------------------------

def test_the_approval_vectors() -> None:
    v = json.loads((Path(__file__).parent.parent / "protocol/vectors/approval.json")
                   .read_text())
    hub_ed = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(v["hub_seed"]))
    hub_pub = hub_ed.public_key().public_bytes_raw()
    fields = {k: x for k, x in v["approval"].items() if k != "bytes"}
    doc = bytes.fromhex(v["approval"]["bytes"])
    assert sync_approval.issue(hub_ed, bytes.fromhex(v["hub_x25519"]), **fields) == doc
    a = sync_approval.read_approval(doc, hub_pub, fields["expires"] - 1)
    assert {k: getattr(a, k) for k in fields} == fields
    with pytest.raises(ProtocolError) as caught:
        sync_approval.read_approval(doc, hub_pub, fields["expires"])
    assert caught.value.code == "expired"
    request = bytes.fromhex(v["enrolment"]["request"])
    assert sync_approval.enrolment(doc, request).hex() == v["enrolment"]["bytes"]
    for bad in v["bad"]:
        with pytest.raises(ProtocolError) as caught:
            sync_approval.read_approval(bytes.fromhex(bad["bytes"]), hub_pub)
        assert caught.value.code == bad["code"], bad["why"]
