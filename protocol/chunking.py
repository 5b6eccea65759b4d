"""Content-defined chunking in the style of FastCDC (Xia et al., USENIX ATC 2016).

Theory of operation
-------------------
A file is cut where its *content* says so, so an edit moves only the cuts
next to it and every other chunk keeps its SHA-256 name: chunks are shared
between versions of a document and between an interrupted transfer and its
resumption (``transfer.py``). From FastCDC we take a gear-style rolling
fingerprint (each byte looked up in a fixed random table, older bytes
shifted further), *cut-point skipping* (no cut in a chunk's first
``min_size`` bytes, a forced cut at ``max_size``) and *normalized chunking*
(before ``avg_size`` a cut needs ``log2(avg) + level`` zero fingerprint bits,
``mask_s``; after it ``log2(avg) - level``, ``mask_l``, a subset of
``mask_s``), which narrows the spread of sizes around ``avg_size``.

The taps combine with XOR instead of addition: with no carries, a whole
buffer's fingerprints are a few big-integer shifts and XORs, which CPython
runs in C (``python -m tests.test_chunking bench`` compares it with a
per-byte gear loop). The definition, exactly (a port must give identical
cut points):

1. ``GEAR`` is a permutation of 0..255: ``GEAR[k]`` is the k-th of the values
   0..255 sorted by the SHA-256 of their 4-byte big-endian encoding.
2. For the stream ``d[0..n)``, let ``X = sum(GEAR[d[i]] << 8*i)`` (the
   translated bytes read as one little-endian integer) and
   ``H = X ^ (X << 9) ^ (X << 18) ^ ... ^ (X << 9*30)``: 31 taps, each a byte
   older and one bit further left than the last. (An odd count: with 32,
   the taps cancel out on runs of one byte value, or of a short pattern, and
   every position there would be a cut.)
3. The fingerprint after byte ``i`` is ``f(i) = (H >> (8*i - 16)) & 0xFFFFFF``
   (bits of ``H`` below 0 are zero). It depends on ``d[i-36..i]`` only.
4. A chunk starting at ``s`` ends after the first ``i`` with
   ``s + min_size - 1 <= i < s + avg_size - 1`` and ``f(i) & mask_s == 0``;
   else the first ``i`` with ``s + avg_size - 1 <= i < s + max_size - 1`` and
   ``f(i) & mask_l == 0``; else after ``max_size`` bytes; the stream's end
   ends the last chunk.
5. A mask with ``b`` bits set is ``sum(1 << BIT_ORDER[k] for k in range(b))``.

The fingerprint is a function of the stream, so the cuts do not depend on
how the input was split: ``Chunker.feed`` takes one byte or a gigabyte at a
time. Memory stays bounded: a piece is consumed in ``BLOCK``-sized slices;
the chunker holds at most ``max_size + BLOCK`` bytes plus two bytes of mask
tests for each, and hashing uses integers of at most ``2 * BLOCK`` bytes
(16 KiB under MicroPython, whose heap is a few hundred KiB to 2 MiB).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from protocol import MICROPYTHON
from protocol.errors import LocalProtocolError

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator


def _gear_key(value: int) -> bytes:
    return hashlib.sha256(value.to_bytes(4, "big")).digest()


#: The byte substitution table (rule 1 above).
_GEAR_ORDER: list[int] = sorted(range(256), key=_gear_key)
GEAR: bytes = bytes(_GEAR_ORDER)

#: Order in which fingerprint bits join a mask (rule 5): spread over the three
#: bytes of the fingerprint, so each mask looks at the widest window.
BIT_ORDER: tuple[int, ...] = (16, 8, 0, 20, 12, 4, 18, 10, 2, 22, 14, 6,
                              17, 9, 1, 21, 13, 5, 19, 11, 3, 23, 15, 7)

TAPS = 31  # computed below as 32 taps by doubling, minus the 32nd
TAP_SHIFT = 9
FP_BYTES = 3
#: Bytes of history before a position that its fingerprint depends on.
HISTORY = -(-(8 * (FP_BYTES - 1) + TAP_SHIFT * (TAPS - 1)) // 8)
#: Largest slice of an input piece hashed at once.
BLOCK = 64 * 1024
#: Unhashed bytes gathered before hashing them (amortises per-call costs).
_HASH_BATCH = 16 * 1024
#: Largest chunk a manifest can describe (lengths travel as 24-bit integers).
MAX_CHUNK_LIMIT = (1 << 24) - 1

_ZERO_HISTORY = bytes(HISTORY)


def chunk_id(data: bytes | bytearray | memoryview) -> bytes:
    """The name of a chunk: its SHA-256 digest (32 bytes)."""
    return hashlib.sha256(data).digest()


def make_mask(bits: int) -> int:
    """The fingerprint mask with ``bits`` bits set (rule 5)."""
    if not 0 < bits <= len(BIT_ORDER):
        raise LocalProtocolError(f"a mask has 1 to {len(BIT_ORDER)} bits, not {bits}", "mask")
    mask = 0
    for k in range(bits):
        mask |= 1 << BIT_ORDER[k]
    return mask


def _log2(power_of_two: int) -> int:
    return len(bin(power_of_two)) - 3  # MicroPython's int has no bit_length()


@dataclass(frozen=True)
class ChunkParams:
    """Chunk size bounds. ``avg_size`` is a power of two; ``level`` is FastCDC's
    normalization level (0 turns normalized chunking off)."""

    __match_args__ = ("min_size", "avg_size", "max_size", "level")
    min_size: int = 2 * 1024
    avg_size: int = 8 * 1024
    max_size: int = 64 * 1024
    level: int = 2

    def __post_init__(self) -> None:
        if not 1 <= self.min_size < self.avg_size < self.max_size <= MAX_CHUNK_LIMIT:
            raise LocalProtocolError(
                "chunk sizes must satisfy 1 <= min < avg < max < 2**24", "chunk-params"
            )
        if self.avg_size & (self.avg_size - 1):
            raise LocalProtocolError("avg_size must be a power of two", "chunk-params")
        bits = _log2(self.avg_size)
        if not 0 <= self.level < bits or bits + self.level > len(BIT_ORDER):
            raise LocalProtocolError("normalization level out of range", "chunk-params")

    @property
    def mask_s(self) -> int:
        """The mask before ``avg_size``: ``log2(avg) + level`` bits."""
        return make_mask(_log2(self.avg_size) + self.level)

    @property
    def mask_l(self) -> int:
        """The mask from ``avg_size`` on: ``log2(avg) - level`` bits."""
        return make_mask(_log2(self.avg_size) - self.level)


DEFAULT_PARAMS = ChunkParams()


#: Largest run of bytes hashed in one go (bounds the temporary integers; a device's
#: heap is smaller). The cuts do not depend on it.
_HASH_SPAN = _HASH_BATCH if MICROPYTHON else 2 * BLOCK
#: Bytes by which H (and the masked tests) can outgrow its input.
_SPILL = (TAP_SHIFT * TAPS) // 8 + FP_BYTES
_MASK_INTS: dict[int, tuple[int, ...]] = {}


def _mask_ints(mask: int) -> tuple[int, ...]:
    """For each fingerprint byte k: mask byte k repeated over a whole span."""
    ints = _MASK_INTS.get(mask)
    if ints is None:
        if len(_MASK_INTS) >= 16:
            _MASK_INTS.clear()
        width = _HASH_SPAN + HISTORY + _SPILL
        ints = _MASK_INTS[mask] = tuple(
            int.from_bytes(bytes([(mask >> (8 * k)) & 0xFF]) * width, "little")
            for k in range(FP_BYTES)
        )
    return ints


def _translate(data: bytes | bytearray) -> bytes | bytearray:
    """``data``'s bytes through ``GEAR`` (rule 1)."""
    if MICROPYTHON:  # its bytes have no translate()
        gear = GEAR
        return bytes(gear[b] for b in data)
    return data.translate(GEAR)


def _candidates(tx: bytes, mask_s: int, mask_l: int) -> tuple[bytes, bytes]:
    """Fingerprint tests for the positions of ``tx`` after its first ``HISTORY``
    bytes (which are history). ``tx`` is already translated through ``GEAR``.
    Returns two byte strings, one byte a position, zero where the position
    passes ``mask_s`` (first) or ``mask_l`` (second).

    Integer operations are cheap here; conversions between bytes and int are
    not, so there are three: one in, one out for each mask."""
    n = len(tx) - HISTORY
    h = int.from_bytes(tx, "little")
    x = h
    shift = TAP_SHIFT
    for _ in range(5):  # doubling: after each step h holds twice the taps
        h ^= h << shift
        shift <<= 1
    h ^= x << (TAP_SHIFT * TAPS)  # 32 taps less the last one
    # Byte i of z ORs fingerprint byte k (H byte i - 2 + k) under mask byte k.
    out: list[bytes] = []
    for mask in (mask_s, mask_l):
        z = 0
        for k, rep in enumerate(_mask_ints(mask)):
            if (mask >> (8 * k)) & 0xFF:
                z |= (h & rep) << (8 * (FP_BYTES - 1 - k))
        z >>= 8 * HISTORY
        out.append(z.to_bytes(n + _SPILL, "little")[:n])
    return out[0], out[1]


class Chunker:
    """Streaming chunker: ``feed`` pieces, then ``finish``; both return the
    chunks completed so far, in order. Their concatenation is the input."""

    def __init__(self, params: ChunkParams = DEFAULT_PARAMS) -> None:
        self.params = params
        self._buf = bytearray()  # data of the chunk in progress and beyond
        self._zs = bytearray()  # mask_s test per hashed byte of _buf
        self._zl = bytearray()  # mask_l test per hashed byte of _buf
        self._history = _ZERO_HISTORY  # translated bytes just before the unhashed ones
        self._finished = False

    @property
    def buffered(self) -> int:
        """Bytes held, waiting for a cut."""
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        if self._finished:
            raise LocalProtocolError("feed() after finish()", "finished")
        out: list[bytes] = []
        view = memoryview(data)
        if not MICROPYTHON:  # MicroPython's memoryview has no cast(); its views are bytes
            view = view.cast("B")
        max_size = self.params.max_size
        for start in range(0, len(view), BLOCK):
            self._buf += view[start : start + BLOCK]
            if len(self._buf) - len(self._zs) >= _HASH_BATCH or len(self._buf) >= max_size:
                self._hash_pending()
                self._cut(out, final=False)
        return out

    def finish(self) -> list[bytes]:
        """Flush the last chunks. The chunker cannot be fed afterwards."""
        if self._finished:
            return []
        self._finished = True
        out: list[bytes] = []
        self._hash_pending()
        self._cut(out, final=True)
        return out

    def _hash_pending(self) -> None:
        p = self.params
        while (done := len(self._zs)) < len(self._buf):
            tx = self._history + _translate(self._buf[done : done + _HASH_SPAN])
            zs, zl = _candidates(tx, p.mask_s, p.mask_l)
            self._zs += zs
            self._zl += zl
            self._history = tx[-HISTORY:]

    def _cut(self, out: list[bytes], *, final: bool) -> None:
        p = self.params
        buf, zs, zl = self._buf, self._zs, self._zl
        s = 0  # the chunk in progress starts at buf[s]
        while s < len(buf):
            hashed = len(zs) - s  # == len(buf) - s when final
            size = 0
            if hashed >= p.min_size:
                i = zs.find(0, s + p.min_size - 1, s + min(p.avg_size - 1, hashed))
                if i >= 0:
                    size = i + 1 - s
            if not size and hashed >= p.avg_size:
                i = zl.find(0, s + p.avg_size - 1, s + min(p.max_size - 1, hashed))
                if i >= 0:
                    size = i + 1 - s
                elif hashed >= p.max_size:
                    size = p.max_size
            if not size:
                if not final:
                    break
                size = len(buf) - s
            out.append(bytes(buf[s : s + size]))
            s += size
        if s:  # one copy a call (MicroPython cannot delete a slice of a bytearray)
            self._buf, self._zs, self._zl = buf[s:], zs[s:], zl[s:]


def iter_chunks(pieces: Iterable[bytes | bytearray | memoryview],
                params: ChunkParams = DEFAULT_PARAMS) -> Iterator[bytes]:
    """Chunks of the concatenation of ``pieces``, with bounded memory."""
    chunker = Chunker(params)
    for piece in pieces:
        yield from chunker.feed(piece)
    yield from chunker.finish()


def chunk_bytes(data: bytes, params: ChunkParams = DEFAULT_PARAMS) -> list[bytes]:
    """All chunks of ``data``."""
    return list(iter_chunks([data], params))
