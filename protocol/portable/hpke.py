"""HPKE (RFC 9180) base mode with DHKEM(X25519, HKDF-SHA256) and HKDF-SHA256, for
MicroPython only, under the names of `cryptography`'s ``hpke`` module.

Theory of operation: a composition of the portable primitives, nothing new.
The sender makes an ephemeral X25519 key; the KEM's shared secret is
HKDF-SHA256 (``LabeledExtract``/``LabeledExpand``, §4) of the Diffie-Hellman
result and both public keys (§4.1); the key schedule (§5.1) turns it and
``info`` into the AEAD's key and base nonce, and the single-shot ``Seal`` is
the first message (§6.1): ``enc || ciphertext``, as
``cryptography.hazmat.primitives.hpke.Suite.encrypt`` gives it. The AEAD is
AES-128-GCM, AES-256-GCM (``protocol.portable.aes_gcm``, over MicroPython's
AES block) or ChaCha20-Poly1305.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from protocol.portable import aes_gcm, chacha20poly1305, x25519
from protocol.portable.hmac_sha256 import hkdf_expand, hkdf_extract
from protocol.portable.keys import InvalidTag

if TYPE_CHECKING:
    from protocol.portable.keys import X25519PrivateKey, X25519PublicKey

_VERSION = b"HPKE-v1"
_BASE_MODE = 0
ENC_SIZE = 32


class KEM:
    X25519 = 0x0020


class KDF:
    HKDF_SHA256 = 0x0001


class AEAD:
    AES_128_GCM = 0x0001
    AES_256_GCM = 0x0002
    CHACHA20_POLY1305 = 0x0003


#: AEAD id -> (module with seal/open, key size); every nonce is 12 bytes.
_AEADS = {AEAD.AES_128_GCM: (aes_gcm, 16), AEAD.AES_256_GCM: (aes_gcm, 32),
          AEAD.CHACHA20_POLY1305: (chacha20poly1305, 32)}
_KEM_SUITE = b"KEM" + KEM.X25519.to_bytes(2, "big")


def _labeled_extract(suite: bytes, salt: bytes, label: bytes, ikm: bytes) -> bytes:
    return hkdf_extract(salt, _VERSION + suite + label + ikm)


def _labeled_expand(suite: bytes, prk: bytes, label: bytes, info: bytes, length: int) -> bytes:
    return hkdf_expand(prk, length.to_bytes(2, "big") + _VERSION + suite + label + info, length)


def _exchange(private: bytes, public: bytes) -> bytes:
    shared = x25519.x25519(private, public)
    if shared == bytes(32):  # §7.1.4: a small-order public key
        raise ValueError("HPKE: X25519 with a small-order public key")
    return shared


def _kem_secret(dh: bytes, enc: bytes, recipient: bytes) -> bytes:
    prk = _labeled_extract(_KEM_SUITE, b"", b"eae_prk", dh)
    return _labeled_expand(_KEM_SUITE, prk, b"shared_secret", enc + recipient, 32)


class Suite:
    def __init__(self, kem: int, kdf: int, aead: int) -> None:
        if kem != KEM.X25519 or kdf != KDF.HKDF_SHA256 or aead not in _AEADS:
            raise ValueError("HPKE suite not available under MicroPython")
        self._aead, self._key_size = _AEADS[aead]
        self._suite = (b"HPKE" + kem.to_bytes(2, "big") + kdf.to_bytes(2, "big")
                       + aead.to_bytes(2, "big"))

    def key_schedule(self, shared: bytes, info: bytes) -> tuple[bytes, bytes]:
        """§5.1 in base mode: (key, base nonce)."""
        s = self._suite
        context = (bytes([_BASE_MODE]) + _labeled_extract(s, b"", b"psk_id_hash", b"")
                   + _labeled_extract(s, b"", b"info_hash", info))
        secret = _labeled_extract(s, shared, b"secret", b"")
        return (_labeled_expand(s, secret, b"key", context, self._key_size),
                _labeled_expand(s, secret, b"base_nonce", context, 12))

    def seal(self, plaintext: bytes, recipient: bytes, info: bytes, aad: bytes,
             ephemeral: bytes) -> bytes:
        """``enc || ciphertext`` of the first message to the X25519 public key
        ``recipient``, with the ephemeral private key ``ephemeral``."""
        enc = x25519.public_key(ephemeral)
        shared = _kem_secret(_exchange(ephemeral, recipient), enc, recipient)
        key, nonce = self.key_schedule(shared, info)
        sealed: bytes = enc + self._aead.seal(key, nonce, plaintext, aad)
        return sealed

    def open(self, sealed: bytes, private: bytes, info: bytes, aad: bytes) -> bytes:
        """The plaintext of ``seal``'s output for the X25519 private key ``private``;
        ``InvalidTag`` if it was not sealed to it."""
        if len(sealed) < ENC_SIZE:
            raise ValueError("HPKE: shorter than the encapsulated key")
        enc = sealed[:ENC_SIZE]
        shared = _kem_secret(_exchange(private, enc), enc, x25519.public_key(private))
        key, nonce = self.key_schedule(shared, info)
        try:
            plain: bytes = self._aead.open(key, nonce, sealed[ENC_SIZE:], aad)
        except ValueError:
            raise InvalidTag("HPKE: the ciphertext does not open", "auth") from None
        return plain

    def encrypt(self, plaintext: bytes, public_key: X25519PublicKey,
                info: bytes | None = None) -> bytes:
        return self.seal(bytes(plaintext), public_key.public_bytes_raw(), bytes(info or b""),
                         b"", os.urandom(32))

    def decrypt(self, ciphertext: bytes, private_key: X25519PrivateKey,
                info: bytes | None = None) -> bytes:
        return self.open(bytes(ciphertext), private_key.private_bytes_raw(),
                         bytes(info or b""), b"")
