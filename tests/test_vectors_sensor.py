"""protocol/vectors/sensor.json is the contract a sensor node's port is held to: it matches
protocol/sensor.py, and tools/make_sensor_vectors.py writes it again byte for byte."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from protocol import sensor
from protocol.errors import RemoteProtocolError
from tools import make_sensor_vectors

VECTORS = json.loads(make_sensor_vectors.OUT.read_text())


@pytest.mark.parametrize("vector", VECTORS["messages"], ids=lambda v: v["name"])
def test_sensor_message_vectors(vector: dict[str, object]) -> None:
    data = bytes.fromhex(str(vector["cbor"]))
    msg = sensor.decode(data)
    assert (msg.type, msg.name) == (vector["type"], vector["name"])
    assert msg.fields == {int(k): v for k, v in vector["fields"].items()}  # type: ignore[attr-defined]


@pytest.mark.parametrize("vector", VECTORS["bad_messages"], ids=lambda v: v["description"])
def test_bad_sensor_message_vectors(vector: dict[str, str]) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        sensor.decode(bytes.fromhex(vector["cbor"]))
    assert info.value.code == vector["error"]


def test_the_generator_writes_the_file_again(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    written = make_sensor_vectors.OUT.read_text()
    monkeypatch.setattr(make_sensor_vectors, "OUT", tmp_path / "sensor.json")
    make_sensor_vectors.main()
    assert (tmp_path / "sensor.json").read_text() == written
