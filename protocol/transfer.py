"""Resumable transfer of one object (a file, a document) over a message channel.

Theory of operation
-------------------
The sender cuts the object into content-defined chunks (``chunking.py``) and
describes it by a *manifest*: the object's SHA-256, its size, its name and the
ordered list of (chunk SHA-256, chunk length). The receiver keeps chunks in a
store keyed by their hash. A transfer then runs::

    sender                                   receiver
    xfer-offer    (hash, size, filename, count) ->
    xfer-manifest (start, hashes, lengths)  ->   store.has(hash) per entry
                                            <- xfer-need (start, count, bitmap)
    xfer-data     (index, offset, data)     ->   verify SHA-256, store.put
                   ... more manifest pieces, needs and data, interleaved ...
                                            <- xfer-done (object hash), once the
                                               whole object's SHA-256 is checked

Only the chunks the receiver lacks cross the link, so a resumed transfer and
a new version of a document the receiver has seen both cost only what the
store lacks. The store makes each ``put`` durable before it returns: an
interruption loses at most the chunk in flight. Before it confirms, the
receiver reads the object back from the store to check its SHA-256; that
reads the whole object, so a caller with large objects runs ``receive`` off
its event loop.

Wire formats stay compact for large objects (1 GiB at 8 KiB chunks is ~130k
entries): ``hashes`` is the 32-byte digests concatenated, ``lengths`` 3-byte
big-endian integers, and a need ``bitmap`` has bit ``j`` (byte ``j // 8``,
least significant first) set when entry ``start + j`` is wanted. Every
message stays under ``MAX_MESSAGE`` bytes: a manifest travels in pieces of
``MANIFEST_PIECE`` entries, a chunk in parts of ``part_size`` bytes. A hash
that repeats within an object is asked for, and sent, once.

Both ends are sans-I/O. The sender reads chunk data through a ``read(offset,
length)`` callback, one chunk at a time, and hands out one message per
``next_message()``, so the caller's flow control sets the pace. Each side's
legal (state, message) pairs live in one table; any other pair, and any
malformed or inconsistent message, fails the transfer with a
``TransferAborted`` event and an ``xfer-abort`` to the peer, never an
exception. ``LocalProtocolError`` is raised only for misuse of the API.
"""

from __future__ import annotations

import hashlib
from array import array
from typing import TYPE_CHECKING, ClassVar

from protocol import messages
from protocol.chunking import chunk_id
from protocol.errors import LocalProtocolError, RemoteProtocolError
from protocol.manifest import (
    HASH_SIZE,
    LENGTH_SIZE,
    MAX_NAME,
    ChunkStore,
    Manifest,
    ManifestBuilder,
    MemoryStore,
    build_manifest,
    check_name,
)
from protocol.messages import Message, MessageSpec, register
from protocol.transfer_types import (
    ChunkRejected,
    ChunkStored,
    Event,
    OfferReceived,
    ReceiverLimits,
    TransferAborted,
    TransferComplete,
    TransferStats,
)

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "ABORT", "DATA", "DEFAULT_PART_SIZE", "DONE", "HASH_SIZE", "LENGTH_SIZE", "MANIFEST",
    "MANIFEST_PIECE", "MAX_MESSAGE", "MAX_NAME", "MAX_PART", "NEED", "OFFER", "ChunkRejected",
    "ChunkStore", "ChunkStored", "Event", "Manifest", "ManifestBuilder", "MemoryStore",
    "OfferReceived", "Receiver", "ReceiverLimits", "Sender", "TransferComplete", "TransferAborted",
    "TransferStats", "build_manifest", "check_name", "transfer_id",
]

MAX_MESSAGE = 32 * 1024
#: Room kept for the envelope and the other fields of a message.
_ENVELOPE = 128
MANIFEST_PIECE = (MAX_MESSAGE - _ENVELOPE) // (HASH_SIZE + LENGTH_SIZE)
MAX_PART = MAX_MESSAGE - _ENVELOPE
DEFAULT_PART_SIZE = 16 * 1024

OFFER = register(MessageSpec(40, "xfer-offer", {
    1: ("xfer", int), 2: ("object", bytes), 3: ("size", int), 4: ("filename", str),
    5: ("count", int),
}))
MANIFEST = register(MessageSpec(41, "xfer-manifest", {
    1: ("xfer", int), 2: ("start", int), 3: ("hashes", bytes), 4: ("lengths", bytes),
}))
NEED = register(MessageSpec(42, "xfer-need", {
    1: ("xfer", int), 2: ("start", int), 3: ("count", int), 4: ("bitmap", bytes),
}))
DATA = register(MessageSpec(43, "xfer-data", {
    1: ("xfer", int), 2: ("index", int), 3: ("offset", int), 4: ("data", bytes),
}))
DONE = register(MessageSpec(44, "xfer-done", {1: ("xfer", int), 2: ("object", bytes)}))
ABORT = register(MessageSpec(45, "xfer-abort", {1: ("xfer", int), 2: ("reason", str)},
                             {3: ("detail", str)}))
_OURS = {spec.number for spec in (OFFER, MANIFEST, NEED, DATA, DONE, ABORT)}


# --- shared machinery ----------------------------------------------------------


def transfer_id(message: Message) -> int | None:
    """The transfer a message belongs to, or None if it is not a transfer message."""
    if message.type not in _OURS:
        return None
    xfer = message.fields.get(1)
    return xfer if type(xfer) is int else None


def _uint(msg: Message, name: str) -> int:
    value = msg.get(name)
    if type(value) is not int or value < 0:
        raise RemoteProtocolError(f"{msg.name}: {name} must be an unsigned integer", "bad-field")
    return value


class _Endpoint:
    """State, table dispatch and failure handling shared by both ends."""

    #: {state: {message name: handler method}}; any other pair is an error.
    TABLE: ClassVar[dict[str, dict[str, str]]] = {}
    TERMINAL = ("done", "failed")

    def __init__(self, xfer: int | None) -> None:
        self.state = "idle"
        self.xfer = xfer
        self.stats = TransferStats()
        self.failure: TransferAborted | None = None
        self._xfer_hint = 0  # for an abort before we know our transfer id
        self._outbox: list[bytes] = []

    def _send(self, kind: str, **values: object) -> None:
        xfer = self.xfer if self.xfer is not None else self._xfer_hint
        self._outbox.append(messages.encode(messages.make(kind, xfer=xfer, **values)))

    def _fail(self, code: str, detail: str) -> list[Event]:
        self.state = "failed"
        self.failure = TransferAborted(code, detail)
        self._send("xfer-abort", reason=code, detail=detail[:200])
        return [self.failure]

    def receive(self, message: bytes | Message) -> list[Event]:
        """Handle one message from the peer; return what happened."""
        if self.state in self.TERMINAL:
            self.stats.ignored += 1
            return []
        try:
            msg = message if isinstance(message, Message) else messages.decode(
                message, max_size=MAX_MESSAGE)
            hint = transfer_id(msg)
            if hint is not None and hint >= 0:
                self._xfer_hint = hint
            handler = self.TABLE[self.state].get(msg.name) if msg.type in _OURS else None
            if handler is None:
                raise RemoteProtocolError(
                    f"{msg.name} is not expected in state {self.state}", "unexpected-message")
            if self.xfer is not None and _uint(msg, "xfer") != self.xfer:
                raise RemoteProtocolError("message for another transfer", "xfer-id")
            events: list[Event] = getattr(self, handler)(msg)
            return events
        except RemoteProtocolError as exc:
            return self._fail(exc.code, str(exc))

    def abort(self, code: str, detail: str) -> list[Event]:
        """Give the transfer up from this side for a reason of the caller's (its disk is
        full, say): what was queued is dropped and an ``xfer-abort`` with ``code`` goes to
        the peer. A receiver may still abort once done, while its ``xfer-done`` has not
        been taken (the file could not be put in place). Nothing once failed."""
        if self.state == "failed":
            return []
        self._outbox.clear()
        return self._fail(code, detail)

    def _on_abort(self, msg: Message) -> list[Event]:
        self.state = "failed"
        self.failure = TransferAborted(str(msg.get("reason")), str(msg.get("detail", "")),
                                      remote=True)
        return [self.failure]


# --- the receiver --------------------------------------------------------------


class Receiver(_Endpoint):
    """Receives one object into ``store``. Feed it the sender's messages with
    ``receive`` and send what ``messages_to_send`` returns."""

    TABLE = {
        "idle": {"xfer-offer": "_on_offer", "xfer-abort": "_on_abort"},
        "receiving": {"xfer-manifest": "_on_manifest", "xfer-data": "_on_data",
                      "xfer-abort": "_on_abort"},
    }

    def __init__(self, store: ChunkStore, *, limits: ReceiverLimits | None = None) -> None:
        super().__init__(None)
        self.store = store
        self.limits = limits or ReceiverLimits()
        self.name = ""
        self.size = 0
        self.object_hash = b""
        self._count = 0
        self._hashes = bytearray()
        self._lengths = bytearray()
        self._total = 0  # sum of the lengths received so far
        self._wanted: dict[bytes, int] = {}  # hash -> first index, not yet stored
        self._fetched: set[bytes] = set()  # hashes asked for in this transfer, stored since
        self._partial = bytearray()
        self._partial_index = -1
        self._retries: dict[int, int] = {}

    def messages_to_send(self) -> list[bytes]:
        out, self._outbox = self._outbox, []
        return out

    @property
    def manifest(self) -> Manifest | None:
        """The manifest, once all of it has arrived."""
        if self.state == "idle" or len(self._hashes) < self._count * HASH_SIZE:
            return None
        return Manifest(self.object_hash, self.size, self.name,
                        bytes(self._hashes), bytes(self._lengths))

    @property
    def _entries(self) -> int:
        return len(self._hashes) // HASH_SIZE

    def _on_offer(self, msg: Message) -> list[Event]:
        self.xfer = _uint(msg, "xfer")
        size, count = _uint(msg, "size"), _uint(msg, "count")
        name, object_hash = msg.get("filename"), msg.get("object")
        lim = self.limits
        if len(object_hash) != HASH_SIZE:
            raise RemoteProtocolError("object hash must be 32 bytes", "bad-field")
        try:
            check_name(name)
        except LocalProtocolError as exc:
            raise RemoteProtocolError(str(exc), exc.code) from None
        if size > lim.max_size or count > lim.max_chunks:
            raise RemoteProtocolError(f"offer of {size} bytes in {count} chunks", "too-large")
        if count > size or count * lim.max_chunk < size:
            raise RemoteProtocolError(f"{count} chunks cannot hold {size} bytes", "manifest-size")
        self.name, self.size, self.object_hash, self._count = name, size, object_hash, count
        self.stats.chunks_total = count
        self.state = "receiving"
        events: list[Event] = [OfferReceived(name, size, object_hash, count)]
        if count == 0:
            events += self._finish()
        return events

    def _on_manifest(self, msg: Message) -> list[Event]:
        start = _uint(msg, "start")
        hashes, lengths = msg.get("hashes"), msg.get("lengths")
        k = len(hashes) // HASH_SIZE
        if start != self._entries:
            raise RemoteProtocolError(f"manifest piece at {start}, expected {self._entries}",
                                      "manifest-order")
        if k == 0 or len(hashes) != k * HASH_SIZE or len(lengths) != k * LENGTH_SIZE:
            raise RemoteProtocolError("manifest piece is malformed", "manifest-format")
        if start + k > self._count:
            raise RemoteProtocolError("manifest has more entries than offered", "manifest-count")
        self._hashes += hashes  # on any error below, the transfer is over anyway
        self._lengths += lengths
        bitmap = bytearray((k + 7) // 8)
        for j in range(k):
            length = int.from_bytes(lengths[j * LENGTH_SIZE : (j + 1) * LENGTH_SIZE], "big")
            if not 0 < length <= self.limits.max_chunk:
                raise RemoteProtocolError(f"chunk length {length}", "chunk-size")
            self._total += length
            digest = hashes[j * HASH_SIZE : (j + 1) * HASH_SIZE]
            first = self._wanted.get(digest)
            if first is not None:
                if self._length(first) != length:
                    raise RemoteProtocolError("one hash, two lengths", "manifest-inconsistent")
            elif digest in self._fetched:
                pass  # asked for once already: neither reused nor asked again
            elif self.store.has(digest):
                self.stats.chunks_reused += 1
            else:
                self._wanted[digest] = start + j
                bitmap[j >> 3] |= 1 << (j & 7)
        if self._total > self.size:
            raise RemoteProtocolError("chunk lengths exceed the size", "manifest-size")
        if any(bitmap):
            self._send("xfer-need", start=start, count=k, bitmap=bytes(bitmap))
        return self._finish() if self._complete() else []

    def _length(self, index: int) -> int:
        return int.from_bytes(self._lengths[index * LENGTH_SIZE : (index + 1) * LENGTH_SIZE], "big")

    def _complete(self) -> bool:
        if self._entries < self._count:
            return False
        if self._total != self.size:
            raise RemoteProtocolError("chunk lengths do not add up to the size", "manifest-size")
        return not self._wanted

    def _on_data(self, msg: Message) -> list[Event]:
        index, offset, data = _uint(msg, "index"), _uint(msg, "offset"), msg.get("data")
        if index >= self._entries:
            raise RemoteProtocolError(f"data for unknown chunk {index}", "unknown-chunk")
        digest = bytes(self._hashes[index * HASH_SIZE : (index + 1) * HASH_SIZE])
        length = self._length(index)
        if not data or offset + len(data) > length:
            raise RemoteProtocolError(f"data beyond chunk {index}'s length", "chunk-oversized")
        if digest not in self._wanted:  # stored already: a resend is harmless
            self.stats.duplicates += 1
            return []
        if offset == 0:
            self._partial = bytearray(data)
            self._partial_index = index
        elif index == self._partial_index and offset == len(self._partial):
            self._partial += data
        else:
            raise RemoteProtocolError(f"chunk {index} part at {offset} out of order", "data-order")
        if len(self._partial) < length:
            return []
        chunk = bytes(self._partial)
        self._partial = bytearray()
        self._partial_index = -1
        if chunk_id(chunk) != digest:
            self.stats.rejected += 1
            tries = self._retries[index] = self._retries.get(index, 0) + 1
            if tries > self.limits.max_retries:
                raise RemoteProtocolError(f"chunk {index} failed its hash {tries} times",
                                          "chunk-hash")
            self._send("xfer-need", start=index, count=1, bitmap=b"\x01")
            return [ChunkRejected(index, "chunk-hash")]
        self.store.put(digest, chunk)
        del self._wanted[digest]
        self._fetched.add(digest)
        self.stats.chunks_moved += 1
        self.stats.bytes_moved += length
        events: list[Event] = [ChunkStored(index, digest, length)]
        if self._complete():
            events += self._finish()
        return events

    def _finish(self) -> list[Event]:
        """Every chunk is in the store: check the object's hash, then confirm."""
        whole = hashlib.sha256()
        for index in range(self._count):
            digest = bytes(self._hashes[index * HASH_SIZE : (index + 1) * HASH_SIZE])
            try:
                data = self.store.get(digest)
            except KeyError:
                return self._fail("store-missing", f"store lost chunk {index}")
            if len(data) != self._length(index):
                return self._fail("store-length", f"stored chunk {index} has the wrong length")
            whole.update(data)
        if whole.digest() != self.object_hash:
            return self._fail("object-hash", "the chunks do not make up the offered object")
        self.state = "done"
        self._send("xfer-done", object=self.object_hash)
        return [TransferComplete(self.name, self.size, self.object_hash)]


# --- the sender ----------------------------------------------------------------


class Sender(_Endpoint):
    """Sends the object described by ``manifest``; ``read(offset, length)``
    returns bytes of the object. Call ``next_message`` whenever the channel
    can take a message, and ``receive`` with the receiver's messages."""

    TABLE = {
        "offering": {"xfer-need": "_on_need", "xfer-abort": "_on_abort"},
        "sending": {"xfer-need": "_on_need", "xfer-done": "_on_done", "xfer-abort": "_on_abort"},
    }

    def __init__(self, manifest: Manifest, read: Callable[[int, int], bytes], *,
                 xfer: int = 0, part_size: int = DEFAULT_PART_SIZE) -> None:
        manifest.check()
        if not 0 < part_size <= MAX_PART:
            raise LocalProtocolError(f"part_size must be 1..{MAX_PART}", "part-size")
        if xfer < 0:
            raise LocalProtocolError("transfer ids are unsigned", "xfer-id")
        super().__init__(xfer)
        self.manifest = manifest
        self.read = read
        self.part_size = part_size
        self.state = "offering"
        self.stats.chunks_total = manifest.count
        self._offsets = array("Q", [0])
        for _, length in manifest.entries():
            self._offsets.append(self._offsets[-1] + length)
        self._offered = False
        self._next_piece = 0  # manifest entries sent so far
        self._need = bytearray(manifest.count)  # 1 where the receiver wants the chunk
        self._asked = bytearray(manifest.count)  # 1 where it ever asked for it
        self._cursor = 0  # no need below this index
        self._chunk = b""  # the chunk being sent, and where we are in it
        self._chunk_index = -1
        self._chunk_offset = 0

    @property
    def is_done(self) -> bool:
        return self.state == "done"

    def next_message(self) -> bytes | None:
        """The next message to send, or None while waiting for the receiver."""
        if not self._outbox:
            self._produce()
        return self._outbox.pop(0) if self._outbox else None

    def _produce(self) -> None:
        if self.state in self.TERMINAL:
            return
        m = self.manifest
        if not self._offered:
            self._offered = True
            self._send("xfer-offer", object=m.object_hash, size=m.size, filename=m.name,
                       count=m.count)
            if m.count == 0:
                self.state = "sending"
            return
        if self._chunk_index < 0:
            index = self._need.find(1, self._cursor)
            if index >= 0:
                self._load(index)
                if self.state == "failed":
                    return
        if self._chunk_index >= 0:
            self._send_part()
        elif self._next_piece < m.count:
            start = self._next_piece
            end = min(m.count, start + MANIFEST_PIECE)
            self._next_piece = end
            self._send("xfer-manifest", start=start,
                       hashes=m.hashes[start * HASH_SIZE : end * HASH_SIZE],
                       lengths=m.lengths[start * LENGTH_SIZE : end * LENGTH_SIZE])
            if end == m.count:
                self.state = "sending"

    def _load(self, index: int) -> None:
        self._need[index] = 0
        self._cursor = index + 1
        offset, length = self._offsets[index], self.manifest.chunk_length(index)
        data = bytes(self.read(offset, length))
        if len(data) != length or chunk_id(data) != self.manifest.chunk_hash(index):
            self._fail("source-changed", f"chunk {index} no longer matches the manifest")
            return
        self._chunk, self._chunk_index, self._chunk_offset = data, index, 0

    def _send_part(self) -> None:
        part = self._chunk[self._chunk_offset : self._chunk_offset + self.part_size]
        self._send("xfer-data", index=self._chunk_index, offset=self._chunk_offset, data=part)
        self._chunk_offset += len(part)
        if self._chunk_offset >= len(self._chunk):
            self.stats.chunks_moved += 1
            self.stats.bytes_moved += len(self._chunk)
            self._chunk, self._chunk_index = b"", -1

    def _on_need(self, msg: Message) -> list[Event]:
        start, count, bitmap = _uint(msg, "start"), _uint(msg, "count"), msg.get("bitmap")
        if count == 0 or start + count > self.manifest.count or len(bitmap) != (count + 7) // 8:
            raise RemoteProtocolError("need outside the manifest", "need-range")
        if int.from_bytes(bitmap, "little") >> count:
            raise RemoteProtocolError("need bitmap has bits past its count", "need-range")
        for j in range(count):
            if bitmap[j >> 3] >> (j & 7) & 1:
                index = start + j
                self._need[index] = self._asked[index] = 1
                self._cursor = min(self._cursor, index)
        return []

    def _on_done(self, msg: Message) -> list[Event]:
        m = self.manifest
        if msg.get("object") != m.object_hash:
            raise RemoteProtocolError("receiver confirmed another object", "done-mismatch")
        self.state = "done"
        # what the receiver had already, as it counts it: entries whose hash it never asked for
        asked = {m.chunk_hash(i) for i in range(m.count) if self._asked[i]}
        self.stats.chunks_reused = sum(1 for i in range(m.count) if m.chunk_hash(i) not in asked)
        return [TransferComplete(m.name, m.size, m.object_hash)]
