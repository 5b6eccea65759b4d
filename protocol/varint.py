"""Variable-length integers, as in QUIC.

``encode``/``decode`` follow RFC 9000 section 16: the two high bits of the
first byte give the length (1, 2, 4 or 8 bytes), so values below 64 take one
byte and values below 16,384 take two.
"""

from __future__ import annotations

from protocol.errors import LocalProtocolError, RemoteProtocolError

MAX = (1 << 62) - 1


def encode(value: int) -> bytes:
    if value < 0 or value > MAX:
        raise LocalProtocolError(f"varint out of range: {value}")
    if value < 1 << 6:
        return bytes((value,))
    if value < 1 << 14:
        return (value | 0x4000).to_bytes(2, "big")
    if value < 1 << 30:
        return (value | 0x80000000).to_bytes(4, "big")
    return (value | 0xC000000000000000).to_bytes(8, "big")


def decode(data: bytes, pos: int = 0) -> tuple[int, int]:
    """Return ``(value, next_position)``; ``RemoteProtocolError`` if truncated."""
    if pos >= len(data):
        raise RemoteProtocolError("varint is truncated", "truncated")
    first = data[pos]
    size = 1 << (first >> 6)
    end = pos + size
    if end > len(data):
        raise RemoteProtocolError("varint is truncated", "truncated")
    value = int.from_bytes(data[pos:end], "big") & ((1 << (8 * size - 2)) - 1)
    return value, end
