"""The hub's half of moving document content in a sync round, without sockets.

Theory of operation
-------------------
SPEC.md, "Documents in sync". A ``DocumentInbox`` serves one kiosk's
session. An ``xfer-offer`` names a document by its record id (32 hex
digits). Before any chunk is asked for, the offer must fit: at most
``max_size`` bytes (``too-large``); a live ``document`` record on the hub
(``no-record``: the kiosk sends content only after its record batches are
acknowledged); and that record's ``size`` and ``hash`` must be the offer's
(``record-mismatch``), so content arrives only as the kiosk's signed
metadata describes it. A refused offer gets an ``xfer-abort`` with the
reason and a detail for people, is logged, and the round goes on.

An accepted offer runs a ``protocol.transfer.Receiver`` over a
``sealed_documents.SealedChunks`` in ``DATA/documents``: a chunk counts only
once it matched its hash and is durable, sealed (one that fails its hash is
asked for again; a fourth failure aborts the transfer), and chunks already
there, from an interrupted round or another document, are not asked for.
When the whole object's SHA-256 checks, its sealed manifest is in place, and
only then does ``xfer-done`` go out.

Sessions run in threads of their own and share the directory, so all
document work on the hub runs under one lock, and each object has one
owner: the session that offered it last. A kiosk whose link dropped comes
back on a new connection before the hub notices the old one is dead; its
new offer takes the object over, and the old session, should it speak
again, finds its transfer ``superseded``. A transfer left unfinished
releases its files when its inbox is closed or collected.
"""

from __future__ import annotations

import re
import threading
import uuid
import weakref
from collections.abc import Callable
from pathlib import Path

from host.hub.sealed_documents import SealedChunks
from host.hub.storage import HubStore
from protocol import messages
from protocol.crdt import schema as crdt_schema
from protocol.crdt.delta import decode
from protocol.crdt.record import RecordLog, RecordView
from protocol.messages import Message
from protocol.transfer import (
    ChunkRejected,
    ChunkStored,
    OfferReceived,
    Receiver,
    ReceiverLimits,
    TransferAborted,
    TransferComplete,
)

DOCUMENTS_DIR = "documents"
MAX_DOCUMENT = 256 << 20
CONTROL_LANE = 0
_NAME = re.compile(r"[0-9a-f]{32}")
_SIZE = crdt_schema.DOCUMENT.field("size").number
_HASH = crdt_schema.DOCUMENT.field("hash").number

Reply = tuple[int, bytes]

#: Held for all document work on the hub (re-entrant: a collection may release
#: an inbox while its thread holds it).
_lock = threading.RLock()
#: (documents directory, object hash) -> the transfer that receives it.
_owners: dict[tuple[Path, bytes], _Open] = {}


class _Open:
    """The transfer in progress: its chunk store and the object it owns."""

    def __init__(self) -> None:
        self.dir: SealedChunks | None = None
        self.claim: tuple[Path, bytes] | None = None

    @property
    def superseded(self) -> bool:
        return self.claim is not None and _owners.get(self.claim) is not self

    def take(self, claim: tuple[Path, bytes]) -> None:
        self.claim = claim
        _owners[claim] = self

    def release(self) -> None:
        with _lock:
            if self.dir is not None:
                store, self.dir = self.dir, None
                store.close()
            if self.claim is not None and not self.superseded:
                del _owners[self.claim]
            self.claim = None


class DocumentInbox:
    def __init__(self, root: Path, store: HubStore, clock: Callable[[], int],
                 max_size: int | None = None) -> None:
        self.root = Path(root)
        self.store = store
        self.clock = clock
        self.max_size = MAX_DOCUMENT if max_size is None else max_size
        self.stored = self.refused = self.rejected_chunks = self.chunk_bytes = 0
        self._receiver: Receiver | None = None
        self._open = _Open()
        self._device: str | None = None
        weakref.finalize(self, self._open.release)

    def close(self) -> None:
        self._receiver = None
        self._open.release()

    def _log(self, code: str, detail: str) -> None:
        self.store.log(self._device, code, detail, self.clock())

    def _abort(self, xfer: int, code: str, detail: str) -> list[Reply]:
        self.refused += 1
        self._log(code, detail)
        abort = messages.make("xfer-abort", xfer=max(0, xfer), reason=code, detail=detail[:200])
        return [(CONTROL_LANE, messages.encode(abort))]

    def on_message(self, device_id: str, msg: Message) -> list[Reply]:
        """One transfer message from the kiosk; returns what to send back."""
        self._device = device_id
        with _lock:
            if msg.name == "xfer-offer":
                self.close()
                return self._offer(msg)
            receiver, store = self._receiver, self._open.dir
            if receiver is None or store is None:
                return []  # a transfer refused or over: what was still on its way
            if self._open.superseded:
                self.close()
                return self._abort(msg.get("xfer", 0), "superseded",
                                   "a newer session is receiving this content")
            if msg.name == "xfer-manifest" and receiver.state == "receiving":
                store.add_layout(msg.get("start"), msg.get("hashes"), msg.get("lengths"))
            return self._feed(receiver, store, msg)

    def _offer(self, msg: Message) -> list[Reply]:
        xfer, size, name = msg.get("xfer"), msg.get("size"), msg.get("filename")
        object_hash: bytes = msg.get("object")
        dev = self.store.device(self._device or "")
        if dev is None or dev.state != "approved":
            return self._abort(xfer, "revoked", "this kiosk may not send documents")
        if size > self.max_size:
            return self._abort(xfer, "too-large", f"document of {size} bytes; this hub takes "
                               f"at most {self.max_size}")
        if not _NAME.fullmatch(name):
            return self._abort(xfer, "bad-name", "a document is named by its record id")
        view = self._record(bytes.fromhex(name))
        if view is None or view.deleted or view.type != crdt_schema.DOCUMENT.number:
            return self._abort(xfer, "no-record", f"no document record {uuid.UUID(name)} here")
        if view.fields.get(_SIZE) != size or view.fields.get(_HASH) != object_hash.hex():
            return self._abort(xfer, "record-mismatch", f"document {uuid.UUID(name)}: the "
                               "offer's size or SHA-256 is not its record's")
        self._open.take((self.root, object_hash))
        self.root.mkdir(mode=0o700, exist_ok=True)
        store = self._open.dir = SealedChunks(self.root, lambda: self.store.sealer)
        self._receiver = Receiver(store, limits=ReceiverLimits(max_size=self.max_size))
        return self._feed(self._receiver, store, msg)

    def _record(self, rid: bytes) -> RecordView | None:
        ops = self.store.record_ops(rid)
        if not ops:
            return None
        log = RecordLog(rid)
        for op in ops:
            log.add(decode(op.data))
        return log.view()

    def _feed(self, receiver: Receiver, store: SealedChunks, msg: Message) -> list[Reply]:
        for event in receiver.receive(msg):
            if isinstance(event, OfferReceived):
                store.begin(event.object_hash, event.name, event.size)
            elif isinstance(event, ChunkStored):
                self.chunk_bytes += event.length
            elif isinstance(event, ChunkRejected):
                self.rejected_chunks += 1
                self._log("chunk-hash", f"document {receiver.name}: chunk {event.index} "
                          "failed its hash; asked for again")
            elif isinstance(event, TransferComplete):
                store.finish()  # the file is in place before xfer-done goes out
                self.stored += 1
                self._log("document", f"{uuid.UUID(event.name)}: {event.size} bytes stored")
            elif isinstance(event, TransferAborted):
                self._log(event.reason, f"document {receiver.name}: {event.detail}")
        out = [(CONTROL_LANE, wire) for wire in receiver.messages_to_send()]
        if receiver.state in receiver.TERMINAL:
            self.close()
        return out

