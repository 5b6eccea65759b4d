"""Keys and field encryption at rest.

Theory of operation
-------------------
A key provider hands the store one 32-byte master key. The default,
``KeyFile``, keeps it in a file readable by its owner only
(``protocol.driver.secret_files``) and refuses a file that group or others
could read, with a message that says how to fix it. Another provider (a
TPM, a secure element, a key typed in at boot) only needs a ``key()`` method.

``FieldCipher`` derives purpose keys from the master key with HKDF-SHA256
and seals each field value separately with AES-256-GCM under a random
96-bit nonce. The associated data is the record id, the field number and the
write's dot (stamp and node), so the merge can compare stamps in SQL without
any plaintext, and a ciphertext moved to another record, field or version
fails to open. Whole deltas (the write log, the outbox, the quarantine) are
sealed the same way, bound to their record id and dot.

``seal_fields`` and ``seal_blobs`` seal many values at once for the bulk
merge: the same AES-256-GCM, one encryption per value with its own
associated data, but the nonces come from one ``os.urandom`` call and the
per-call Python overhead is paid once per batch.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from device.store.exc import CorruptData, KeyFileMissing, KeyFilePermissions, StoreError
from protocol.driver import sealing
from protocol.driver.errors import SecretInvalid, SecretMissing, SecretPermissions
from protocol.driver.sealing import KEY_SIZE as KEY_SIZE
from protocol.driver.sealing import NONCE_SIZE as NONCE_SIZE
from protocol.driver.sealing import SEAL_OVERHEAD as SEAL_OVERHEAD
from protocol.driver.sealing import KeyProvider as KeyProvider
from protocol.driver.sealing import derive_key as derive_key
from protocol.driver.sealing import seal_many as seal_many
from protocol.driver.secret_files import read_secret, write_secret

_AD_TAIL = struct.Struct(">HQI")  # field, stamp, node after the record id


def read_key(path: Path, what: str, size: int | None = KEY_SIZE) -> bytes:
    """An owner-only secret file (``protocol.driver.secret_files``), its errors the store's."""
    try:
        return read_secret(path, what, size)
    except SecretMissing as exc:
        raise KeyFileMissing(str(exc)) from None
    except SecretPermissions as exc:
        raise KeyFilePermissions(str(exc)) from None
    except SecretInvalid as exc:
        raise StoreError(str(exc), "key-size") from None


class KeyFile:
    """The default provider: a 32-byte key in an owner-only file."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def create(self) -> None:
        write_secret(self.path, os.urandom(KEY_SIZE))

    def key(self) -> bytes:
        return read_key(self.path, "store key file")


class FieldCipher:
    def __init__(self, master: bytes) -> None:
        if len(master) != KEY_SIZE:
            raise StoreError("the store key must be 32 bytes", "key-size")
        self._fields = AESGCM(derive_key(master, b"haven/store/field/v1"))
        self._blobs = AESGCM(derive_key(master, b"haven/store/blob/v1"))

    @staticmethod
    def _ad(record_id: bytes, field: int, stamp: int, node: int) -> bytes:
        return record_id + _AD_TAIL.pack(field, stamp, node)

    def seal_field(self, record_id: bytes, field: int, stamp: int, node: int,
                   plain: bytes) -> bytes:
        nonce = os.urandom(NONCE_SIZE)
        return nonce + self._fields.encrypt(nonce, plain, self._ad(record_id, field, stamp, node))

    def open_field(self, record_id: bytes, field: int, stamp: int, node: int,
                   sealed: bytes) -> bytes:
        return open_sealed(self._fields, sealed, self._ad(record_id, field, stamp, node))

    def seal_fields(self, items: Sequence[tuple[bytes, int, int, int, bytes]]) -> list[bytes]:
        """``seal_field`` for each (record id, field, stamp, node, plaintext)."""
        nonces = os.urandom(NONCE_SIZE * len(items))
        encrypt = self._fields.encrypt
        tail = _AD_TAIL.pack
        out = []
        at = 0
        for rid, field, stamp, node, plain in items:
            nonce = nonces[at:at + NONCE_SIZE]
            at += NONCE_SIZE
            out.append(nonce + encrypt(nonce, plain, rid + tail(field, stamp, node)))
        return out

    def seal_blobs(self, items: Sequence[tuple[bytes, bytes]]) -> list[bytes]:
        """``seal_blob`` for each (label, plaintext)."""
        return seal_many(self._blobs, items)

    def seal_blob(self, label: bytes, plain: bytes) -> bytes:
        nonce = os.urandom(NONCE_SIZE)
        return nonce + self._blobs.encrypt(nonce, plain, label)

    def open_blob(self, label: bytes, sealed: bytes) -> bytes:
        return open_sealed(self._blobs, sealed, label)


def open_sealed(aead: AESGCM, sealed: bytes, ad: bytes) -> bytes:
    """``protocol.driver.sealing.open_sealed``, its failure the store's ``CorruptData``."""
    try:
        return sealing.open_sealed(aead, sealed, ad)
    except sealing.SealBroken as exc:
        raise CorruptData(str(exc)) from None
