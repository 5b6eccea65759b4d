"""protocol/vectors/wire.json is the contract another implementation is held to."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from protocol import crc32c, messages
from protocol.errors import RemoteProtocolError
from protocol.framing import FrameDecoder, encode_frame

VECTORS = json.loads((Path(__file__).parent.parent / "protocol/vectors/wire.json").read_text())


@pytest.mark.parametrize("vector", VECTORS["frames"], ids=lambda v: v["description"])
def test_frame_vectors(vector, monkeypatch):
    payload = bytes.fromhex(vector["payload"])
    wire = bytes.fromhex(vector["wire"])
    assert encode_frame(payload, crc=vector["crc"]) == wire
    assert FrameDecoder(crc=vector["crc"]).feed(wire) == [payload]
    # The pure-Python CRC fallback gives the same bytes.
    monkeypatch.setattr("protocol.framing.crc32c", crc32c._pure_crc32c)
    assert encode_frame(payload, crc=vector["crc"]) == wire
    assert FrameDecoder(crc=vector["crc"]).feed(wire) == [payload]


@pytest.mark.parametrize("vector", VECTORS["messages"], ids=lambda v: v["name"])
def test_message_vectors(vector):
    data = bytes.fromhex(vector["cbor"])
    msg = messages.decode(data)
    assert msg.type == vector["type"]
    assert msg.name == vector["name"]
    assert msg.fields == {int(k): v for k, v in vector["fields"].items()}
    # Unknown fields are kept, so re-encoding gives the same bytes.
    assert messages.encode(msg) == data


@pytest.mark.parametrize("vector", VECTORS["bad_messages"], ids=lambda v: v["description"])
def test_bad_message_vectors(vector):
    with pytest.raises(RemoteProtocolError) as info:
        messages.decode(bytes.fromhex(vector["cbor"]))
    assert info.value.code == vector["error"]
