"""AES-GCM (NIST SP 800-38D) over MicroPython's AES block, for MicroPython only.

Theory of operation: MicroPython's ``cryptolib`` has the AES block cipher
(ECB and CBC modes, 128- and 256-bit keys) but no GCM. GCM is a mode over that
block: the counter blocks ``inc32(J0)...`` are encrypted in one ECB call and
XORed into the data (GCTR), and the tag is GHASH, a polynomial over
GF(2^128) keyed by ``H = E_K(0^128)``, of the associated data and the
ciphertext, XORed with ``E_K(J0)``. Only 96-bit nonces (``J0 = nonce || 1``),
as HPKE uses. GHASH multiplies bit by bit with Python ints: the data sealed
here (keys, short identities) is a few blocks.
"""

from __future__ import annotations

import hmac

_ECB = 1
#: GF(2^128)'s reduction, x^128 + x^7 + x^2 + x + 1, in GCM's reflected bit order.
_R = 0xE1 << 120
TAG_SIZE = 16


def _gf_multiply(x: int, y: int) -> int:
    z = 0
    v = y
    for i in range(127, -1, -1):
        if (x >> i) & 1:
            z ^= v
        v = (v >> 1) ^ _R if v & 1 else v >> 1
    return z


def _ghash(h: int, aad: bytes, ciphertext: bytes) -> int:
    y = 0
    for data in (aad, ciphertext):
        for i in range(0, len(data), 16):
            block = data[i:i + 16]
            y = _gf_multiply(y ^ int.from_bytes(block + bytes(16 - len(block)), "big"), h)
    lengths = (8 * len(aad)).to_bytes(8, "big") + (8 * len(ciphertext)).to_bytes(8, "big")
    return _gf_multiply(y ^ int.from_bytes(lengths, "big"), h)


def _xor(a: bytes, b: bytes) -> bytes:
    """``a`` XOR the first ``len(a)`` bytes of ``b``."""
    return bytes(a[i] ^ b[i] for i in range(len(a)))


def _keystream(key: bytes, nonce: bytes, length: int) -> tuple[bytes, bytes, int]:
    """(E_K(J0), the GCTR key stream for ``length`` bytes, H)."""
    if len(key) not in (16, 32):
        raise ValueError("an AES-GCM key is 16 or 32 bytes")
    if len(nonce) != 12:
        raise ValueError("an AES-GCM nonce is 12 bytes here")
    blocks = (length + 15) // 16
    counters = bytearray(bytes(16))
    for i in range(1 + blocks):
        counters.extend(nonce + (i + 1).to_bytes(4, "big"))
    from cryptolib import aes  # MicroPython's; imported here so CPython can read the module

    out = aes(key, _ECB).encrypt(bytes(counters))
    return out[16:32], out[32:32 + length], int.from_bytes(out[:16], "big")


def _tag(tag_mask: bytes, h: int, aad: bytes, ciphertext: bytes) -> bytes:
    return _xor(_ghash(h, aad, ciphertext).to_bytes(16, "big"), tag_mask)


def seal(key: bytes, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """``ciphertext || tag``."""
    mask, stream, h = _keystream(key, nonce, len(plaintext))
    ciphertext = _xor(plaintext, stream)
    return ciphertext + _tag(mask, h, aad, ciphertext)


def open(key: bytes, nonce: bytes, data: bytes, aad: bytes) -> bytes:
    """The plaintext of ``seal``'s output; ``ValueError`` if the tag does not verify."""
    if len(data) < TAG_SIZE:
        raise ValueError("AES-GCM data shorter than its tag")
    ciphertext, tag = data[:-TAG_SIZE], data[-TAG_SIZE:]
    mask, stream, h = _keystream(key, nonce, len(ciphertext))
    if not hmac.compare_digest(_tag(mask, h, aad, ciphertext), tag):
        raise ValueError("AES-GCM tag does not match")
    return _xor(ciphertext, stream)
