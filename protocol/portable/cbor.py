"""The strict CBOR codec's encoder and builder for MicroPython, where cbor2 is absent.

``protocol.strict_cbor`` walks and checks every item before anything is built,
on both interpreters; on CPython cbor2 then builds and encodes. Under
MicroPython this module does both, byte for byte as cbor2 does with
``canonical=True``: shortest heads, definite lengths, the shortest float that
keeps the value, map keys in length-first order (RFC 8949 §4.2.3, which for
keys that are all unsigned integers or all text strings, the protocol's, is
also §4.2.1's bytewise order).

micropython-lib's ``cbor2`` does not fit: it does not sort map keys (and a
MicroPython dict keeps no order), and it has no size or depth limits. Its
decoder also takes any UTF-8 MicroPython takes, and MicroPython's
``bytes.decode`` lets through surrogates, overlong forms and code points
above U+10FFFF, so text is checked here as CPython checks it.

Errors: ``TypeError``/``ValueError`` from ``dumps`` for what cannot be encoded
(strict_cbor makes them ``LocalProtocolError("encode")``); ``ValueError`` from
``build`` for well-formed but invalid items (``RemoteProtocolError("invalid")``).
"""

from __future__ import annotations

import struct
from typing import Any


def _head(major: int, n: int) -> bytes:
    if n < 24:
        return bytes((major << 5 | n,))
    if n < 0x100:
        return bytes((major << 5 | 24, n))
    if n < 0x10000:
        return bytes((major << 5 | 25,)) + n.to_bytes(2, "big")
    if n < 0x100000000:
        return bytes((major << 5 | 26,)) + n.to_bytes(4, "big")
    if n < 0x10000000000000000:
        return bytes((major << 5 | 27,)) + n.to_bytes(8, "big")
    raise ValueError("integer out of CBOR's 64-bit range")


def _float(x: float) -> bytes:
    if x != x:  # NaN: cbor2's canonical form
        return b"\xf9\x7e\x00"
    # MicroPython's struct packs a half-precision subnormal wrongly (0x0374 as 0x02e8):
    # below 2**-14 a half is k * 2**-24, k < 1024, made here.
    if 0 < abs(x) < 2.0**-14:
        k = abs(x) * 2.0**24
        if k == int(k):
            return b"\xf9" + (int(k) | (0x8000 if x < 0 else 0)).to_bytes(2, "big")
    for code, fmt in ((0xF9, ">e"), (0xFA, ">f")):
        try:
            packed = struct.pack(fmt, x)
        except (OverflowError, ValueError):
            continue
        if struct.unpack(fmt, packed)[0] == x:
            return bytes((code,)) + packed
    return b"\xfb" + struct.pack(">d", x)


def _encode(obj: Any, out: list[bytes]) -> None:
    # bool before int: a bool is an int on CPython, not on MicroPython.
    if obj is False:
        out.append(b"\xf4")
    elif obj is True:
        out.append(b"\xf5")
    elif obj is None:
        out.append(b"\xf6")
    elif isinstance(obj, int):
        out.append(_head(0, obj) if obj >= 0 else _head(1, -1 - obj))
    elif isinstance(obj, (bytes, bytearray, memoryview)):
        data = bytes(obj)
        out.append(_head(2, len(data)))
        out.append(data)
    elif isinstance(obj, str):
        data = obj.encode("utf-8")
        out.append(_head(3, len(data)))
        out.append(data)
    elif isinstance(obj, (list, tuple)):
        out.append(_head(4, len(obj)))
        for item in obj:
            _encode(item, out)
    elif isinstance(obj, dict):
        pairs = []
        for key, value in obj.items():
            encoded: list[bytes] = []
            _encode(key, encoded)
            pairs.append((b"".join(encoded), value))
        pairs.sort(key=lambda pair: (len(pair[0]), pair[0]))
        out.append(_head(5, len(pairs)))
        for key_bytes, value in pairs:
            out.append(key_bytes)
            _encode(value, out)
    elif isinstance(obj, float):
        out.append(_float(obj))
    else:
        raise TypeError(f"cannot serialize type {type(obj).__name__}")


def dumps(obj: Any) -> bytes:
    """``obj`` as deterministic CBOR."""
    out: list[bytes] = []
    _encode(obj, out)
    return b"".join(out)


def _utf8(data: bytes) -> str:
    # RFC 3629 well-formedness, as CPython's decoder: no overlong forms, no
    # surrogates, nothing above U+10FFFF.
    i, n = 0, len(data)
    while i < n:
        b = data[i]
        if b < 0x80:
            i += 1
            continue
        if 0xC2 <= b <= 0xDF:
            size, low, high = 2, 0x80, 0xBF
        elif 0xE0 <= b <= 0xEF:
            size = 3
            low, high = (0xA0, 0xBF) if b == 0xE0 else (0x80, 0x9F) if b == 0xED else (0x80, 0xBF)
        elif 0xF0 <= b <= 0xF4:
            size = 4
            low, high = (0x90, 0xBF) if b == 0xF0 else (0x80, 0x8F) if b == 0xF4 else (0x80, 0xBF)
        else:
            raise ValueError(f"invalid UTF-8 lead byte 0x{b:02x}")
        if i + size > n or not low <= data[i + 1] <= high:
            raise ValueError(f"invalid UTF-8 at byte {i}")
        for j in range(i + 2, i + size):
            if not 0x80 <= data[j] <= 0xBF:
                raise ValueError(f"invalid UTF-8 at byte {j}")
        i += size
    return data.decode("utf-8")


def _hashable(key: Any) -> Any:
    # cbor2 turns an array used as a map key into a tuple; a map key is refused here.
    if isinstance(key, list):
        return tuple(_hashable(k) for k in key)
    if isinstance(key, dict):
        raise ValueError("a map is not a valid map key")
    return key


def _build(data: bytes, pos: int) -> tuple[Any, int]:
    initial = data[pos]
    pos += 1
    major, info = initial >> 5, initial & 0x1F
    if major == 7:
        if info == 20:
            return False, pos
        if info == 21:
            return True, pos
        if info == 22:
            return None, pos
        fmt, size = {25: (">e", 2), 26: (">f", 4), 27: (">d", 8)}[info]
        return struct.unpack(fmt, data[pos : pos + size])[0], pos + size
    if info < 24:
        arg = info
    else:
        width = 1 << (info - 24)
        arg = int.from_bytes(data[pos : pos + width], "big")
        pos += width
    if major == 0:
        return arg, pos
    if major == 1:
        return -1 - arg, pos
    if major == 2:
        return bytes(data[pos : pos + arg]), pos + arg
    if major == 3:
        return _utf8(bytes(data[pos : pos + arg])), pos + arg
    if major == 4:
        items = []
        for _ in range(arg):
            item, pos = _build(data, pos)
            items.append(item)
        return items, pos
    result: dict[Any, Any] = {}
    for _ in range(arg):
        key, pos = _build(data, pos)
        key = _hashable(key)
        if key in result:
            raise ValueError(f"duplicate map key {key!r}")
        result[key], pos = _build(data, pos)
    return result, pos


def build(data: bytes) -> Any:
    """The object of one item that ``strict_cbor.check`` has accepted."""
    return _build(data, 0)[0]
