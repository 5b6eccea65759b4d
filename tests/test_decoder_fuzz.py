"""Bounded fuzzing of the frame and message decoders, and CBOR bombs.

The default run is short; ``./tools/test --long`` runs many more cases.
"""

from __future__ import annotations

import os
import random
import tracemalloc

import cbor2
import pytest

from protocol import messages, strict_cbor
from protocol.errors import RemoteProtocolError
from protocol.framing import FrameDecoder, encode_frame

CASES = 200_000 if os.environ.get("HAVEN_LONG") else 5_000


def mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(5)
        i = rng.randrange(len(b) + 1)
        if op == 0 and b:
            b[i % len(b)] ^= 1 << rng.randrange(8)
        elif op == 1 and b:
            del b[i % len(b) : i % len(b) + rng.randint(1, 8)]
        elif op == 2:
            b[i:i] = rng.randbytes(rng.randint(1, 8))
        elif op == 3:
            b = b[:i]
        else:
            b[i:i] = bytes([rng.choice((0x9B, 0xBB, 0x5B, 0x7B, 0xD8, 0x1C, 0xFF, 0x00))])
    return bytes(b)


SEEDS = [
    messages.encode(messages.make("ping", nonce=123456)),
    messages.encode(messages.make("close", reason="version", detail="x" * 40)),
    strict_cbor.dumps({0: 99, 1: [1, 2, {"a": b"\x00" * 10}], 2: -5, 3: 1.5}),
]


def test_message_decoder_fuzz():
    rng = random.Random(2026)
    errors = 0
    for _ in range(CASES):
        data = mutate(rng, rng.choice(SEEDS))
        try:
            msg = messages.decode(data)
        except RemoteProtocolError as exc:
            assert exc.code
            errors += 1
        else:
            assert isinstance(msg.fields, dict)
    assert 0 < errors < CASES


def test_frame_decoder_fuzz_keeps_memory_bounded():
    rng = random.Random(7)
    decoder = FrameDecoder(max_payload=256)
    good = encode_frame(b"ok")
    got = 0
    for _ in range(CASES // 10):
        chunk = rng.randbytes(rng.randint(0, 600))
        if rng.random() < 0.3:
            chunk = chunk.replace(b"\x00", b"")
        out = decoder.feed(chunk)
        # Random bytes pass a CRC-32C only with probability 2**-32 per run.
        assert all(len(p) <= 256 for p in out)
        assert decoder.buffered <= 300
        got += len(decoder.feed(b"\x00" + good))
    assert got == CASES // 10


def shared_laughs(levels: int) -> bytes:
    """A "billion laughs" of shared references: each level holds the one below twice,
    so following the references builds 2**levels leaves from a few bytes."""
    x: list = [b"ha"]
    for _ in range(levels):
        x = [x, x]
    return cbor2.dumps(x, value_sharing=True)


@pytest.mark.parametrize(
    ("bomb", "code"),
    [
        (b"\x81" * 100_000, "too-deep"),  # deep nesting
        (b"\x9b" + b"\xff" * 8, "bad-length"),  # 2**64-1 array items
        (b"\xbb" + b"\x7f" + b"\xff" * 7, "bad-length"),  # 2**63-1 map pairs
        (b"\x5b" + b"\x00\x00\x00\x01\x00\x00\x00\x00", "bad-length"),  # 4 GiB byte string
        (b"\x7a\xff\xff\xff\xff", "bad-length"),  # 4 GiB text string
        (cbor2.dumps([[1, 2]] * 2, value_sharing=True), "tag"),  # shared references (28, 29)
        (shared_laughs(12), "tag"),  # 4096 leaves from shared references, nested 13 deep
        (b"\xd8\x1c\x82\x01\x02", "tag"),  # tag 28 alone: a value marked shareable
        (b"\xd8\x1d\x00", "tag"),  # tag 29 alone: a reference to shared value 0
        (b"\x98\xff" + b"\x80" * 255, None),  # 255 empty arrays: within limits, decodes
    ],
    ids=["deep", "huge-array", "huge-map", "huge-bytes", "huge-text", "shared", "laughs",
         "tag28", "tag29", "many-empty"],
)
def test_cbor_bombs_cost_nothing(bomb: bytes, code: str | None) -> None:
    tracemalloc.start()
    try:
        if code is None:
            assert strict_cbor.loads(bomb, max_size=200_000) == [[]] * 255
        else:
            with pytest.raises(RemoteProtocolError) as info:
                strict_cbor.loads(bomb, max_size=200_000)
            assert info.value.code == code
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * len(bomb) + 200_000


def test_oversized_message_refused_before_parsing():
    big = strict_cbor.dumps({0: 1, 1: 1, 2: b"x" * 70_000})
    with pytest.raises(RemoteProtocolError) as info:
        messages.decode(big)
    assert info.value.code == "too-large"
