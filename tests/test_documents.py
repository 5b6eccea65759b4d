"""Documents: attached on a kiosk (sealed chunks), moved to a hub's inbox chunk by chunk.

The kiosk's ``DocumentPush`` and the hub's ``DocumentInbox`` are wired here
message by message, without a session; ``test_sync_documents.py`` runs them
inside real sync rounds over TCP.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import tracemalloc
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from device.cli import main as kiosk_main
from device.store import BadRequest, StorageFull, init_store
from device.sync.document_push import DocumentPush
from device.sync.document_store import DB_NAME, DELIVERED, HELD, REFUSED, DocumentStore, attach
from host.hub.document_inbox import DOCUMENTS_DIR, DocumentInbox
from host.hub.hub import Hub, init_hub
from host.hub.sealed_documents import held
from host.hub.storage import Op
from protocol import messages
from protocol.crdt.delta import decode
from protocol.transfer import Sender, build_manifest
from tests.conftest import small_disk
from tests.hub_db import hub_db

from .test_storage_guard import fill
from .test_sync_helpers import Kiosk

pytestmark = pytest.mark.usefixtures("hub_backend")

MARKER = b"Quintessa Marlowe-Abernathy, radiograph of the left tibia. "
Tamper = Callable[[bytes], bytes]


def content(size: int, seed: int = 1) -> bytes:
    """Incompressible bytes with a readable marker every 64 KiB."""
    out = bytearray()
    block = 0
    while len(out) < size:
        out += MARKER + hashlib.shake_256(f"{seed}:{block}".encode()).digest(65536 - len(MARKER))
        block += 1
    return bytes(out[:size])


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[Hub, Kiosk, str]]:
    init_hub(tmp_path / "hub")
    hub = Hub(tmp_path / "hub")
    kiosk = Kiosk(tmp_path, "k", hub, "A")
    patient = kiosk.store.checkin(name="Quintessa", passport="QM1234567").patient_id
    yield hub, kiosk, patient
    kiosk.close()
    hub.close()


def attach_file(kiosk: Kiosk, patient: str, data: bytes, name: str = "scan.pdf") -> str:
    path = kiosk.store.data.parent / name
    path.write_bytes(data)
    return attach(kiosk.store, path, patient=patient).record_id


def attached(pair: tuple[Hub, Kiosk, str], size: int) -> tuple[Hub, Kiosk, bytes, str]:
    """A document of ``size`` bytes attached, its record on the hub."""
    hub, kiosk, patient = pair
    data = content(size)
    rid = attach_file(kiosk, patient, data)
    records_to_hub(hub, kiosk)
    return hub, kiosk, data, rid


def records_to_hub(hub: Hub, kiosk: Kiosk) -> None:
    for data in kiosk.store.deltas_since({}):
        d = decode(data)
        hub.store.add_local(Op(d.record_id, d.stamp, d.node, data))


def inbox(hub: Hub, max_size: int | None = None) -> DocumentInbox:
    return DocumentInbox(hub.data / DOCUMENTS_DIR, hub.store, lambda: 0, max_size=max_size)


def move(push: DocumentPush, hub_side: DocumentInbox, device: str,
         tamper: Tamper | None = None, stop_after: int | None = None) -> int:
    """Run the push against the inbox until it is done (or ``stop_after`` data
    messages went out); returns the xfer-data bytes that crossed."""
    push.start()
    crossed = data_messages = 0

    def to_hub(wire: bytes) -> None:
        nonlocal crossed, data_messages
        msg = messages.decode(wire)
        if msg.name == "xfer-data":
            crossed += len(msg.get("data"))
            data_messages += 1
            if tamper is not None:
                msg = messages.decode(tamper(wire))
        for _, reply in hub_side.on_message(device, msg):
            for _, back in push.on_message(messages.decode(reply)):
                to_hub(back)

    for _ in range(100_000):
        if push.done or (stop_after is not None and data_messages >= stop_after):
            return crossed
        out = push.next_message(lambda size: True)
        assert out is not None, "the push stalled"
        to_hub(out[1])
    raise AssertionError("the push did not finish")


def state_of(kiosk: Kiosk, rid: str) -> tuple[str, str | None]:
    with sqlite3.connect(kiosk.store.data / DB_NAME) as db:
        row = db.execute("SELECT state, reason FROM documents WHERE rid = ?",
                         [bytes.fromhex(rid.replace("-", ""))]).fetchone()
    return row[0], row[1]


def hub_document(hub: Hub, rid: str) -> bytes | None:
    return hub.document(rid)


def new_push(kiosk: Kiosk) -> DocumentPush:
    return DocumentPush(DocumentStore(kiosk.store.data, kiosk.store.cipher), kiosk.store)


# -- attach ------------------------------------------------------------------------------


def test_attach_seals_content_and_writes_the_record(pair: tuple[Hub, Kiosk, str]) -> None:
    _, kiosk, patient = pair
    data = content(300_000)
    path = kiosk.store.data.parent / "tibia.png"
    path.write_bytes(data)
    done = attach(kiosk.store, path, patient=patient, title="Left tibia")
    assert (done.size, done.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert done.chunks == done.new_chunks > 10
    view = kiosk.store.view(done.record_id)
    assert view is not None
    fields = {k: view.value(k) for k in (1, 3, 4, 5, 6)}
    assert fields == {1: uuid.UUID(patient).bytes, 3: "Left tibia", 4: "image/png", 5: len(data),
                      6: hashlib.sha256(data).hexdigest()}
    # The metadata waits in the outbox's lane 3, like every note and document record.
    assert "3" in kiosk.store.status()["outbox"]["lanes"]
    path.unlink()  # nothing below reads the original
    for f in kiosk.store.data.rglob("*"):
        blob = f.read_bytes()
        assert MARKER[:20] not in blob and hashlib.sha256(data).digest() not in blob, f.name
    docs = DocumentStore(kiosk.store.data, kiosk.store.cipher)
    manifest = docs.manifest(bytes.fromhex(done.record_id.replace("-", "")))
    read = docs.reader(manifest)
    offset, rebuilt = 0, bytearray()
    for _, length in manifest.entries():
        rebuilt += read(offset, length)
        offset += length
    assert rebuilt == data and read(1, 10) == b""
    docs.close()
    # Attaching the same file again stores no chunk twice.
    path.write_bytes(data)
    again = attach(kiosk.store, path, patient=patient)
    assert again.new_chunks == 0 and again.record_id != done.record_id


def test_attach_refuses_bad_input_and_stores_nothing(pair: tuple[Hub, Kiosk, str]) -> None:
    _, kiosk, patient = pair
    good = kiosk.store.data.parent / "ok.pdf"
    good.write_bytes(b"%PDF-1.4 tiny")
    empty = kiosk.store.data.parent / "empty.pdf"
    empty.write_bytes(b"")
    cases = [
        (dict(path=good, patient="00000000-0000-4000-8000-000000000000"), "no-patient"),
        (dict(path=good, patient="not-an-id"), "bad-id"),
        (dict(path=kiosk.store.data.parent / "missing.pdf", patient=patient), "no-file"),
        (dict(path=kiosk.store.data.parent, patient=patient), "no-file"),
        (dict(path=empty, patient=patient), "empty-file"),
        (dict(path=good, patient=patient, title="x" * 5000), "field-value"),
    ]
    records = len(kiosk.store.views())
    for kwargs, code in cases:
        with pytest.raises(BadRequest) as err:
            attach(kiosk.store, **kwargs)  # type: ignore[arg-type]
        assert err.value.code == code, (kwargs, err.value)
    assert len(kiosk.store.views()) == records
    if (kiosk.store.data / DB_NAME).exists():
        with sqlite3.connect(kiosk.store.data / DB_NAME) as db:
            assert db.execute("SELECT COUNT(*) FROM documents").fetchone()[0] == 0
            assert db.execute("SELECT COUNT(*) FROM chunks").fetchone()[0] == 0


def test_attach_and_send_keep_memory_flat(pair: tuple[Hub, Kiosk, str]) -> None:
    """A 16 MiB document is never held whole: peaks stay a few chunks' worth."""
    hub, kiosk, patient = pair
    size = 16 << 20
    path = kiosk.store.data.parent / "big.bin"
    with path.open("wb") as f:
        for i in range(size >> 20):
            f.write(hashlib.shake_256(b"%d" % i).digest(1 << 20))
    tracemalloc.start()
    try:
        rid = attach(kiosk.store, path, patient=patient).record_id
        attach_peak = tracemalloc.get_traced_memory()[1]
        records_to_hub(hub, kiosk)
        tracemalloc.reset_peak()
        move(new_push(kiosk), inbox(hub), kiosk.device)
        send_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(hub_document(hub, rid) or b"") == size
    assert attach_peak < 8 << 20 and send_peak < 8 << 20, (attach_peak, send_peak)


# -- moving content ----------------------------------------------------------------------


def test_content_crosses_once_then_never_again(pair: tuple[Hub, Kiosk, str]) -> None:
    hub, kiosk, data, rid = attached(pair, 400_000)
    push, hub_side = new_push(kiosk), inbox(hub)
    assert move(push, hub_side, kiosk.device) == len(data)
    assert hub_document(hub, rid) == data
    assert state_of(kiosk, rid) == (DELIVERED, None)
    assert push.figures()["delivered"] == 1 and hub_side.stored == 1
    assert held(hub.data / DOCUMENTS_DIR, hub.store.sealer) == {"documents": 1, "bytes": len(data)}
    again = new_push(kiosk)
    assert move(again, inbox(hub), kiosk.device) == 0 and again.stats.offered == 0


def test_interrupted_transfer_resumes_with_missing_chunks(pair: tuple[Hub, Kiosk, str]) -> None:
    hub, kiosk, data, rid = attached(pair, 600_000)
    first_inbox = inbox(hub)
    first = move(new_push(kiosk), first_inbox, kiosk.device, stop_after=30)
    first_inbox.close()  # the link dropped
    assert state_of(kiosk, rid) == (HELD, None) and hub_document(hub, rid) is None
    second = move(new_push(kiosk), inbox(hub), kiosk.device)
    assert first + second == len(data), (first, second)
    assert hub_document(hub, rid) == data


def test_a_newer_session_takes_the_object_over(pair: tuple[Hub, Kiosk, str]) -> None:
    """The hub has not noticed the old link died: the kiosk's new offer wins."""
    hub, kiosk, data, rid = attached(pair, 300_000)
    stale_push, stale = new_push(kiosk), inbox(hub)
    move(stale_push, stale, kiosk.device, stop_after=5)
    move(new_push(kiosk), inbox(hub), kiosk.device)
    assert hub_document(hub, rid) == data
    wire = stale_push.next_message(lambda size: True)
    assert wire is not None
    replies = stale.on_message(kiosk.device, messages.decode(wire[1]))
    assert [messages.decode(r).get("reason") for _, r in replies] == ["superseded"]


def flip_first(wire: bytes, flips: list[int], times: int) -> bytes:
    if len(flips) >= times:
        return wire
    msg = messages.decode(wire)
    flips.append(msg.get("index"))
    data = bytearray(msg.get("data"))
    data[0] ^= 0xFF
    return messages.encode(messages.make("xfer-data", xfer=msg.get("xfer"),
                                         index=msg.get("index"), offset=msg.get("offset"),
                                         data=bytes(data)))


def test_a_tampered_chunk_is_refused_and_asked_for_again(pair: tuple[Hub, Kiosk, str]) -> None:
    hub, kiosk, data, rid = attached(pair, 200_000)
    flips: list[int] = []
    hub_side = inbox(hub)
    move(new_push(kiosk), hub_side, kiosk.device, tamper=lambda w: flip_first(w, flips, 1))
    assert len(flips) == 1 and hub_side.rejected_chunks == 1
    assert hub_document(hub, rid) == data
    assert state_of(kiosk, rid)[0] == DELIVERED


def test_a_chunk_tampered_every_time_is_never_stored(pair: tuple[Hub, Kiosk, str]) -> None:
    hub, kiosk, data, rid = attached(pair, 200_000)
    hub_side = inbox(hub)

    def always_first_chunk(wire: bytes) -> bytes:
        msg = messages.decode(wire)
        return flip_first(wire, [], 1) if msg.get("index") == 0 else wire

    push = new_push(kiosk)
    move(push, hub_side, kiosk.device, tamper=always_first_chunk)
    # Asked for again three times; the fourth failure ends the transfer.
    assert hub_side.rejected_chunks == 3 and hub_document(hub, rid) is None
    assert [e["code"] for e in hub.store.events(4)] == ["chunk-hash"] * 4
    state, reason = state_of(kiosk, rid)
    assert push.stats.failed == 1 and state == HELD and str(reason).startswith("chunk-hash")


def test_chunks_that_do_not_make_the_object_are_never_stored(
        pair: tuple[Hub, Kiosk, str]) -> None:
    """Every chunk matches its own hash, but together they are not the object."""
    hub, kiosk, data, rid = attached(pair, 200_000)
    docs = DocumentStore(kiosk.store.data, kiosk.store.cipher)
    real = docs.manifest(bytes.fromhex(rid.replace("-", "")))
    other = content(len(data), seed=2)
    lying = replace(build_manifest([other], real.name), object_hash=real.object_hash)
    sender = Sender(lying, lambda offset, length: other[offset : offset + length])
    hub_side = inbox(hub)
    out: list[str] = []
    for _ in range(10_000):
        wire = sender.next_message()
        if wire is None:
            break
        for _, reply in hub_side.on_message(kiosk.device, messages.decode(wire)):
            out.append(messages.decode(reply).name)
            sender.receive(reply)
    assert out[-1] == "xfer-abort" and sender.failure is not None
    assert sender.failure.reason == "object-hash"
    assert hub_document(hub, rid) is None and hub_side.stored == 0
    docs.close()


def test_offers_the_hub_refuses(pair: tuple[Hub, Kiosk, str]) -> None:
    hub, kiosk, patient = pair
    big = attach_file(kiosk, patient, content(50_000), "big.pdf")
    records_to_hub(hub, kiosk)
    # Not yet on the hub: tried again next round.
    late = attach_file(kiosk, patient, content(20_000, seed=3), "late.pdf")
    # On the hub, but the kiosk's content is not what its record says.
    wrong = attach_file(kiosk, patient, content(20_000, seed=4), "wrong.pdf")
    kiosk.store.put("document", wrong, {"hash": "00" * 32})
    records_to_hub(hub, kiosk)
    with hub_db(hub.data) as db:  # the hub never saw ``late``
        db.execute("DELETE FROM ops WHERE rid = ?", [bytes.fromhex(late.replace("-", ""))])
    push = new_push(kiosk)
    before = kiosk.store.clock()
    assert move(push, inbox(hub, max_size=30_000), kiosk.device) == 0
    assert state_of(kiosk, big) == (REFUSED, "too-large: document of 50000 bytes; this hub "
                                    "takes at most 30000")
    assert state_of(kiosk, late)[0] == HELD
    assert str(state_of(kiosk, late)[1]).startswith("no-record")
    assert state_of(kiosk, wrong)[0] == REFUSED and "record-mismatch" in str(state_of(kiosk,
                                                                                     wrong)[1])
    assert push.stats.failed == 1 and len(push.stats.refused) == 2
    summary = push.docs.summary()
    assert summary["states"][REFUSED]["documents"] == 2
    assert {r["record_id"] for r in summary["refused"]} == {big, wrong}
    codes = [e["code"] for e in hub.store.events(10)]
    assert {"too-large", "no-record", "record-mismatch"} <= set(codes)
    assert not list((hub.data / DOCUMENTS_DIR).glob("*-*"))
    # ``late`` is offered again, but not before its backoff (the outbox's: 1 to 2 s first).
    late_id = uuid.UUID(late).bytes
    with sqlite3.connect(kiosk.store.data / DB_NAME) as db:
        attempts, next_at = db.execute("SELECT attempts, next_at FROM documents WHERE rid = ?",
                                       [late_id]).fetchone()
    assert attempts == 1 and next_at >= before + 1_000
    assert late_id not in push.docs.held(next_at - 1) and late_id in push.docs.held(next_at)


def test_content_damaged_at_rest_is_refused_on_the_kiosk(pair: tuple[Hub, Kiosk, str]) -> None:
    hub, kiosk, data, rid = attached(pair, 200_000)
    with sqlite3.connect(kiosk.store.data / DB_NAME) as db:
        name, sealed = db.execute("SELECT name, sealed FROM chunks LIMIT 1 OFFSET 3").fetchone()
        damaged = bytes(sealed[:40]) + bytes([sealed[40] ^ 1]) + bytes(sealed[41:])
        db.execute("UPDATE chunks SET sealed = ? WHERE name = ?", [damaged, name])
    push = new_push(kiosk)
    move(push, inbox(hub), kiosk.device)
    state, reason = state_of(kiosk, rid)
    assert state == REFUSED and reason is not None and reason.startswith("source-changed")
    assert hub_document(hub, rid) is None


# -- the command -------------------------------------------------------------------------


def test_attach_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def run(*argv: str) -> tuple[int, str, str]:
        code = kiosk_main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    data = str(tmp_path / "k")
    assert run("init", "--data", data, "--site", "North")[0] == 0
    code, out, _ = run("checkin", "--data", data, "--name", "Ada", "--json")
    patient = json.loads(out)["patient_id"]
    scan = tmp_path / "scan.pdf"
    scan.write_bytes(content(90_000))
    code, out, _ = run("attach", "--data", data, "--patient", patient, str(scan))
    rid = out.strip()
    assert code == 0 and uuid.UUID(rid)
    code, out, _ = run("attach", "--data", data, "--patient", patient, str(scan), "--title",
                       "Chest X-ray", "--content-type", "application/pdf", "--json")
    again = json.loads(out)
    assert code == 0 and again["size"] == 90_000 and again["new_chunks"] == 0
    assert again["sha256"] == hashlib.sha256(scan.read_bytes()).hexdigest()
    records = {r["id"]: r for r in json.loads(run("dump", "--data", data)[1])["records"]}
    assert records[again["record_id"]]["fields"]["title"] == "Chest X-ray"
    assert records[rid]["fields"]["contentType"] == "application/pdf"
    code, out, err = run("attach", "--data", data, "--patient", patient, str(tmp_path / "no"))
    assert code == 1 and out == "" and err.count("\n") == 1 and "cannot read" in err
    code, out, _ = run("status", "--data", data)
    assert code == 0 and "documents: 2 held (180000 bytes)" in out
    code, out, _ = run("status", "--data", data, "--json")
    assert json.loads(out)["documents"]["states"] == {HELD: {"documents": 2, "bytes": 180_000}}


def test_attach_on_a_full_disk_fails_clearly_and_a_retry_resumes(tmp_path: Path) -> None:
    with small_disk(tmp_path / "disk", "8m") as disk:
        store = init_store(disk / "k", "North")
        try:
            patient = store.checkin(name="Ada").patient_id
            scan = tmp_path / "scan.pdf"  # on another disk
            scan.write_bytes(content(3 << 20))
            filler = fill(disk, leave_mib=1.5)
            records = len(store.views())
            with pytest.raises(StorageFull):
                attach(store, scan, patient=patient)
            assert len(store.views()) == records  # no record without its content
            filler.unlink()
            done = attach(store, scan, patient=patient)
            assert 0 < done.new_chunks < done.chunks  # what was stored before stayed
            docs = DocumentStore(store.data, store.cipher)
            assert docs.held() == [uuid.UUID(done.record_id).bytes]
            docs.close()
        finally:
            store.close()
