"""Strict CBOR: deterministic encoding out, bounded and checked decoding in.

Encoding follows RFC 8949 section 4.2.1 (core deterministic encoding):
shortest integer and length forms, definite lengths only, map keys sorted.
For the types the protocol uses (integers, byte and text strings, arrays,
maps whose keys are all unsigned integers or all text, booleans, null)
cbor2's ``canonical=True`` output is exactly that, which the test vectors
pin. (cbor2 sorts keys length-first, RFC 8949 section 4.2.3; that differs
from 4.2.1's bytewise order only for keys of mixed kinds or signs, which no
message has; the portable encoder sorts as cbor2 does.)
Sign and hash the raw bytes you sent or received, never a re-encoding.

Decoding walks the item headers in pure Python *before* anything is built,
and refuses (with ``RemoteProtocolError``):

* a total size above ``max_size``;
* nesting deeper than ``DEFAULT_MAX_DEPTH``;
* more than ``DEFAULT_MAX_ITEMS`` items in all;
* a declared length or count that the remaining bytes cannot hold, so a
  header claiming 2**63 elements costs nothing (RFC 8949 section 10);
* indefinite lengths, reserved additional-information values, simple values
  other than false/true/null, and trailing bytes after the item;
* any tag at all, which refuses the shared-reference tags 28 and 29 that
  cbor2 would otherwise follow.

Only then does cbor2 build the objects, with duplicate keys refused.

Under MicroPython, which has no cbor2, ``protocol.portable.cbor`` encodes and
builds instead, to the same bytes and objects; the walk above is the same code.
"""

from __future__ import annotations

from typing import Any

from protocol import MICROPYTHON
from protocol.errors import LocalProtocolError, RemoteProtocolError

_ENCODE_ERRORS: tuple[type[Exception], ...]
if MICROPYTHON:
    from protocol.portable import cbor as _portable

    _ENCODE_ERRORS = (TypeError, ValueError)
else:
    import re

    import cbor2

    _ENCODE_ERRORS = (TypeError, ValueError, cbor2.CBOREncodeError)
    #: A byte that may start a tag (major type 6); only then is the output walked.
    _MAYBE_TAG = re.compile(rb"[\xc0-\xdb]")

DEFAULT_MAX_SIZE = 64 * 1024
DEFAULT_MAX_DEPTH = 16
DEFAULT_MAX_ITEMS = 16 * 1024

_MT_UINT, _MT_NINT, _MT_BYTES, _MT_TEXT, _MT_ARRAY, _MT_MAP, _MT_TAG, _MT_SIMPLE = range(8)
_SIMPLE_OK = {20, 21, 22}  # false, true, null


def dumps(obj: Any) -> bytes:
    """Encode ``obj`` deterministically (RFC 8949 section 4.2.1)."""
    try:
        if MICROPYTHON:
            return _portable.dumps(obj)
        data: bytes = cbor2.dumps(obj, canonical=True)
    except _ENCODE_ERRORS as exc:
        raise LocalProtocolError(f"cannot encode as CBOR: {exc}", "encode") from None
    if _MAYBE_TAG.search(data):
        # cbor2 tags what has no plain CBOR form (an int beyond 64 bits, a datetime), and
        # every decoder of ours refuses tags: refuse it here, as the portable encoder does.
        # Only tags: what we send may be larger than what we accept.
        try:
            check(data, max_size=len(data), max_items=len(data), max_depth=len(data))
        except RemoteProtocolError as exc:
            raise LocalProtocolError(f"cannot encode as CBOR: {exc}", "encode") from None
    return data


def check(data: bytes, *, max_size: int = DEFAULT_MAX_SIZE, max_items: int = DEFAULT_MAX_ITEMS,
          max_depth: int = DEFAULT_MAX_DEPTH) -> None:
    """Raise ``RemoteProtocolError`` unless ``data`` is one acceptable item."""
    n = len(data)
    if n > max_size:
        raise RemoteProtocolError(f"CBOR item of {n} bytes exceeds {max_size}", "too-large")
    if n == 0:
        raise RemoteProtocolError("empty CBOR item", "truncated")
    pos = 0
    items = 0
    # Each stack entry counts the items still owed to an open array or map.
    stack: list[int] = []
    while True:
        if pos >= n:
            raise RemoteProtocolError("CBOR item is truncated", "truncated")
        initial = data[pos]
        pos += 1
        major, info = initial >> 5, initial & 0x1F
        if info < 24:
            arg = info
        elif info <= 27:
            width = 1 << (info - 24)
            if pos + width > n:
                raise RemoteProtocolError("CBOR header is truncated", "truncated")
            arg = int.from_bytes(data[pos : pos + width], "big")
            pos += width
        elif info == 31:
            raise RemoteProtocolError("indefinite-length CBOR is not accepted", "indefinite")
        else:
            raise RemoteProtocolError(f"reserved CBOR header 0x{initial:02x}", "malformed")
        items += 1
        if items > max_items:
            raise RemoteProtocolError(f"more than {max_items} CBOR items", "too-many-items")
        owed = 0
        if major in (_MT_BYTES, _MT_TEXT):
            if arg > n - pos:
                raise RemoteProtocolError(
                    f"CBOR string claims {arg} bytes, {n - pos} remain", "bad-length"
                )
            pos += arg
        elif major == _MT_ARRAY:
            owed = arg
        elif major == _MT_MAP:
            owed = 2 * arg
        elif major == _MT_TAG:
            raise RemoteProtocolError(f"CBOR tag {arg} is not accepted", "tag")
        elif major == _MT_SIMPLE and (info < 24 and arg not in _SIMPLE_OK or info == 24):
            raise RemoteProtocolError(f"CBOR simple value {arg} is not accepted", "simple")
        if owed:
            # Every item takes at least one byte: a count the rest cannot hold is a lie.
            if owed > n - pos:
                raise RemoteProtocolError(
                    f"CBOR container claims {owed} items, {n - pos} bytes remain", "bad-length"
                )
            if len(stack) >= max_depth:
                raise RemoteProtocolError(f"CBOR nesting deeper than {max_depth}",
                                          "too-deep")
            stack.append(owed)
            continue
        # A scalar completed: close every container it finished.
        while stack:
            stack[-1] -= 1
            if stack[-1]:
                break
            stack.pop()
        if not stack:
            break
    if pos != n:
        raise RemoteProtocolError(f"{n - pos} trailing bytes after the CBOR item", "trailing")


def loads(data: bytes, *, max_size: int = DEFAULT_MAX_SIZE) -> Any:
    """Decode one CBOR item after ``check`` has accepted it."""
    check(data, max_size=max_size)
    if MICROPYTHON:
        try:
            return _portable.build(data)
        except (ValueError, UnicodeError) as exc:
            raise RemoteProtocolError(f"invalid CBOR: {exc}", "invalid") from None
    try:
        return cbor2.loads(data, allow_indefinite=False, allow_duplicate_keys=False,
                           max_depth=DEFAULT_MAX_DEPTH + 1)
    except (cbor2.CBORDecodeError, ValueError, TypeError, RecursionError) as exc:
        # Well-formed but not valid: invalid UTF-8, duplicate or unhashable keys.
        raise RemoteProtocolError(f"invalid CBOR: {exc}", "invalid") from None
