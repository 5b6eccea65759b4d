"""Decodes and re-encodes CBOR items with protocol.strict_cbor, under either interpreter.

Reads a file of items in hex, one a line, and prints a line an item: the
decoded object described (``describe``) and its re-encoding in hex, or
``error <code>``. tests/test_portable_cbor.py runs it under CPython (cbor2)
and MicroPython (protocol.portable.cbor) and requires the same lines.
"""

import struct
import sys

from protocol import strict_cbor
from protocol.errors import ProtocolError


def describe(obj: object) -> str:
    """``obj`` as text that names each item's type and value exactly, map order aside."""
    if obj is None or obj is True or obj is False:
        return repr(obj)
    if isinstance(obj, int):
        return "i" + str(obj)
    if isinstance(obj, float):
        return "fnan" if obj != obj else "f" + struct.pack(">d", obj).hex()
    if isinstance(obj, bytes):
        return "b" + obj.hex()
    if isinstance(obj, str):
        return "s" + obj.encode("utf-8").hex()
    if isinstance(obj, list):
        return "[" + ",".join(describe(x) for x in obj) + "]"
    if isinstance(obj, tuple):
        return "(" + ",".join(describe(x) for x in obj) + ")"
    if isinstance(obj, dict):
        return "{" + ",".join(sorted(describe(k) + ":" + describe(v) for k, v in obj.items())) + "}"
    raise TypeError("unexpected " + type(obj).__name__)


def outcome(data: bytes) -> str:
    try:
        obj = strict_cbor.loads(data)
    except ProtocolError as exc:
        return "error " + exc.code
    try:
        again = strict_cbor.dumps(obj).hex()
    except ProtocolError as exc:
        again = "error " + exc.code
    return describe(obj) + " " + again


if __name__ == "__main__":
    with open(sys.argv[1]) as items:
        for line in items:
            print(outcome(bytes.fromhex(line.strip())))
