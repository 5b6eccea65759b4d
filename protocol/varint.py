"""Variable-length integers and truncated packet numbers, as in QUIC.

``encode``/``decode`` follow RFC 9000 section 16: the two high bits of the
first byte give the length (1, 2, 4 or 8 bytes), so values below 64 take one
byte and values below 16,384 take two.

Packet numbers travel truncated to their low 16 bits and are rebuilt from the
largest one received, with the algorithm of RFC 9000 appendix A.3. That is
exact while fewer than 32,768 packets are in flight, far more than a session
allows.
"""

from __future__ import annotations

from .errors import LocalProtocolError, RemoteProtocolError

MAX = (1 << 62) - 1
PN_BYTES = 2
_PN_WIN = 1 << (8 * PN_BYTES)


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


def truncate_pn(pn: int) -> bytes:
    return (pn % _PN_WIN).to_bytes(PN_BYTES, "big")


def expand_pn(truncated: bytes, largest: int) -> int:
    """Rebuild a full packet number from its low bytes (RFC 9000 A.3)."""
    expected = largest + 1
    hwin = _PN_WIN // 2
    candidate = (expected & ~(_PN_WIN - 1)) | int.from_bytes(truncated, "big")
    if candidate <= expected - hwin and candidate < (1 << 62) - _PN_WIN:
        return candidate + _PN_WIN
    if candidate > expected + hwin and candidate >= _PN_WIN:
        return candidate - _PN_WIN
    return candidate
