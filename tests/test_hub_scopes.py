"""The hub's side of scopes, on real hub.db files: what each role is sent, the clinician's
back-fill, stable points, decommissioned kiosks, role changes and migration 7.

The hub's role (``HubSync``) is driven message by message on a real ``HubStore`` with
enrolled kiosks' real keys and certificates; deltas are made by ``Replica``s under the
kiosks' nodes and pushed as signed batches. Sync of real kiosks over TCP with scopes is
tests/test_sync_scopes.py and tests/test_scope_convergence.py."""

from __future__ import annotations

import shutil
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlite_utils

from host.cli import main as haven_main
from host.hub import at_rest, scopes
from host.hub.hub import Hub, init_hub
from host.hub.peer import HubPeer
from host.hub.storage import MIGRATIONS, Device
from protocol import messages
from protocol.crdt.delta import Delta, decode
from protocol.crdt.delta import encode as sync_encode
from protocol.crdt.ids import verifier_record_id, year_verifier
from protocol.crdt.replica import Replica
from protocol.driver.wall_clock import wall_ms
from protocol.sync import batches as sync
from protocol.sync.conversation import HubSync, utc_day
from protocol.sync.scope import (
    Scope,
    facts_of,
    open_stable_point,
    scope_checksum,
    scope_checksum_v1,
)
from tests.hub_db import hub_db

from .test_sync_helpers import Kiosk

pytestmark = pytest.mark.usefixtures("hub_backend")

FIXTURE = Path(__file__).parent / "fixtures" / "release-a84fa97" / "hub"
DAY_MS = 86_400_000
NAMES = ("Ada Lovelace", "Bea Okafor", "Cai Wen")
YEARS = ("1970", "1981", "1992")


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Hub]:
    init_hub(tmp_path / "hub")
    with Hub(tmp_path / "hub") as h:
        yield h


class Session:
    """One kiosk's session with the hub's role, message by message."""

    def __init__(self, hub: Hub, kiosk: Kiosk, now: int, cursor: int = 0,
                 **hello: Any) -> None:
        self.hub, self.kiosk, self.now = hub, kiosk, now
        self.role = HubSync(hub.store, hub.ed_public, kiosk.ident.cert.x25519,
                            stable_key=hub.ed_key)
        dev = hub.store.device(kiosk.device)
        assert dev is not None
        self.welcome = self.one(messages.make(
            "sync-hello", cert=kiosk.cert, vv={}, cursor=cursor, seq=dev.last_seq,
            hash=dev.last_hash, time=now, **hello), "sync-welcome")

    def one(self, msg: messages.Message, name: str) -> messages.Message:
        replies = [messages.decode(m) for _, m in self.role.receive(msg, self.now)]
        got = [r for r in replies if r.name == name]
        assert len(got) == 1, (self.role.close, [r.name for r in replies])
        return got[0]

    def push(self, deltas: list[bytes]) -> messages.Message:
        dev = self.hub.store.device(self.kiosk.device)
        assert dev is not None
        batch = sync.make_batch(self.kiosk.ident.ed_key, self.kiosk.device, dev.last_seq + 1,
                                dev.last_hash, deltas)
        return self.one(messages.make("sync-batch", seq=batch.seq, payload=batch.payload,
                                      sig=batch.sig), "sync-ack")

    def pull(self, cursor: int, max_bytes: int | None = None,
             **more: Any) -> tuple[list[list[bytes]], messages.Message]:
        """Every page from ``cursor`` (a bounded number): the pages and the last one."""
        pages = []
        for _ in range(1000):
            page = self.one(messages.make("sync-pull", cursor=cursor, max_bytes=max_bytes,
                                          **more), "sync-changes")
            pages.append(sync.unpack(page.get("payload")))
            cursor = page.get("cursor")
            if not page.get("more"):
                return pages, page
            if "snapshot" in more:
                more["upto"] = page.get("upto")
        raise AssertionError("the pull never ended")


def visit(writer: Replica, now: int, site: str, name: str, year: str,
          clinical: bool = True) -> tuple[bytes, list[bytes]]:
    """A patient (name, date of birth), their check-in at ``site`` today and, with
    ``clinical``, a prescription, a lab result and a note: (patient id, deltas)."""
    pid = uuid.uuid4().bytes
    ref = str(uuid.UUID(bytes=pid))
    day = utc_day(now)
    out = [writer.put(pid, "patient", now, {"name": name, "birthDate": f"{year}-03-04"}),
           writer.put(uuid.uuid4().bytes, "checkin", now, {
               "subject": ref, "status": "arrived", "periodStart": f"{day}T09:00:00Z",
               "location": site, "queueNumber": "A-001", "claimName": name,
               "claimBirthDate": year})]
    if clinical:
        out += [writer.put(uuid.uuid4().bytes, "prescription", now,
                           {"subject": ref, "medication": "amoxicillin"}),
                writer.put(uuid.uuid4().bytes, "lab_result", now,
                           {"subject": ref, "code": "glucose", "value": 5.4}),
                writer.put(uuid.uuid4().bytes, "note", now, {"subject": ref, "text": name})]
    return pid, out


def decoded(pages: list[list[bytes]]) -> list[Delta]:
    return [decode(d) for page in pages for d in page]


def test_a_door_kiosk_gets_its_sites_verifiers_and_todays_queue_and_no_name(
        tmp_path: Path, hub: Hub) -> None:
    now = wall_ms()
    a, s = Kiosk(tmp_path, "a", hub, "A"), Kiosk(tmp_path, "s", hub, "A", site="South")
    door = Kiosk(tmp_path, "d", hub, "D")
    assert haven_main(["hub", "role", "--data", str(hub.data), door.device, "door"]) == 0
    try:
        wa, ws = Replica(a.store.node), Replica(s.store.node)
        north = [visit(wa, now, "North", NAMES[i], YEARS[i]) for i in (0, 1)]
        south = [visit(ws, now, "South", NAMES[2], YEARS[2])]
        old = wa.put(uuid.uuid4().bytes, "checkin", now, {  # yesterday's queue
            "subject": str(uuid.UUID(bytes=north[0][0])), "location": "North",
            "periodStart": f"{utc_day(now - DAY_MS)}T09:00:00Z", "claimName": NAMES[0]})
        ack = Session(hub, a, now).push([d for _, ds in north for d in ds] + [old])
        assert ack.get("arrived") == hub.store.head()
        Session(hub, s, now).push(south[0][1])
        hub.write_verifiers(now)  # the server does it after each batch

        session = Session(hub, door, now)
        assert session.welcome.get("scope") == ["door", "North", utc_day(now), 30]
        assert open_stable_point(session.welcome.get("stable"), hub.ed_public,
                                 door.device)[0] == 0  # it holds nothing yet
        got = decoded(session.pull(0)[0])
        checkins = [d for d in got if d.type == 2]
        assert len(checkins) == 2 and {d.set[5] for d in checkins} == {"North"}
        assert {d.set[4][:10] for d in checkins} == {utc_day(now)}
        assert all(7 not in d.set and 8 not in d.set for d in checkins)  # no claims
        verifiers = {d.record_id: d for d in got if d.type == 9}
        assert {d.type for d in got} == {2, 9} and len(verifiers) == 2
        for (pid, _), year in zip(north, YEARS[:2], strict=True):
            v = verifiers[verifier_record_id(hub.fleet_key, "North", pid)]
            assert v.set == {1: pid, 2: year_verifier(hub.fleet_key, "North", pid, year),
                             3: "North"}
        texts = [v for d in got for k, v in d.set.items() if isinstance(v, str)
                 and not (d.type == 9 and k == 2)]  # but the verifiers' keyed hashes
        for text in (*NAMES, *YEARS, "amoxicillin", "glucose"):
            assert not any(text in t for t in texts)
        # the same as a snapshot, whose last page sums what it carries
        pages, last = session.pull(0, snapshot=True)
        assert {d.record_id for d in decoded(pages)} == {d.record_id for d in got}
        assert last.get("cursor") == last.get("upto") == hub.store.head()
        door_scope = Scope("door", "North", utc_day(now))
        assert {2: last.get("sum2"), 1: last.get("sum")} == hub.store.scope_sums(
            door_scope, hub.store.head())
        assert hub.store.scope_sums(door_scope, hub.store.head(), None, (1,)) == {
            1: last.get("sum")}  # v1 alone, without the heads: the same
        # a full kiosk still gets everything but its own writes
        full = decoded(Session(hub, s, now).pull(0)[0])
        assert len(full) == 2 * 5 + 1 + 2  # North's visits, yesterday's, two verifiers
        assert hub.write_verifiers(now) == 0  # nothing new: nothing written
        # a kiosk's own verifier is quarantined: door kiosks trust the hub's alone
        pid = north[0][0]
        forged = wa.put(verifier_record_id(hub.fleet_key, "North", pid), "verifier", now, {
            "subject": str(uuid.UUID(bytes=pid)), "birthYear": "0" * 32, "site": "North"})
        assert Session(hub, a, now).push([forged]).get("quarantined") == [0]
        assert [q["code"] for q in hub.store.quarantined()] == ["hub-only"]
    finally:
        for k in (a, s, door):
            k.close()


def test_a_patient_entering_a_clinician_scope_brings_their_older_records(
        tmp_path: Path, hub: Hub) -> None:
    now = wall_ms()
    a = Kiosk(tmp_path, "a", hub, "A")
    station = Kiosk(tmp_path, "c", hub, "C")
    hub.set_role(station.device, "clinician", 10)
    try:
        writer = Replica(a.store.node)
        push = Session(hub, a, now).push
        pid, older = visit(writer, now - 40 * DAY_MS, "North", NAMES[0], "1970")
        other, others = visit(writer, now, "South", NAMES[1], "1981")
        push(older + others)
        before = hub.store.head()
        session = Session(hub, station, now, cursor=before)
        assert session.welcome.get("scope") == ["clinician", "North", utc_day(now), 10]
        assert decoded(session.pull(before)[0]) == []  # an old visit: out of the window
        note = writer.put(uuid.uuid4().bytes, "note", now,
                          {"subject": str(uuid.UUID(bytes=other)), "text": "not here"})
        checkin = writer.put(uuid.uuid4().bytes, "checkin", now, {
            "subject": str(uuid.UUID(bytes=pid)), "location": "North",
            "periodStart": f"{utc_day(now)}T10:00:00Z"})
        push([note, checkin])
        pages, _ = session.pull(before, max_bytes=1024)
        got = [decode(d) for page in pages for d in page]
        # the patient and their prescription, lab result and note come in at the check-in,
        # all in one page; not their old visit, not another patient's note
        assert [d.type for d in got] == [1, 3, 4, 6, 2]
        assert len(pages) == 1 and {d.record_id for d in got[:4]} == {
            decode(d).record_id for d in older if decode(d).type != 2}
        # from a cursor after the check-in: only what is new
        assert decoded(session.pull(hub.store.head())[0]) == []
        later = writer.put(uuid.uuid4().bytes, "prescription", now,
                           {"subject": str(uuid.UUID(bytes=pid)), "medication": "insulin"})
        cursor = hub.store.head()
        push([later])
        assert [d.type for d in decoded(session.pull(cursor)[0])] == [3]
    finally:
        a.close()
        station.close()


def test_the_stable_point_waits_for_an_offline_kiosk_until_it_is_decommissioned(
        tmp_path: Path, hub: Hub) -> None:
    now = wall_ms()
    kiosks = [Kiosk(tmp_path, n, hub, n.upper()) for n in ("a", "b", "c")]
    a, b, gone = kiosks
    full = Kiosk(tmp_path, "f", hub, "F")
    try:
        for k in kiosks:
            hub.set_role(k.device, "door")
        writer = Replica(full.store.node)
        Session(hub, full, now).push(visit(writer, now, "North", NAMES[0], "1970")[1])
        head = hub.store.head()
        Session(hub, a, now, cursor=head)
        Session(hub, b, now, cursor=head - 1)
        stable = Session(hub, a, now, cursor=head).welcome.get("stable")
        assert open_stable_point(stable, hub.ed_public, a.device)[0] == 0  # c never came
        assert hub.store.stable_point("full", "North") == 0  # full's own group: f at 0
        assert haven_main(["hub", "decommission", "--data", str(hub.data), gone.device]) == 0
        stable = Session(hub, a, now, cursor=head).welcome.get("stable")
        assert open_stable_point(stable, hub.ed_public, a.device)[0] == head - 1
        assert {(g["role"], g["site"]): g["cursor"] for g in hub.status()["stable_points"]} \
            == {("door", "North"): head - 1, ("full", "*"): 0}

        # the decommissioned kiosk comes back: its writes are quarantined and acked
        held = hub.store.count()
        back = Session(hub, gone, now)
        assert back.welcome.get("scope") is None and back.welcome.get("stable") is None
        rogue = Replica(gone.store.node)
        ack = back.push([rogue.put(uuid.uuid4().bytes, "note", now, {"text": "late"}),
                         rogue.put(uuid.uuid4().bytes, "note", now, {"text": "later"})])
        assert ack.get("quarantined") == [0, 1] and ack.get("arrived") is None
        assert hub.store.count() == held
        assert {q["code"] for q in hub.store.quarantined()} == {"decommissioned"}
        assert decoded(back.pull(0)[0]) == []
        assert hub.store.stable_point("door", "North") == head - 1
    finally:
        for k in (*kiosks, full):
            k.close()


def test_a_hellos_sum_is_answered_by_the_version_it_carries(tmp_path: Path, hub: Hub
                                                            ) -> None:
    """``sum2`` (v2, every head) from kiosks of now, ``sum`` (v1, greatest dots) from
    kiosks in the field: each is compared by its own version, so a v1 kiosk in step is
    never asked to rebase, and a v2 kiosk missing a lesser concurrent head is."""
    now = wall_ms()
    a, b = Kiosk(tmp_path, "a", hub, "A"), Kiosk(tmp_path, "b", hub, "B")
    try:
        wa, wb = Replica(a.store.node), Replica(b.store.node)
        rid, other = uuid.uuid4().bytes, uuid.uuid4().bytes
        mine = [wa.put(rid, "note", now, {"text": "first"}),
                wa.put(other, "note", now, {"text": "alone"})]
        for data in mine:
            wb.receive(data, now)
        mine.append(wa.put(rid, "note", now + 3, {"text": "a's"}))  # concurrent with
        theirs = [wb.delete(rid, now + 5),  # b's delete, the greater of the two heads
                  wb.put(other, "note", now + 6, {"text": "seen"})]  # saw a's: one head
        Session(hub, a, now).push(mine)
        Session(hub, b, now).push(theirs)
        head = hub.store.head()
        heads = [(d.record_id, d.stamp, d.node, d.is_delete)
                 for d in map(decode, (mine[2], theirs[0], theirs[1]))]
        full = Scope("full", "North", utc_day(now))
        assert hub.store.scope_sums(full, head, a.store.node) == {
            2: scope_checksum(heads), 1: scope_checksum_v1(heads)}
        assert hub.store.scope_sums(full, head, a.store.node, (1,)) == {  # v1 alone
            1: scope_checksum_v1(heads)}
        lesser_gone = heads[1:]

        def rebase(**hello: bytes) -> bool | None:
            asked: bool | None = Session(hub, a, now, cursor=head, **hello).welcome.get(
                "rebase")
            return asked
        assert rebase() is None  # no sum: nothing to compare
        assert rebase(sum2=scope_checksum(heads)) is None
        assert rebase(sum=scope_checksum_v1(heads)) is None  # a kiosk in the field, in step
        assert rebase(sum2=scope_checksum(lesser_gone)) is True
        assert rebase(sum=scope_checksum_v1(lesser_gone)) is None  # v1's blind spot
        assert rebase(sum2=scope_checksum_v1(heads)) is True  # never one for the other
        assert rebase(sum=scope_checksum(heads)) is True
        # both on a hello: v2 decides
        assert rebase(sum2=scope_checksum(heads), sum=bytes(32)) is None
    finally:
        a.close()
        b.close()


def test_a_role_change_to_an_unknown_role_is_refused_and_changes_nothing(
        tmp_path: Path, hub: Hub, capsys: pytest.CaptureFixture[str]) -> None:
    kiosk = Kiosk(tmp_path, "a", hub, "A")
    try:
        before = (hub.store.device(kiosk.device), hub.store.events(1000))
        for argv in (["wizard"], ["door", "--window", "5"], ["clinician", "--window", "0"]):
            assert haven_main(["hub", "role", "--data", str(hub.data), kiosk.device,
                               *argv]) == 2
        err = capsys.readouterr().err
        assert "unknown role 'wizard': door, clinician or full" in err
        assert "--window goes with the clinician role" in err
        assert (hub.store.device(kiosk.device), hub.store.events(1000)) == before
        assert haven_main(["hub", "role", "--data", str(hub.data), "nobody", "door"]) == 2
        assert haven_main(["hub", "role", "--data", str(hub.data), kiosk.device,
                           "clinician", "--window", "14"]) == 0
        dev = hub.store.device(kiosk.device)
        assert dev is not None and (dev.role, dev.window_days) == ("clinician", 14)
        # its session then ends, and its next hello is told to rebase
        now = wall_ms()
        assert Session(hub, kiosk, now).welcome.get("rebase") is True
        session = Session(hub, kiosk, now + 1)
        assert session.welcome.get("rebase") is None
        hub.set_role(kiosk.device, "door", now_ms=now + 2)
        session.role.receive(messages.make("sync-pull", cursor=0), now + 3)
        assert session.role.close is not None and session.role.close[0] == "rescoped"
        assert haven_main(["hub", "status", "--data", str(hub.data)]) == 0
        assert "door  acked cursor 0" in capsys.readouterr().out
        # a kiosk provisioned offline has its approval's role from its first sync
        serial, letter, node, _ = hub.store.reserve_approvals(
            "North", 1, now, now + DAY_MS, iter([7]), role="clinician", window_days=3)[0]
        late = Device(f"{node:08x}", node, "North", letter, b"x" * 32, b"e" * 32, "approved",
                      0, bytes(32), 0, None)
        assert hub.store.enrol_approved(serial, late, now) == "enrolled"
        dev = hub.store.device(late.device_id)
        assert dev is not None and (dev.role, dev.window_days) == ("clinician", 3)
    finally:
        kiosk.close()


def test_migration_7_upgrades_the_hub_of_the_release_before(tmp_path: Path) -> None:
    shutil.copytree(FIXTURE, tmp_path / "hub")
    for path in [tmp_path / "hub", *(tmp_path / "hub").rglob("*")]:
        path.chmod(0o700 if path.is_dir() else 0o600)
    old = sqlite3.connect(tmp_path / "hub" / "hub.db")
    assert old.execute("PRAGMA user_version").fetchone()[0] == 6
    ops = old.execute("SELECT rid, data FROM ops ORDER BY hseq").fetchall()
    old.close()
    with Hub(tmp_path / "hub") as hub:
        want: dict[bytes, list[Any]] = {}
        for rid, data in ops:  # each fact: the value of the greatest dot that set one
            d = decode(data)
            f = facts_of(d.record_id, d.type, d.set)
            held = want.setdefault(bytes(rid), [d.type, None, None, None])
            for i, value in enumerate((f.location, f.subject, f.day), 1):
                if value is not None and (held[i] is None or held[i][0] < d.dot):
                    held[i] = (d.dot, value)
        want = {rid: [f[0], *(None if v is None else v[1] for v in f[1:])]
                for rid, f in want.items()}
        factless = {rid for rid, f in want.items() if f[1:] == [None, None, None]}
        assert factless and all(hub.store.facts(rid) is None for rid in factless)
        assert {rid: list(hub.store.facts(rid) or ()) for rid in set(want) - factless} == {
            rid: f for rid, f in want.items() if rid not in factless}
        assert [(d.role, d.acked, d.role_since) for d in hub.store.devices()] == [
            ("full", 0, None)] * len(hub.store.devices())
        checkins = [f for f in want.values() if f[0] == 2]
        site, day = checkins[0][1], checkins[0][3]
        door = Scope("door", site, day)
        deltas, cursor, more = hub.store.changes_since(0, None, 1 << 20, scope=door)
        assert len(deltas) == sum(1 for _, d in ops if decode(d).type == 2)
        assert (cursor, more) == (hub.store.head(), False)
    conn = sqlite3.connect(tmp_path / "hub" / "hub.db")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == MIGRATIONS.latest
    conn.close()


@pytest.mark.sqlite_only  # migration 7's fill, on the SQLite file
def test_a_records_facts_are_the_greatest_writes_whatever_order_they_arrive_in(
        tmp_path: Path, hub: Hub) -> None:
    """Two desks attach one check-in to two patients at once: the facts are the merge's
    (the greatest dot's subject), also when the lesser arrives last; a delete moves none."""
    now = wall_ms()
    x, y = Kiosk(tmp_path, "x", hub, "X"), Kiosk(tmp_path, "y", hub, "Y")
    try:
        wx, wy = Replica(x.store.node), Replica(y.store.node)
        rid = uuid.uuid4().bytes
        first = wx.put(rid, "checkin", now, {"location": "North",
                                             "periodStart": f"{utc_day(now)}T09:00:00Z"})
        Session(hub, x, now).push([first])
        wy.receive(first, now)
        p1, p2 = (str(uuid.uuid4()) for _ in range(2))
        lesser = wx.put(rid, "checkin", now, {"subject": p1})
        greater = wy.put(rid, "checkin", now + 1000, {"subject": p2, "location": "South"})
        assert decode(lesser).dot < decode(greater).dot
        Session(hub, y, now).push([greater])  # the greater arrives first
        Session(hub, x, now).push([lesser])
        merged = Replica(0)
        for data in (first, lesser, greater):
            merged.receive(data, now + 1000)
        view = merged.view(rid)
        assert view is not None and view.fields[1] == uuid.UUID(p2).bytes
        assert hub.store.facts(rid) == (2, "South", uuid.UUID(p2).bytes, utc_day(now))
        wx.receive(greater, now + 1000)
        Session(hub, x, now).push([wx.delete(rid, now + 2000)])
        assert hub.store.facts(rid) == (2, "South", uuid.UUID(p2).bytes, utc_day(now))
        assert refilled(hub) == tables(hub)  # migration 7: the same facts, dots and all
    finally:
        x.close()
        y.close()


def tables(hub: Hub) -> tuple[list[Any], list[Any]]:
    """The hub's late writes and record facts, as rows."""
    with hub_db(hub.data) as conn:
        return (conn.execute("SELECT * FROM late_writes ORDER BY hseq").fetchall(),
                conn.execute("SELECT * FROM record_facts ORDER BY rid").fetchall())


def refilled(hub: Hub) -> tuple[list[Any], list[Any]]:
    """``tables`` as migration 7 fills them from the deltas held (then rolled back)."""
    conn = sqlite3.connect(hub.data / "hub.db", isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("DELETE FROM late_writes")
        conn.execute("DELETE FROM record_facts")
        db = sqlite_utils.Database(conn)
        at_rest.register(db, hub.store.sealer)
        scopes.fill_facts(db)
        return (conn.execute("SELECT * FROM late_writes ORDER BY hseq").fetchall(),
                conn.execute("SELECT * FROM record_facts ORDER BY rid").fetchall())
    finally:
        conn.execute("ROLLBACK")
        conn.close()


@pytest.mark.parametrize("role", ["full", "door", "clinician"])
@pytest.mark.sqlite_only  # migration 7's fill, on the SQLite file
def test_a_write_late_to_a_deleted_record_comes_with_the_records_older_deltas(
        tmp_path: Path, hub: Hub, role: str) -> None:
    """X writes a check-in; Y deletes it; X, not having seen the delete, edits it. A kiosk
    that dropped the tombstone must rebuild the merged record: its pull carries the
    record's older deltas again at the edit's position, in one page, for every role."""
    now = wall_ms()
    x, y = Kiosk(tmp_path, "x", hub, "X"), Kiosk(tmp_path, "y", hub, "Y")
    k = Kiosk(tmp_path, "k", hub, "K")
    hub.set_role(k.device, role)
    try:
        wx, wy = Replica(x.store.node), Replica(y.store.node)
        pid, visited = visit(wx, now, "North", NAMES[0], YEARS[0], clinical=False)
        rid = decode(visited[1]).record_id
        Session(hub, x, now).push(visited)
        wy.receive(visited[1], now)
        delete = wy.delete(rid, now + 1000)
        Session(hub, y, now).push([delete])
        cursor = hub.store.head()  # k holds the delete and may drop the record now
        late = wx.put(rid, "checkin", now + 2000, {"status": "in-progress"})
        Session(hub, x, now).push([late])

        pages, _ = Session(hub, k, now, cursor=cursor).pull(cursor, max_bytes=1024)
        got = decoded(pages)
        assert [d.dot for d in got] == [decode(d).dot for d in (visited[1], delete, late)]
        assert len([p for p in pages if p]) == 1  # never split
        if role == "door":
            assert all(7 not in d.set and 8 not in d.set for d in got)
        merged = Replica(0)
        for d in got:
            merged.receive(sync_encode(d), now + 2000)
        view = merged.view(rid)
        assert view is not None and [c.cls for c in view.conflicts] == ["delete-update"]

        # migration 7 finds the same late writes and facts in what the hub held
        assert refilled(hub) == (held := tables(hub)) and held[0]

        # its writer is not sent the late edit, but is the record's history with it
        assert [d.dot for d in decoded(Session(hub, x, now, cursor=cursor).pull(cursor)[0])
                ] == [decode(d).dot for d in (visited[1], delete)]

        # a write that saw the delete is sent alone
        cursor = hub.store.head()
        again = sync_encode(Delta(rid, 2, x.store.node, decode(late).stamp + 1,
                                  set={2: "finished"}, ctx=(decode(delete).dot,)))
        Session(hub, x, now).push([again])
        assert [d.dot for d in decoded(Session(hub, k, now, cursor=cursor).pull(cursor)[0])
                ] == [decode(again).dot]
    finally:
        for kiosk in (x, y, k):
            kiosk.close()


@pytest.mark.parametrize("defer", [True, False])
def test_the_verifier_pass_a_batch_leaves_runs_after_its_ack_when_deferred(
        tmp_path: Path, hub: Hub, defer: bool) -> None:
    """The server defers the pass (``HubPeer.owed``): the batch's ack is answered before
    it, and the connection settles it before the kiosk's next message."""
    now = wall_ms()
    a, door = Kiosk(tmp_path, "a", hub, "A"), Kiosk(tmp_path, "d", hub, "D")
    hub.set_role(door.device, "door")
    passes: list[int] = []
    try:
        peer = HubPeer(hub.store, hub.ed_public, a.ident.cert.x25519, lambda: now,
                       stable_key=hub.ed_key, defer=defer,
                       after_batch=lambda: passes.append(hub.write_verifiers(now)))
        dev = hub.store.device(a.device)
        assert dev is not None
        peer.on_message(messages.encode(messages.make(
            "sync-hello", cert=a.cert, vv={}, cursor=0, seq=dev.last_seq, hash=dev.last_hash,
            time=now)))
        pid, deltas = visit(Replica(a.store.node), now, "North", NAMES[0], YEARS[0])
        batch = sync.make_batch(a.ident.ed_key, a.device, 1, dev.last_hash, deltas)
        replies = peer.on_message(messages.encode(messages.make(
            "sync-batch", seq=1, payload=batch.payload, sig=batch.sig)))
        assert [messages.decode(r).name for _, r in replies] == ["sync-ack"]
        assert passes == ([] if defer else [1]) and peer.owed is defer
        peer.settle()
        peer.settle()  # nothing owed: nothing runs
        assert passes == [1] and not peer.owed
        assert hub.store.record_ops(verifier_record_id(hub.fleet_key, "North", pid))
    finally:
        a.close()
        door.close()
