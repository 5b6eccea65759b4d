"""The portable primitives wearing the names `cryptography` gives them.

`protocol.crypto` hands these out under MicroPython in place of
`cryptography`'s classes, so the session and batch code that calls
``X25519PrivateKey.generate()``, ``ChaCha20Poly1305(key).encrypt(...)`` or
``Ed25519PublicKey.from_public_bytes(pub).verify(sig, data)`` runs unchanged.
Only the methods protocol/'s core calls are here.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from protocol.errors import ProtocolError
from protocol.portable import chacha20poly1305, x25519

if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Self, TypeVar

    P = TypeVar("P", bound="_PublicKey")


class InvalidTag(ProtocolError):
    """An AEAD tag did not match (cryptography.exceptions.InvalidTag)."""


class InvalidSignature(ProtocolError):
    """A signature did not verify (cryptography.exceptions.InvalidSignature)."""


def _raw(data: bytes, size: int, what: str) -> bytes:
    data = bytes(data)
    if len(data) != size:
        raise ValueError(f"{what} must be {size} bytes")
    return data


class _PublicKey:
    """A public key's 32 raw bytes."""

    KIND = "a public key"

    def __init__(self, raw: bytes) -> None:
        self._raw = raw

    @classmethod
    def from_public_bytes(cls, data: bytes) -> Self:
        return cls(_raw(data, 32, cls.KIND))

    def public_bytes_raw(self) -> bytes:
        return self._raw


class _PrivateKey:
    """A private key's (or seed's) 32 raw bytes, and its public key once derived."""

    KIND = "a private key"

    def __init__(self, raw: bytes) -> None:
        self._raw = raw
        self._public: Any = None

    def _derived(self, kind: type[P], derive: Callable[[bytes], bytes]) -> P:
        if self._public is None:
            self._public = kind(derive(self._raw))
        return self._public  # type: ignore[no-any-return]

    @classmethod
    def generate(cls) -> Self:
        return cls(os.urandom(32))

    @classmethod
    def from_private_bytes(cls, data: bytes) -> Self:
        return cls(_raw(data, 32, cls.KIND))

    def private_bytes_raw(self) -> bytes:
        return self._raw


class X25519PublicKey(_PublicKey):
    KIND = "an X25519 public key"


class X25519PrivateKey(_PrivateKey):
    KIND = "an X25519 private key"

    def public_key(self) -> X25519PublicKey:
        return self._derived(X25519PublicKey, x25519.public_key)

    def exchange(self, peer: X25519PublicKey) -> bytes:
        shared = x25519.x25519(self._raw, peer.public_bytes_raw())
        # RFC 7748 §6.1: an all-zero result means a small-order peer key.
        if shared == bytes(32):
            raise ValueError("X25519 exchange with a small-order public key")
        return shared


class ChaCha20Poly1305:
    def __init__(self, key: bytes) -> None:
        self._key = _raw(key, 32, "a ChaCha20-Poly1305 key")

    def encrypt(self, nonce: bytes, data: bytes, associated_data: bytes | None) -> bytes:
        return chacha20poly1305.seal(self._key, _raw(nonce, 12, "a nonce"), bytes(data),
                                     bytes(associated_data or b""))

    def decrypt(self, nonce: bytes, data: bytes, associated_data: bytes | None) -> bytes:
        try:
            return chacha20poly1305.open(self._key, _raw(nonce, 12, "a nonce"), bytes(data),
                                         bytes(associated_data or b""))
        except ValueError:
            raise InvalidTag("authentication tag did not verify", "auth") from None


class Ed25519PublicKey(_PublicKey):
    KIND = "an Ed25519 public key"

    def verify(self, signature: bytes, data: bytes) -> None:
        from protocol.portable import ed25519  # on first use: a node that signs nothing

        if not ed25519.verify(self._raw, bytes(data), bytes(signature)):
            raise InvalidSignature("signature did not verify", "signature")


class Ed25519PrivateKey(_PrivateKey):
    KIND = "an Ed25519 seed"

    def public_key(self) -> Ed25519PublicKey:
        from protocol.portable import ed25519  # on first use: a node that signs nothing

        return self._derived(Ed25519PublicKey, ed25519.public_key)

    def sign(self, data: bytes) -> bytes:
        from protocol.portable import ed25519

        return ed25519.sign(self._raw, bytes(data))
