"""Frames: round trips, resynchronisation, and bad input on the line."""

from __future__ import annotations

import contextlib
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import cobs, crc32c
from protocol.framing import FrameDecoder, encode_frame, wire_size


def feed_all(decoder: FrameDecoder, data: bytes) -> list[bytes]:
    return decoder.feed(data)


def feed_bytewise(decoder: FrameDecoder, data: bytes) -> list[bytes]:
    out: list[bytes] = []
    for i in range(len(data)):
        out += decoder.feed(data[i : i + 1])
    return out


def feed_random_chunks(decoder: FrameDecoder, data: bytes) -> list[bytes]:
    rng = random.Random(len(data))
    out: list[bytes] = []
    i = 0
    while i < len(data):
        n = rng.randint(1, 37)
        out += decoder.feed(data[i : i + n])
        i += n
    return out


FEEDERS = [feed_all, feed_bytewise, feed_random_chunks]
PAYLOADS = [b"", b"\x00", b"\x00\x00", b"a", b"\x01" * 253, b"\x02" * 254, b"\x03" * 255,
            bytes(range(256)) * 3, b"\x00" * 600]


@pytest.mark.parametrize("feeder", FEEDERS)
@pytest.mark.parametrize("crc", [True, False])
def test_round_trip_every_way(feeder, crc):
    wire = b"".join(encode_frame(p, crc=crc) for p in PAYLOADS)
    decoder = FrameDecoder(max_payload=1024, crc=crc)
    got = feeder(decoder, wire)
    assert got == PAYLOADS
    assert decoder.stats.dropped == 0
    assert decoder.buffered == 0


@pytest.mark.parametrize("feeder", FEEDERS)
def test_trailing_and_leading_junk(feeder):
    junk = b"\xff\x13garbage\x01\x02"
    wire = junk + b"\x00" + encode_frame(b"one") + encode_frame(b"two") + junk
    decoder = FrameDecoder()
    assert feeder(decoder, wire) == [b"one", b"two"]
    assert decoder.stats.dropped == 1  # the leading junk, as one bad run
    assert decoder.buffered == len(junk)  # the trailing junk waits for a delimiter


def test_wire_size_bounds_every_encoding():
    rng = random.Random(3)
    for n in range(0, 700, 7):
        payload = bytes(rng.choice((0, 1, 255)) for _ in range(n))
        assert len(encode_frame(payload)) <= wire_size(n)


def test_oversized_run_is_dropped_and_memory_stays_bounded():
    decoder = FrameDecoder(max_payload=64)
    for _ in range(1000):
        decoder.feed(b"\x55" * 1000)
        assert decoder.buffered <= wire_size(64)
    assert decoder.feed(b"\x00" + encode_frame(b"after")) == [b"after"]
    assert decoder.stats.oversized == 1


def test_frame_with_payload_over_max_is_counted():
    decoder = FrameDecoder(max_payload=10)
    assert decoder.feed(encode_frame(b"x" * 11) + encode_frame(b"ok")) == [b"ok"]
    assert decoder.stats.oversized == 1


def test_truncated_frame_is_dropped_at_next_delimiter():
    whole = encode_frame(b"hello world")
    decoder = FrameDecoder()
    got = decoder.feed(whole[:5] + b"\x00" + whole)
    assert got == [b"hello world"]
    assert decoder.stats.dropped == 1


def test_runt_frames_are_counted():
    decoder = FrameDecoder()
    assert decoder.feed(b"\x02\x01\x00\x03ab\x00") == []
    assert decoder.stats.runts == 2


def test_bad_crc_is_counted_not_raised():
    wire = bytearray(encode_frame(b"payload"))
    wire[2] ^= 0x40
    decoder = FrameDecoder()
    assert decoder.feed(bytes(wire)) == []
    assert decoder.stats.bad_crc + decoder.stats.bad_cobs == 1


def test_pure_and_fast_crc_agree():
    rng = random.Random(9)
    for n in range(0, 300):
        data = rng.randbytes(n)
        assert crc32c._pure_crc32c(data) == crc32c.crc32c(data)
    assert crc32c.crc32c(b"123456789") == 0xE3069283


@given(st.binary(max_size=2000))
def test_cobs_round_trip(data):
    encoded = cobs.encode(data)
    assert b"\x00" not in encoded
    assert len(encoded) <= cobs.max_encoded_size(len(data))
    assert cobs.decode(encoded) == data


@given(st.binary(max_size=300))
def test_cobs_decode_never_crashes(data):
    with contextlib.suppress(ValueError):
        cobs.decode(data)


@settings(max_examples=300, deadline=None)
@given(
    payloads=st.lists(st.binary(min_size=1, max_size=300), min_size=1, max_size=20),
    damage=st.lists(
        st.tuples(st.integers(min_value=0), st.sampled_from(["flip", "drop", "insert", "dup"]),
                  st.integers(min_value=0, max_value=255)),
        max_size=12,
    ),
)
def test_corruption_yields_only_sent_frames_or_counted_drops(payloads, damage):
    """Any damage to a stream of frames: every frame out was sent, in order."""
    wire = bytearray(b"".join(encode_frame(p) for p in payloads))
    for pos, kind, value in damage:
        if not wire:
            break
        i = pos % len(wire)
        if kind == "flip":
            wire[i] ^= value or 1
        elif kind == "drop":
            del wire[i]
        elif kind == "insert":
            wire.insert(i, value)
        else:
            wire[i:i] = wire[i : i + value % 16]
    decoder = FrameDecoder(max_payload=300)
    got = decoder.feed(bytes(wire)) + decoder.feed(b"\x00")
    # Every frame that came out was sent (a CRC-32C collision on damage
    # this small is impossible: it detects all bursts up to 32 bits and,
    # here, any frame whose damage is a duplicated whole frame is a sent one).
    sent = set(payloads)
    assert all(p in sent for p in got)
    received_or_dropped = decoder.stats.frames + decoder.stats.dropped
    assert decoder.stats.frames == len(got)
    assert received_or_dropped >= 1 or not wire.strip(b"\x00")  # all of it dropped: none
