"""Consistent Overhead Byte Stuffing (Cheshire and Baker, IEEE/ACM ToN 1999).

COBS removes every 0x00 from a payload at a cost of at most one byte in 254,
so 0x00 can delimit frames: a receiver that lost sync finds the next frame at
the next zero. The work is done with ``bytes.split`` and slicing, so the pure
Python code runs at C speed per block rather than per byte, and suits a
MicroPython port; fast enough that no C extension is used for it
(``./tools/bench framing`` measures framing, COBS included; BENCHMARKS.md has
the figures).
"""

from __future__ import annotations

from protocol.errors import RemoteProtocolError


def encode(data: bytes) -> bytes:
    """Return the COBS encoding of ``data`` (contains no 0x00 byte)."""
    out = bytearray()
    blocks = data.split(b"\x00")
    last = len(blocks) - 1
    for index, block in enumerate(blocks):
        # A block longer than 254 bytes is cut into 254-byte groups, each
        # with code 0xFF, which means "254 bytes and no implied zero".
        while len(block) >= 254:
            out.append(0xFF)
            out += block[:254]
            block = block[254:]
            if not block and index == last:
                # The data ends on a full group: no empty group follows.
                return bytes(out)
        out.append(len(block) + 1)
        out += block
    return bytes(out)


def decode(data: bytes) -> bytes:
    """Decode one COBS block (without its 0x00 delimiter).

    Raises ``RemoteProtocolError`` if ``data`` is not a valid encoding.
    """
    out = bytearray()
    i = 0
    n = len(data)
    while i < n:
        code = data[i]
        if code == 0:
            raise RemoteProtocolError("zero byte inside a COBS block", "cobs")
        end = i + code
        if end > n:
            raise RemoteProtocolError("COBS block overruns its data", "cobs")
        out += data[i + 1 : end]
        i = end
        if code != 0xFF and i < n:
            out.append(0)
    return bytes(out)


def max_encoded_size(n: int) -> int:
    """The largest possible COBS encoding of ``n`` bytes."""
    return n + n // 254 + 1
