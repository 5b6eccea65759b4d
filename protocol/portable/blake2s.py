"""BLAKE2s-256 (RFC 7693) and HMAC over it, for MicroPython only.

Noise names BLAKE2s as one of its two hashes, and half of the Noise test
vectors use it; MicroPython's hashlib lacks it. Unkeyed, 32-byte digests only.
"""

from protocol.portable.hmac_sha256 import hmac_with

_IV = (0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A,
       0x510E527F, 0x9B05688C, 0x1F83D9AB, 0x5BE0CD19)
_SIGMA = (
    (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
    (14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3),
    (11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4),
    (7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8),
    (9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13),
    (2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9),
    (12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11),
    (13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10),
    (6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5),
    (10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0),
)
_M32 = 0xFFFFFFFF
BLOCK_SIZE = 64
DIGEST_SIZE = 32


def _mix(v: list[int], a: int, b: int, c: int, d: int, x: int, y: int) -> None:
    # RFC 7693 §3.1, rotations 16, 12, 8, 7
    v[a] = (v[a] + v[b] + x) & _M32
    t = v[d] ^ v[a]
    v[d] = ((t >> 16) | (t << 16)) & _M32
    v[c] = (v[c] + v[d]) & _M32
    t = v[b] ^ v[c]
    v[b] = ((t >> 12) | (t << 20)) & _M32
    v[a] = (v[a] + v[b] + y) & _M32
    t = v[d] ^ v[a]
    v[d] = ((t >> 8) | (t << 24)) & _M32
    v[c] = (v[c] + v[d]) & _M32
    t = v[b] ^ v[c]
    v[b] = ((t >> 7) | (t << 25)) & _M32


def _compress(h: list[int], block: bytes, count: int, last: bool) -> None:
    m = [int.from_bytes(block[i : i + 4], "little") for i in range(0, 64, 4)]
    v = h + list(_IV)
    v[12] ^= count & _M32
    v[13] ^= (count >> 32) & _M32
    if last:
        v[14] ^= _M32
    for s in _SIGMA:
        _mix(v, 0, 4, 8, 12, m[s[0]], m[s[1]])
        _mix(v, 1, 5, 9, 13, m[s[2]], m[s[3]])
        _mix(v, 2, 6, 10, 14, m[s[4]], m[s[5]])
        _mix(v, 3, 7, 11, 15, m[s[6]], m[s[7]])
        _mix(v, 0, 5, 10, 15, m[s[8]], m[s[9]])
        _mix(v, 1, 6, 11, 12, m[s[10]], m[s[11]])
        _mix(v, 2, 7, 8, 13, m[s[12]], m[s[13]])
        _mix(v, 3, 4, 9, 14, m[s[14]], m[s[15]])
    for i in range(8):
        h[i] ^= v[i] ^ v[i + 8]


def blake2s(data: bytes) -> bytes:
    """BLAKE2s-256 of ``data``, unkeyed."""
    h = list(_IV)
    h[0] ^= 0x01010000 ^ DIGEST_SIZE  # parameter block: digest length, fanout 1, depth 1
    n = len(data)
    offset = 0
    # Every block but the last is compressed as it comes; the last (possibly
    # empty, zero-padded) one carries the final flag.
    while n - offset > BLOCK_SIZE:
        _compress(h, data[offset : offset + BLOCK_SIZE], offset + BLOCK_SIZE, False)
        offset += BLOCK_SIZE
    tail = data[offset:]
    _compress(h, tail + bytes(BLOCK_SIZE - len(tail)), n, True)
    return b"".join(word.to_bytes(4, "little") for word in h)


def hmac_blake2s(key: bytes, message: bytes) -> bytes:
    """HMAC-BLAKE2s (RFC 2104 over a 64-byte block), as Noise's HMAC-HASH."""
    return hmac_with(blake2s, BLOCK_SIZE, key, message)
