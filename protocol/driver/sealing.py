"""Sealing with AES-256-GCM, shared by the kiosk's store and the hub's data at rest.

Theory of operation
-------------------
A key provider (``KeyProvider``: any object with ``key()`` returning 32
bytes) gives a master key; purpose keys are derived from it with HKDF-SHA256
(``derive_key``). A sealed value is ``nonce (12 bytes) || ciphertext and
tag``, its associated data binding it to its place; ``seal_many`` seals a
batch with one AES-GCM object, drawing every nonce in one ``os.urandom``
call, so the per-value cost is the encryption alone. ``open_sealed`` raises
``SealBroken`` for a value that is truncated, altered or moved; ``open_first``
opens a value sealed under one of several keys (a rotation under way: the new
key first, then the old), and says which. ``KeyFile``
keeps a key in an owner-only file (``secret_files``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from protocol.driver.errors import DriverError
from protocol.driver.secret_files import read_secret, write_secret

KEY_SIZE = 32
NONCE_SIZE = 12
#: What sealing adds to a plaintext: the nonce and the 16-byte tag.
SEAL_OVERHEAD = NONCE_SIZE + 16


class SealBroken(DriverError, ValueError):
    """A sealed value that does not open: truncated, altered, or moved elsewhere."""

    code = "corrupt"


class KeyProvider(Protocol):
    def key(self) -> bytes: ...


class KeyFile:
    """A 32-byte key in an owner-only file; ``protocol.driver.errors.SecretFileError``s."""

    def __init__(self, path: Path, what: str = "key file") -> None:
        self.path = Path(path)
        self.what = what

    def create(self) -> None:
        write_secret(self.path, os.urandom(KEY_SIZE))

    def key(self) -> bytes:
        return read_secret(self.path, self.what, KEY_SIZE)


def derive_key(master: bytes, label: bytes) -> bytes:
    """A 32-byte key for one purpose (``label``) from ``master`` (HKDF-SHA256)."""
    return HKDF(algorithm=hashes.SHA256(), length=KEY_SIZE, salt=None, info=label).derive(master)


def seal_many(aead: AESGCM, items: Sequence[tuple[bytes, bytes]], prefix: bytes = b"",
              ) -> list[bytes]:
    """``prefix || nonce || ciphertext`` for each (associated data, plaintext): the
    nonces from one ``os.urandom`` call, the per-call overhead paid once per batch."""
    nonces = os.urandom(NONCE_SIZE * len(items))
    encrypt = aead.encrypt
    out = []
    at = 0
    for ad, plain in items:
        nonce = nonces[at:at + NONCE_SIZE]
        at += NONCE_SIZE
        out.append(prefix + nonce + encrypt(nonce, plain, ad))
    return out


def open_sealed(aead: AESGCM, sealed: bytes, ad: bytes) -> bytes:
    """The plaintext of ``nonce || ciphertext``; ``SealBroken`` if it fails to open."""
    if len(sealed) < SEAL_OVERHEAD:
        raise SealBroken("ciphertext is truncated")
    try:
        return aead.decrypt(sealed[:NONCE_SIZE], sealed[NONCE_SIZE:], ad)
    except InvalidTag:
        raise SealBroken("ciphertext failed authentication (corrupted, or moved)") from None


def open_first(aeads: Sequence[AESGCM], sealed: bytes, ad: bytes) -> tuple[bytes, int]:
    """The plaintext of a value sealed under one of ``aeads`` (tried in order), and the
    index of the one that opened it; ``SealBroken`` if none does. Sound because an
    AES-GCM tag checked under the wrong key fails (but with probability 2**-128): a
    value never opens as garbage under a key it was not sealed with."""
    for i, aead in enumerate(aeads):
        try:
            return open_sealed(aead, sealed, ad), i
        except SealBroken:
            if i == len(aeads) - 1:
                raise
    raise SealBroken("no key to open it with")
