"""Manifests and chunk stores for ``transfer.py``.

A manifest describes an object as the ordered list of its content-defined
chunks (SHA-256 and length of each) plus the object's SHA-256, size and name;
``build_manifest`` makes one from the object's bytes. A ``ChunkStore`` is where
a receiver keeps chunks by hash; ``MemoryStore`` is one in a dict.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from protocol.chunking import DEFAULT_PARAMS, ChunkParams, chunk_id, iter_chunks
from protocol.errors import LocalProtocolError

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

HASH_SIZE = 32
LENGTH_SIZE = 3
MAX_NAME = 255


#: Bidi embeddings, overrides and isolates (U+202A-U+202E, U+2066-U+2069): in a name
#: they make ``invoice\u202efdp.exe`` read as ``invoiceexe.pdf``.
BIDI_CONTROLS = frozenset(map(chr, list(range(0x202A, 0x202F)) + list(range(0x2066, 0x206A))))


def _control(c: str) -> bool:
    o = ord(c)
    return o < 0x20 or 0x7F <= o <= 0x9F or c in BIDI_CONTROLS  # C0, DEL, C1, bidi


def check_name(name: str) -> None:
    """Refuse names that are not one plain path component, or that hold control
    characters (C0, DEL, C1) or bidi controls."""
    raw = name.encode("utf-8", "surrogatepass")
    if (not 0 < len(raw) <= MAX_NAME or name in (".", "..") or "/" in name or "\\" in name
            or any(map(_control, name))):
        raise LocalProtocolError(f"object name {name!r} is not a plain file name", "bad-name")


@dataclass(frozen=True)
class Manifest:
    """What an object is made of. ``hashes`` and ``lengths`` are the wire forms."""

    __match_args__ = ("object_hash", "size", "name", "hashes", "lengths")
    object_hash: bytes
    size: int
    name: str
    hashes: bytes
    lengths: bytes

    @property
    def count(self) -> int:
        return len(self.hashes) // HASH_SIZE

    def chunk_hash(self, index: int) -> bytes:
        return self.hashes[index * HASH_SIZE : (index + 1) * HASH_SIZE]

    def chunk_length(self, index: int) -> int:
        return int.from_bytes(self.lengths[index * LENGTH_SIZE : (index + 1) * LENGTH_SIZE], "big")

    def entries(self) -> Iterator[tuple[bytes, int]]:
        for i in range(self.count):
            yield self.chunk_hash(i), self.chunk_length(i)

    def check(self) -> None:
        """Raise ``LocalProtocolError`` unless the manifest is self-consistent."""
        check_name(self.name)
        if len(self.object_hash) != HASH_SIZE or len(self.hashes) % HASH_SIZE:
            raise LocalProtocolError("hashes must be 32-byte SHA-256 digests", "manifest")
        if len(self.lengths) != self.count * LENGTH_SIZE:
            raise LocalProtocolError("one length per hash", "manifest")
        lengths = [self.chunk_length(i) for i in range(self.count)]
        if 0 in lengths or sum(lengths) != self.size:
            raise LocalProtocolError("chunk lengths do not add up to the size", "manifest")


class ManifestBuilder:
    """Accumulates a manifest chunk by chunk (hashes the object on the way)."""

    def __init__(self) -> None:
        self._object = hashlib.sha256()
        self._hashes = bytearray()
        self._lengths = bytearray()
        self._size = 0

    def add(self, chunk: bytes) -> bytes:
        """Record the next chunk; returns its hash."""
        if not 0 < len(chunk) < 1 << (8 * LENGTH_SIZE):
            raise LocalProtocolError("a chunk has 1 byte to 16 MiB", "chunk-size")
        digest = chunk_id(chunk)
        self._object.update(chunk)
        self._hashes += digest
        self._lengths += len(chunk).to_bytes(LENGTH_SIZE, "big")
        self._size += len(chunk)
        return digest

    def finish(self, name: str) -> Manifest:
        manifest = Manifest(self._object.digest(), self._size, name,
                            bytes(self._hashes), bytes(self._lengths))
        manifest.check()
        return manifest


def build_manifest(pieces: Iterable[bytes | bytearray | memoryview], name: str,
                   params: ChunkParams = DEFAULT_PARAMS) -> Manifest:
    """The manifest of the concatenation of ``pieces`` (streamed, bounded memory)."""
    builder = ManifestBuilder()
    for chunk in iter_chunks(pieces, params):
        builder.add(chunk)
    return builder.finish(name)


# -- the receiver's store -------------------------------------------------------


class ChunkStore(Protocol):
    """Where a receiver keeps chunks. ``put`` is durable when it returns."""

    def has(self, chunk_hash: bytes) -> bool: ...

    def put(self, chunk_hash: bytes, data: bytes) -> None: ...

    def get(self, chunk_hash: bytes) -> bytes: ...


class MemoryStore:
    """A ``ChunkStore`` in a dict, for tests and small tools."""

    def __init__(self) -> None:
        self.chunks: dict[bytes, bytes] = {}
        self.puts = 0

    def has(self, chunk_hash: bytes) -> bool:
        return chunk_hash in self.chunks

    def put(self, chunk_hash: bytes, data: bytes) -> None:
        self.puts += 1
        self.chunks[chunk_hash] = bytes(data)

    def get(self, chunk_hash: bytes) -> bytes:
        return self.chunks[chunk_hash]
