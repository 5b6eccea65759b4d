"""protocol/vectors/sync.json and the batch payload: the chain's exact bytes, and bad or
oversized payloads refused with their codes before they can use memory."""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import messages, strict_cbor
from protocol.errors import RemoteProtocolError
from protocol.sync import batches as sync

ROOT = Path(__file__).parent.parent / "protocol/vectors"
VECTORS = json.loads((ROOT / "sync.json").read_text())
DELTAS = [bytes.fromhex(v["hex"]) for v in json.loads((ROOT / "crdt.json").read_text())["valid"]]


@pytest.mark.parametrize("vector", VECTORS["batches"], ids=lambda v: f"batch {v['seq']}")
def test_batch_vectors(vector: dict[str, Any]) -> None:
    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(VECTORS["ed25519_seed"]))
    public = key.public_key().public_bytes_raw()
    device = VECTORS["device"]
    deltas = [DELTAS[i] for i in vector["deltas"]]
    payload, prev = bytes.fromhex(vector["payload"]), bytes.fromhex(vector["prev"])
    assert sync.unpack(payload) == deltas
    packed = sync.pack(deltas)
    assert packed[0] == payload[0]
    if payload[0] == sync.STORED:
        assert packed == payload
    batch = sync.Batch(vector["seq"], prev, payload, bytes.fromhex(vector["sig"]))
    assert batch.hash.hex() == vector["hash"]
    assert sync.head_bytes(device, batch.seq, batch.hash).hex() == vector["head"]
    assert key.sign(sync.head_bytes(device, batch.seq, batch.hash)) == batch.sig  # RFC 8032
    sync.verify_batch(batch, device, public)
    msg = messages.decode(bytes.fromhex(vector["message"]))
    assert msg.name == "sync-batch" and msg.fields == {1: batch.seq, 3: payload, 4: batch.sig}
    assert messages.encode(msg).hex() == vector["message"]


def test_the_chain_links_and_a_wrong_link_is_forged() -> None:
    first, second = VECTORS["batches"]
    assert second["prev"] == first["hash"] and first["prev"] == sync.GENESIS.hex()
    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(VECTORS["ed25519_seed"]))
    public = key.public_key().public_bytes_raw()
    wrong = sync.Batch(2, sync.GENESIS, bytes.fromhex(second["payload"]),
                       bytes.fromhex(second["sig"]))
    with pytest.raises(sync.BatchError) as info:
        sync.verify_batch(wrong, VECTORS["device"], public)
    assert info.value.code == "forged"


@pytest.mark.parametrize("vector", VECTORS["messages"], ids=lambda v: v["name"])
def test_message_vectors(vector: dict[str, Any]) -> None:
    msg = messages.decode(bytes.fromhex(vector["cbor"]))
    assert msg.name == vector["name"]
    hexed = vector.get("bytes", ["1"] if msg.name == "sync-changes" else [])
    want = {int(k): bytes.fromhex(v) if k in hexed else v for k, v in vector["fields"].items()}
    assert msg.fields == want
    assert messages.encode(msg).hex() == vector["cbor"]


@pytest.mark.parametrize("vector", VECTORS["bad_payloads"], ids=lambda v: v["description"])
def test_bad_payload_vectors(vector: dict[str, Any]) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        sync.unpack(bytes.fromhex(vector["hex"]))
    assert info.value.code == vector["code"]


def test_one_small_delta_is_stored_and_many_are_deflated() -> None:
    one, many = sync.pack(DELTAS[:1]), sync.pack(DELTAS * 20)
    assert one == bytes((sync.STORED,)) + strict_cbor.dumps(DELTAS[:1])
    assert many[0] == sync.DEFLATED and len(many) < len(strict_cbor.dumps(DELTAS * 20)) / 3
    assert sync.unpack(sync.pack([])) == []


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=40))
def test_pack_round_trips_and_is_never_more_than_one_byte_over(deltas: list[bytes]) -> None:
    payload = sync.pack(deltas)
    assert sync.unpack(payload) == deltas
    assert len(payload) <= len(strict_cbor.dumps(deltas)) + 1


def test_inflating_stops_at_the_cap() -> None:
    # A few KiB of deflate that would inflate to 5 MiB: refused at the 4 MiB cap.
    squeezer = zlib.compressobj(9, zlib.DEFLATED, -15)
    bomb = squeezer.compress(b"\x00" * (5 << 20)) + squeezer.flush()
    assert len(bomb) < 8192
    with pytest.raises(sync.BatchError) as info:
        sync.unpack(bytes((sync.DEFLATED,)) + bomb)
    assert info.value.code == "batch-size"
    with pytest.raises(sync.BatchError) as info:
        sync.unpack(bytes((sync.STORED,)) + b"\x00" * (sync.MAX_BATCH_PLAIN + 1))
    assert info.value.code == "batch-size"
