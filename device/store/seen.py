"""The dots of the deltas from elsewhere a record holds, packed in its ``records`` row.

A delta from the hub is merged into the registers and leaves only its dot
behind, for exact duplicate detection: 12 bytes (stamp u64, node u32, big
endian) appended to ``records.seen``, with ``records.seen_at`` the greatest
cursor any of them came with (``collect`` compares it with the stable
point). The record's row is read (its heads) and written (its new head) by
every merge anyway, so the dots cost no page and no lookup of their own,
where a table of them cost a quarter of a merge. A dot is held when it
occurs in the blob at a multiple of 12 (``holds``), never across two.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator

from protocol.crdt.clock import Dot

DOT = struct.Struct(">QI")
SIZE = DOT.size


def pack(stamp: int, node: int) -> bytes:
    return DOT.pack(stamp, node)


def holds(blob: bytes | None, key: bytes) -> bool:
    """Whether the packed dot ``key`` is one of ``blob``'s."""
    if not blob:
        return False
    i = blob.find(key)
    while i >= 0:
        if i % SIZE == 0:
            return True
        i = blob.find(key, i + 1)
    return False


def dots(blob: bytes | None) -> Iterator[Dot]:
    for stamp, node in DOT.iter_unpack(blob or b""):
        yield Dot(stamp, node)


def packed(items: Iterable[tuple[int, int]]) -> bytes:
    return b"".join(DOT.pack(stamp, node) for stamp, node in items)


#: Append dots (and their cursor) to a record that exists. (``||`` makes text of blobs,
#: byte for byte; the cast makes it a blob again.)
ADD = ("UPDATE records SET seen = CAST(COALESCE(seen, X'') || ? AS BLOB),"
       " seen_at = MAX(seen_at, ?) WHERE rid = ?")
