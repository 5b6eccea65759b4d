"""SHA-512 (FIPS 180-4 §6.4) in portable Python, for interpreters whose hashlib lacks it.

Theory of operation: the message is padded to a multiple of 128 bytes (a 1 bit, zeros,
and the bit length as a 128-bit big-endian integer, §5.1.2) and each block is mixed into
eight 64-bit words by 80 rounds (§6.4.2). The constants are defined in §4.2.3 and §5.3.5 as
the first 64 bits of the fractional parts of the cube roots of the first 80 primes and of
the square roots of the first 8; they are derived here with integer roots, exactly, rather
than copied, and the tests hold the result to NIST's examples and to hashlib.
"""

_MASK = 0xFFFFFFFFFFFFFFFF
_BLOCK = 128


def _primes(count: int) -> list[int]:
    found: list[int] = []
    n = 2
    while len(found) < count:
        if all(n % p for p in found):
            found.append(n)
        n += 1
    return found


def _iroot(n: int, k: int) -> int:
    """The largest r with r ** k <= n (Newton's method on integers, from above)."""
    r = 1
    while r**k <= n:
        r <<= 1
    while True:
        s = ((k - 1) * r + n // r ** (k - 1)) // k
        if s >= r:
            return r
        r = s


# floor(frac(root(p)) * 2**64) == floor(root(p * 2**(64k))) mod 2**64
_K = [_iroot(p << 192, 3) & _MASK for p in _primes(80)]
_H0 = [_iroot(p << 128, 2) & _MASK for p in _primes(8)]


def _rotr(x: int, n: int) -> int:
    return ((x >> n) | (x << (64 - n))) & _MASK


def _compress(state: list[int], block: bytes) -> None:
    w = [int.from_bytes(block[i : i + 8], "big") for i in range(0, _BLOCK, 8)]
    for t in range(16, 80):
        x, y = w[t - 15], w[t - 2]
        s0 = _rotr(x, 1) ^ _rotr(x, 8) ^ (x >> 7)
        s1 = _rotr(y, 19) ^ _rotr(y, 61) ^ (y >> 6)
        w.append((w[t - 16] + s0 + w[t - 7] + s1) & _MASK)
    a, b, c, d, e, f, g, h = state
    for t in range(80):
        t1 = (
            h
            + (_rotr(e, 14) ^ _rotr(e, 18) ^ _rotr(e, 41))
            + ((e & f) ^ (~e & g))
            + _K[t]
            + w[t]
        )
        t2 = (_rotr(a, 28) ^ _rotr(a, 34) ^ _rotr(a, 39)) + ((a & b) ^ (a & c) ^ (b & c))
        h, g, f, e = g, f, e, (d + t1) & _MASK
        d, c, b, a = c, b, a, (t1 + t2) & _MASK
    for i, v in enumerate((a, b, c, d, e, f, g, h)):
        state[i] = (state[i] + v) & _MASK


class SHA512:
    """Incremental SHA-512: update() any number of times, digest() at any point."""

    digest_size = 64
    block_size = _BLOCK

    def __init__(self, data: bytes = b"") -> None:
        self._state = list(_H0)
        self._pending = b""
        self._length = 0
        self.update(data)

    def update(self, data: bytes) -> None:
        self._length += len(data)
        buf = self._pending + bytes(data)
        end = len(buf) - len(buf) % _BLOCK
        for i in range(0, end, _BLOCK):
            _compress(self._state, buf[i : i + _BLOCK])
        self._pending = buf[end:]

    def digest(self) -> bytes:
        """The hash of everything so far; the object stays usable for more update()s."""
        state = list(self._state)
        tail = self._pending + b"\x80"
        tail += bytes((_BLOCK - 16 - len(tail)) % _BLOCK)
        tail += (self._length * 8).to_bytes(16, "big")
        for i in range(0, len(tail), _BLOCK):
            _compress(state, tail[i : i + _BLOCK])
        return b"".join(v.to_bytes(8, "big") for v in state)


def sha512(data: bytes) -> bytes:
    return SHA512(data).digest()
