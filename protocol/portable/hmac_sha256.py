"""HMAC-SHA256 (RFC 2104) and HKDF (RFC 5869) over hashlib.sha256, for MicroPython only.

MicroPython's hashlib has sha256 but no hmac module, and its hash objects have
no copy(), so each MAC hashes its padded key afresh.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

BLOCK_SIZE = 64
DIGEST_SIZE = 32


def _xor_pad(key: bytes, pad: int, block_size: int) -> bytes:
    out = bytearray(block_size)
    for i in range(block_size):
        out[i] = (key[i] if i < len(key) else 0) ^ pad
    return bytes(out)


def hmac_with(digest: Callable[[bytes], bytes], block_size: int, key: bytes,
              message: bytes) -> bytes:
    """RFC 2104 HMAC over any hash given as ``digest(data) -> bytes``."""
    if len(key) > block_size:
        key = digest(key)
    inner = digest(_xor_pad(key, 0x36, block_size) + message)
    return digest(_xor_pad(key, 0x5C, block_size) + inner)


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def hmac_sha256(key: bytes, message: bytes) -> bytes:
    """HMAC-SHA256(key, message), 32 bytes."""
    return hmac_with(_sha256, BLOCK_SIZE, key, message)


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
