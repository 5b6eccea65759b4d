"""The portable raw deflate (MicroPython's, for sync batches) against zlib: each inflates
what the other deflates, and damaged, cut or trailed streams get the verdict zlib's
reading of them gives (what protocol.sync.batches turns into its error codes)."""

from __future__ import annotations

import random
import zlib

import pytest

from protocol.portable import deflate

LIMIT = 1 << 16


def _zlib_deflate(data: bytes, level: int) -> bytes:
    squeezer = zlib.compressobj(level, zlib.DEFLATED, -15)
    return squeezer.compress(data) + squeezer.flush()


def _zlib_verdict(data: bytes) -> str:
    """What batches.py (CPython) makes of ``data``: ok, size (cut, trailed, too large)
    or compress (not deflate)."""
    try:
        d = zlib.decompressobj(-15)
        d.decompress(data, LIMIT)
    except zlib.error:
        return "compress"
    return "size" if d.unconsumed_tail or not d.eof or d.unused_data else "ok"


def _portable_verdict(data: bytes) -> str:
    try:
        deflate.decompress(data, LIMIT)
    except (deflate.Truncated, deflate.Trailing, deflate.TooLarge):
        return "size"
    except deflate.DeflateError:
        return "compress"
    return "ok"


def _samples(rng: random.Random, count: int) -> list[bytes]:
    out = [b"", b"a", b"abc" * 1000, bytes(40000), rng.randbytes(5000)]
    for _ in range(count):
        alphabet = rng.choice([b"ab", b"abcdefgh", bytes(range(256))])
        out.append(bytes(rng.choice(alphabet) for _ in range(rng.randrange(3000))))
    return out


def test_each_inflates_what_the_other_deflates() -> None:
    for data in _samples(random.Random(1), 30):
        for level in (0, 1, 6, 9):
            assert deflate.decompress(_zlib_deflate(data, level), LIMIT) == data
        mine = deflate.compress(data)
        assert zlib.decompressobj(-15).decompress(mine) == data
        assert deflate.decompress(mine, LIMIT) == data


def test_repeats_shrink() -> None:
    assert len(deflate.compress(b"haven " * 500)) < 60


@pytest.mark.parametrize("seed", range(2))
def test_damaged_streams_get_zlibs_verdict(seed: int) -> None:
    rng = random.Random(seed)
    samples = _samples(rng, 20)
    for _ in range(300):
        data = rng.choice(samples)
        wire = bytearray(_zlib_deflate(data, rng.choice([1, 6, 9])) if rng.random() < 0.7
                         else deflate.compress(data))
        roll = rng.random()
        if roll < 0.3 and wire:
            wire = wire[: rng.randrange(len(wire))]
        elif roll < 0.6 and wire:
            wire[rng.randrange(len(wire))] ^= 1 << rng.randrange(8)
        elif roll < 0.8:
            wire += rng.randbytes(rng.randrange(1, 4))
        else:
            wire = bytearray(rng.randbytes(rng.randrange(40)))
        assert _portable_verdict(bytes(wire)) == _zlib_verdict(bytes(wire)), wire.hex()


def test_the_limit() -> None:
    bomb = _zlib_deflate(bytes(LIMIT + 1), 9)
    with pytest.raises(deflate.TooLarge):
        deflate.decompress(bomb, LIMIT)
    assert deflate.decompress(_zlib_deflate(bytes(LIMIT), 9), LIMIT) == bytes(LIMIT)
