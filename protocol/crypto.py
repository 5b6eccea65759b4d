"""The primitives the session, signed batches and sealed documents use, behind one interface.

On CPython these are `cryptography`'s (OpenSSL): the classes themselves,
re-exported. MicroPython has none of them, so there, and only there, the
pure-Python ones in ``protocol.portable`` stand in under the same names and
methods. Callers import from here, never from either side directly, and run
unchanged on both. Nothing on a CPython path imports ``protocol.portable``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from protocol import MICROPYTHON

#: Noise's hash functions by name: both have 32-byte digests and 64-byte blocks.
HASHES = ("SHA256", "BLAKE2s")

if TYPE_CHECKING or not MICROPYTHON:
    from cryptography.exceptions import InvalidSignature, InvalidTag
    from cryptography.hazmat.primitives import hashes, hpke
    from cryptography.hazmat.primitives import hmac as _hmac
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )
    from cryptography.hazmat.primitives.asymmetric.x25519 import (
        X25519PrivateKey,
        X25519PublicKey,
    )
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    def _algorithm(name: str) -> hashes.HashAlgorithm:
        if name == "SHA256":
            return hashes.SHA256()
        if name == "BLAKE2s":
            return hashes.BLAKE2s(32)
        if name == "SHA512":
            return hashes.SHA512()
        raise ValueError(f"unknown hash {name!r}")

    def hash_digest(name: str, data: bytes) -> bytes:
        """``name`` ("SHA256", "BLAKE2s" or "SHA512") of ``data``."""
        h = hashes.Hash(_algorithm(name))
        h.update(data)
        return h.finalize()

    def hmac_digest(name: str, key: bytes, data: bytes) -> bytes:
        """HMAC-``name`` of ``data`` under ``key``."""
        m = _hmac.HMAC(key, _algorithm(name))
        m.update(data)
        return m.finalize()

    def hkdf_sha256(ikm: bytes, info: bytes, length: int = 32, salt: bytes | None = None) -> bytes:
        """RFC 5869 HKDF-SHA256 of ``ikm`` (no salt: 32 zero bytes)."""
        from cryptography.hazmat.primitives.kdf.hkdf import HKDF

        return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)

else:  # MicroPython
    import hashlib

    from protocol.portable.hmac_sha256 import hkdf, hmac_sha256
    from protocol.portable.keys import (  # noqa: F401  (the interface's names)
        ChaCha20Poly1305,
        Ed25519PrivateKey,
        Ed25519PublicKey,
        InvalidSignature,
        InvalidTag,
        X25519PrivateKey,
        X25519PublicKey,
    )

    def hash_digest(name, data):
        if name == "SHA256":
            return hashlib.sha256(data).digest()
        if name == "BLAKE2s":
            from protocol.portable.blake2s import blake2s  # on first use: a node's Noise is SHA256

            return blake2s(data)
        if name == "SHA512":
            from protocol.portable.sha512 import sha512  # on first use, as Ed25519 loads it

            return sha512(data)
        raise ValueError(f"unknown hash {name!r}")

    def hmac_digest(name, key, data):
        if name == "SHA256":
            return hmac_sha256(key, data)
        if name == "BLAKE2s":
            from protocol.portable.blake2s import hmac_blake2s

            return hmac_blake2s(key, data)
        raise ValueError(f"unknown hash {name!r}")

    def hkdf_sha256(ikm, info, length=32, salt=None):
        return hkdf(salt or b"", ikm, info, length)

    def __getattr__(name):
        # HPKE (RFC 9180, for sealed documents) loads on first use: a sensor node that
        # never opens one keeps its RAM.
        if name == "hpke":
            from protocol.portable import hpke

            return hpke
        raise AttributeError(name)


__all__ = [
    "HASHES", "ChaCha20Poly1305", "Ed25519PrivateKey", "Ed25519PublicKey",
    "InvalidSignature", "InvalidTag", "X25519PrivateKey", "X25519PublicKey", "hash_digest",
    "hkdf_sha256", "hmac_digest", "hpke",
]
