"""Delta encoding: test vectors, round trips, size, and bad input."""

from __future__ import annotations

import json
import struct
import uuid
from pathlib import Path
from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.crdt import delta as delta_mod
from protocol.crdt.clock import Dot, pack
from protocol.crdt.delta import DELETE, PUT, Delta, decode, decode_many, encode
from protocol.crdt.replica import Replica
from protocol.errors import LocalProtocolError, RemoteProtocolError

VECTORS = json.loads((Path(__file__).parent.parent / "protocol/vectors/crdt.json").read_text())


def _from_vector(d: dict[str, Any]) -> Delta:
    def keyed(m: dict[str, Any]) -> dict[int, Any]:
        return {int(k): v for k, v in m.items()}

    return Delta(
        uuid.UUID(d["record_id"]).bytes, d["type"], d["node"], d["stamp"], d["kind"],
        keyed(d["set"]), {k: tuple(v) for k, v in keyed(d["add"]).items()},
        {k: tuple(v) for k, v in keyed(d["remove"]).items()},
        tuple(Dot(s, n) for n, s in d["ctx"]), d["schema"],
        bytes.fromhex(d["resolves"]) if d["resolves"] else None, keyed(d["extra"]),
    )


@pytest.mark.parametrize("vector", VECTORS["valid"], ids=lambda v: v["description"])
def test_valid_vectors(vector: dict[str, Any]) -> None:
    delta = _from_vector(vector["delta"])
    data = bytes.fromhex(vector["hex"])
    assert encode(delta) == data
    assert decode(data) == delta
    assert len(data) == vector["size"]


@pytest.mark.parametrize("vector", VECTORS["invalid"], ids=lambda v: v["description"])
def test_invalid_vectors(vector: dict[str, Any]) -> None:
    with pytest.raises(RemoteProtocolError) as err:
        decode(bytes.fromhex(vector["hex"]))
    assert err.value.code == vector["code"]


def test_single_field_overwrite_is_under_48_bytes() -> None:
    rep = Replica(0xFEDCBA98)
    rid = uuid.uuid4().bytes
    rep.put(rid, "patient", 1_790_000_000_000, {"name": "Alice Smith"})
    data = rep.put(rid, "patient", 1_790_000_000_005, {"name": "Alice Smythe"})
    assert len("Alice Smythe") == 12
    assert len(data) == 47


def test_encode_refuses_bad_deltas() -> None:
    rid = bytes(16)
    with pytest.raises(LocalProtocolError):
        encode(Delta(rid[:8], 1, 1, 5))
    with pytest.raises(LocalProtocolError):
        encode(Delta(rid, 1, 1, 5, DELETE, {1: "x"}))
    with pytest.raises(LocalProtocolError):
        encode(Delta(rid, 1, 1, 5, ctx=(Dot(9, 2),)))


values = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1),
                   st.floats(allow_nan=False), st.text(max_size=20), st.binary(max_size=20))
elements = st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=3, unique=True).map(
    lambda xs: tuple(sorted(xs)))


@st.composite
def deltas(draw: st.DrawFn) -> Delta:
    stamp = draw(st.integers(2, 2**64 - 1))
    node = draw(st.integers(0, 2**32 - 1))
    kind = draw(st.sampled_from([PUT, DELETE]))
    ctx = draw(st.lists(st.tuples(st.integers(1, stamp - 1),
                                  st.integers(0, 2**32 - 1).filter(lambda n: n != node)),
                        max_size=3, unique=True))
    sets: dict[int, Any] = {}
    adds: dict[int, tuple[str, ...]] = {}
    removes: dict[int, tuple[str, ...]] = {}
    if kind == PUT:
        sets = draw(st.dictionaries(st.integers(0, 40), values, max_size=4))
        adds = draw(st.dictionaries(st.integers(41, 50), elements, max_size=2))
        removes = draw(st.dictionaries(st.integers(51, 60), elements, max_size=2))
    return Delta(
        draw(st.binary(min_size=16, max_size=16)), draw(st.integers(0, 0x7FFF)), node, stamp,
        kind, sets, adds, removes, tuple(sorted(Dot(s, n) for s, n in ctx)),
        draw(st.integers(1, 0xFFFF)), draw(st.none() | st.binary(min_size=8, max_size=8)),
        draw(st.dictionaries(st.integers(-100, -6), values, max_size=2)),
    )


@settings(max_examples=200, deadline=None)
@given(deltas())
def test_round_trip(delta: Delta) -> None:
    data = encode(delta)
    assert decode(data) == delta
    assert encode(decode(data)) == data


@settings(max_examples=200, deadline=None)
@given(deltas(), st.data())
def test_mangled_bytes_are_refused_or_decode_canonically(delta: Delta, data: st.DataObject) -> None:
    raw = bytearray(encode(delta))
    pos = data.draw(st.integers(0, len(raw) - 1))
    raw[pos] ^= data.draw(st.integers(1, 255))
    cut = data.draw(st.integers(0, len(raw)))
    for candidate in (bytes(raw), bytes(raw[:cut])):
        try:
            got = decode(candidate)
        except RemoteProtocolError as exc:
            assert exc.code  # a clear, short reason
        else:
            assert encode(got) == candidate


def test_stamp_layout() -> None:
    assert pack(1, 2) == (1 << 16) | 2


def _same(a: Delta | RemoteProtocolError, b: Delta | RemoteProtocolError) -> bool:
    if isinstance(a, RemoteProtocolError) or isinstance(b, RemoteProtocolError):
        return (type(a), getattr(a, "code", None), str(a)) == (
            type(b), getattr(b, "code", None), str(b))
    return a == b and encode(a) == encode(b)


def _decode_or_error(data: bytes) -> Delta | RemoteProtocolError:
    try:
        return decode(data)
    except RemoteProtocolError as exc:
        return exc


_TAGGED = [
    cbor2.dumps(cbor2.CBORTag(2, b"\x01" + bytes(9))),  # a bignum
    bytes([0xD9, 0xD9, 0xF7, 0x01]),  # self-describe tag around 1
    bytes([0xD8, 0x1C, 0x81, 0x01]),  # shareable [1]
    cbor2.dumps(cbor2.CBORTag(1, 5)),  # epoch time
    cbor2.dumps(cbor2.CBORTag(99, "x")),  # an unknown tag
    bytes([0xF7]), bytes([0xF8, 0x20]), bytes([0xF9, 0x3C, 0x00]),  # undefined, simple, 1.0 half
    bytes([0xFB]) + struct.pack(">d", 1.0),  # 1.0 as a double: not the shortest form
    bytes([0x5F, 0x41, 0x00, 0xFF]), bytes([0x61, 0xFF]),  # indefinite bytes, bad UTF-8
    bytes([0xA2, 0x01, 0x01, 0x01, 0x02]),  # duplicate map key
    bytes([0x81] * 20 + [0x00]),  # deep nesting
]


@settings(max_examples=300, deadline=None)
@given(st.lists(deltas(), min_size=1, max_size=6), st.data())
def test_decode_many_answers_as_decode(batch: list[Delta], data: st.DataObject) -> None:
    items = [encode(d) for d in batch]
    for i in range(len(items)):
        how = data.draw(st.sampled_from(["keep", "flip", "cut", "tag", "swap"]))
        raw = bytearray(items[i])
        if how == "flip":
            raw[data.draw(st.integers(0, len(raw) - 1))] ^= data.draw(st.integers(1, 255))
        elif how == "cut":
            del raw[data.draw(st.integers(0, len(raw) - 1)):]
        elif how == "tag":  # put a tagged or odd item where the last value was
            obj = cbor2.loads(bytes(raw))
            raw = bytearray(cbor2.dumps(obj[:-1], canonical=True))
            raw[0] += 1 if raw[0] < 0x97 else 0
            raw += data.draw(st.sampled_from(_TAGGED))
        elif how == "swap" and len(raw) > 6:  # a delta borrowing bytes of the next
            items[i - 1] = items[i - 1] + bytes(raw[:2])
            raw = raw[2:]
        items[i] = bytes(raw)
    got = decode_many(items)
    assert len(got) == len(items)
    for item, answer in zip(items, got, strict=True):
        assert _same(answer, _decode_or_error(item))


def test_decode_many_decodes_valid_deltas_in_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    rep = Replica(0xABC)
    rid = uuid.uuid4().bytes
    items = [rep.put(rid, "patient", 1_790_000_000_000 + i, {"name": f"n{i}"},
                     add={"allergies": [f"a{i}"]}) for i in range(50)]
    items.append(rep.delete(rid, 1_790_000_000_100))
    expected = [decode(d) for d in items]
    calls: list[bytes] = []
    monkeypatch.setattr(delta_mod, "decode", lambda d: calls.append(d) or expected[0])
    assert delta_mod.decode_many(items) == expected
    assert calls == []  # none needed the one-by-one path
    bad = [items[0], b"\xff", items[1][:-1], items[2]]
    monkeypatch.undo()
    got = decode_many(bad)
    assert got[0] == expected[0] and got[3] == expected[2]
    assert isinstance(got[1], RemoteProtocolError) and isinstance(got[2], RemoteProtocolError)
