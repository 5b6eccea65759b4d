"""HMAC-SHA256 (RFC 2104) and HKDF (RFC 5869) over hashlib.sha256, for MicroPython only.

MicroPython's hashlib has sha256 but no hmac module, and its hash objects have
no copy(), so each MAC hashes its padded key afresh.
"""

import hashlib

BLOCK_SIZE = 64
DIGEST_SIZE = 32


def _xor_pad(key: bytes, pad: int) -> bytes:
    out = bytearray(BLOCK_SIZE)
    for i in range(BLOCK_SIZE):
        out[i] = (key[i] if i < len(key) else 0) ^ pad
    return bytes(out)


def hmac_sha256(key: bytes, message: bytes) -> bytes:
    """HMAC-SHA256(key, message), 32 bytes."""
    if len(key) > BLOCK_SIZE:
        key = hashlib.sha256(key).digest()
    inner = hashlib.sha256(_xor_pad(key, 0x36))
    inner.update(message)
    outer = hashlib.sha256(_xor_pad(key, 0x5C))
    outer.update(inner.digest())
    return outer.digest()


def hkdf_extract(salt: bytes, ikm: bytes) -> bytes:
    """RFC 5869 §2.2: PRK = HMAC(salt, IKM); an empty salt is 32 zero bytes."""
    return hmac_sha256(salt if salt else bytes(DIGEST_SIZE), ikm)


def hkdf_expand(prk: bytes, info: bytes, length: int) -> bytes:
    """RFC 5869 §2.3: the first `length` bytes of T(1) | T(2) | ..."""
    if length < 0 or length > 255 * DIGEST_SIZE:
        raise ValueError("HKDF-SHA256 output length must be 0..8160 bytes")
    out = b""
    block = b""
    counter = 1
    while len(out) < length:
        block = hmac_sha256(prk, block + info + bytes([counter]))
        out += block
        counter += 1
    return out[:length]


def hkdf(salt: bytes, ikm: bytes, info: bytes, length: int) -> bytes:
    """Extract then expand."""
    return hkdf_expand(hkdf_extract(salt, ikm), info, length)
