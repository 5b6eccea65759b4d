"""Document content in real sync rounds: a kiosk and ``haven hub serve`` over TCP on 127.0.0.1.

The link runs through ``Cutter``, a relay that counts the bytes each way and
can drop the connection once a given number of bytes went up, in the middle
of a document.
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
import threading
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from device.store import Store
from device.sync.document_push import DocumentPush
from device.sync.document_store import DocumentStore, attach
from device.sync.engine import Round, SyncFailed
from host.cli import main as haven_main
from host.hub import document_inbox as hub_documents
from host.hub.document_inbox import DOCUMENTS_DIR, DocumentInbox
from host.hub.hub import Hub, init_hub, wall_ms
from host.hub.peer import HubPeer
from protocol import messages
from tools.benchmarks._link import emulator

from .test_documents import content
from .test_sync_helpers import Kiosk, served_hub
from .test_sync_serial import enrolled
from .test_sync_serial_helpers import DEADLINE, finish, hub_serving, kiosk_sync

pytestmark = pytest.mark.usefixtures("hub_backend")

IDLE = 10.0  #: the relay gives up on a link silent this long


class Cutter:
    """Relays one connection to the hub; closes both sides once ``cut_after`` bytes
    went up (the bytes before the cut are delivered)."""

    def __init__(self, hub_url: str, cut_after: int | None = None) -> None:
        parts = urlsplit(hub_url)
        self.target = (str(parts.hostname), int(parts.port or 0))
        self.cut_after = cut_after
        self.up = self.down = 0
        self.cut = False
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"tcp://127.0.0.1:{self.listener.getsockname()[1]}"
        self.thread = threading.Thread(target=self._relay, daemon=True)
        self.thread.start()

    def _relay(self) -> None:
        self.listener.settimeout(IDLE)
        try:
            kiosk, _ = self.listener.accept()
        except OSError:
            return
        finally:
            self.listener.close()
        hub = socket.create_connection(self.target, timeout=IDLE)
        other = {kiosk: hub, hub: kiosk}
        try:
            while not self.cut:
                ready, _, _ = select.select(list(other), [], [], IDLE)
                if not ready:
                    return
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        return
                    if sock is kiosk:
                        if self.cut_after is not None and self.up + len(data) >= self.cut_after:
                            data = data[: self.cut_after - self.up]
                            self.cut = True
                        self.up += len(data)
                    else:
                        self.down += len(data)
                    other[sock].sendall(data)
        except OSError:
            return
        finally:
            for sock in other:
                with contextlib.suppress(OSError):
                    sock.close()

    def close(self) -> None:
        self.thread.join(IDLE + 1)


@pytest.fixture
def hub_and_kiosk(tmp_path: Path) -> Iterator[tuple[Path, str, Kiosk, str]]:
    with served_hub(tmp_path) as (hub, url):
        kiosk = Kiosk(tmp_path, "k", hub, "A")
        patient = kiosk.store.checkin(name="Ada", passport="P1234567").patient_id
        yield hub.data, url, kiosk, patient
        kiosk.close()


def hub_document(hub_data: Path, rid: str) -> bytes | None:
    """A document the hub holds, opened with its keys (a second connection beside a
    serving hub)."""
    with Hub(hub_data) as hub:
        return hub.document(rid)


def hub_status(hub_data: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    capsys.readouterr()
    assert haven_main(["hub", "status", "--data", str(hub_data), "--json"]) == 0
    status: dict[str, object] = json.loads(capsys.readouterr().out)
    return status


def test_a_cut_link_resumes_with_only_the_missing_chunks(
        hub_and_kiosk: tuple[Path, str, Kiosk, str],
        capsys: pytest.CaptureFixture[str]) -> None:
    hub_data, url, kiosk, patient = hub_and_kiosk
    data = content(1_536_000)
    path = kiosk.store.data.parent / "scan.pdf"
    path.write_bytes(data)
    rid = attach(kiosk.store, path, patient=patient).record_id.replace("-", "")
    cut_at = 700_000
    first = Cutter(url, cut_after=cut_at)
    with pytest.raises(SyncFailed):
        kiosk.sync(first.url)
    first.close()
    assert first.cut and first.up == cut_at
    # The records went first: the hub has the document's record, not its file.
    assert hub_document(hub_data, rid) is None
    assert kiosk.store.status()["outbox"]["lanes"] == {}

    second = Cutter(url)
    summary = kiosk.sync(second.url)
    second.close()
    docs = summary.documents
    assert (docs["offered"], docs["delivered"], docs["refused"]) == (1, 1, [])
    # Roughly the rest crossed: the chunks the hub lacked, their framing, the manifest.
    rest = len(data) - cut_at
    assert rest * 0.95 < docs["chunk_bytes_sent"] < rest + 65_536, docs
    assert second.up < rest * 1.1, (second.up, rest)  # a full resend: 1.8 times rest
    assert hub_document(hub_data, rid) == data

    # Delivered is durable: the next round offers nothing.
    third = Cutter(url)
    again = kiosk.sync(third.url)
    third.close()
    assert again.documents["offered"] == 0 and third.up < 4096
    held = hub_status(hub_data, capsys)["documents"]
    assert held == {"documents": 1, "bytes": len(data)}


def test_an_oversized_document_is_refused_and_records_still_sync(
        hub_and_kiosk: tuple[Path, str, Kiosk, str], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    hub_data, url, kiosk, patient = hub_and_kiosk
    monkeypatch.setattr(hub_documents, "MAX_DOCUMENT", 100_000)
    big, small = (kiosk.store.data.parent / n for n in ("big.pdf", "small.pdf"))
    big.write_bytes(content(300_000, seed=5))
    small.write_bytes(content(40_000, seed=6))
    refused = attach(kiosk.store, big, patient=patient).record_id
    kept = attach(kiosk.store, small, patient=patient).record_id
    summary = kiosk.sync(url)
    assert summary.pushed == 4  # patient, check-in and both document records
    docs = summary.documents
    assert (docs["offered"], docs["delivered"]) == (2, 1)
    assert docs["refused"] == [f"{refused}: too-large"]
    assert docs["chunk_bytes_sent"] == 40_000
    assert hub_document(hub_data, kept) == small.read_bytes()
    codes = [e["code"] for e in hub_status(hub_data, capsys)["log"]]  # type: ignore[union-attr]
    assert "too-large" in codes
    # Refused is final: later rounds carry on with records and offer it no more.
    kiosk.store.checkin(name="Bea")
    later = kiosk.sync(url)
    assert later.pushed == 2 and later.documents["offered"] == 0


def test_a_checkin_made_during_a_document_goes_first(tmp_path: Path) -> None:
    """The kiosk's round and the hub's peer, wired message by message: a batch
    written while content moves goes out before the next document message, and
    the content waits for its acknowledgement."""
    init_hub(tmp_path / "hub")
    hub = Hub(tmp_path / "hub")
    kiosk = Kiosk(tmp_path, "k", hub, "A")
    patient = kiosk.store.checkin(name="Ada").patient_id
    scan = tmp_path / "scan.pdf"
    scan.write_bytes(content(400_000))
    attach(kiosk.store, scan, patient=patient)
    docs = DocumentStore(kiosk.store.data, kiosk.store.cipher)
    rnd = Round(kiosk.store, kiosk.state, kiosk.ident, DocumentPush(docs, kiosk.store))
    inbox = DocumentInbox(hub.data / DOCUMENTS_DIR, hub.store, wall_ms)
    peer = HubPeer(hub.store, hub.ed_public, kiosk.ident.x_key.public_key().public_bytes_raw(),
                   wall_ms, documents=inbox)
    names: list[str] = []  # every message the kiosk sent, in order

    def deliver(out: list[tuple[int, bytes]]) -> None:
        for _, wire in out:
            names.append(messages.decode(wire).name)
            for _, reply in peer.on_message(wire):
                deliver(rnd.on_message(reply))

    def three_messages() -> Callable[[int], bool]:
        """A lane with room for three messages."""
        room = [True] * 3
        return lambda size: bool(room) and room.pop()

    deliver(rnd.hello())
    checked_in = False
    for _ in range(10_000):
        if rnd.done:
            break
        if not checked_in and names.count("xfer-data") >= 5:
            kiosk.store.checkin(name="Bea")  # written while the content moves
            checked_in = True
            out = list(rnd.documents_out(three_messages()))
            assert [messages.decode(w).name for _, w in out] == ["sync-batch"]
            assert list(rnd.documents_out(three_messages())) == []  # until the ack
        else:
            out = list(rnd.documents_out(three_messages()))
        deliver(out)
    assert rnd.done and rnd.documents is not None and inbox.stored == 1
    assert rnd.documents.figures()["delivered"] == 1
    late = names.index("sync-batch", names.index("xfer-data"))
    assert names[late - 1] == names[late + 1] == "xfer-data"
    assert names.count("sync-batch") == 2
    assert rnd.summary.pushed == 5  # patient, check-in, document; patient, check-in
    assert json.loads(hub.dump()) == json.loads(kiosk.store.dump())
    docs.close()
    kiosk.close()
    hub.close()


def test_a_document_crosses_a_noisy_serial_line(tmp_path: Path) -> None:
    """The real ``haven hub serve --serial`` and ``haven-kiosk sync --once`` on the
    two ptys of the link emulator, with byte errors."""
    hub_dir, (k,) = enrolled(tmp_path, ["k"])
    data = content(48_000, seed=7)
    with Store(k) as store:
        patient = store.checkin(name="Ada").patient_id
        scan = tmp_path / "scan.pdf"
        scan.write_bytes(data)
        rid = attach(store, scan, patient=patient).record_id
    emu_args = ["--rate", "23040", "--corrupt", "1e-4", "--seed", "7"]
    with emulator("serial", emu_args, tmp_path / "emu.json") as emu, \
            hub_serving(hub_dir, serial=[emu.endpoints["a"]], baud=230400):
        rc, out, err = finish(kiosk_sync(k, emu.endpoints["b"], "--baud", "230400", "--once",
                                         "--timeout", str(DEADLINE), "--json"))
    assert rc == 0, err
    summary = json.loads(out.splitlines()[-1])
    assert summary["pushed"] == 3 and summary["documents"]["delivered"] == 1
    assert hub_document(hub_dir, rid) == data
    assert emu.stats["ab"]["corrupted"] + emu.stats["ba"]["corrupted"] > 0


def test_a_document_larger_than_the_session_buffer_moves_in_little_memory(
        hub_and_kiosk: tuple[Path, str, Kiosk, str]) -> None:
    """Content goes into the session as the lane drains: 5 MiB (2.5 times the send
    buffer) crosses in one round while both ends together stay under 2 MiB."""
    hub_data, url, kiosk, patient = hub_and_kiosk
    size = 5 << 20
    path = kiosk.store.data.parent / "big.bin"
    with path.open("wb") as f:
        for i in range(size >> 20):
            f.write(content(1 << 20, seed=100 + i))
    rid = attach(kiosk.store, path, patient=patient).record_id.replace("-", "")
    tracemalloc.start()
    try:
        summary = kiosk.sync(url)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert summary.documents["delivered"] == 1
    assert summary.documents["chunk_bytes_sent"] == size
    assert len(hub_document(hub_data, rid) or b"") == size
    assert peak < 2 << 20, peak
