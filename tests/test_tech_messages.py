"""Technician sessions' messages and session key: protocol/vectors/tech.json byte for byte
(SPEC.md "Technician sessions"), and what the decoder refuses, with its codes.

``python -m tests.test_tech_messages`` prints the vectors as the code makes them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from protocol import strict_cbor
from protocol import tech_messages as tm
from protocol.errors import RemoteProtocolError

VECTORS = Path(__file__).resolve().parent.parent / "protocol" / "vectors" / "tech.json"
SEED = bytes(range(32, 64))

MESSAGES: list[tuple[str, dict[str, Any]]] = [
    ("tech-challenge", {"nonce": bytes(range(32)), "device": "0000002a", "site": "North",
                        "time": "sync time"}),
    ("tech-hello", {"cert": b"\x82\x41\x00\x41\x01", "sig": bytes(64)}),
    ("tech-welcome", {"serial": 7, "technician": "Amina Yusuf",
                      "actions": ["configure", "read", "restart"], "time": "sync time"}),
    ("tech-refused", {"code": "expired", "reason": "technician certificate 7 expired"}),
    ("tech-request", {"id": 1, "command": "config",
                      "args": {"op": "set", "key": "interval", "value": "30"}}),
    ("tech-reply", {"id": 1, "ok": True, "result": {"key": "interval", "value": 30.0}}),
    ("tech-reply", {"id": 2, "ok": False, "code": "bad-value",
                    "error": "interval must be positive, not -1"}),
    ("tech-note", {"id": 3, "text": "press the service button (within 10 s)"}),
]

BAD: list[tuple[str, dict[int, Any]]] = [
    ("bad-field", {0: 104, 1: 1, 2: ""}),  # an empty command
    ("bad-field", {0: 104, 1: 1, 2: "x" * 33}),
    ("bad-field", {0: 104, 1: 1 << 32, 2: "status"}),
    ("bad-field", {0: 104, 1: 1, 2: "status", 3: {1: "not text"}}),
    ("bad-field", {0: 105, 1: 1, 2: False}),  # a refusal without a code
    ("bad-field", {0: 103, 1: "expired", 2: "x" * 401}),
    ("field-type", {0: 105, 1: 1, 2: 1}),  # ok must be a bool
    ("missing-field", {0: 101, 1: b"cert"}),
    ("unknown-type", {0: 109, 1: 1}),
]


def build() -> dict[str, Any]:
    ed = Ed25519PrivateKey.from_private_bytes(SEED)
    x = X25519PrivateKey.from_private_bytes(tm.x25519_private(SEED))
    return {
        "description": "Technician sessions (protocol/tech_messages.py, SPEC.md 'Technician "
                       "sessions'): the X25519 session key of an Ed25519 seed, each message "
                       "byte for byte, and messages the decoder refuses with their codes.",
        "key": {"ed25519_seed": SEED.hex(),
                "ed25519_public": ed.public_key().public_bytes_raw().hex(),
                "x25519_private": tm.x25519_private(SEED).hex(),
                "x25519_public": x.public_key().public_bytes_raw().hex()},
        "messages": [{"type": kind, "fields": _jsonable(fields),
                      "bytes": tm.encode(kind, **fields).hex()} for kind, fields in MESSAGES],
        "bad": [{"bytes": strict_cbor.dumps(fields).hex(), "code": code}
                for code, fields in BAD],
    }


def _jsonable(fields: dict[str, Any]) -> dict[str, Any]:
    return {k: v.hex() if isinstance(v, bytes) else v for k, v in fields.items()}


def test_the_vectors_are_what_the_code_makes() -> None:
    assert json.loads(VECTORS.read_text()) == build()


def test_the_session_key_is_the_certificates_key() -> None:
    v = json.loads(VECTORS.read_text())["key"]
    assert tm.x25519_public(bytes.fromhex(v["ed25519_public"])).hex() == v["x25519_public"]
    for _ in range(8):
        ed = Ed25519PrivateKey.generate()
        x = X25519PrivateKey.from_private_bytes(tm.x25519_private(ed.private_bytes_raw()))
        assert x.public_key().public_bytes_raw() == tm.x25519_public(
            ed.public_key().public_bytes_raw())
    for bad in (b"\x01" + bytes(31), b"\x00" * 31):
        with pytest.raises(RemoteProtocolError):
            tm.x25519_public(bad)


def test_each_message_decodes_to_its_fields() -> None:
    for item, (kind, fields) in zip(json.loads(VECTORS.read_text())["messages"], MESSAGES,
                                    strict=True):
        msg = tm.decode(bytes.fromhex(item["bytes"]))
        assert msg.name == kind
        assert {name: msg.get(name) for name in fields} == fields


@pytest.mark.parametrize("item", json.loads(VECTORS.read_text())["bad"])
def test_bad_messages_are_refused_with_their_code(item: dict[str, str]) -> None:
    with pytest.raises(RemoteProtocolError) as exc:
        tm.decode(bytes.fromhex(item["bytes"]))
    assert exc.value.code == item["code"]


if __name__ == "__main__":
    print(json.dumps(build(), indent=1))
