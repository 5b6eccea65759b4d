"""X25519 (RFC 7748 §5) in pure Python ints, for MicroPython only.

Theory of operation: the scalar is clamped (§5), the u-coordinate is read
little-endian with its top bit masked, and the Montgomery ladder runs over all
255 bits with a conditional swap made of arithmetic, never a branch on a key bit.
Python ints are not constant-time; the loop's structure is.
"""

P = 2**255 - 19
A24 = 121665


def _decode_scalar(k: bytes) -> int:
    if len(k) != 32:
        raise ValueError("X25519 scalar must be 32 bytes")
    b = bytearray(k)
    b[0] &= 248
    b[31] &= 127
    b[31] |= 64
    return int.from_bytes(bytes(b), "little")


def _decode_u(u: bytes) -> int:
    if len(u) != 32:
        raise ValueError("X25519 u-coordinate must be 32 bytes")
    b = bytearray(u)
    b[31] &= 127
    return int.from_bytes(bytes(b), "little") % P


def _cswap(swap: int, a: int, b: int) -> tuple[int, int]:
    # swap is 0 or 1; mask is 0 or all ones over the field's width.
    mask = -swap
    d = (a ^ b) & mask
    return a ^ d, b ^ d


def x25519(k: bytes, u: bytes) -> bytes:
    """The RFC 7748 §5 function X25519(k, u): 32 bytes in, 32 bytes out."""
    scalar = _decode_scalar(k)
    x1 = _decode_u(u)
    x2, z2, x3, z3 = 1, 0, x1, 1
    swap = 0
    for t in range(254, -1, -1):
        k_t = (scalar >> t) & 1
        swap ^= k_t
        x2, x3 = _cswap(swap, x2, x3)
        z2, z3 = _cswap(swap, z2, z3)
        swap = k_t
        a = (x2 + z2) % P
        aa = a * a % P
        b = (x2 - z2) % P
        bb = b * b % P
        e = (aa - bb) % P
        c = (x3 + z3) % P
        d = (x3 - z3) % P
        da = d * a % P
        cb = c * b % P
        x3 = (da + cb) % P
        x3 = x3 * x3 % P
        z3 = (da - cb) % P
        z3 = x1 * (z3 * z3 % P) % P
        x2 = aa * bb % P
        z2 = e * (aa + A24 * e) % P
    x2, x3 = _cswap(swap, x2, x3)
    z2, z3 = _cswap(swap, z2, z3)
    return (x2 * pow(z2, P - 2, P) % P).to_bytes(32, "little")


BASE_POINT = (9).to_bytes(32, "little")


def public_key(private: bytes) -> bytes:
    """The public key for a 32-byte private key: X25519(private, 9)."""
    return x25519(private, BASE_POINT)
