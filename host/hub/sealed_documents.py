"""Document content on the hub, sealed at rest and named by keyed hash.

Theory of operation
-------------------
``SealedChunks`` is the chunk store of the hub's document transfers
(``document_inbox``). Each chunk is a file ``DATA/documents/chunks/<name>``,
``name`` = HMAC(the keyring's name key, chunk SHA-256) (``at_rest.Sealer.name``),
its content sealed under the current data key with the name as associated
data; written to a temporary file, fsynced, renamed into place, so ``put``
is durable when it returns, and a transfer cut short resumes with the chunks
stored (``has``). A chunk two documents share is stored once. When a
transfer completes, the document's manifest (size, SHA-256, each chunk's
hash and length: CBOR) is sealed the same way as
``DATA/documents/objects/<HMAC(name key, record id)>``. No name says what a
file holds, and no plain hash of the content is kept that a guess could be
checked against; sizes stay visible. ``drop`` takes an erased patient's
documents out: their manifests and the chunks no other document uses.

``reseal_files`` is the re-sealer's last stage (``storage.HubStore.reseal_slice``):
it re-seals files of an older key (each one a rename: never half written),
then turns the plain documents of a hub from before (``DirStore``'s
``DATA/documents/<record id>`` and its index of plain chunk hashes) into
sealed chunks and a manifest, and only then deletes the plain file and, at
the end, the index.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import shutil
import stat
from collections.abc import Callable
from pathlib import Path

import cbor2

from host.hub.at_rest import Sealer
from host.transfer_store import STATE_DIR
from protocol.chunking import chunk_bytes, chunk_id
from protocol.driver.secret_files import destroy_secret, fsync_dir, write_whole
from protocol.transfer import HASH_SIZE, LENGTH_SIZE

CHUNKS, OBJECTS = "chunks", "objects"
_RECORD_ID = re.compile(r"[0-9a-f]{32}")  #: a plain document's name, before sealing
#: Files a re-seal slice handles at most.
FILES_PER_SLICE = 16


def _dirs(root: Path) -> tuple[Path, Path]:
    chunks, objects = root / CHUNKS, root / OBJECTS
    for d in (root, chunks, objects):
        d.mkdir(mode=0o700, exist_ok=True)
        owner_only(d)
    return chunks, objects


def owner_only(directory: Path) -> None:
    """Make a directory of the hub's owner-only (0700), as it is made; a hub from before
    sealing made ``documents/`` with the umask's mode (0755, say), where other users
    could list the files. No error for one that is missing."""
    with contextlib.suppress(FileNotFoundError):
        if stat.S_IMODE(directory.stat().st_mode) != 0o700:
            directory.chmod(0o700)


class SealedChunks:
    """The chunks of the documents in ``root`` and of the one being received."""

    def __init__(self, root: Path, sealer: Sealer | Callable[[], Sealer]) -> None:
        """``sealer``: or what gives the store's at each use (a rotation meanwhile)."""
        self.root = Path(root)
        self._sealer = sealer
        self.chunks, self.objects = _dirs(self.root)
        self.object: bytes | None = None
        self.name = ""
        self.size = 0
        self._layout: list[tuple[bytes, int]] = []

    @property
    def sealer(self) -> Sealer:
        return self._sealer if isinstance(self._sealer, Sealer) else self._sealer()

    def _chunk(self, chunk_hash: bytes) -> Path:
        return self.chunks / self.sealer.name(b"chunk", chunk_hash)

    def begin(self, object_hash: bytes, name: str, size: int) -> None:
        self.object, self.name, self.size, self._layout = object_hash, name, size, []

    def add_layout(self, start: int, hashes: bytes, lengths: bytes) -> None:
        if self.object is None or start != len(self._layout):
            return  # out of order: the transfer refuses it anyway
        for j in range(len(hashes) // HASH_SIZE):
            self._layout.append((hashes[j * HASH_SIZE:(j + 1) * HASH_SIZE], int.from_bytes(
                lengths[j * LENGTH_SIZE:(j + 1) * LENGTH_SIZE], "big")))

    def has(self, chunk_hash: bytes) -> bool:
        return self._chunk(chunk_hash).exists()

    def put(self, chunk_hash: bytes, data: bytes) -> None:
        path = self._chunk(chunk_hash)
        write_whole(path, self.sealer.seal(path.name.encode(), data))

    def get(self, chunk_hash: bytes) -> bytes:
        path = self._chunk(chunk_hash)
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            raise KeyError(chunk_hash.hex()) from None
        data = self.sealer.open(path.name.encode(), blob)
        if chunk_id(data) != chunk_hash:
            raise KeyError(chunk_hash.hex())
        return data

    def finish(self) -> Path:
        """The document's sealed manifest in place (its chunks are, already)."""
        assert self.object is not None
        path = self.objects / self.sealer.name(b"document", bytes.fromhex(self.name))
        manifest = cbor2.dumps([self.size, self.object, self._layout])
        write_whole(path, self.sealer.seal(path.name.encode(), manifest))
        self.object = None
        return path

    def manifest(self, record_id: bytes) -> tuple[int, bytes, list[tuple[bytes, int]]] | None:
        """(size, SHA-256, [(chunk hash, length)]) of a document held, or None."""
        path = self.objects / self.sealer.name(b"document", record_id)
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            return None
        size, digest, layout = cbor2.loads(self.sealer.open(path.name.encode(), blob))
        return size, digest, [(bytes(h), n) for h, n in layout]

    def read(self, record_id: bytes) -> bytes | None:
        """A document's content, checked against its SHA-256; None if not held whole."""
        held = self.manifest(record_id)
        if held is None:
            return None
        try:
            content = b"".join(self.get(h) for h, _ in held[2])
        except KeyError:
            return None
        return content if hashlib.sha256(content).digest() == held[1] else None

    def close(self) -> None:
        self.object = None

    def drop(self, record_ids: set[bytes]) -> int:
        """The documents ``record_ids`` (an erased patient's) gone: their manifests and
        every chunk no other document uses, each overwritten, synced and unlinked.
        Returns how many files went."""
        gone = {self.objects / self.sealer.name(b"document", rid) for rid in record_ids}
        chunks: set[bytes] = set()
        for path in gone:
            if path.exists():
                chunks.update(h for h, _ in _manifest_at(self, path)[2])
        for path in self.objects.iterdir():
            if path not in gone and not path.name.endswith(".tmp"):
                chunks.difference_update(bytes(h) for h, _ in _manifest_at(self, path)[2])
        dropped = sum(destroy_secret(p) for p in [*gone, *map(self._chunk, chunks)])
        fsync_dir(self.objects)
        fsync_dir(self.chunks)
        return dropped


def held(root: Path, sealer: Sealer) -> dict[str, int]:
    """Documents held whole (count and bytes), from their manifests."""
    store = SealedChunks(root, sealer)
    sizes = [m[0] for p in sorted(store.objects.iterdir()) if not p.name.endswith(".tmp")
             for m in [_manifest_at(store, p)] if m is not None]
    return {"documents": len(sizes), "bytes": sum(sizes)}


def _manifest_at(store: SealedChunks, path: Path) -> tuple[int, bytes, list[tuple[bytes, int]]]:
    size, digest, layout = cbor2.loads(store.sealer.open(path.name.encode(), path.read_bytes()))
    return size, digest, layout


def reseal_files(root: Path, sealer: Sealer, limit: int = FILES_PER_SLICE) -> bool:
    """Up to ``limit`` files re-sealed under the current key, or plain documents of a
    hub from before sealed; True once none is left."""
    store = SealedChunks(root, sealer)
    done = 0
    for d in (store.chunks, store.objects):
        for path in sorted(d.iterdir()):
            if path.name.endswith(".tmp"):
                continue  # a write in progress (or cut short: sealed all the same)
            blob = path.read_bytes()
            if blob[:1] == bytes([sealer.current]):
                continue
            write_whole(path, sealer.reseal(path.name.encode(), blob))
            done += 1
            if done >= limit:
                return False
    for path in sorted(p for p in root.iterdir() if p.is_file()):  # from before sealing
        if not _RECORD_ID.fullmatch(path.name):
            continue
        content = path.read_bytes()
        store.begin(hashlib.sha256(content).digest(), path.name, len(content))
        for chunk in chunk_bytes(content):
            digest = chunk_id(chunk)
            store.add_layout(len(store._layout), digest, len(chunk).to_bytes(LENGTH_SIZE, "big"))
            if not store.has(digest):
                store.put(digest, chunk)
        store.finish()
        path.unlink()
        fsync_dir(root)
        done += 1
        if done >= limit:
            return False
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(root / STATE_DIR)  # the plain index: chunk hashes of plain documents
    return True
