"""Ed25519 signatures (RFC 8032 §5.1) in portable Python, with the SHA-512 beside it.

Theory of operation: points of edwards25519 are kept in extended coordinates (X, Y, Z, T)
with x = X/Z, y = Y/Z and x*y = T/Z (§5.1.4), so adding and doubling need no inversion;
one inversion turns a point back into its 32-byte encoding (§5.1.2). Signing is §5.1.6.
Verifying (§5.1.7) refuses an S that is not below the group order L and a public key that
does not decode, then computes [S]B - [k]A with one joint double-and-add and compares its
encoding to R byte for byte: the cofactorless equation, as OpenSSL behind `cryptography`
checks it, which also refuses a non-canonical R. Plain integers throughout; not constant
time, which a device that signs where nobody can measure its timing can accept.
"""

from protocol.portable.sha512 import sha512

_P = 2**255 - 19
_L = 2**252 + 27742317777372353535851937790883648493
_D = -121665 * pow(121666, _P - 2, _P) % _P
_SQRT_M1 = pow(2, (_P - 1) // 4, _P)

_IDENTITY = (0, 1, 1, 0)


def _add(
    p: tuple[int, int, int, int], q: tuple[int, int, int, int]
) -> tuple[int, int, int, int]:
    x1, y1, z1, t1 = p
    x2, y2, z2, t2 = q
    a = (y1 - x1) * (y2 - x2) % _P
    b = (y1 + x1) * (y2 + x2) % _P
    c = 2 * t1 * t2 * _D % _P
    d = 2 * z1 * z2 % _P
    e, f, g, h = b - a, d - c, d + c, b + a
    return (e * f % _P, g * h % _P, f * g % _P, e * h % _P)


def _double(p: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    x1, y1, z1, _ = p
    a = x1 * x1 % _P
    b = y1 * y1 % _P
    c = 2 * z1 * z1 % _P
    h = a + b
    e = h - (x1 + y1) * (x1 + y1)
    g = a - b
    f = c + g
    return (e * f % _P, g * h % _P, f * g % _P, e * h % _P)


def _multiply(n: int, p: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """[n]p for 0 <= n < 2**255 (MicroPython's int has no bit_length())."""
    acc = _IDENTITY
    for i in range(254, -1, -1):
        acc = _double(acc)
        if (n >> i) & 1:
            acc = _add(acc, p)
    return acc


def _encode(p: tuple[int, int, int, int]) -> bytes:
    x, y, z, _ = p
    zi = pow(z, _P - 2, _P)
    x, y = x * zi % _P, y * zi % _P
    return (y | (x & 1) << 255).to_bytes(32, "little")


def _decode(s: bytes) -> tuple[int, int, int, int] | None:
    """The point that s encodes (§5.1.3), or None when s encodes none."""
    if len(s) != 32:
        return None
    n = int.from_bytes(s, "little")
    sign, y = n >> 255, n & ((1 << 255) - 1)
    if y >= _P:
        return None
    u = (y * y - 1) % _P
    v = (_D * y * y + 1) % _P
    x = u * pow(v, 3, _P) * pow(u * pow(v, 7, _P), (_P - 5) // 8, _P) % _P
    vxx = v * x * x % _P
    if vxx == (-u) % _P:
        x = x * _SQRT_M1 % _P
    elif vxx != u:
        return None
    if x == 0 and sign:
        return None
    if x & 1 != sign:
        x = _P - x
    return (x, y, 1, x * y % _P)


def _base_point() -> tuple[int, int, int, int]:
    y = 4 * pow(5, _P - 2, _P) % _P
    point = _decode(y.to_bytes(32, "little"))
    assert point is not None
    return point


_B = _base_point()


def _expand(secret: bytes) -> tuple[int, bytes]:
    """The secret scalar s and the prefix (§5.1.5)."""
    if len(secret) != 32:
        raise ValueError("an Ed25519 secret key is 32 bytes")
    h = sha512(secret)
    a = bytearray(h[:32])
    a[0] &= 248
    a[31] &= 127
    a[31] |= 64
    return int.from_bytes(bytes(a), "little"), h[32:]


def _challenge(r: bytes, public: bytes, message: bytes) -> int:
    return int.from_bytes(sha512(r + public + message), "little") % _L


def public_key(secret: bytes) -> bytes:
    return _encode(_multiply(_expand(secret)[0], _B))


def sign(secret: bytes, message: bytes) -> bytes:
    s, prefix = _expand(secret)
    public = _encode(_multiply(s, _B))
    r = int.from_bytes(sha512(prefix + message), "little") % _L
    big_r = _encode(_multiply(r, _B))
    big_s = (r + _challenge(big_r, public, message) * s) % _L
    return big_r + big_s.to_bytes(32, "little")


def verify(public: bytes, message: bytes, signature: bytes) -> bool:
    if len(signature) != 64:
        return False
    a = _decode(public)
    s = int.from_bytes(signature[32:], "little")
    if a is None or s >= _L:
        return False
    k = _challenge(signature[:32], public, message)
    x, y, z, t = a
    minus_a = (_P - x, y, z, _P - t)
    both = _add(_B, minus_a)
    # [s]B + [k](-A), one doubling a bit for both scalars (Shamir's trick)
    acc = _IDENTITY
    for i in range(252, -1, -1):  # s and k are below L < 2**253
        acc = _double(acc)
        bits = (s >> i) & 1, (k >> i) & 1
        if bits == (1, 1):
            acc = _add(acc, both)
        elif bits == (1, 0):
            acc = _add(acc, _B)
        elif bits == (0, 1):
            acc = _add(acc, minus_a)
    return _encode(acc) == signature[:32]
