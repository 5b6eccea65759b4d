"""The kiosk's document content: sealed, content-addressed chunks in ``documents.db``.

Theory of operation
-------------------
``attach`` reads a file 1 MiB at a time and cuts it into content-defined
chunks (``protocol.chunking``) as it goes, so a document of any size costs a
few chunks of memory. Each chunk is sealed with the store's blob cipher
(AES-256-GCM, bound to the chunk's name) and kept under a keyed name: the
HMAC-SHA256 of its SHA-256 under a random key that is itself sealed in the
database. So the disk holds neither plaintext nor plaintext hashes (a
chunk's SHA-256 would confirm a guessed document), and a chunk two
documents share is kept once. Chunks commit in groups of about 1 MiB: a
rerun after a crash seals and writes only the chunks not stored yet.

A document's manifest (its SHA-256, its chunks' hashes and lengths) is
sealed in its row, bound to the record id. The row commits before the
``document`` record (subject, title, contentType, size, hash) is written
through the store's normal write path, whose delta syncs in lane 3: a record
never lacks its content, and a row whose record was never written (a crash
in between) is never offered (sync checks the record first).

A row is ``held`` until the hub confirms the whole content (``delivered``)
or refuses it for good (``refused``, with the reason); otherwise it waits
the outbox's backoff before the next offer. Size and chunk count stay in
plaintext: the sealed chunks' lengths show them anyway.

The tables change only through numbered migrations (``MIGRATIONS``,
``protocol.driver.database``).
"""

from __future__ import annotations

import hashlib
import hmac
import mimetypes
import os
import random
import time
import uuid
from array import array
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from device.store import BadRequest, CorruptData, FieldCipher, Store
from device.store.outbox import backoff_ms
from protocol.chunking import iter_chunks
from protocol.crdt import schema as crdt_schema
from protocol.crdt.ids import random_id
from protocol.driver.database import Migrations, immediate, open_database
from protocol.errors import LocalProtocolError
from protocol.manifest import HASH_SIZE, LENGTH_SIZE, Manifest, ManifestBuilder

DB_NAME = "documents.db"
READ_SIZE = 1 << 20
COMMIT_BYTES = 1 << 20
HELD, DELIVERED, REFUSED = "held", "delivered", "refused"
NAMES_LABEL = b"haven/doc-names"
MIGRATIONS = Migrations("documents.db")
#: 1: the tables as release c3497bc made them (``IF NOT EXISTS``: its files are at 1).
MIGRATIONS.sql(
    1,
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS chunks (name BLOB PRIMARY KEY, sealed BLOB NOT NULL)",
    """CREATE TABLE IF NOT EXISTS documents (
        rid BLOB PRIMARY KEY, size INTEGER NOT NULL, chunks INTEGER NOT NULL,
        state TEXT NOT NULL, reason TEXT, added INTEGER NOT NULL, manifest BLOB NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0, next_at INTEGER NOT NULL DEFAULT 0)""",
)


def _chunk_label(name: bytes) -> bytes:
    return b"haven/doc-chunk\x00" + name


def _manifest_label(rid: bytes) -> bytes:
    return b"haven/doc-manifest\x00" + rid


class DocumentStore:
    """Chunks and manifests of the documents attached on this kiosk."""

    def __init__(self, data: Path, cipher: FieldCipher) -> None:
        self.cipher = cipher
        self.db = open_database(Path(data) / DB_NAME, MIGRATIONS, synchronous="FULL")
        self._names_key = self._load_names_key()

    def close(self) -> None:
        self.db.close()

    def _load_names_key(self) -> bytes:
        self.db.execute("INSERT OR IGNORE INTO meta VALUES ('names', ?)",
                        [self.cipher.seal_blob(NAMES_LABEL, os.urandom(32))])
        row = self.db.execute("SELECT value FROM meta WHERE key = 'names'").fetchone()
        return self.cipher.open_blob(NAMES_LABEL, row[0])

    def _name(self, chunk_hash: bytes) -> bytes:
        return hmac.new(self._names_key, chunk_hash, hashlib.sha256).digest()

    # -- writing ---------------------------------------------------------------

    def add_content(self, fd: int) -> tuple[Manifest, int]:
        """Chunk and seal what ``fd`` holds; returns its manifest and the chunks
        newly stored (the others were here already)."""
        builder = ManifestBuilder()
        batch: list[tuple[bytes, bytes]] = []
        batch_bytes = new = 0
        for chunk in iter_chunks(_pieces(fd)):
            name = self._name(builder.add(chunk))
            if self.db.execute("SELECT 1 FROM chunks WHERE name = ?", [name]).fetchone():
                continue
            batch.append((name, self.cipher.seal_blob(_chunk_label(name), chunk)))
            batch_bytes += len(chunk)
            if batch_bytes >= COMMIT_BYTES:
                new += self._put_chunks(batch)
                batch, batch_bytes = [], 0
        new += self._put_chunks(batch)
        return builder.finish("document"), new

    def _put_chunks(self, rows: list[tuple[bytes, bytes]]) -> int:
        with immediate(self.db):
            return sum(self.db.execute("INSERT OR IGNORE INTO chunks VALUES (?, ?)",
                                       row).rowcount for row in rows)

    def register(self, rid: bytes, manifest: Manifest, now_ms: int) -> None:
        sealed = self.cipher.seal_blob(
            _manifest_label(rid), manifest.object_hash + manifest.hashes + manifest.lengths)
        self.db.execute("INSERT INTO documents (rid, size, chunks, state, added, manifest)"
                        " VALUES (?, ?, ?, ?, ?, ?)",
                        [rid, manifest.size, manifest.count, HELD, now_ms, sealed])

    def mark(self, rid: bytes, state: str, reason: str | None = None) -> None:
        """Record what became of a document's content (durable on return)."""
        self.db.execute("UPDATE documents SET state = ?, reason = ? WHERE rid = ?",
                        [state, reason, rid])

    def requeue_delivered(self) -> int:
        """Offer again every document the hub confirmed (a hub restored from a backup may
        lack the content); returns how many. Content the hub holds costs an offer: no
        chunk it has is sent."""
        return int(self.db.execute(
            "UPDATE documents SET state = ?, reason = NULL, attempts = 0, next_at = 0"
            " WHERE state = ?", [HELD, DELIVERED]).rowcount)

    def retry_later(self, rid: bytes, reason: str, now_ms: int, rng: random.Random) -> None:
        """The hub did not take the content this time: offer it again after a backoff
        (the outbox's), so content the hub keeps refusing costs little."""
        attempts = self.db.execute("SELECT attempts FROM documents WHERE rid = ?",
                                   [rid]).fetchone()[0] + 1
        self.db.execute("UPDATE documents SET attempts = ?, next_at = ?, reason = ?"
                        " WHERE rid = ?", [attempts, now_ms + backoff_ms(attempts, rng),
                                           reason, rid])

    def forget(self, rids: Iterable[bytes]) -> int:
        """The content of documents ``rids`` (an erased patient's) gone: their rows, and
        every chunk no other document uses, zeroed where they lay (``secure_delete``),
        the log cut after; returns how many documents went."""
        gone = [r for r in rids if self.db.execute(
            "SELECT 1 FROM documents WHERE rid = ?", [r]).fetchone()]
        if not gone:
            return 0
        kept = [bytes(r) for (r,) in self.db.execute("SELECT rid FROM documents")
                if bytes(r) not in gone]
        unused = self._names_of(gone) - self._names_of(kept)
        self.db.execute("PRAGMA secure_delete = ON")
        with immediate(self.db):
            self.db.conn.executemany("DELETE FROM documents WHERE rid = ?", [(r,) for r in gone])
            self.db.conn.executemany("DELETE FROM chunks WHERE name = ?",
                                     [(n,) for n in unused])
        self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        return len(gone)

    def _names_of(self, rids: Iterable[bytes]) -> set[bytes]:
        return {self._name(h) for rid in rids for h, _ in self.manifest(rid).entries()}

    # -- reading ---------------------------------------------------------------

    def held(self, now_ms: int | None = None) -> list[bytes]:
        """Record ids whose content the hub has neither confirmed nor refused, oldest
        first; with ``now_ms``, only those not waiting to be tried again."""
        return [bytes(r) for (r,) in self.db.execute(
            "SELECT rid FROM documents WHERE state = ? AND next_at <= ? ORDER BY added, rid",
            [HELD, now_ms if now_ms is not None else 1 << 62])]

    def manifest(self, rid: bytes) -> Manifest:
        """The document's manifest, named by its record id (``CorruptData``, ``KeyError``)."""
        row = self.db.execute("SELECT manifest FROM documents WHERE rid = ?", [rid]).fetchone()
        if row is None:
            raise KeyError(rid.hex())
        plain = self.cipher.open_blob(_manifest_label(rid), row[0])
        count = (len(plain) - HASH_SIZE) // (HASH_SIZE + LENGTH_SIZE)
        hashes = plain[HASH_SIZE : HASH_SIZE + count * HASH_SIZE]
        lengths = plain[HASH_SIZE + count * HASH_SIZE :]
        size = sum(int.from_bytes(lengths[i : i + LENGTH_SIZE], "big")
                   for i in range(0, len(lengths), LENGTH_SIZE))
        return Manifest(plain[:HASH_SIZE], size, rid.hex(), hashes, lengths)

    def chunk(self, chunk_hash: bytes) -> bytes | None:
        """A chunk's plaintext; None when it is missing or fails authentication."""
        name = self._name(chunk_hash)
        row = self.db.execute("SELECT sealed FROM chunks WHERE name = ?", [name]).fetchone()
        if row is None:
            return None
        try:
            return self.cipher.open_blob(_chunk_label(name), row[0])
        except CorruptData:
            return None

    def reader(self, manifest: Manifest) -> Callable[[int, int], bytes]:
        """``read(offset, length)`` over the document, for ``protocol.transfer.Sender``
        (which reads whole chunks and checks each against its hash)."""
        starts = array("Q", [0])
        for _, length in manifest.entries():
            starts.append(starts[-1] + length)

        def read(offset: int, length: int) -> bytes:
            index = bisect_right(starts, offset) - 1
            if not 0 <= index < manifest.count or starts[index] != offset:
                return b""
            return self.chunk(manifest.chunk_hash(index)) or b""
        return read

    def summary(self) -> dict[str, Any]:
        """Documents and bytes per state, and the refused ones with their reasons."""
        states = {s: {"documents": n, "bytes": b} for s, n, b in self.db.execute(
            "SELECT state, COUNT(*), SUM(size) FROM documents GROUP BY state")}
        refused = [{"record_id": str(uuid.UUID(bytes=bytes(r))), "reason": why}
                   for r, why in self.db.execute(
                       "SELECT rid, reason FROM documents WHERE state = ? ORDER BY added",
                       [REFUSED])]
        return {"states": states, "refused": refused}


def summary_of(store: Store) -> dict[str, Any]:
    """``DocumentStore.summary`` of a kiosk (empty where nothing was ever attached)."""
    if not (store.data / DB_NAME).exists():
        return {"states": {}, "refused": []}
    docs = DocumentStore(store.data, store.cipher)
    try:
        return docs.summary()
    finally:
        docs.close()


def _pieces(fd: int) -> Iterator[bytes]:
    offset = 0
    while piece := os.pread(fd, READ_SIZE, offset):
        offset += len(piece)
        yield piece


# -- attach ----------------------------------------------------------------------


@dataclass(frozen=True)
class Attached:
    record_id: str
    size: int
    sha256: str
    chunks: int
    new_chunks: int  #: chunks written now (a rerun finds the others stored)


def attach(store: Store, path: Path, *, patient: str, title: str | None = None,
           content_type: str | None = None, now_ms: int | None = None) -> Attached:
    """Store ``path``'s content on the kiosk and write its ``document`` record."""
    view = store.view(patient)
    if view is None or view.deleted or view.type != crdt_schema.PATIENT.number:
        raise BadRequest(f"no patient {patient} on this kiosk", "no-patient")
    title = title or path.name
    content_type = (content_type or mimetypes.guess_type(path.name)[0]
                    or "application/octet-stream")
    try:  # refused before any content is stored
        crdt_schema.DOCUMENT.field("title").to_wire(title)
        crdt_schema.DOCUMENT.field("contentType").to_wire(content_type)
    except LocalProtocolError as exc:
        raise BadRequest(str(exc), exc.code) from None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise BadRequest(f"cannot read {path}: {exc.strerror}", "no-file") from None
    now = store.clock() if now_ms is None else now_ms
    rid = random_id(os.urandom(16))
    try:
        if not os.path.isfile(path):
            raise BadRequest(f"{path} is not a regular file", "no-file")
        if os.fstat(fd).st_size == 0:
            raise BadRequest(f"{path} is empty", "empty-file")
        # A full disk is StorageFull, as for every write; chunks stored before it stay.
        with store.full_disk_guard():
            docs = DocumentStore(store.data, store.cipher)
            try:
                manifest, new = docs.add_content(fd)
                docs.register(rid.bytes, manifest, now)
            finally:
                docs.close()
    finally:
        os.close(fd)
    values = {
        "subject": patient, "status": "current", "title": title, "contentType": content_type,
        "size": manifest.size, "hash": manifest.object_hash.hex(),
        "creation": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now / 1000)),
    }
    store.put(crdt_schema.DOCUMENT.name, str(rid), values, now_ms=now)
    return Attached(str(rid), manifest.size, manifest.object_hash.hex(), manifest.count, new)
