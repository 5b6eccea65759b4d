"""A patient's erasure on the kiosk (``device.store.erasure``).

After a kiosk merges a patient's erasure record, nothing of the patient opens
anywhere in its files: every sealed value of every table is opened with the
store's own cipher and searched, and the raw files (WAL and free pages too)
are searched for the ciphertexts the patient's values had. Other patients are
untouched, later writes of the patient's records are husked, the outbox still
sends every dot, and a patient who comes back is registered anew.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from device.store import BadRequest, Store, erasure, init_store
from device.store.materialise import op_label
from device.store.pending import PendingCheckins
from device.sync import document_store
from device.sync.document_store import DocumentStore, attach
from device.sync.state import SEAL_LABEL, scope_of
from device.ui import staff
from protocol import strict_cbor
from protocol.crdt.clock import Dot, pack
from protocol.crdt.delta import Delta, decode, encode
from protocol.crdt.erasure import erasure_record_id, successor_id
from protocol.crdt.record import RecordView
from protocol.crdt.schema import CHECKIN, ERASURE, NOTE, PATIENT, TYPES
from protocol.crdt.writes import build_put
from protocol.manifest import Manifest
from protocol.sync.scope import Scope, heads_of, scope_checksum

from .test_documents import content
from .test_sync_helpers import Kiosk, served_hub

HUB = 0x0000_7E57  #: the hub's node, for the hub's writes made here
PEER = 0x0000_5150  #: another kiosk's node
SITE = "North"
#: The erased patient's values, each distinctive.
SECRETS = ["Zebulon Quixotic-Farnsworth", "QX7731904", "Xylophage bite", "Periwinkle Mansions",
           "Xanthoxylum cordifolium 40mg", "Ozymandias wrote this", "Heliotrope Vance",
           "Brimstone Yarrow tincture"]
#: The other patient's.
KEPT = ["Ottoline Brackenbury", "Brackenfern syrup"]


def now_ms() -> int:
    return int(time.time() * 1000)


def erasure_put(pid: bytes, stamp: int, rid: bytes | None = None) -> bytes:
    """The hub's put of ``pid``'s erasure record (``rid``: another id, a forged one)."""
    return encode(build_put(None, rid or erasure_record_id(pid), ERASURE, HUB, stamp, {
        "subject": str(uuid.UUID(bytes=pid)), "requester": "dr.amina",
        "reason": "patient-request"}))


def put(rid: bytes, type_name: str, node: int, stamp: int, values: dict[str, object],
        ctx: tuple[Dot, ...] = ()) -> bytes:
    spec = next(t for t in TYPES.values() if t.name == type_name)
    delta = build_put(None, rid, spec, node, stamp, values)
    return encode(Delta(delta.record_id, delta.type, node, stamp, set=delta.set, ctx=ctx))


def opened(store: Store) -> bytes:
    """Every sealed value the kiosk's files hold, opened with its cipher, end to end:
    store.db's tables, the batches sync.db keeps, documents.db's manifests and chunks."""
    cipher, db = store.cipher, store.reader
    out = []
    for rid, field, stamp, node, sealed in db.execute(
            "SELECT rid, field, stamp, node, sealed FROM field_values"):
        out.append(cipher.open_field(rid, field, stamp, node, sealed))
    for rid, stamp, node, sealed in db.execute("SELECT rid, stamp, node, sealed FROM ops"):
        out.append(cipher.open_blob(op_label(rid, Dot(stamp, node)), sealed))
    for rid, extra in db.execute("SELECT rid, extra FROM records WHERE extra IS NOT NULL"):
        out.append(cipher.open_blob(b"rec" + rid, extra))
    for (sealed,) in db.execute("SELECT sealed FROM quarantine"):
        out.append(cipher.open_blob(b"quarantine", sealed))
    out += [str(v).encode() for (v,) in db.execute("SELECT value FROM meta")]
    out += [cipher.open_blob(SEAL_LABEL, sealed) for (_, sealed) in sent_batches(store)]
    if (store.data / document_store.DB_NAME).exists():
        docs = DocumentStore(store.data, store.cipher)
        try:
            for (rid,) in docs.db.execute("SELECT rid FROM documents"):
                out.append(docs.manifest(rid).hashes)
            for name, sealed in docs.db.execute("SELECT name, sealed FROM chunks"):
                out.append(cipher.open_blob(document_store._chunk_label(name), sealed))
        finally:
            docs.close()
    return b"\x00".join(out)


def ciphertexts(store: Store) -> list[tuple[bytes | None, bytes]]:
    """(record id, a piece past its random nonce) of every sealed value held, and of each
    sealed write that carries one: none of an erased patient's may remain in any file."""
    db = store.reader
    out: list[tuple[bytes | None, bytes]] = []
    for table, col in (("field_values", "sealed"), ("records", "extra")):
        out += [(bytes(rid), bytes(s)) for rid, s in db.execute(
            f"SELECT rid, {col} FROM {table}") if s is not None]
    for rid, stamp, node, sealed in db.execute("SELECT rid, stamp, node, sealed FROM ops"):
        delta = decode(store.cipher.open_blob(op_label(rid, Dot(stamp, node)), sealed))
        if delta.set or delta.add or delta.remove:
            out.append((bytes(rid), bytes(sealed)))
    out += [(None, bytes(s)) for (s,) in db.execute("SELECT sealed FROM quarantine")]
    out += sent_batches(store)
    return [(rid, s[i:i + 32]) for rid, s in out for i in range(12, len(s) - 31, 256)]


def chunks(store: Store) -> dict[bytes, bytes]:
    """documents.db's sealed chunks by name."""
    docs = DocumentStore(store.data, store.cipher)
    try:
        return {bytes(n): bytes(s) for n, s in docs.db.execute("SELECT name, sealed FROM chunks")}
    finally:
        docs.close()


def sent_batches(store: Store) -> list[tuple[bytes | None, bytes]]:
    """The sealed batches ``sync.db`` keeps until the hub acknowledges them (and a while
    after)."""
    if not (store.data / "sync.db").exists():
        return []
    state = sqlite3.connect(store.data / "sync.db")
    try:
        return [(None, bytes(s)) for (s,) in state.execute(
            "SELECT sealed FROM batches WHERE sealed IS NOT NULL")]
    finally:
        state.close()


def erased_pieces(store: Store, pieces: list[tuple[bytes | None, bytes]]) -> list[bytes]:
    """Of ``pieces``, those of records now erased (and the quarantine's)."""
    return [p for rid, p in pieces if rid is None or store.erased.holds(rid)]


def raw_files(data: Path) -> Iterator[tuple[Path, bytes]]:
    for path in sorted(data.rglob("*")):
        if path.is_file():
            yield path, path.read_bytes()


def viewed(store: Store, rid: str) -> RecordView:
    view = store.view(rid)
    assert view is not None
    return view


def held(store: Store) -> set[bytes]:
    return {bytes(r) for (r,) in store.reader.execute("SELECT rid FROM records")}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = init_store(tmp_path / "kiosk", SITE, "A")
    try:
        yield s
    finally:
        s.close()


def fill(store: Store, tmp_path: Path) -> tuple[bytes, dict[str, str]]:
    """Patient P (every kind of value the kiosk keeps) and patient O; P's id and O's ids."""
    now = now_ms()
    r = store.checkin(name=SECRETS[0], passport=SECRETS[1], reason=SECRETS[2], birth_year=1971)
    pid = uuid.UUID(r.patient_id).bytes
    store.put("patient", r.patient_id, {"address": SECRETS[3]})
    store.put("prescription", values={"subject": r.patient_id, "medication": SECRETS[4]})
    gone = store.put("prescription", values={"subject": r.patient_id, "medication": SECRETS[7]})
    store.delete(gone)  # deleted: its subject only in its write log now
    (tmp_path / "p.png").write_bytes(content(90_000, seed=3))
    attach(store, tmp_path / "p.png", patient=r.patient_id, title="Scan of P")
    # another kiosk's note (kept with its body) and a hub's write (its dot only)
    store.merge([put(uuid.uuid4().bytes, "note", PEER, pack(now), {
        "subject": r.patient_id, "text": SECRETS[5]})])
    store.merge([put(pid, "patient", PEER, store.hlc.now(now), {"telecom": "+44 7700 900123"},
                     ctx=tuple(viewed(store, r.patient_id).heads))], cursor=1)
    # quarantined: a stamp a day ahead of the clock
    assert store.merge([put(pid, "patient", PEER, pack(now + 86_400_000),
                            {"name": SECRETS[6]})]).quarantined == 1
    o = store.checkin(name=KEPT[0], passport="QX5550123")
    store.put("prescription", values={"subject": o.patient_id, "medication": KEPT[1]})
    (tmp_path / "o.png").write_bytes(content(70_000, seed=4))
    doc = attach(store, tmp_path / "o.png", patient=o.patient_id, title="Scan of O")
    return pid, {"patient": o.patient_id, "document": doc.record_id}


def test_an_erasure_purges_the_patient_from_every_file_and_nothing_else(
        store: Store, tmp_path: Path) -> None:
    pid, other = fill(store, tmp_path)
    plain = opened(store)
    assert [s for s in SECRETS + KEPT if s.encode() not in plain] == [SECRETS[1]]  # a passport
    # is never kept, only the id made from it
    before_held = held(store)
    pieces = ciphertexts(store)
    chunks_before = chunks(store)
    sent = [e.seq for e in store.outbox_batch(now_ms=1 << 60, max_bytes=1 << 30)]
    assert len(sent) >= 8

    report = store.merge([erasure_put(pid, pack(now_ms()))], cursor=2)
    assert report.applied == 1
    old = erased_pieces(store, pieces)
    assert len(old) >= 10 and len(store.erased.records) == 6  # patient, check-in,
    # two prescriptions (one deleted), a document, a note
    left = chunks(store)
    assert left and set(left) < set(chunks_before)  # the other patient's scan stays
    old += [sealed[i:i + 32] for name, sealed in chunks_before.items() if name not in left
            for i in range(12, len(sealed) - 31, 4096)]

    plain = opened(store)
    for secret in SECRETS:
        assert secret.encode() not in plain, secret
    for kept in KEPT:
        assert kept.encode() in plain, kept
    # the log started over after the purge (the merge's last commit may follow it)
    assert (store.data / "store.db-wal").stat().st_size <= 32 + 4 * (24 + 1024)
    for path, raw in raw_files(store.data):
        for piece in old:
            assert piece not in raw, path.name
        for secret in SECRETS:
            assert secret.encode() not in raw, (secret, path.name)
    # P's records stay, with their dots and heads, and no value
    view = store.view(str(uuid.UUID(bytes=pid)))
    assert view is not None and view.fields == {} and view.sets == {}
    assert held(store) == before_held | {erasure_record_id(pid)}
    # the outbox sends every dot it did, the patient's as husks
    again = store.outbox_batch(now_ms=1 << 60, max_bytes=1 << 30)
    assert [e.seq for e in again] == sent
    for entry in again:
        delta = decode(entry.data)
        if delta.record_id in store.erased.records:
            assert not (delta.set or delta.add or delta.remove), delta
    # the quarantined delta is a husk now; the other patient's document reads whole
    (qsealed,) = store.reader.execute("SELECT sealed FROM quarantine").fetchone()
    _, data = strict_cbor.loads(store.cipher.open_blob(b"quarantine", qsealed))
    assert decode(data).set == {}
    docs = DocumentStore(store.data, store.cipher)
    try:
        assert docs.held() == [uuid.UUID(other["document"]).bytes]
        manifest = docs.manifest(uuid.UUID(other["document"]).bytes)
        read = docs.reader(manifest)
        assert b"".join(read(o, n) for o, n in _offsets(manifest)) == content(70_000, seed=4)
    finally:
        docs.close()
    assert all(k.encode() in store.dump() for k in KEPT)


def _offsets(manifest: Manifest) -> Iterator[tuple[int, int]]:
    at = 0
    for _, length in manifest.entries():
        yield at, length
        at += length


def test_later_writes_of_the_patient_are_husked_and_local_ones_refused(
        store: Store, tmp_path: Path) -> None:
    r = store.checkin(name=SECRETS[0], passport=SECRETS[1], reason=SECRETS[2])
    pid = uuid.UUID(r.patient_id).bytes
    store.merge([erasure_put(pid, pack(now_ms()))], cursor=1)
    now = now_ms()
    late = [
        # the hub's: a status of P's check-in written elsewhere before the erasure
        (put(uuid.UUID(r.record_id).bytes, "checkin", PEER, pack(now),
             {"status": "finished", "reasonCode": "Lamentation late"}), 2),
        # another kiosk's file: a new note naming P, and a write to it without a subject
        (put(nid := uuid.uuid4().bytes, "note", PEER, pack(now + 1),
             {"subject": r.patient_id, "text": "Lamentation note"}), None),
        (put(nid, "note", PEER, pack(now + 2), {"text": "Lamentation again"}), None),
    ]
    for data, cursor in late:
        assert store.merge([data], cursor=cursor).applied == 1
    assert b"Lamentation" not in opened(store)
    assert nid in store.erased.records
    note = store.view(str(uuid.UUID(bytes=nid)))
    assert note is not None and note.type == NOTE.number and note.fields == {}

    def refused(code: str, fn: object, *args: object, **kw: object) -> None:
        with pytest.raises(BadRequest) as err:
            fn(*args, **kw)  # type: ignore[operator]
        assert err.value.code == code

    refused("erased", store.put, "note", values={"subject": r.patient_id, "text": "x"})
    refused("erased", store.put, "patient", r.patient_id, {"address": "y"})
    refused("erased", store.set_checkin_status, r.record_id, "in-progress")
    refused("erasure-local", store.put, "erasure", values={"subject": r.patient_id})
    refused("erasure-local", store.put, "erasure", str(uuid.UUID(bytes=erasure_record_id(
        uuid.uuid4().bytes))), {"requester": "x"})
    assert b"\"x\"" not in opened(store) and b"y" not in opened(store).split(b"\x00")

    # the patient comes back: a new registration, under the erased id's successor
    back = store.checkin(name="Zebulon Again", passport=SECRETS[1], birth_year=1971)
    assert back.identity == "new"
    assert uuid.UUID(back.patient_id).bytes == successor_id(pid)
    assert viewed(store, back.patient_id).fields[PATIENT.field("name").number] == \
        "Zebulon Again"
    again = store.checkin(name="Zebulon Again", passport=SECRETS[1], birth_year=1971)
    assert (again.patient_id, again.identity) == (back.patient_id, "match")

    # the kiosk remembers across a restart
    store.close()
    with Store(store.data) as reopened:
        assert reopened.erased == store.erased
        assert reopened.merge([put(nid, "note", PEER, pack(now + 3),
                                   {"text": "Lamentation 3"})]).applied == 1
        assert b"Lamentation" not in opened(reopened)


def test_an_erasure_whose_id_is_not_its_subjects_is_quarantined(store: Store) -> None:
    r = store.checkin(name=SECRETS[0], passport=SECRETS[1])
    pid = uuid.UUID(r.patient_id).bytes
    report = store.merge([erasure_put(pid, pack(now_ms()), rid=uuid.uuid4().bytes)], cursor=1)
    assert report.quarantined == 1
    assert store.reader.execute("SELECT code FROM quarantine").fetchall() == [("bad-erasure",)]
    assert store.erased.patients == frozenset()
    assert SECRETS[0].encode() in opened(store)
    # a quarantined delta whose subject is no id at all stays as it is
    misfit = encode(Delta(uuid.uuid4().bytes, CHECKIN.number, PEER, store.hlc.now(now_ms()),
                          set={CHECKIN.field("subject").number: ["not", "an", "id"]}))
    assert store.merge([misfit]).quarantined == 1
    store.merge([erasure_put(pid, store.hlc.now(now_ms()))], cursor=2)
    assert store.erased.patients == {pid}
    assert store.reader.execute("SELECT COUNT(*) FROM quarantine").fetchone()[0] == 2


def test_a_snapshot_from_a_hub_restored_before_the_erasure_brings_nothing_back(
        store: Store) -> None:
    now = now_ms()
    pid, oid = uuid.uuid4().bytes, uuid.uuid4().bytes
    old = [put(pid, "patient", PEER, pack(now), {"name": SECRETS[0]}),
           put(oid, "patient", PEER, pack(now + 1), {"name": KEPT[0]})]
    store.merge(old, cursor=1)
    store.merge([erasure_put(pid, pack(now + 2))], cursor=2)
    assert SECRETS[0].encode() not in opened(store)
    # the restored hub's snapshot: the patient's values, no erasure
    items = [(decode(d), d) for d in old]
    hub_sum = scope_checksum(heads_of(
        (d.record_id, d.stamp, d.node, d.is_delete, d.ctx) for d, _ in items))
    store.rebase(old, upto=3, hub_sum=hub_sum)
    assert store.view(str(uuid.UUID(bytes=erasure_record_id(pid)))) is not None
    assert store.erased.patients == {pid}
    plain = opened(store)
    assert SECRETS[0].encode() not in plain and KEPT[0].encode() in plain
    # the same by a stale record's write set
    store.replace_records(old[:1], [pid], cursor=4)
    assert SECRETS[0].encode() not in opened(store)


def test_a_door_never_collects_an_erasure(store: Store) -> None:
    now = now_ms()
    pid = uuid.uuid4().bytes
    store.merge([put(pid, "patient", PEER, pack(now), {"name": SECRETS[0]}),
                 erasure_put(pid, pack(now + 1))], cursor=1)
    door = Scope("door", SITE, time.strftime("%Y-%m-%d", time.gmtime(now / 1000)))
    for _ in range(1000):
        if store.collect(door, stable=1 << 40, budget_s=0).done:
            break
    else:
        raise AssertionError("collection not done after 1000 passes")
    assert held(store) == {erasure_record_id(pid)}  # the patient pruned, the erasure kept
    assert store.erased.patients == {pid}


def test_erased_values_do_not_open_in_pages_freed_before(store: Store, tmp_path: Path) -> None:
    """A record pruned out of scope earlier (its pages freed without zeros) leaves its
    ciphertext in free pages; the erasure wipes them."""
    now = now_ms()
    pid = uuid.uuid4().bytes
    store.merge([put(pid, "patient", PEER, pack(now), {"name": SECRETS[0] * 40})], cursor=1)
    pieces = ciphertexts(store)
    store.truncate_wal()
    door = Scope("door", SITE, time.strftime("%Y-%m-%d", time.gmtime(now / 1000)))
    for _ in range(1000):
        if store.collect(door, stable=1 << 40, budget_s=0).done:
            break
    assert held(store) == set()
    store.truncate_wal()
    raw = (store.data / "store.db").read_bytes()
    assert any(p in raw for _, p in pieces)  # pruned, not wiped
    store.merge([erasure_put(pid, pack(now + 1))], cursor=2)
    old = erased_pieces(store, pieces)
    assert old
    for path, raw in raw_files(store.data):
        for piece in old:
            assert piece not in raw, path.name



def test_the_patient_vanishes_from_the_staff_screens(store: Store) -> None:
    r = store.checkin(name=SECRETS[0], passport=SECRETS[1], reason=SECRETS[2])
    o = store.checkin(name=KEPT[0], passport="QX5550123", reason="cough")
    rx = store.put("prescription", values={"subject": r.patient_id, "medication": SECRETS[4]})
    # another kiosk's concurrent change of it: a held conflict, for staff to settle
    store.merge([put(uuid.UUID(rx).bytes, "prescription", PEER, store.hlc.now(now_ms()),
                     {"subject": r.patient_id, "medication": SECRETS[7]})])
    assert [c["record_id"] for c in staff.held_conflicts(store)] == [rx]
    assert {q["id"] for q in staff.today_queue(store)} == {r.record_id, o.record_id}
    store.merge([erasure_put(uuid.UUID(r.patient_id).bytes, store.hlc.now(now_ms()))],
                cursor=1)
    assert staff.held_conflicts(store) == []
    assert [q["id"] for q in staff.today_queue(store)] == [o.record_id]
    assert [c["id"] for c in staff.identity_to_confirm(store)] in ([], [o.record_id])


def test_end_to_end_a_full_a_door_and_an_offline_kiosk_all_erase_and_converge(
        tmp_path: Path) -> None:
    """Over TCP with the hub's own erasure: a full kiosk online, a door kiosk, and a full
    kiosk offline at the time (which wrote to the patient meanwhile) all erase; dumps
    and scope sums agree with the hub's."""
    with served_hub(tmp_path) as (hub, url):
        full = Kiosk(tmp_path, "f", hub, "F")
        door = Kiosk(tmp_path, "d", hub, "D", role="door")
        away = Kiosk(tmp_path, "o", hub, "O")
        kiosks = (full, door, away)
        try:
            r = full.store.checkin(name=SECRETS[0], passport=SECRETS[1], reason=SECRETS[2])
            full.store.put("patient", r.patient_id, {"address": SECRETS[3],
                                                      "birthDate": "1971-03-02"})
            full.store.put("prescription", values={"subject": r.patient_id,
                                                   "medication": SECRETS[4]})
            (tmp_path / "p.png").write_bytes(content(60_000, seed=5))
            attach(full.store, tmp_path / "p.png", patient=r.patient_id, title="P")
            door.store.checkin(name=SECRETS[0], passport=SECRETS[1], birth_year=1971,
                               reason=SECRETS[5])
            away.store.checkin(name=KEPT[0], passport="QX5550123", reason=KEPT[1])
            for kiosk in kiosks * 2:
                kiosk.sync(url)
            assert SECRETS[4].encode() in opened(away.store)
            assert door.store.reader.execute(  # the door holds the patient's verifier
                "SELECT COUNT(*) FROM records WHERE type = 9").fetchone()[0] == 1
            # away has not heard: it writes to the patient, and keeps it unsent
            note = away.store.put("note", values={"subject": r.patient_id,
                                                  "text": SECRETS[6]})
            pieces = {k.store.node: ciphertexts(k.store) for k in kiosks}

            done = hub.erase(uuid.UUID(r.patient_id).bytes, "dr.amina", "patient-request")
            assert done.deleted >= 4
            for kiosk in (full, door, full, door):
                kiosk.sync(url)
            for kiosk in (full, door):
                assert_erased(kiosk.store, pieces[kiosk.store.node])
            assert door.store.reader.execute(  # the verifier holds no value now
                "SELECT COUNT(*) FROM field_values JOIN records USING (rid)"
                " WHERE type = 9").fetchone()[0] == 0
            for kiosk in (away, away, full, door):  # away comes back: it sends, it erases
                kiosk.sync(url)
            for kiosk in kiosks:
                assert_erased(kiosk.store, pieces[kiosk.store.node])
                scope = scope_of(kiosk.store.data)
                assert scope is not None
                assert kiosk.store.scope_checksum(scope) == hub.store.scope_sums(
                    scope, kiosk.state.cursor, kiosk.store.node, (2,))[2]
            dump = hub.dump()
            assert full.store.dump() == away.store.dump() == dump
            # away's write reached the hub (its dot: the outbox still synced) and is gone
            assert note in {rec["id"] for rec in json.loads(dump)["records"]}
            away.store.flush_acks()
            assert away.store.reader.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 0
            assert all(k.encode() in dump for k in KEPT)
        finally:
            for kiosk in kiosks:
                kiosk.close()


def assert_erased(store: Store, pieces: list[tuple[bytes | None, bytes]]) -> None:
    """Nothing of the patient opens in ``store``, nor lies in its files as it was sealed."""
    plain = opened(store)
    for secret in SECRETS:
        assert secret.encode() not in plain, secret
    old = erased_pieces(store, pieces)
    assert old
    for path, raw in raw_files(store.data):
        for piece in old:
            assert piece not in raw, path.name


def test_the_scan_for_the_patients_records_goes_in_slices_and_resumes_after_a_crash(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    r = store.checkin(name=SECRETS[0], passport=SECRETS[1], reason=SECRETS[2])
    o = store.checkin(name=KEPT[0], passport="QX5550123")
    for i in range(6):
        for pid, medication in ((r.patient_id, SECRETS[4]), (o.patient_id, KEPT[1])):
            store.put("prescription", values={"subject": pid, "medication": f"{medication} {i}"})
    monkeypatch.setattr(erasure, "SCAN_RECORDS", 2)
    slices = []

    def cut(db: object) -> None:  # the power goes after the third slice
        slices.append(db)
        if len(slices) == 3:
            raise KeyboardInterrupt("power cut")

    monkeypatch.setattr(store.writer, "run_urgent", cut)
    with pytest.raises(KeyboardInterrupt):
        store.merge([erasure_put(uuid.UUID(r.patient_id).bytes, pack(now_ms()))], cursor=1)
    assert erasure.owed(store.reader)
    assert SECRETS[4].encode() in opened(store)  # partway
    store.close()
    with Store(store.data) as again:  # the open goes on from where it was cut
        assert not erasure.owed(again.reader)
        plain = opened(again)
        assert not [s for s in SECRETS if s.encode() in plain]
        assert all(k.encode() in plain for k in KEPT)
        assert len(again.erased.records) == 8  # patient, check-in, six prescriptions


def test_a_checkin_taken_while_locked_is_merged_as_a_new_registration(store: Store) -> None:
    """The erasure came before the kiosk was locked (a power cut); the patient checks in
    while it is locked; the unlock merges it under the successor id, and ``pending.db``
    keeps nothing of it."""
    r = store.checkin(name=SECRETS[0], passport=SECRETS[1])
    pid = uuid.UUID(r.patient_id).bytes
    store.merge([erasure_put(pid, pack(now_ms()))], cursor=1)
    key = X25519PrivateKey.generate()
    with PendingCheckins(store.data, key.public_key().public_bytes_raw()) as pending:
        taken = pending.add(now_ms=now_ms(), name="Zebulon Anew", passport=SECRETS[1],
                            birth_year=1971, reason=SECRETS[2])
        (sealed,) = pending.db.execute("SELECT sealed FROM checkins").fetchone()
        assert pending.merge(store, key).merged == 1
        assert pending.count() == 0
    checkin = viewed(store, taken.record_id)
    subject = checkin.fields[CHECKIN.field("subject").number]
    assert subject == successor_id(pid)
    assert checkin.fields[CHECKIN.field("identity").number] == "new"
    assert viewed(store, str(uuid.UUID(bytes=subject))).fields[
        PATIENT.field("name").number] == "Zebulon Anew"
    assert SECRETS[0].encode() not in opened(store)
    for path, raw in raw_files(store.data):
        assert bytes(sealed)[16:48] not in raw, path.name
