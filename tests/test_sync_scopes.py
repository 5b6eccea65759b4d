"""Scopes and garbage collection on the kiosk's side of a sync round (SPEC.md "Scopes and
garbage collection").

The kiosk's role (``KioskSync``) is driven message by message against the hub's
messages built here, on the dictionary-backed storage of test_sync_roles: the sum in
the hello, the scope and the signed stable point of the welcome, a rebase's snapshot
pages, the write sets of stale records and the ack's arrival number. Then a real hub
and real kiosks over TCP on 127.0.0.1: a door kiosk among two others, a store edited
behind a kiosk's back, and a stable point the kiosk's hub did not sign."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from device import enrol
from device.cli import main as kiosk_main
from device.store import Store, init_store
from device.store import collect as gc
from device.store.collect import CollectReport
from device.store.materialise import heads_blob
from device.sync.collect import Collector
from device.sync.engine import Round, Summary, kiosk_driver, open_hub_link
from device.sync.loop import SyncLoop
from device.sync.state import SyncState, alert_of, scope_of, stable_of
from host.hub.hub import Hub
from protocol import messages
from protocol.crdt.record import RecordView
from protocol.crdt.schema import CHECKIN, PATIENT, VERIFIER
from protocol.errors import RemoteProtocolError
from protocol.session.events import Connected, MessageReceived
from protocol.sync import batches as sync
from protocol.sync.conversation import KioskSync, Reply, SnapshotRefused
from protocol.sync.scope import Scope, sign_stable_point

from .test_sync_helpers import Kiosk as HelperKiosk
from .test_sync_helpers import served_hub
from .test_sync_roles import NOW, Fleet, Kiosk, KioskMemory

pytestmark = pytest.mark.usefixtures("hub_backend")

DOOR = Scope("door", "North", "2026-12-05")


def msg(name: str, **values: object) -> messages.Message:
    return messages.make(name, **values)


def sent(replies: list[Reply]) -> list[messages.Message]:
    return [messages.decode(data) for _, data in replies]


def kiosk_role(fleet: Fleet, kiosk: Kiosk) -> KioskSync:
    return KioskSync(kiosk.storage, cert=kiosk.cert, device=kiosk.device, key=kiosk.key,
                     hub_ed25519=fleet.hub_ed.public_key().public_bytes_raw())


def welcome(kiosk: Kiosk, key: Ed25519PrivateKey | None, *, cursor: int = 500,
            device: str | None = None, **extra: object) -> messages.Message:
    """The hub's welcome to ``kiosk`` naming its scope, with a stable point at ``cursor``
    signed by ``key`` for ``device`` (None: no stable point)."""
    stable = None if key is None else sign_stable_point(key, device or kiosk.device, cursor, NOW)
    values = {"scope": DOOR.to_wire(), "stable": stable, **extra}
    return msg("sync-welcome", time=NOW, vv={}, seq=0, hash=sync.GENESIS, **values)


def changes(deltas: list[bytes], cursor: int, more: bool = False,
            **extra: object) -> messages.Message:
    return msg("sync-changes", payload=sync.pack(deltas), cursor=cursor, more=more, **extra)


def test_the_hello_carries_the_sum_only_with_nothing_queued() -> None:
    fleet = Fleet()
    k = fleet.enrol(1)
    k.storage.scope, k.storage.sum = DOOR, os.urandom(32)
    hello, = sent(kiosk_role(fleet, k).hello(NOW))
    assert hello.get("sum2") == k.storage.sum and hello.get("sum") is None  # v2 only
    k.storage.write("queued")
    hello, = sent(kiosk_role(fleet, k).hello(NOW))
    assert hello.get("sum2") is None


def test_the_welcome_keeps_the_scope_and_the_stable_point_that_verifies() -> None:
    fleet = Fleet()
    k = fleet.enrol(1)
    role = kiosk_role(fleet, k)
    role.hello(NOW)
    pull, = sent(role.receive(welcome(k, fleet.hub_ed, cursor=700), NOW))
    assert pull.name == "sync-pull" and pull.get("snapshot") is None
    assert (k.storage.scope, k.storage.stable) == (DOOR, 700)


def test_a_pulls_stable_point_moves_the_kept_one_on_a_kept_open_session() -> None:
    """A kept-open session's rounds have no welcome: the last page of a pull carries
    the stable point as it stands, verified as the welcome's is."""
    fleet = Fleet()
    k = fleet.enrol(1)
    role = kiosk_role(fleet, k)
    role.hello(NOW)
    role.receive(welcome(k, fleet.hub_ed, cursor=700), NOW)
    later = sign_stable_point(fleet.hub_ed, k.device, 900, NOW)
    role.receive(changes([], 950, stable=later), NOW)
    assert (k.storage.scope, k.storage.stable) == (DOOR, 900)
    forged = sign_stable_point(Ed25519PrivateKey.generate(), k.device, 990, NOW)
    with pytest.raises(RemoteProtocolError, match="stable point"):
        role.receive(changes([], 990, stable=forged), NOW)
    assert k.storage.stable == 900


@pytest.mark.parametrize("forgery", ["another key", "another kiosk", "junk"])
def test_a_forged_stable_point_fails_the_round_and_keeps_nothing(forgery: str) -> None:
    fleet = Fleet()
    k = fleet.enrol(1)
    role = kiosk_role(fleet, k)
    role.hello(NOW)
    if forgery == "junk":
        bad = msg("sync-welcome", time=NOW, vv={}, seq=0, hash=sync.GENESIS,
                  scope=DOOR.to_wire(), stable=b"\x82\x41\x00\x41\x00")
    else:
        key = Ed25519PrivateKey.generate() if forgery == "another key" else fleet.hub_ed
        bad = welcome(k, key, device="0000beef" if forgery == "another kiosk" else None,
                      rebase=True)
    with pytest.raises(RemoteProtocolError, match="stable point") as caught:
        role.receive(bad, NOW)
    assert caught.value.code == "bad-stable-point"
    assert (k.storage.scope, k.storage.stable, k.storage.owed) == (None, None, False)


def test_a_welcome_without_a_scope_from_a_hub_before_scopes_changes_nothing() -> None:
    fleet = Fleet()
    k = fleet.enrol(1)
    role = kiosk_role(fleet, k)
    role.hello(NOW)
    old = msg("sync-welcome", time=NOW, vv={}, seq=0, hash=sync.GENESIS)
    assert [m.name for m in sent(role.receive(old, NOW))] == ["sync-pull"]
    assert k.storage.scope is None
    with pytest.raises(RemoteProtocolError, match="no scope"):
        kiosk_role(fleet, k).receive(msg("sync-welcome", time=NOW, vv={}, seq=0,
                                         hash=sync.GENESIS, rebase=True), NOW)
    with pytest.raises(RemoteProtocolError, match="role"):
        kiosk_role(fleet, k).receive(msg("sync-welcome", time=NOW, vv={}, seq=0,
                                         hash=sync.GENESIS,
                                         scope=["cook", "North", "2026-12-05", 30]), NOW)


def snapshot_round(fleet: Fleet, k: Kiosk, pages: list[list[bytes]], hub_sum: bytes,
                   field: str = "sum2") -> tuple[KioskSync, list[messages.Message]]:
    """A round whose welcome asks for a rebase, served the snapshot in ``pages`` cut at
    900, its sum in ``field``; returns the role and every pull it sent."""
    role = kiosk_role(fleet, k)
    role.hello(NOW)
    pulls = sent(role.receive(welcome(k, fleet.hub_ed, rebase=True), NOW))
    for i, page in enumerate(pages):
        last = i == len(pages) - 1
        pulls += sent(role.receive(changes(page, 900 if last else 100 * (i + 1),
                                           more=not last, snapshot=True,
                                           upto=900 if i == 0 else None,
                                           **{field: hub_sum if last else None}), NOW))
    return role, pulls


def test_a_rebase_pulls_the_whole_scope_page_by_page_then_goes_on_from_its_head() -> None:
    fleet = Fleet()
    k = fleet.enrol(1)
    k.storage.cursor_ = 40
    pages = [[os.urandom(40) for _ in range(3)] for _ in range(3)]
    role, pulls = snapshot_round(fleet, k, pages, KioskMemory.sum_of(sum(pages, [])))
    assert [(p.get("cursor"), p.get("snapshot"), p.get("upto")) for p in pulls] == [
        (40, True, None), (100, True, 900), (200, True, 900), (900, None, None)]
    (deltas, upto, version), = k.storage.snapshots
    assert deltas == sum(pages, []) and upto == 900 and k.storage.cursor_ == 900
    assert version == 2
    assert role.rebased and not k.storage.owed and not role.pull_done
    assert sent(role.receive(changes([], 905), NOW)) == [] and role.pull_done


def test_a_snapshot_from_a_hub_before_sum2_is_checked_by_its_v1_sum() -> None:
    """A hub that sends only ``sum`` (``scope_checksum_v1``) still rebases a kiosk: its
    snapshot is checked by that sum, never refused for lacking ``sum2``."""
    fleet = Fleet()
    k = fleet.enrol(1)
    pages = [[os.urandom(40) for _ in range(2)]]
    snapshot_round(fleet, k, pages, KioskMemory.sum_of(pages[0], 1), field="sum")
    (_, upto, version), = k.storage.snapshots
    assert (upto, version, k.storage.owed) == (900, 1, False)
    with pytest.raises(SnapshotRefused, match="checksum"):  # the v2 sum as v1: refused
        snapshot_round(fleet, k, pages, KioskMemory.sum_of(pages[0]), field="sum")


def test_a_snapshot_whose_sum_disagrees_is_refused_and_changes_nothing() -> None:
    fleet = Fleet()
    k = fleet.enrol(1)
    k.storage.cursor_ = 40
    with pytest.raises(SnapshotRefused, match="checksum"):
        snapshot_round(fleet, k, [[os.urandom(40)], [os.urandom(40)]], os.urandom(32))
    assert k.storage.snapshots == [] and k.storage.cursor_ == 40 and k.storage.owed
    assert k.storage.partial is None  # the next takes it afresh
    # Still owed: the next round, on a session kept open (no welcome), snapshots again.
    first, = sent(kiosk_role(fleet, k).again())
    assert (first.get("cursor"), first.get("snapshot")) == (40, True)


def test_a_snapshot_a_round_left_half_taken_goes_on_in_the_next() -> None:
    fleet = Fleet()
    k = fleet.enrol(1)
    k.storage.cursor_ = 40
    pages = [[os.urandom(40) for _ in range(2)] for _ in range(3)]
    role = kiosk_role(fleet, k)
    role.hello(NOW)
    role.receive(welcome(k, fleet.hub_ed, rebase=True), NOW)
    role.receive(changes(pages[0], 100, more=True, snapshot=True, upto=900), NOW)
    role.receive(changes(pages[1], 200, more=True, snapshot=True, upto=900), NOW)
    # The round ends there (the link dropped, its time ran out): the next goes on.
    role = kiosk_role(fleet, k)
    first, = sent(role.again())
    assert (first.get("cursor"), first.get("snapshot"), first.get("upto")) == (200, True, 900)
    hub_sum = KioskMemory.sum_of(sum(pages, []))
    then, = sent(role.receive(changes(pages[2], 900, snapshot=True, upto=900, sum2=hub_sum),
                              NOW))
    (deltas, upto, _), = k.storage.snapshots
    assert deltas == sum(pages, []) and upto == 900 and then.get("cursor") == 900
    assert k.storage.partial is None and not k.storage.owed


def test_changes_that_do_not_answer_the_pull_are_refused() -> None:
    fleet = Fleet()
    k = fleet.enrol(1)
    role = kiosk_role(fleet, k)
    role.hello(NOW)
    role.receive(welcome(k, fleet.hub_ed), NOW)
    with pytest.raises(SnapshotRefused, match="not asked for"):
        role.receive(changes([os.urandom(40)], 10, snapshot=True, upto=10,
                             sum=os.urandom(32)), NOW)
    role = kiosk_role(fleet, k)
    role.hello(NOW)
    role.receive(welcome(k, fleet.hub_ed, rebase=True), NOW)
    with pytest.raises(SnapshotRefused, match="no snapshot page"):
        role.receive(changes([os.urandom(40)], 10), NOW)
    with pytest.raises(SnapshotRefused, match="upto"):
        role = kiosk_role(fleet, k)
        role.again()
        role.receive(changes([], 10, snapshot=True, sum=os.urandom(32)), NOW)
    assert k.storage.merged == [] and k.storage.snapshots == []


def test_stale_records_are_fetched_once_a_round_after_the_pull() -> None:
    fleet = Fleet()
    k = fleet.enrol(1)
    stale = [os.urandom(16) for _ in range(sync.MAX_SNAPSHOT_RECORDS + 2)]
    k.storage.stale = list(stale)
    role = kiosk_role(fleet, k)
    role.hello(NOW)
    role.receive(welcome(k, fleet.hub_ed), NOW)
    ask, = sent(role.receive(changes([], 300), NOW))
    assert ask.get("snapshot") == stale[:256] and ask.get("cursor") == 300
    ask2, = sent(role.receive(changes([b"a"], 50, more=True, snapshot=True, upto=310), NOW))
    assert (ask2.get("snapshot"), ask2.get("cursor"), ask2.get("upto")) == (stale[:256], 50,
                                                                           310)
    ask3, = sent(role.receive(changes([b"b"], 310, snapshot=True), NOW))
    assert ask3.get("snapshot") == stale[256:] and k.storage.replaced == [([b"a", b"b"],
                                                                            stale[:256])]
    assert k.storage.cursor_ == 300 and not role.pull_done  # a write set moves no cursor
    k.storage.stale.append(stale[0])  # stale again after its write set: left for next round
    assert sent(role.receive(changes([b"c"], 300, snapshot=True), NOW)) == []
    assert role.pull_done and k.storage.stale == [stale[0]]


def test_the_acks_arrival_number_reaches_the_storage() -> None:
    fleet = Fleet()
    k = fleet.enrol(1)
    k.storage.write("one")
    role = kiosk_role(fleet, k)
    role.hello(NOW)
    out = sent(role.receive(welcome(k, None), NOW))
    assert [m.name for m in out] == ["sync-pull", "sync-batch"]
    role.receive(msg("sync-ack", seq=1, arrived=1234), NOW)
    assert k.storage.arrived == {1: 1234} and not k.storage.outbox


def test_sync_db_keeps_the_scope_the_stable_point_and_a_rebase_owed(tmp_path: Path) -> None:
    state = SyncState(tmp_path)
    assert (state.scope, state.stable, state.rebase_owed) == (None, None, False)
    state.note_scope(DOOR, 70)
    state.owe_rebase(True)
    state.close()
    assert (scope_of(tmp_path), stable_of(tmp_path)) == (DOOR, 70)
    state = SyncState(tmp_path)
    assert (state.scope, state.stable, state.rebase_owed) == (DOOR, 70, True)
    # The day moves on with the hub's time, never back.
    next_day = 1_796_515_200_000  # 2026-12-06 00:00 UTC
    assert state.scope_at(next_day) == dataclasses.replace(DOOR, day="2026-12-06")
    assert state.scope_at(next_day - 2 * 86_400_000) == DOOR
    # Another day is the same scope group: its stable point stands; another role's not.
    state.note_scope(dataclasses.replace(DOOR, day="2026-12-06"), None)
    assert state.stable == 70
    state.note_scope(dataclasses.replace(DOOR, role="clinician"), None)
    assert state.stable is None
    state.close()


def test_collection_runs_when_something_may_have_changed_and_not_too_often(
        tmp_path: Path) -> None:
    now = [1000.0]
    collector = Collector(interval_s=60, clock=lambda: now[0])
    with init_store(tmp_path, "North", "A") as store:
        state = SyncState(tmp_path)
        assert collector.after_round(store, state, moved=True) is None  # no scope yet
        state.note_scope(DOOR, 70)
        assert collector.after_round(store, state, moved=True) is not None
        assert collector.after_round(store, state, moved=False) is None  # nothing new
        state.note_scope(DOOR, 80)
        assert collector.after_round(store, state, moved=True) is None  # too soon
        now[0] += 60
        assert collector.after_round(store, state, moved=False) is not None
        now[0] += 1
        state.note_scope(dataclasses.replace(DOOR, role="clinician"), 90)
        assert collector.after_round(store, state, moved=False) is not None  # new scope
        state.close()


# A real hub and real kiosks over TCP -------------------------------------------------

#: Returning patients of the site: (passport, name, birth date).
PATIENTS = [("P1234567", "Grace Hopper", "1906-12-09"), ("P7654321", "Alan Turing",
                                                          "1912-06-23"),
            ("X1111111", "Katherine Johnson", "1918-08-26")]
#: A patient without documents, who registers by name and year at another kiosk.
NEWCOMER = ("Ada Lovelace", 1815)


def received(k: HelperKiosk, own: set[bytes]) -> list[RecordView]:
    """The records a kiosk holds that it did not write (``own``: the ones it did)."""
    return [v for v in k.store.views() if v.record_id not in own]


def text_of(views: list[RecordView]) -> str:
    return " ".join(str(value) for v in views for value in [*v.fields.values(),
                                                            *v.sets.values()])


def collect(k: HelperKiosk) -> CollectReport | None:
    """A garbage collection pass, as the sync loop runs after a round that worked."""
    return Collector().after_round(k.store, k.state, moved=True)


def test_a_door_kiosk_holds_no_name_and_still_verifies_every_returning_patient(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with served_hub(tmp_path) as (hub, url):
        door = HelperKiosk(tmp_path, "door", hub, "A", role="door")
        clinic = HelperKiosk(tmp_path, "clinic", hub, "B", role="clinician")
        full = HelperKiosk(tmp_path, "full", hub, "C")
        try:
            pids = []
            for passport, name, born in PATIENTS:  # returning: known at the site already
                pid = full.store.checkin(passport=passport).patient_id
                full.store.put("patient", pid, values={"name": name, "birthDate": born})
                full.store.put("prescription", values={"subject": pid, "medication": name})
                full.store.put("lab_result", values={"subject": pid, "note": name})
                clinic.store.put("note", values={"subject": pid, "text": f"{name}, {born}"})
                pids.append(pid)
            full.store.checkin(name=NEWCOMER[0], birth_year=NEWCOMER[1])
            for k in (full, clinic, full, door, door):
                k.sync(url)
            assert door.state.scope is not None and door.state.scope.role == "door"

            def check_door(own: set[bytes]) -> None:
                views = received(door, own)
                assert {v.type for v in views} <= {CHECKIN.number, VERIFIER.number}
                text = text_of(views)
                for _, name, born in PATIENTS:
                    assert name not in text and born[:4] not in text
                assert NEWCOMER[0] not in text and str(NEWCOMER[1]) not in text
                assert door.store.status()["quarantine"] == []

            check_door(set())
            own: set[bytes] = set()
            for (passport, _, born), pid in zip(PATIENTS, pids, strict=True):
                right = door.store.checkin(passport=passport, birth_year=int(born[:4]))
                wrong = door.store.checkin(passport=passport, birth_year=int(born[:4]) + 1)
                assert (right.identity, wrong.identity) == ("match", "mismatch")
                assert right.patient_id == pid
                own |= {uuid.UUID(r).bytes for r in (right.record_id, wrong.record_id, pid)}
            stranger = door.store.checkin(passport="Z9999999", birth_year=1950)
            assert stranger.identity == "unknown"
            own |= {uuid.UUID(r).bytes for r in (stranger.record_id, stranger.patient_id)}
            # The others write more about the same patients; the door kiosk syncs on.
            for pid in pids:
                full.store.put("note", values={"subject": pid, "text": "seen again"})
                full.store.put("patient", pid, values={"telecom": "+44 20 7946 0000"})
            for k in (full, clinic, door, door, door):
                k.sync(url)
            check_door(own)
            collect(door)
            # Synced and stable, its own patient records (out of its scope) are gone;
            # its check-ins of today stay.
            held = {v.record_id: v.type for v in door.store.views()}
            assert PATIENT.number not in held.values()
            assert uuid.UUID(stranger.record_id).bytes in held
            # Nor does it keep the years its own patients typed, once they are synced.
            text = text_of(door.store.views())
            assert not any(born[:4] in text for _, _, born in PATIENTS)
            door.state.flush(force=True)  # the stable point waits with the cursor
            assert kiosk_main(["status", "--data", str(door.store.data)]) == 0
            out = capsys.readouterr().out
            assert "scope: door at site 'North'" in out and "stable point: none" not in out
            assert "records out of scope" in out  # the last collection, in words
            assert kiosk_main(["status", "--data", str(door.store.data), "--json"]) == 0
            st = json.loads(capsys.readouterr().out)
            assert st["scope"]["role"] == "door" and st["stable_point"] == door.state.stable
            assert st["last_gc"]["pruned"] >= len(PATIENTS) + 1
        finally:
            for k in (door, clinic, full):
                k.close()


def round_writing_after_welcome(k: HelperKiosk, url: str, write: Callable[[], None],
                                limit: float = 20.0) -> Summary:
    """A round over a new session, as ``run_round``'s, in which ``write`` runs as soon
    as the welcome has been taken: its writes are not synced in this round."""
    link = open_hub_link(url, None)
    driver = kiosk_driver(k.ident, link, limit=limit)
    rnd = Round(k.store, k.state, k.ident)
    end = time.monotonic() + limit
    try:
        while not rnd.done:
            assert time.monotonic() < end, "the round does not end"
            for event in driver.poll(0.1):
                replies: list[tuple[int, bytes]] = []
                if isinstance(event, Connected):
                    replies = rnd.hello()
                elif isinstance(event, MessageReceived):
                    welcomed = rnd.sync.welcomed
                    replies = rnd.on_message(event.data)
                    if not welcomed and rnd.sync.welcomed:
                        write()
                for lane, data in replies:
                    driver.send(lane, data)
        driver.flush()
        driver.close("done")
    finally:
        link.close()
    return rnd.summary


@contextlib.contextmanager
def two_kiosks(tmp_path: Path) -> Iterator[tuple[Hub, str, HelperKiosk, HelperKiosk]]:
    """A hub served on 127.0.0.1 and two full kiosks of its: the one under test, another."""
    with served_hub(tmp_path) as (hub, url):
        k = HelperKiosk(tmp_path, "k", hub, "A")
        other = HelperKiosk(tmp_path, "other", hub, "B")
        try:
            yield hub, url, k, other
        finally:
            k.close()
            other.close()


def test_a_store_edited_behind_its_back_is_caught_by_the_sum_and_rebased(
        tmp_path: Path) -> None:
    with two_kiosks(tmp_path) as (_, url, k, other):
        notes = [other.store.put("note", values={"text": f"note {i}"}) for i in range(5)]
        mine = k.store.put("note", values={"text": "mine"})
        other.sync(url)
        k.sync(url)
        k.sync(url)
        assert k.sync(url).rebased == 0  # in step: the sums agree
        before = k.store.dump()
        gone = uuid.UUID(notes[2]).bytes
        k.store.close()
        with sqlite3.connect(k.store.data / "store.db") as db:
            assert db.execute("DELETE FROM records WHERE rid = ?", [gone]).rowcount == 1
        db.close()
        k.store = Store(k.store.data)
        assert k.store.view(notes[2]) is None
        unsynced: list[str] = []
        summary = round_writing_after_welcome(
            k, url, lambda: unsynced.append(k.store.put("note", values={"text": "new"})))
        assert summary.rebased > 0 and k.store.view(notes[2]) is not None
        assert k.store.view(unsynced[0]) is not None  # kept through the rebase
        assert k.store.status()["outbox"]["lanes"], "still to be sent"
        k.sync(url)
        assert k.store.view(mine) is not None and other.sync(url).pulled >= 1
        assert k.store.dump() == other.store.dump() != before


def test_a_lesser_concurrent_head_deleted_behind_its_back_is_caught_and_rebased(
        tmp_path: Path) -> None:
    """A record with two concurrent heads loses the lesser one in the kiosk's database:
    its greatest dot is unchanged (the v1 sum agreed), but the sum of every head does
    not, and the next round rebases it, the write made meanwhile kept."""
    with two_kiosks(tmp_path) as (_, url, k, other):
        note = other.store.put("note", values={"text": "first"})
        other.sync(url)
        k.sync(url)
        k.store.put("note", note, {"text": "k's"})  # concurrent edits
        other.store.put("note", note, {"text": "other's"})
        other.sync(url)
        k.sync(url)
        k.sync(url)
        other.sync(url)
        assert k.sync(url).rebased == 0  # in step: the sums agree
        view = k.store.view(note)
        assert view is not None and len(view.heads) == 2
        lesser, greatest = sorted(view.heads)
        rid = uuid.UUID(note).bytes
        k.store.close()
        with sqlite3.connect(k.store.data / "store.db") as db:
            db.execute("UPDATE records SET heads = ?, n_conflicts = 0 WHERE rid = ?",
                       [heads_blob([greatest]), rid])
            db.execute("DELETE FROM conflicts WHERE rid = ?", [rid])
            db.execute("DELETE FROM ops WHERE rid = ? AND stamp = ? AND node = ?",
                       [rid, lesser.stamp, lesser.node])
        db.close()
        k.store = Store(k.store.data)
        edited = k.store.view(note)
        assert edited is not None and edited.heads == (greatest,)
        unsynced: list[str] = []
        summary = round_writing_after_welcome(
            k, url, lambda: unsynced.append(k.store.put("note", values={"text": "new"})))
        assert summary.rebased > 0
        again = k.store.view(note)
        assert again is not None and again.heads == (lesser, greatest)
        assert k.store.view(unsynced[0]) is not None  # kept through the rebase
        assert k.store.status()["outbox"]["lanes"], "still to be sent"
        k.sync(url)
        other.sync(url)
        assert k.store.dump() == other.store.dump()
        assert k.sync(url).rebased == 0


def test_a_delete_update_conflict_sums_the_same_at_the_kiosk_and_the_hub(
        tmp_path: Path) -> None:
    """A delete and a concurrent edit: both are heads, the kiosk's flags read from its
    conflict's versions, the hub's from the deltas; the sums agree and nobody rebases."""
    with two_kiosks(tmp_path) as (hub, url, k, other):
        note = other.store.put("note", values={"text": "first"})
        other.sync(url)
        k.sync(url)
        k.store.delete(note)
        other.store.put("note", note, {"text": "edited"})
        for kiosk in (k, other, k, other):
            kiosk.sync(url)
        for kiosk in (k, other):
            view = kiosk.store.view(note)
            assert view is not None and len(view.heads) == 2 and view.conflicts
            scope = scope_of(kiosk.store.data)
            assert scope is not None
            sums = hub.store.scope_sums(scope, kiosk.state.cursor, kiosk.store.node, (2,))
            assert kiosk.store.scope_checksum(scope) == sums[2]
            assert kiosk.sync(url).rebased == 0


def test_a_stable_point_the_kiosks_hub_did_not_sign_is_refused_and_prunes_nothing(
        tmp_path: Path) -> None:
    with served_hub(tmp_path) as (hub, url):
        door = HelperKiosk(tmp_path, "door", hub, "A", role="door")
        try:
            for passport, _, _ in PATIENTS:
                door.store.checkin(passport=passport)
            for _ in range(3):  # pushed, then acknowledged by the whole scope: stable
                door.sync(url)
            held = door.store.dump()
            stable = door.state.stable
            # The kiosk trusts another hub key: the real hub's stable point is a forgery.
            other = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
            door.ident = dataclasses.replace(door.ident, cert=dataclasses.replace(
                door.ident.cert, hub_ed25519=other))
            loop = SyncLoop(door.store, door.state, door.ident, [url], keepalive=0)
            out = loop.round(lambda: 20.0)
            assert out.summary is None
            failure, = out.failures
            assert "stable point is not signed by this kiosk's hub" in failure
            assert door.store.dump() == held and door.state.stable == stable
            # Its own hub's, trusted: the same loop collects.
            loop.ident = door.ident = enrol.load(door.store.data)
            assert loop.round(lambda: 20.0).summary is not None
            assert PATIENT.number not in {v.type for v in door.store.views()}
            loop.close()
        finally:
            door.close()


def test_a_kiosk_given_the_door_role_rebases_to_it_keeping_what_it_has_not_sent(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rebase changes only the door's scope: what the full kiosk held besides stays
    through it (and does not count in the next hello's sum, which agrees), and the
    collector then prunes it a slice at a time, never an unsynced write."""
    with two_kiosks(tmp_path) as (hub, url, k, other):
        passport, name, born = PATIENTS[0]
        pid = other.store.checkin(passport=passport).patient_id
        other.store.put("patient", pid, values={"name": name, "birthDate": born})
        notes = [other.store.put("note", values={"subject": pid, "text": f"{name} {i}"})
                 for i in range(30)]
        other.sync(url)
        k.sync(url)
        assert all(k.store.view(n) is not None for n in notes)  # a full kiosk holds all
        held = {v.record_id: v for v in k.store.views()}
        hub.set_role(k.device, "door")
        # Queued when the round starts: in flight while the snapshot is taken.
        queued = k.store.checkin(passport=passport, birth_year=int(born[:4]))
        assert k.sync(url).rebased > 0
        assert k.state.scope is not None and k.state.scope.role == "door"
        assert not k.state.rebase_owed
        assert k.store.view(queued.record_id) is not None
        # Out of the door's scope: left to the collector, untouched by the rebase.
        assert all(k.store.view(str(uuid.UUID(bytes=rid))) == v for rid, v in held.items())
        other.sync(url)
        assert other.store.view(queued.record_id) is not None
        assert k.store.scope_checksum(k.state.scope) is not None  # the hello carries it
        assert k.sync(url).rebased == 0  # rebased once, then in step
        unsent = k.store.put("note", values={"text": "not sent yet"})
        monkeypatch.setattr(gc, "SLICE_RECORDS", 4)
        monkeypatch.setattr(gc, "SLICE_S", 0.0)
        monkeypatch.setattr(gc, "BUSY_SLICE_S", 0.0)
        stable = k.state.stable
        assert stable is not None
        slices = 0
        for _ in range(200):
            report = k.store.collect(k.state.scope, stable, budget_s=0)
            slices += report.slices
            assert k.store.view(unsent) is not None and k.store.view(queued.record_id)
            if report.done:
                break
        assert report.done and slices > 5
        assert all(k.store.view(n) is None for n in notes)
        assert name not in text_of(received(k, {uuid.UUID(queued.record_id).bytes,
                                                uuid.UUID(unsent).bytes}))
        k.sync(url)
        other.sync(url)
        assert other.store.view(unsent) is not None
        assert k.sync(url).rebased == 0


def test_a_decommissioned_kiosk_is_told_and_cannot_enrol_again(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The hub's alert says why everything the kiosk sends is quarantined (the status
    shows it), and the same kiosk's request is refused: a new certificate would hide
    that its writes wait for a person at the hub."""
    from host.errors import HavenError

    from .test_sync_helpers import served_hub

    with served_hub(tmp_path) as (hub, url):
        kiosk = HelperKiosk(tmp_path, "k", hub, "A")
        other = HelperKiosk(tmp_path, "o", hub, "B")
        try:
            other.store.checkin(name="Cy", birth_year=1979)
            other.sync(url)
            kiosk.store.checkin(name="Ada", birth_year=1980)
            assert kiosk.sync(url).quarantined == 0 and alert_of(kiosk.store.data) is None
            cursor = kiosk.state.cursor
            assert cursor > 0
            hub.decommission(kiosk.device)
            kiosk.store.checkin(name="Bea", birth_year=1981)
            assert kiosk.sync(url).quarantined == 2
            assert alert_of(kiosk.store.data) == "decommissioned"
            assert kiosk.state.cursor == cursor  # told, not taken for a clone: no pull again
            kiosk.state.flush(force=True)
            capsys.readouterr()
            assert kiosk_main(["status", "--data", str(kiosk.store.data)]) == 0
            out = capsys.readouterr().out
            assert "decommissioned: the hub took this kiosk out of service" in out
            assert "another kiosk runs with this identity" not in out
            request = enrol.write_request(kiosk.store).read_bytes()
            with pytest.raises(HavenError, match="is decommissioned"):
                hub.enroll(request)
        finally:
            kiosk.close()
            other.close()


def test_the_status_tells_the_stable_points_time() -> None:
    from device.cli import _stable_line

    assert _stable_line(None) == "none yet" and _stable_line(0) == "cursor 0"
    assert _stable_line(1_796_450_007_497_071) == (
        "cursor 1796450007497071 (every replica holds what reached the hub by "
        "2026-12-05T05:53:27Z)")
