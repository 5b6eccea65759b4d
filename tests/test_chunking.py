"""Content-defined chunking: the definition, streaming, shift resistance, vectors.

``python -m tests.test_chunking bench``   chunker speed in MB/s
``python -m tests.test_chunking vectors`` rewrite protocol/vectors/chunking.json
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import messages, transfer
from protocol.chunking import (
    BIT_ORDER,
    BLOCK,
    DEFAULT_PARAMS,
    GEAR,
    HISTORY,
    Chunker,
    ChunkParams,
    chunk_bytes,
    chunk_id,
)
from protocol.errors import LocalProtocolError, ProtocolError
from tests.micropython.chunk_inputs import counter_stream, ends, make_input, reference_cuts

VECTORS = Path(__file__).resolve().parent.parent / "protocol" / "vectors" / "chunking.json"
SMALL = ChunkParams(256, 1024, 8192)


def feed_pieces(data: bytes, sizes, params: ChunkParams = SMALL) -> list[bytes]:
    chunker = Chunker(params)
    out: list[bytes] = []
    i = 0
    for n in sizes:
        if i >= len(data):
            break
        out += chunker.feed(data[i : i + n])
        i += n
    out += chunker.feed(data[i:])
    return out + chunker.finish()


# --- the definition -------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_matches_reference_definition(seed):
    data = random.Random(seed).randbytes(30_000)
    assert ends(chunk_bytes(data, SMALL)) == reference_cuts(data, SMALL)


def test_matches_reference_default_params():
    data = counter_stream(b"reference", 300_000)
    assert ends(chunk_bytes(data)) == reference_cuts(data, DEFAULT_PARAMS)


def test_gear_is_a_permutation_and_masks_nest():
    assert sorted(GEAR) == list(range(256))
    assert sorted(BIT_ORDER) == list(range(24))
    p = DEFAULT_PARAMS
    assert bin(p.mask_s).count("1") == 15 and bin(p.mask_l).count("1") == 11
    assert p.mask_s & p.mask_l == p.mask_l
    assert HISTORY == 36


def test_fingerprint_window_is_history_bytes():
    # Changing a byte more than HISTORY bytes back leaves the cut candidates alone.
    data = bytearray(random.Random(9).randbytes(4000))
    base = reference_cuts(bytes(data), ChunkParams(1, 2, 4000, level=0))
    data[0] ^= 0xFF
    again = reference_cuts(bytes(data), ChunkParams(1, 2, 4000, level=0))
    assert [c for c in base if c > HISTORY + 1] == [c for c in again if c > HISTORY + 1]


# --- sizes and streaming --------------------------------------------------------


@pytest.mark.parametrize("params", [SMALL, DEFAULT_PARAMS, ChunkParams(64, 128, 256, level=0)])
def test_sizes_respected_and_concatenation(params):
    data = random.Random(1).randbytes(400_000)
    chunks = chunk_bytes(data, params)
    assert b"".join(chunks) == data
    assert all(params.min_size <= len(c) <= params.max_size for c in chunks[:-1])
    assert 0 < len(chunks[-1]) <= params.max_size


def test_average_near_target():
    chunks = chunk_bytes(random.Random(2).randbytes(4 << 20))
    mean = (4 << 20) / len(chunks)
    assert 7000 < mean < 12000, mean


def test_low_entropy_input_cuts_at_max():
    chunks = chunk_bytes(bytes(300_000))
    assert all(len(c) == DEFAULT_PARAMS.max_size for c in chunks[:-1])


def test_empty_and_tiny():
    assert chunk_bytes(b"") == []
    assert chunk_bytes(b"x") == [b"x"]
    c = Chunker()
    assert c.feed(b"") == [] and c.finish() == [] and c.finish() == []
    with pytest.raises(LocalProtocolError):
        c.feed(b"more")


def test_every_feeding_gives_the_same_chunks():
    data = random.Random(3).randbytes(40_000)
    whole = chunk_bytes(data, SMALL)
    rng = random.Random(4)
    assert feed_pieces(data, [1] * len(data)) == whole
    assert feed_pieces(data, [rng.randint(1, 3000) for _ in range(200)]) == whole
    assert feed_pieces(data, [SMALL.max_size, 1, SMALL.max_size - 1]) == whole


def test_large_pieces_and_bounded_buffer():
    data = random.Random(5).randbytes(3 << 20)
    whole = chunk_bytes(data)
    chunker = Chunker()
    out: list[bytes] = []
    for i in range(0, len(data), 1 << 20):
        out += chunker.feed(memoryview(data)[i : i + (1 << 20)])
        assert chunker.buffered < DEFAULT_PARAMS.max_size + BLOCK
    assert out + chunker.finish() == whole


@settings(max_examples=40, deadline=None)
@given(data=st.binary(min_size=0, max_size=6000),
       cuts=st.lists(st.integers(min_value=1, max_value=700), max_size=30))
def test_feeding_property(data, cuts):
    params = ChunkParams(32, 128, 512)
    assert feed_pieces(data, cuts, params) == chunk_bytes(data, params)
    assert ends(chunk_bytes(data, params)) == reference_cuts(data, params)


@pytest.mark.parametrize("kwargs", [
    dict(min_size=0), dict(min_size=8192, avg_size=8192), dict(avg_size=6000),
    dict(max_size=1 << 24), dict(level=13), dict(avg_size=1 << 23, max_size=(1 << 24) - 1),
])
def test_bad_params(kwargs):
    with pytest.raises(LocalProtocolError) as exc:
        ChunkParams(**kwargs)
    assert isinstance(exc.value, ProtocolError)


# --- content-defined: edits move only nearby cuts ----------------------------------


def new_chunks(old: bytes, new: bytes, params: ChunkParams = DEFAULT_PARAMS) -> list[bytes]:
    have = {chunk_id(c) for c in chunk_bytes(old, params)}
    return [c for c in chunk_bytes(new, params) if chunk_id(c) not in have]


@pytest.mark.parametrize("pos,insert", [(0, b"!"), (10, b"hello"), (1000, bytes(37)),
                                        (5000, b"x" * 300)])
def test_insert_near_start_changes_one_or_two_chunks(pos, insert):
    old = random.Random(6).randbytes(1 << 20)
    new = old[:pos] + insert + old[pos:]
    changed = new_chunks(old, new)
    assert 1 <= len(changed) <= 2
    assert b"".join(chunk_bytes(new)).endswith(old[pos:])


def test_delete_in_middle_changes_few_chunks():
    old = random.Random(7).randbytes(1 << 20)
    new = old[:500_000] + old[500_100:]
    assert len(new_chunks(old, new)) <= 2


def test_small_params_resynchronise_quickly():
    rng = random.Random(8)
    counts = []
    for _ in range(40):
        old = rng.randbytes(48 << 10)
        pos = rng.randrange(len(old))
        new = old[:pos] + rng.randbytes(rng.randint(1, 64)) + old[pos:]
        counts.append(len(new_chunks(old, new, SMALL)))
    assert sum(counts) / len(counts) <= 2.0 and max(counts) <= 10, counts


# --- vectors ----------------------------------------------------------------------


CASES = [
    ("counter-256k-default", {"kind": "sha256-counter", "seed": "haven-cdc-1", "length": 262144},
     DEFAULT_PARAMS),
    ("counter-64k-small", {"kind": "sha256-counter", "seed": "haven-cdc-2", "length": 65536},
     SMALL),
    ("hex-text-100k-level1", {"kind": "sha256-counter-hex", "seed": "haven-cdc-3",
                              "length": 100000}, ChunkParams(512, 2048, 16384, level=1)),
    ("zeros-200k-default", {"kind": "zeros", "length": 204800}, DEFAULT_PARAMS),
]


def params_json(p: ChunkParams) -> dict:
    return {"min_size": p.min_size, "avg_size": p.avg_size, "max_size": p.max_size,
            "level": p.level}


def build_chunk_vectors() -> list[dict]:
    out = []
    for name, spec, params in CASES:
        chunks = chunk_bytes(make_input(spec), params)
        out.append({"name": name, "input": spec, "params": params_json(params),
                    "mask_s": params.mask_s, "mask_l": params.mask_l,
                    "cut_offsets": ends(chunks),
                    "chunk_sha256": [chunk_id(c).hex() for c in chunks]})
    return out


def build_vectors() -> dict:
    from tests.test_transfer import build_message_vectors

    return {
        "description": (
            "Content-defined chunking (protocol/chunking.py) and transfer messages "
            "(protocol/transfer.py). Inputs: 'sha256-counter' is SHA-256(seed || k as 8-byte "
            "big-endian) for k = 0, 1, ... concatenated and cut to length; "
            "'sha256-counter-hex' is the lowercase hex of length/2 such bytes; 'zeros' is "
            "length zero bytes. cut_offsets are chunk end offsets. Messages are the CBOR "
            "envelope of protocol/messages.py; bytes fields are given in hex."),
        "gear": GEAR.hex(),
        "bit_order": list(BIT_ORDER),
        "taps": 31, "tap_shift": 9, "fingerprint_bits": 24,
        "chunking": build_chunk_vectors(),
        "transfer_messages": build_message_vectors(),
    }


def load_vectors() -> dict:
    return json.loads(VECTORS.read_text())


def test_vectors_chunking():
    vec = load_vectors()
    assert vec["gear"] == GEAR.hex() and vec["bit_order"] == list(BIT_ORDER)
    for case in vec["chunking"]:
        p = ChunkParams(**case["params"])
        assert (p.mask_s, p.mask_l) == (case["mask_s"], case["mask_l"])
        data = make_input(case["input"])
        chunks = feed_pieces(data, [4097] * 100, p)
        assert ends(chunks) == case["cut_offsets"], case["name"]
        assert [chunk_id(c).hex() for c in chunks] == case["chunk_sha256"], case["name"]
        if len(data) <= 100_000:
            assert reference_cuts(data, p) == case["cut_offsets"], case["name"]


def test_vectors_transfer_messages():
    assert transfer.OFFER.number == 40  # importing transfer registers the xfer-* messages
    for item in load_vectors()["transfer_messages"]:
        msg = messages.decode(bytes.fromhex(item["cbor"]))
        assert msg.name == item["name"]
        spec = msg.spec
        assert spec is not None
        fields = {}
        for key, (fname, ftype) in {**spec.required, **spec.optional}.items():
            if fname in item["fields"]:
                value = item["fields"][fname]
                fields[fname] = bytes.fromhex(value) if ftype is bytes else value
                assert msg.fields[key] == fields[fname]
        assert messages.encode(messages.make(item["name"], **fields)).hex() == item["cbor"]


# --- benchmark (not a test) --------------------------------------------------------------


def classic_gear_loop(data: bytes, p: ChunkParams = DEFAULT_PARAMS) -> int:
    """Per-byte FastCDC loop (64-bit ADD gear, paper masks), for comparison only."""
    gear = [int.from_bytes(hashlib.sha256(i.to_bytes(4, "big")).digest()[:8], "big")
            for i in range(256)]
    m64, mask_s, mask_l = (1 << 64) - 1, 0x0000D9F003530000, 0x0000D90003530000
    s, n, count = 0, len(data), 0
    while s < n:
        end = min(n, s + p.max_size)
        normal = min(end, s + p.avg_size)
        fp, i, cut = 0, s + p.min_size, 0
        while i < normal:
            fp = ((fp << 1) + gear[data[i]]) & m64
            i += 1
            if not fp & mask_s:
                cut = i
                break
        if not cut:
            while i < end:
                fp = ((fp << 1) + gear[data[i]]) & m64
                i += 1
                if not fp & mask_l:
                    break
            cut = min(i, end)
        s, count = cut, count + 1
    return count


def bench(megabytes: int = 64) -> None:
    data = random.Random(0).randbytes(megabytes << 20)
    for piece in (1 << 20, 64 << 10, 4096):
        t = time.perf_counter()
        chunker, count = Chunker(), 0
        for i in range(0, len(data), piece):
            count += len(chunker.feed(data[i : i + piece]))
        count += len(chunker.finish())
        dt = time.perf_counter() - t
        print(f"protocol.chunking, {piece:>7}-byte pieces: {len(data) / dt / 1e6:6.1f} MB/s "
              f"({count} chunks, mean {len(data) // count} B)")
    small = data[: 8 << 20]
    t = time.perf_counter()
    count = classic_gear_loop(small)
    dt = time.perf_counter() - t
    print(f"per-byte gear loop (for comparison):     {len(small) / dt / 1e6:6.1f} MB/s "
          f"({count} chunks)")
    t = time.perf_counter()
    h = hashlib.sha256()
    for i in range(0, len(data), 1 << 20):
        h.update(data[i : i + (1 << 20)])
    print(f"sha256 (the chunk names), for scale:     "
          f"{len(data) / (time.perf_counter() - t) / 1e6:6.1f} MB/s")


if __name__ == "__main__":
    if sys.argv[1:] == ["vectors"]:
        VECTORS.write_text(json.dumps(build_vectors(), indent=1) + "\n")
        print(f"wrote {VECTORS}")
    else:
        bench()
