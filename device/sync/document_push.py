"""The kiosk's half of moving document content in a sync round, without I/O.

Theory of operation
-------------------
SPEC.md, "Documents in sync". ``DocumentPush`` starts once the round's
record batches are acknowledged, so the hub holds each document's record,
which the content must match. ``start`` lists the documents whose content
the hub has neither confirmed nor refused, oldest first. One at a time, each
becomes a ``protocol.transfer.Sender`` named by its record id: the hub
answers the offer and manifest with the chunks it lacks, and only those
cross, so an interrupted round resumes where the hub's durable chunks end.

``next_message`` hands out a message only while ``room`` says the session's
document lane may take it (``lane_room``: at most ``QUEUE`` bytes waiting
there), so a record batch written meanwhile waits behind little.

On ``xfer-done`` the content is marked delivered, durably. An abort whose
reason another try cannot cure (``FINAL``) marks it refused, with the
reason; after any other failure it is offered again in a later round, after
the outbox's backoff. Either way the next document follows.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from device.store import CorruptData, Store
from device.sync.document_store import DELIVERED, REFUSED, DocumentStore
from protocol.messages import Message
from protocol.session.core import Session
from protocol.transfer import Sender, TransferAborted, TransferComplete, transfer_id

DOC_LANE = 3  #: the session's least urgent lane (records of lane 3 and up share it)
CONTROL_LANE = 0
QUEUE = 64 * 1024  #: most document bytes waiting in the session's lane
#: Reasons a later round cannot cure: the content is marked refused. (``no-record`` is
#: not one: the record may still be on its way, its outbox entry waiting to retry.)
FINAL = frozenset({"too-large", "record-mismatch", "bad-name", "source-changed", "corrupt"})

Reply = tuple[int, bytes]


def lane_room(session: Session) -> Callable[[int], bool]:
    """Whether a message of ``size`` bytes fits under ``QUEUE`` in the document lane."""
    spare = session.config.send_buffer - QUEUE
    return lambda size: session.can_send(DOC_LANE, spare + size)


@dataclass
class PushStats:
    offered: int = 0
    delivered: int = 0
    refused: list[str] = field(default_factory=list)  #: "record-id: reason"
    failed: int = 0  #: offered again in a later round, after a backoff
    chunks_sent: int = 0
    chunk_bytes_sent: int = 0


class DocumentPush:
    def __init__(self, docs: DocumentStore, store: Store) -> None:
        self.docs = docs
        self.store = store
        self.started = self.paused = False
        self.stats = PushStats()
        self._queue: list[bytes] = []
        self._sender: Sender | None = None
        self._rid = b""
        self._pending: bytes | None = None
        self._xfer = 0

    @property
    def done(self) -> bool:
        return self.started and (self.paused or (self._sender is None and not self._queue))

    def start(self) -> None:
        if not self.started:
            self.started = True
            now = self.store.clock()
            self._queue = [rid for rid in self.docs.held(now) if self._live(rid)]

    def pause(self) -> None:
        """Stop at this message boundary; the next round resumes the content."""
        self.paused = True

    def _live(self, rid: bytes) -> bool:
        view = self.store.view(str(uuid.UUID(bytes=rid)))
        return view is not None and not view.deleted

    def ready(self, room: Callable[[int], bool]) -> bool:
        """Whether ``next_message(room)`` would hand out a message now."""
        if self.paused:
            return False
        sender = self._sender or self._next_document()
        if sender is None:
            return False
        if self._pending is None:
            self._pending = sender.next_message()
        return self._pending is not None and room(len(self._pending))

    def next_message(self, room: Callable[[int], bool]) -> Reply | None:
        """The next message for the hub, or None (waiting for it, no room, or done)."""
        if not self.ready(room) or self._sender is None or self._pending is None:
            return None
        sender = self._sender
        wire, self._pending = self._pending, None
        if sender.failure is not None:  # a chunk could not be read: wire is the abort
            self._settle(sender.failure.reason, sender.failure.detail)
            return CONTROL_LANE, wire
        return DOC_LANE, wire

    def _next_document(self) -> Sender | None:
        while self._queue:
            rid = self._queue.pop(0)
            try:
                manifest = self.docs.manifest(rid)
                manifest.check()
            except (CorruptData, ValueError) as exc:
                self.docs.mark(rid, REFUSED, f"corrupt: {exc}")
                self.stats.refused.append(f"{uuid.UUID(bytes=rid)}: corrupt")
                continue
            self._rid = rid
            self._sender = Sender(manifest, self.docs.reader(manifest), xfer=self._xfer)
            self._xfer += 1
            self.stats.offered += 1
            return self._sender
        return None

    def on_message(self, msg: Message) -> list[Reply]:
        """A transfer message from the hub; returns what to send back."""
        sender = self._sender
        if sender is None or transfer_id(msg) != sender.xfer:
            return []  # about a transfer we have left
        for event in sender.receive(msg):
            if isinstance(event, TransferComplete):
                self.docs.mark(self._rid, DELIVERED)
                self.stats.delivered += 1
                return self._retire()
            if isinstance(event, TransferAborted):
                return self._settle(event.reason, event.detail)
        return []

    def _settle(self, reason: str, detail: str) -> list[Reply]:
        if reason in FINAL:
            self.docs.mark(self._rid, REFUSED, f"{reason}: {detail}"[:200])
            self.stats.refused.append(f"{uuid.UUID(bytes=self._rid)}: {reason}")
        else:
            self.docs.retry_later(self._rid, f"{reason}: {detail}"[:200], self.store.clock(),
                                  self.store.rng)
            self.stats.failed += 1
        return self._retire()

    def _retire(self) -> list[Reply]:
        """Drop the current transfer; returns its last words (an abort, if any)."""
        sender, self._sender, self._pending = self._sender, None, None
        if sender is None:
            return []
        self.stats.chunks_sent += sender.stats.chunks_moved
        self.stats.chunk_bytes_sent += sender.stats.bytes_moved
        out = []
        while (wire := sender.next_message()) is not None:
            out.append((CONTROL_LANE, wire))
        return out

    def figures(self) -> dict[str, object]:
        """What the round did with documents (the transfer in progress included)."""
        current = self._sender.stats if self._sender is not None else None
        s = self.stats
        return {"offered": s.offered, "delivered": s.delivered, "refused": list(s.refused),
                "failed": s.failed,
                "chunks_sent": s.chunks_sent + (current.chunks_moved if current else 0),
                "chunk_bytes_sent": s.chunk_bytes_sent + (current.bytes_moved if current else 0)}
