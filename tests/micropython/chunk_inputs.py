"""The inputs of protocol/vectors/chunking.json and the chunking definition's reference
cuts, under either interpreter: tests/test_chunking.py (CPython) and
tests/micropython/vectors_chunking.py (both) share them."""

import hashlib
from typing import Any

from protocol.chunking import GEAR, ChunkParams


def counter_stream(seed: bytes, n: int) -> bytes:
    """SHA-256(seed || k as 8 bytes big-endian) for k = 0, 1, ..., cut to n bytes."""
    out = bytearray((n + 31) // 32 * 32)  # in place: MicroPython's heap is 2 MB
    for k in range(len(out) // 32):
        out[32 * k : 32 * k + 32] = hashlib.sha256(seed + k.to_bytes(8, "big")).digest()
    return bytes(out[:n]) if n < len(out) else bytes(out)


def make_input(spec: dict[str, Any]) -> bytes:
    if spec["kind"] == "sha256-counter":
        return counter_stream(spec["seed"].encode(), spec["length"])
    if spec["kind"] == "sha256-counter-hex":
        return counter_stream(spec["seed"].encode(), spec["length"] // 2).hex().encode()
    if spec["kind"] == "zeros":
        return bytes(spec["length"])
    raise AssertionError(spec)


def reference_cuts(data: bytes, p: ChunkParams) -> list[int]:
    """The module docstring's rules 2-4, literally, over the whole input at once."""
    x = int.from_bytes(bytes(GEAR[b] for b in data), "little")
    h = 0
    for j in range(31):
        h ^= x << (9 * j)
    hb = bytes(2) + h.to_bytes(len(data) + 40, "little")  # H bytes -2, -1, 0, 1, ...

    def f(i: int) -> int:  # bits 8i-16 .. 8i+7 of H
        return hb[i] | hb[i + 1] << 8 | hb[i + 2] << 16

    cuts: list[int] = []
    s, n = 0, len(data)
    while s < n:
        end = 0
        for i in range(s + p.min_size - 1, min(s + p.avg_size - 1, n)):
            if f(i) & p.mask_s == 0:
                end = i + 1
                break
        if not end:
            for i in range(s + p.avg_size - 1, min(s + p.max_size - 1, n)):
                if f(i) & p.mask_l == 0:
                    end = i + 1
                    break
        if not end:
            end = min(s + p.max_size, n)
        cuts.append(end)
        s = end
    return cuts


def ends(chunks: list[bytes]) -> list[int]:
    """Each chunk's end offset in the input."""
    out, acc = [], 0
    for c in chunks:
        acc += len(c)
        out.append(acc)
    return out
