"""protocol.portable.cbor, the codec MicroPython uses, against cbor2, the one CPython uses.

The same objects must encode to the same bytes, the same bytes must decode to the
same objects, and what one refuses the other must refuse with the same error:
invalid UTF-8 (MicroPython's own decoder lets some through), duplicate map keys,
floats of every width with NaN, infinities and half-precision values. In this
process with hypothesis (25 examples a property, thousands with --long); then under
the real interpreter, through ``protocol.strict_cbor`` on both sides
(tests/micropython/cbor_cases.py), on items made at random and mutated: a few
hundred by default, many thousands with --long.
"""

from __future__ import annotations

import math
import os
import random
import struct
from pathlib import Path
from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import strict_cbor
from protocol.errors import ProtocolError
from protocol.portable import cbor as portable
from tests import micropython_port
from tests.micropython.cbor_cases import describe, outcome

SCRIPT = micropython_port.SCRIPTS / "cbor_cases.py"
#: hypothesis examples a property: 25 by default, thousands with ./tools/test --long
EXAMPLES = 3000 if os.environ.get("HAVEN_LONG") else 25
INT64 = st.integers(min_value=-(2**64), max_value=2**64 - 1)
SPECIAL_FLOATS = [0.0, -0.0, 1.0, -2.5, 65504.0, 65520.0, 2.0**-24, 2.0**-25, 2.0**-14,
                  1.0e300, 5e-324, 3.4028234663852886e38, 1.1, math.inf, -math.inf, math.nan]
FLOATS = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(SPECIAL_FLOATS),
                   st.floats(width=16), st.floats(width=32))
SCALARS = st.one_of(st.none(), st.booleans(), INT64, FLOATS, st.binary(max_size=40),
                    st.text(max_size=20))
KEYS = st.one_of(INT64, st.text(max_size=10), st.binary(max_size=8))
OBJECTS = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=5),
                            st.dictionaries(KEYS, inner, max_size=5)),
    max_leaves=20,
)
# Byte sequences CPython's UTF-8 decoder refuses: overlong, surrogates, above U+10FFFF,
# truncated, stray continuation and invalid lead bytes. MicroPython's takes several.
BAD_UTF8 = [b"\xc0\x80", b"\xc1\xbf", b"\xe0\x80\x80", b"\xed\xa0\x80", b"\xed\xbf\xbf",
            b"\xf4\x90\x80\x80", b"\xf5\x80\x80\x80", b"\xf0\x80\x80\x80", b"\xe2\x82",
            b"\x80", b"\xff", b"a\xfe"]
GOOD_UTF8 = [b"", b"a", "\u00e9".encode(), "\u20ac".encode(), "\U0001f600".encode(),
             b"\xed\x9f\xbf", b"\xee\x80\x80", b"\xf4\x8f\xbf\xbf"]


def _decoded(data: bytes) -> str:
    """What cbor2 makes of ``data`` (as strict_cbor does on CPython), or "refused"."""
    try:
        return describe(cbor2.loads(data, allow_indefinite=False, allow_duplicate_keys=False))
    except (cbor2.CBORDecodeError, ValueError, TypeError):
        return "refused"


def _built(data: bytes) -> str:
    """What the portable builder makes of ``data``: the errors strict_cbor maps to "invalid"."""
    try:
        return describe(portable.build(data))
    except ValueError:  # UnicodeError is one
        return "refused"


@settings(max_examples=EXAMPLES, deadline=None)
@given(OBJECTS)
def test_encodes_as_cbor2_does(obj: Any) -> None:
    data = portable.dumps(obj)
    assert data == cbor2.dumps(obj, canonical=True)
    strict_cbor.check(data)
    assert _built(data) == _decoded(data) == describe(obj)


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.sampled_from(BAD_UTF8 + GOOD_UTF8), st.binary(max_size=4), st.binary(max_size=4))
def test_text_refused_as_cpython_refuses_it(middle: bytes, before: bytes, after: bytes) -> None:
    raw = before + middle + after
    data = portable._head(3, len(raw)) + raw
    try:
        raw.decode("utf-8")
        expected = describe(raw.decode("utf-8"))
    except UnicodeDecodeError:
        expected = "refused"
    assert _built(data) == _decoded(data) == expected


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.lists(st.sampled_from([b"\x01", b"\x18\x01", b"\x20", b"\x61a", b"\x41a", b"\xf5",
                                 b"\xf9\x3c\x00", b"\xf6", b"\x80"]), min_size=1, max_size=4))
def test_duplicate_keys_refused_as_cbor2_refuses_them(keys: list[bytes]) -> None:
    # 1 twice in two widths, and 1 beside 1.0 and true, which compare equal in Python.
    # An array key is unhashable to cbor2 and becomes a tuple in ours; it is left out here.
    keys = [k for k in keys if k != b"\x80"] or [b"\x01"]
    data = portable._head(5, len(keys)) + b"".join(k + b"\xf6" for k in keys)
    strict_cbor.check(data)
    assert _built(data) == _decoded(data)


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.sampled_from([(0xF9, ">e"), (0xFA, ">f"), (0xFB, ">d")]), st.data())
def test_floats_of_every_width_decode_as_cbor2_does(width: tuple[int, str], data: Any) -> None:
    code, fmt = width
    raw = data.draw(st.binary(min_size=struct.calcsize(fmt), max_size=struct.calcsize(fmt)))
    item = bytes((code,)) + raw
    assert _built(item) == _decoded(item)
    value = struct.unpack(fmt, raw)[0]
    assert portable.dumps(value) == cbor2.dumps(value, canonical=True)


def test_ints_beyond_64_bits_are_refused_on_both_sides() -> None:
    for n in (2**64, -(2**64) - 1):
        with pytest.raises(ValueError):
            portable.dumps(n)
        with pytest.raises(ProtocolError):
            strict_cbor.dumps(n)


def _random_object(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(10 if depth < 3 else 7)
    if kind == 0:
        return rng.choice((None, True, False))
    if kind == 1:
        return rng.choice((rng.randrange(-(2**64), 2**64), rng.randrange(-30, 30),
                           rng.randrange(-(2**32), 2**32)))
    if kind == 2:
        return rng.choice(SPECIAL_FLOATS + [rng.uniform(-1e6, 1e6), rng.random()])
    if kind == 3:
        return rng.randbytes(rng.randrange(30))
    if kind in (4, 5, 6):
        return "".join(chr(rng.choice((rng.randrange(32, 127), rng.randrange(0x80, 0xD800),
                                        rng.randrange(0x10000, 0x110000))))
                       for _ in range(rng.randrange(12)))
    if kind in (7, 8):
        return [_random_object(rng, depth + 1) for _ in range(rng.randrange(5))]
    keys: list[Any] = [rng.randrange(-100, 100) for _ in range(rng.randrange(5))]
    if rng.randrange(2):
        keys = ["".join(chr(rng.randrange(97, 123)) for _ in range(rng.randrange(4)))
                for _ in keys]
    return {k: _random_object(rng, depth + 1) for k in keys}


def _random_item(rng: random.Random) -> bytes:
    """An encoded object, or one changed in a way a decoder must notice."""
    choice = rng.randrange(8)
    if choice == 0:  # invalid or valid UTF-8 in a text string
        raw = rng.choice(BAD_UTF8 + GOOD_UTF8) + rng.randbytes(rng.randrange(3))
        return portable._head(4, 1) + portable._head(3, len(raw)) + raw
    if choice == 1:  # a map with keys that may repeat, in several encodings
        keys = [rng.choice((b"\x01", b"\x18\x01", b"\x19\x00\x01", b"\x61a", b"\x78\x01a",
                            b"\x02", b"\xf5", b"\xf9\x3c\x00", b"\xfb\x3f\xf0" + bytes(6)))
                for _ in range(rng.randrange(1, 4))]
        return portable._head(5, len(keys)) + b"".join(k + b"\x00" for k in keys)
    if choice == 2:  # a float of each width with random bits (NaNs, subnormals, infinities)
        code, size = rng.choice(((0xF9, 2), (0xFA, 4), (0xFB, 8)))
        return bytes((code,)) + rng.randbytes(size)
    data = portable.dumps(_random_object(rng))
    if choice == 3 and data:  # one byte changed: anything from fine to refused
        at = rng.randrange(len(data))
        return data[:at] + bytes((rng.randrange(256),)) + data[at + 1 :]
    return data


@pytest.mark.parametrize("cases", [pytest.param(300, id="300"),
                                   pytest.param(20000, id="20000", marks=pytest.mark.long)])
def test_micropython_decodes_and_encodes_as_cpython(cases: int, tmp_path: Path) -> None:
    rng = random.Random(8949 + cases)
    items = [_random_item(rng) for _ in range(cases)]
    item_file = tmp_path / "items.txt"
    item_file.write_text("".join(item.hex() + "\n" for item in items))
    expected = [outcome(item) for item in items]
    done = micropython_port.run(SCRIPT, str(item_file), timeout=60 + cases * 0.01)
    assert done.returncode == 0, done.stdout + done.stderr
    got = done.stdout.splitlines()
    assert len(got) == cases, done.stdout[-2000:]
    for item, want, line in zip(items, expected, got, strict=True):
        assert line == want, item.hex()
    outcomes = {line.split()[0] if line.startswith("error") else "ok" for line in expected}
    assert outcomes == {"ok", "error"}
    assert sum(line == "error invalid" for line in expected) > cases // 50
