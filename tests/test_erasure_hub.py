"""A patient's erasure on the hub (``haven hub erase``, ``host.hub.erasure``).

Real stores, real TCP on 127.0.0.1, the command as an operator runs it. After the
erasure no hub file holds anything of the patient, even opened with the hub's own
keys: every sealed value of every table and every document file is opened and
searched; nor does a backup made after it, restored with its key backup. A write a
kiosk made before it heard of the erasure is husked; other patients are untouched;
replicas agree on their scopes; an unknown patient is a clear error.
"""

from __future__ import annotations

import json
import shlex
import shutil
import uuid
from pathlib import Path

import pytest

from device.sync.document_store import attach
from device.sync.state import scope_of
from host.cli import main as haven
from host.errors import UsageError
from host.hub import at_rest, current, erasure, husking, quarantine, verifiers
from host.hub.document_inbox import DOCUMENTS_DIR
from host.hub.hub import Hub, init_hub
from host.hub.storage import Op
from protocol.crdt.delta import Delta, decode, encode
from protocol.crdt.erasure import covers, erasure_record_id, husk, successor_id
from protocol.crdt.ids import patient_id
from protocol.crdt.replica import Replica
from protocol.crdt.schema import ERASURE, PATIENT
from protocol.driver.wall_clock import wall_ms
from protocol.sync import batches as sync
from protocol.sync.batches import Batch
from protocol.sync.scope import heads_of, scope_checksum
from protocol.sync.sealed_identity import seal_identity
from tests.hub_db import connect_hub_db

from .test_documents import content
from .test_hub_at_rest import assert_nothing_plain, windows
from .test_hub_backup import key_backup
from .test_hub_scopes import Session, decoded, visit
from .test_scope import edn
from .test_sync_helpers import Kiosk, served_hub
from .test_sync_restore import serving

pytestmark = pytest.mark.usefixtures("hub_backend")

NAME, PASSPORT = "Zebulon Quixotic-Farnsworth", "QX7731904"
ADDRESS, MEDICATION = "Periwinkle Mansions", "Xanthoxylum cordifolium 40mg"
LATE = "Lately Lamotrigine 25mg"
OTHER = "Ottoline Brackenbury"
#: What the patient's records held: none may be found anywhere after the erasure.
NEEDLES = [NAME, "Zebulon", "Quixotic", PASSPORT, ADDRESS, "Periwinkle", MEDICATION,
           "Xanthoxylum", LATE, "Lamotrigine", "Held Heliotrope", "Quarantined Quennell"]


def run(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str]:
    capsys.readouterr()
    try:
        code = haven([str(a) for a in argv])
    except SystemExit as exc:  # argparse's own refusals
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out + out.err


def opened_values(data: Path) -> list[bytes]:
    """Every sealed value the hub's files hold, opened with the hub's keyring: each
    delta, quarantined delta and held batch's deltas, each value of the current records,
    and every document file."""
    with Hub(data) as hub:
        sealer = hub.store.sealer
        db = connect_hub_db(data)
        try:
            out = [sealer.open_op(bytes(r), s, n, bytes(d))
                   for r, s, n, d in db.execute("SELECT rid, stamp, node, data FROM ops")]
            out += [sealer.open(at_rest.quarantine_ad(i), bytes(d))
                    for i, d in db.execute("SELECT id, data FROM quarantine")]
            for dev, h, p in db.execute("SELECT device_id, hash, payload FROM held_batches"):
                out += sync.unpack(sealer.open(at_rest.held_ad(dev, bytes(h)), bytes(p)))
            out += [sealer.open_value(current.value_ad(bytes(r), k, f), bytes(v))
                    for r, k, f, v in db.execute("SELECT rid, kind, field, value"
                                                 " FROM record_fields")]
            out += [bytes(v) for row in db.execute("SELECT detail FROM log")
                    for v in (str(row[0]).encode(),)]
        finally:
            db.close()
        for path in (data / DOCUMENTS_DIR).rglob("*"):
            if path.is_file():
                out.append(sealer.open(path.name.encode(), path.read_bytes()))
        return out


def assert_nothing_of(data: Path, needles: list[bytes]) -> None:
    """No file holds a needle as it is, nor any value opened with the hub's keys."""
    assert_nothing_plain(data, needles)
    for value in opened_values(data):
        for needle in needles:
            assert needle not in value, f"{needle[:40]!r} in a sealed value"


def test_erasure_on_the_hub_leaves_nothing_of_the_patient_and_replicas_converge(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], hub_backend: str) -> None:
    scan = content(90_000, seed=11)
    other_scan = bytes(reversed(content(40_000, seed=12)))  # no marker in common
    with served_hub(tmp_path) as (hub, url):
        a, b = Kiosk(tmp_path, "a", hub, "A"), Kiosk(tmp_path, "b", hub, "B")
        door = Kiosk(tmp_path, "d", hub, "D", role="door")
        try:
            r = a.store.checkin(name=NAME, passport=PASSPORT, reason="tremor")
            pid = r.patient_id
            a.store.put("patient", pid, {"address": ADDRESS})
            a.store.put("prescription", values={"subject": pid, "medication": MEDICATION})
            (tmp_path / "scan.png").write_bytes(scan)
            doc = attach(a.store, tmp_path / "scan.png", patient=pid, title="Scan")
            o = b.store.checkin(name=OTHER, passport="QX5550123")
            (tmp_path / "other.png").write_bytes(other_scan)
            other_doc = attach(b.store, tmp_path / "other.png", patient=o.patient_id)
            for kiosk in (a, b, a, b, door):
                kiosk.sync(url)
            # two kiosks rename the patient at once: a conflict held for review
            a.store.put("patient", pid, {"name": "Zebulon Q. Farnsworth"})
            b.store.put("patient", pid, {"name": "Zebulon Quixotic"})
            for kiosk in (a, b):
                kiosk.sync(url)
            assert [c["record_id"] for c in hub.conflicts()] == [pid]
            raw = uuid.UUID(pid).bytes
            # a held batch and a quarantined delta carry the patient's values too
            held = sync.pack([Replica(7).put(raw, "patient", 1, {"name": "Held Heliotrope"}),
                              Replica(7).put(uuid.uuid4().bytes, "patient", 2,
                                             {"name": "Held Other"})])
            hub.store.hold_batch(a.device, Batch(9, b"\x01" * 32, held, b"\0" * 64), 1)
            others = sync.pack([Replica(7).put(uuid.uuid4().bytes, "note", 3, {"text": "x"})])
            for seq, payload in ((10, others), (11, sync.pack([]))):  # nothing of theirs
                hub.store.hold_batch(a.device, Batch(seq, bytes([seq]) * 32, payload,
                                                     b"\0" * 64), 1)
            bad = encode(Delta(raw, PATIENT.number, 7, 5, set={
                PATIENT.field("address").number: "Quarantined Quennell"}))
            hub.store.commit_batch("0000beef", 1, b"\x02" * 32, [],
                                   [("clock-ahead", "test", bad)], 1, [0])
            assert hub.document(doc.record_id) == scan
            # b has not heard: it writes to the patient after the erasure
            late = b.store.put("prescription", values={"subject": pid, "medication": LATE})

            code, out = run(capsys, "hub", "erase", "--data", hub.data, "--passport",
                            PASSPORT.lower(), "--by", "dr.amina")
            assert code == 0, out
            receipt = out.splitlines()[-1].strip()
            assert receipt.startswith(f"haven hub erase {pid} --by dr.amina --reason "
                                      f"patient-request --data {hub.data}  # erased ")
            eid = str(uuid.UUID(bytes=erasure_record_id(raw)))
            assert NAME not in out and eid in out
            # the hub's log: an erasure, who and when and which erasure record; not what
            logged = [e for e in hub.store.events(50) if e["code"] == "erasure"]
            assert len(logged) == 1 and eid in logged[0]["detail"]
            assert "dr.amina" in logged[0]["detail"] and pid not in logged[0]["detail"]
            needles = [n.encode() for n in NEEDLES if n not in (LATE, "Lamotrigine")]
            needles += [scan[:20], *windows(scan)]
            assert_nothing_of(hub.data, needles)  # at once, before any pass or sync
            for kiosk in (b, a, b, a, door):
                kiosk.sync(url)

            dump = hub.dump()
            records = {rec["id"]: rec for rec in json.loads(dump)["records"]}
            assert NAME.encode() not in dump and b"Zebulon" not in dump
            code, out = run(capsys, "review", "list", "--data", hub.data)
            assert code == 0 and out.startswith("0 conflicts"), out  # nothing left to review
            for rid in (pid, r.record_id, doc.record_id, late):
                assert records[rid]["deleted"] and records[rid]["fields"] == {}, rid
            assert records[str(uuid.UUID(bytes=erasure_record_id(raw)))]["fields"][
                "requester"] == "dr.amina"
            # the late write reached the hub as its husk and was deleted again
            assert [w["fields"] for w in hub.history(late)] == [{}, {}]
            assert hub.history(late)[-1]["by"] == "hub"
            # the other patient is untouched
            assert OTHER.encode() in dump and records[o.patient_id]["deleted"] is False
            assert hub.document(other_doc.record_id) == other_scan
            assert hub.document(doc.record_id) is None
            # replicas agree: dumps, and each kiosk's scope sum is the hub's
            assert a.store.dump() == b.store.dump() == dump
            for kiosk in (a, b, door):
                assert kiosk.store.view(eid) is not None  # a door kiosk's too
                scope = scope_of(kiosk.store.data)
                assert scope is not None
                sums = hub.store.scope_sums(scope, kiosk.state.cursor, kiosk.store.node, (2,))
                assert kiosk.store.scope_checksum(scope) == sums[2]
            assert [q["code"] for q in hub.store.quarantined()] == ["clock-ahead"]
            # of the held batches, the one that held the patient's write was rewritten
            assert [b["payload"] for b in hub.store.held_batches()][1:] == [
                others, sync.pack([])]
            assert [e["code"] for e in hub.store.events(50)].count("held-husked") == 1
            needles += [LATE.encode(), b"Lamotrigine"]
            hub.store.checkpoint()
            assert_nothing_of(hub.data, needles)
            assert OTHER.encode() in b"".join(opened_values(hub.data))

            code, out = run(capsys, "hub", "erase", "--data", hub.data, pid, "--by", "x")
            assert code == 0 and "erased already" in out, out
            if hub_backend != "sqlite":  # backups are PostgreSQL's own there
                return
            # a backup made after the erasure, restored with its key backup, holds nothing
            code, out = run(capsys, "hub", "backup", "--data", hub.data, "--to",
                            tmp_path / "backup")
            assert code == 0, out
            safe = key_backup(capsys, hub.data, tmp_path / "hub.keys")
        finally:
            for kiosk in (a, b, door):
                kiosk.close()
    new = tmp_path / "restored"
    code, out = run(capsys, "hub", "restore", "--from", tmp_path / "backup", "--data", new)
    assert code == 0, out
    code, out = run(capsys, "hub", "keys", "restore", "--from", tmp_path / "hub.keys",
                    "--data", new, "--recovery-key-file", safe)
    assert code == 0, out
    assert_nothing_of(new, needles)
    with Hub(new) as restored:
        assert restored.dump() == dump


def test_an_unknown_patient_is_a_clear_error_and_nothing_is_written(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "hub"
    assert haven(["hub", "init", "--data", str(data)]) == 0
    with Hub(data) as hub:
        before = (hub.store.count(), hub.store.events(5))
    for argv, said in (([str(uuid.uuid4())], "holds nothing of patient"),
                       (["--passport", "ZZ0000001"], "holds nothing of patient"),
                       (["--code", "0020-001T"], "holds nothing of patient"),
                       (["not-a-uuid"], "not a patient id"), (["--passport", "x"], "--passport"),
                       (["--code", "0000-0000"], "--code"), (["--code", "0020-0011"], "--code"),
                       ([], "required"), ([str(uuid.uuid4()), "--code", "0020-001T"],
                                          "not allowed")):
        code, out = run(capsys, "hub", "erase", "--data", data, *argv, "--by", "dr.amina")
        assert code == 2 and said in out, (argv, out)
        assert "Traceback" not in out, argv
    code, out = run(capsys, "hub", "erase", "--data", data, str(uuid.uuid4()), "--by", " ")
    assert code == 2 and "--by" in out
    with Hub(data) as hub:
        assert (hub.store.count(), hub.store.events(5)) == before
        with hub.store.writing() as (db, _):
            assert husking.erased(db) == set()
        assert erasure.patient_of(hub.fleet, None, PASSPORT, None) == patient_id(
            hub.fleet_key, PASSPORT).bytes


def test_every_role_gets_every_erasure_and_a_late_write_is_husked_as_it_commits(
        tmp_path: Path) -> None:
    init_hub(tmp_path / "hub")
    now = wall_ms()
    with Hub(tmp_path / "hub") as hub:
        a = Kiosk(tmp_path, "a", hub, "A")
        door = Kiosk(tmp_path, "d", hub, "D", role="door")
        station = Kiosk(tmp_path, "c", hub, "C", role="clinician")
        try:
            writer = Replica(a.store.node)
            push = Session(hub, a, now).push
            north, deltas = visit(writer, now, "North", NAME, "1970")
            south, more = visit(writer, now, "South", OTHER, "1981")
            kept, rest = visit(writer, now, "North", "Keziah Kept", "1990")
            push(deltas + more + rest)
            hub.write_verifiers(now)  # the door kiosk's verifiers of North's patients
            done = hub.erase(north, "dr.amina", "patient-request", now)
            assert not done.already and done.deleted == 6  # five records and a verifier
            assert hub.erase(south, "dr.amina", "patient-request", now).deleted == 5
            erasures = {erasure_record_id(north), erasure_record_id(south)}
            for kiosk in (door, station):
                session = Session(hub, kiosk, now)
                pulled = decoded(session.pull(0)[0])
                pages, last = session.pull(0, snapshot=True)
                got = decoded(pages)
                # both erasures, the South one too: every role holds every erasure
                assert {d.record_id for d in pulled if d.type == 10} == erasures
                assert {d.record_id for d in got if d.type == 10} == erasures
                assert not [d for d in got if d.set and d.type != 10 and d.record_id in
                            hub_records_of(hub, {north, south})]
                heads = heads_of((d.record_id, d.stamp, d.node, d.is_delete,
                                  [(c.stamp, c.node) for c in d.ctx]) for d in got)
                assert scope_checksum(heads) == last.get("sum2")
                assert kept in {d.record_id for d in got} or kiosk is door
            # a kiosk that had not heard: its write is husked as its batch commits
            late = uuid.uuid4().bytes
            ack = push([writer.put(late, "prescription", now, {
                "subject": str(uuid.UUID(bytes=north)), "medication": LATE})])
            assert ack.get("quarantined") is None
            assert [decode(op.data).set for op in hub.store.record_ops(late)] == [{}]
            hub.after_batch(now)  # and deleted again by the pass after it
            view = verifiers.view_of(hub.store, late)
            assert view is not None and view.deleted
            hub.after_batch(now)  # nothing new: nothing written
            assert len(hub.store.record_ops(late)) == 2
            # an erasure from a kiosk is quarantined: only the hub writes one
            forged = writer.put(erasure_record_id(kept), "erasure", now, {
                "subject": str(uuid.UUID(bytes=kept)), "requester": "kiosk"})
            assert push([forged]).get("quarantined") == [0]
            assert [q["code"] for q in hub.store.quarantined()] == ["hub-only"]
            with pytest.raises(UsageError, match="only the hub writes"):  # and stays there
                quarantine.release(hub.store, str(hub.store.quarantined()[0]["id"]))
            with hub.store.writing() as (db, _):
                assert husking.erased(db) == {north, south}
            assert json.loads(hub.dump())  # and the kept patient is whole
            view = verifiers.view_of(hub.store, kept)
            assert view is not None and not view.deleted and view.fields
        finally:
            for k in (a, door, station):
                k.close()


def hub_records_of(hub: Hub, patients: set[bytes]) -> set[bytes]:
    with hub.store.writing() as (db, _):
        return husking.records_of(db, patients)


# The vectors (protocol/vectors/erasure.json) --------------------------------------------

def test_the_erasure_vectors() -> None:
    v = json.loads((Path(__file__).parent.parent / "protocol/vectors/erasure.json").read_text())
    for case in v["record_ids"]:
        pid = bytes.fromhex(case["patient"])
        assert erasure_record_id(pid).hex() == case["erasure_record_id"]
        assert successor_id(pid).hex() == case["successor_id"]
    for bad in v["bad_patients"]:
        for derive in (erasure_record_id, successor_id):
            with pytest.raises(ValueError):
                derive(bytes.fromhex(bad["patient"]))
    put = v["erasure_put"]
    delta = decode(bytes.fromhex(put["delta"]))
    assert (delta.type, delta.record_id.hex(), delta.node, delta.stamp) == (
        ERASURE.number, put["record_id"], put["node"], put["stamp"])
    assert delta.record_id == erasure_record_id(bytes.fromhex(put["patient"]))
    assert {ERASURE.by_number[k].name: v for k, v in delta.set.items()} == {
        k: edn(x) for k, x in put["fields"].items()}
    for case in v["husks"]:
        got = husk(decode(bytes.fromhex(case["delta"])))
        assert encode(got).hex() == case["husk"], case["about"]
        assert not (got.set or got.add or got.remove or got.extra)
    erased = {bytes.fromhex(v["erased"])}
    for case in v["covers"]:
        fields = {int(k): edn(x) for k, x in case["fields"].items()}
        assert covers(erased, case["type"], bytes.fromhex(case["rid"]), fields) is \
            case["covered"], case["about"]


@pytest.mark.sqlite_only  # haven hub backup: PostgreSQL's hubs use its own tools
def test_a_backup_from_before_the_erasure_restored_is_erased_again_by_the_receipt(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data, saved = tmp_path / "hub", tmp_path / "backup"
    needles = [n.encode() for n in (NAME, "Zebulon", PASSPORT, MEDICATION)]
    init_hub(data)
    with serving(data) as (hub, url):
        a, b = Kiosk(tmp_path, "a", hub, "A"), Kiosk(tmp_path, "b", hub, "B")
    try:
        with serving(data) as (hub, url):
            pid = a.store.checkin(name=NAME, passport=PASSPORT).patient_id
            a.store.put("prescription", values={"subject": pid, "medication": MEDICATION})
            b.store.checkin(name=OTHER, passport="QX5550123")
            for kiosk in (a, b, a):
                kiosk.sync(url)
            code, out = run(capsys, "hub", "backup", "--data", data, "--to", saved)
            assert code == 0, out
            safe = key_backup(capsys, data, tmp_path / "hub.keys")
            code, out = run(capsys, "hub", "erase", "--data", data, "--passport", PASSPORT,
                            "--by", "dr.amina")
            assert code == 0, out
            receipt = out.splitlines()[-1].strip()
            for kiosk in (a, b):
                kiosk.sync(url)
        shutil.rmtree(data)  # the machine is lost; the backup is older than the erasure
        assert run(capsys, "hub", "restore", "--from", saved, "--data", data)[0] == 0
        assert run(capsys, "hub", "keys", "restore", "--from", tmp_path / "hub.keys",
                   "--data", data, "--recovery-key-file", safe)[0] == 0
        assert NAME.encode() in b"".join(opened_values(data))  # the patient is back
        argv = shlex.split(receipt, comments=True)
        assert argv[:3] == ["haven", "hub", "erase"]
        code, out = run(capsys, *argv[1:])  # the receipt, run as printed
        assert code == 0 and "erased:" in out, out
        assert_nothing_of(data, needles)
        with serving(data) as (hub, url):
            for kiosk in (a, b, a, b):
                kiosk.sync(url)
            assert a.store.dump() == b.store.dump() == hub.dump()
            for kiosk in (a, b):
                scope = scope_of(kiosk.store.data)
                assert scope is not None
                sums = hub.store.scope_sums(scope, kiosk.state.cursor, kiosk.store.node, (2,))
                assert kiosk.store.scope_checksum(scope) == sums[2]
                assert kiosk.sync(url).rebased == 0
        assert_nothing_of(data, needles)
    finally:
        a.close()
        b.close()


def test_an_erased_patient_checked_in_before_the_fleet_key_is_registered_anew(
        tmp_path: Path) -> None:
    """A kiosk provisioned offline seals the passport to the hub; the hub completes the
    check-in to the successor of the erased id, as a kiosk that knows the erasure does."""
    init_hub(tmp_path / "hub")
    now = wall_ms()
    with Hub(tmp_path / "hub") as hub:
        writer = Replica(0x77)
        pid = patient_id(hub.fleet_key, PASSPORT).bytes
        hub.store.add_local(*ops_of([writer.put(pid, "patient", now, {"name": NAME})]))
        assert not hub.erase(pid, "dr.amina", "patient-request", now).already
        checkin = uuid.uuid4().bytes
        sealed = seal_identity(checkin, "passport", PASSPORT, hub.x_public)
        hub.store.add_local(*ops_of([writer.put(checkin, "checkin", now + 1, {
            "subject": str(uuid.uuid4()), "sealedIdentity": sealed, "location": "North",
            "claimName": "Zebulon Again"})]))
        done = hub.promote_claims(now + 2)
        after = str(uuid.UUID(bytes=successor_id(pid)))
        assert [d.get("patient") for d in done if "completed" in d] == [after]
        view = verifiers.view_of(hub.store, checkin)
        assert view is not None and not view.deleted
        assert view.fields[1] == successor_id(pid)
        erased = verifiers.view_of(hub.store, pid)
        assert erased is not None and erased.deleted and not erased.fields


def ops_of(deltas: list[bytes]) -> list[Op]:
    return [Op(d.record_id, d.stamp, d.node, data) for data in deltas for d in [decode(data)]]


def rotated_patient(hub: Hub, now: int, rotations: int, **fields: str) -> bytes:
    """A patient (``PASSPORT``) with a prescription, then the fleet key rotated and the
    ids migrated ``rotations`` times; returns the patient's first id."""
    writer = Replica(0x77)
    old = patient_id(hub.fleet_key, PASSPORT).bytes
    hub.store.add_local(*ops_of([
        writer.put(old, "patient", now, {"name": NAME, **fields}),
        writer.put(uuid.uuid4().bytes, "prescription", now, {
            "subject": str(uuid.UUID(bytes=old)), "medication": MEDICATION})]))
    for _ in range(rotations):
        hub.rotate_fleet(now)
        for _ in range(100):
            if not hub.fleet_slice():
                break
    return old


def test_an_erasure_after_a_fleet_key_rotation_erases_the_former_id_too(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The migration moved the patient to a new id and deleted the old one, whose writes
    still hold what it had: erasing by passport erases both."""
    init_hub(tmp_path / "hub")
    with Hub(tmp_path / "hub") as hub:
        old = rotated_patient(hub, wall_ms(), 1, birthDate="1970-03-04")
        new = hub.fleet.patient_id(PASSPORT).bytes
        moved = verifiers.view_of(hub.store, new)
        assert new != old and moved is not None and NAME in moved.fields.values()
        assert erasure.former_ids(hub, new) == {old}
    code, out = run(capsys, "hub", "erase", "--data", tmp_path / "hub", "--passport",
                    PASSPORT, "--by", "dr.amina")
    assert code == 0 and str(uuid.UUID(bytes=new)) in out, out
    assert_nothing_of(tmp_path / "hub", [NAME.encode(), MEDICATION.encode(), b"1970-03-04"])
    with Hub(tmp_path / "hub") as hub, hub.store.writing() as (db, _):
        assert husking.erased(db) == {old, new}


def test_a_patient_erased_before_a_rotation_comes_back_under_one_id_at_every_generation(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Erased, then the fleet key rotated: the patient comes back at a kiosk of the new
    generation and at one still on the first. Both register them under the successor of
    the erased id carried to the new generation (the id the hub remaps the first's write
    to), as new, with their name; erasing by passport again erases that patient."""
    with served_hub(tmp_path) as (hub, url):
        a, b = Kiosk(tmp_path, "a", hub, "A"), Kiosk(tmp_path, "b", hub, "B")
        try:
            a.store.checkin(name=NAME, passport=PASSPORT, birth_year=1971)
            a.sync(url)
            hub.erase(patient_id(hub.fleet_key, PASSPORT).bytes, "dr.amina", "patient-request")
            b.sync(url)  # b heard of the erasure, then stays on the first key
            hub.rotate_fleet(wall_ms())
            a.sync(url)
            back = a.store.checkin(name="Zebulon Again", passport=PASSPORT, birth_year=1971)
            late = b.store.checkin(name="Zebulon Again", passport=PASSPORT, birth_year=1971)
            assert back.identity == late.identity == "new"
            for kiosk in (a, b, a):
                kiosk.sync(url)
            patients = [r for r in json.loads(hub.dump())["records"]
                        if r["type"] == "patient" and not r["deleted"]]
            assert [p["id"] for p in patients] == [back.patient_id], patients
            assert patients[0]["fields"]["name"] == "Zebulon Again"
            code, out = run(capsys, "hub", "erase", "--data", hub.data, "--passport",
                            PASSPORT, "--by", "dr.amina")
            assert code == 0 and back.patient_id in out, out
            for kiosk in (a, b, a):
                kiosk.sync(url)
            assert b"Zebulon" not in hub.dump()
            assert a.store.dump() == b.store.dump() == hub.dump()
        finally:
            a.close()
            b.close()


def test_a_record_that_is_not_a_patient_is_refused_and_nothing_is_written(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An id copied from the wrong line of haven hub dump (a check-in's, a
    prescription's) named no patient, yet it was "erased": the record deleted for good
    and an erasure written for it."""
    init_hub(tmp_path / "hub")
    now = wall_ms()
    with Hub(tmp_path / "hub") as hub:
        writer, pid, checkin, rx = Replica(0x77), *(uuid.uuid4().bytes for _ in range(3))
        hub.store.add_local(*ops_of([
            writer.put(pid, "patient", now, {"name": NAME}),
            writer.put(checkin, "checkin", now, {"subject": str(uuid.UUID(bytes=pid))}),
            writer.put(rx, "prescription", now, {"subject": str(uuid.UUID(bytes=pid)),
                                                 "medication": MEDICATION})]))
        before = hub.dump()
    for rid, kind in ((checkin, "checkin"), (rx, "prescription")):
        code, out = run(capsys, "hub", "erase", "--data", tmp_path / "hub",
                        str(uuid.UUID(bytes=rid)), "--by", "dr.amina")
        assert code == 2 and f"a {kind}, not a patient" in out, out
    with Hub(tmp_path / "hub") as hub:
        assert hub.dump() == before


def test_a_kiosks_write_to_an_erasure_record_is_quarantined_before_or_after_it(
        tmp_path: Path) -> None:
    """A kiosk may write any record id, an erasure record's too (a hash of the patient
    id any kiosk holds), under another type. After the erasure, its facts turned the
    erasure toward another patient: the erased one's values came back, the other's
    writes were husked. Before it, erase failed half-way (deleted, never erased)."""
    init_hub(tmp_path / "hub")
    now = wall_ms()
    with Hub(tmp_path / "hub") as hub:
        a = Kiosk(tmp_path, "a", hub, "A")
        try:
            writer, push = Replica(a.store.node), Session(hub, a, now).push
            erased, other, squatted = (uuid.uuid4().bytes for _ in range(3))
            push([writer.put(p, "patient", now, {"name": n}) for p, n in (
                (erased, NAME), (other, OTHER), (squatted, "Squatted Sam"))])
            hub.erase(erased, "dr.amina", "patient-request", now + 1)
            hijack = writer.put(erasure_record_id(erased), "note", now + 2, {
                "subject": str(uuid.UUID(bytes=other)), "text": "hijack"})
            assert push([hijack]).get("quarantined") == [0]
            assert [q["code"] for q in hub.store.quarantined()] == ["hub-only"]
            with pytest.raises(UsageError, match="only the hub writes"):
                quarantine.release(hub.store, str(hub.store.quarantined()[0]["id"]))
            push([writer.put(erased, "patient", now + 3, {"name": "Back Again"}),
                  writer.put(other, "patient", now + 3, {"name": "Ottoline Kept"})])
            hub.after_batch(now + 4)
            dump = hub.dump()
            assert b"Back Again" not in dump and b"Ottoline Kept" in dump
            # written before the erasure: erased all the same, the squatter overtaken
            eid = erasure_record_id(squatted)
            push([writer.put(eid, "note", now + 5, {
                "subject": str(uuid.UUID(bytes=squatted)), "text": "squat"})])
            done = hub.erase(squatted, "dr.amina", "patient-request", now + 6)
            assert not done.already and done.by == "dr.amina"
            with hub.store.writing() as (db, _):
                assert husking.erased(db) == {erased, squatted}
            view = verifiers.view_of(hub.store, eid)
            assert view is not None and view.type == ERASURE.number and not view.conflicts
            assert b"Squatted Sam" not in hub.dump() and b"squat" not in hub.dump()
        finally:
            a.close()


def test_an_id_from_before_a_fleet_key_rotation_erases_the_patient_it_became(
        tmp_path: Path) -> None:
    """An id from a dump or a receipt older than a rotation names the patient the
    migration moved: erasing it said "0 records deleted" and left the patient whole."""
    init_hub(tmp_path / "hub")
    now = wall_ms()
    with Hub(tmp_path / "hub") as hub:
        old = rotated_patient(hub, now, 2)
        new = hub.fleet.patient_id(PASSPORT).bytes
        done = hub.erase(old, "dr.amina", "patient-request", now + 1)
        assert done.patient == str(uuid.UUID(bytes=new)) and done.deleted == 2
        # the receipt names the first generation's id: a hub restored from a backup
        # older than the rotation holds that one, and this hub carries it forward
        assert done.earliest == str(uuid.UUID(bytes=old))
        assert done.line.startswith(f"haven hub erase {uuid.UUID(bytes=old)} --by dr.amina")
        again = hub.erase(uuid.UUID(done.earliest).bytes, "dr.amina", "patient-request",
                          now + 2)
        assert again.already and again.patient == done.patient
        assert NAME.encode() not in hub.dump() and MEDICATION.encode() not in hub.dump()
        with hub.store.writing() as (db, _):
            assert {old, new} <= husking.erased(db)


def test_an_erasure_during_a_fleet_key_migration_erases_the_id_the_patient_is_moving_to(
        tmp_path: Path) -> None:
    """A kiosk that took the new key before the migration reached the patient checks
    them in under the new id: erased under the old one only, that check-in (the name
    typed on it) stayed on the hub and the kiosks."""
    init_hub(tmp_path / "hub")
    now = wall_ms()
    with Hub(tmp_path / "hub") as hub:
        a = Kiosk(tmp_path, "a", hub, "A")
        try:
            old = rotated_patient(hub, now, 0)
            hub.rotate_fleet(now)  # its migration not run yet
            new = hub.fleet.patient_id(PASSPORT).bytes
            assert not hub.erase(old, "dr.amina", "patient-request", now + 1).already
            checkin = uuid.uuid4().bytes
            Session(hub, a, now).push([Replica(a.store.node).put(checkin, "checkin", now + 2, {
                "subject": str(uuid.UUID(bytes=new)), "claimName": NAME})])
            assert [decode(op.data).set for op in hub.store.record_ops(checkin)] == [{}]
            with hub.store.writing() as (db, _):
                assert husking.erased(db) == {old, new}
        finally:
            a.close()
