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

Rotation (``device.store.rotation``). While the master key rotates, the
cipher holds two: it seals under the new one only, and opens a value under
the new one, else under the old one (``cryptography``'s MultiFernet does the
same). No value records which key sealed it, and none needs to: AES-GCM
checks a 128-bit tag, so a value tried under the wrong key fails to open
(but with probability 2**-128) rather than opening as garbage.
``rotate`` and ``forget_old`` swap the keys in place, as one attribute, so
every holder of the cipher (the documents, the sync batches) follows.
A provider that can rotate (``RotatingKey``) keeps the next key durable
beside the current one until the swap: ``KeyFile``'s is ``NAME.next``.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

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
from protocol.driver.secret_files import promote_secret, read_secret, write_secret

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


class RotatingKey(KeyProvider, Protocol):
    """A key provider that can hold a next key beside its key, durable, until the swap."""

    def has_next(self) -> bool:
        """Whether a next key is held (a rotation under way); cheap, no key is read."""
        ...

    def next_key(self) -> bytes | None: ...

    def make_next(self) -> None:
        """Make a new random next key, durable before it returns; ``FileExistsError`` if
        one is held."""
        ...

    def promote_next(self) -> None:
        """The next key becomes the key and the old one is destroyed; each step
        survives a power cut, and calling again finishes it."""
        ...


class KeyFile:
    """The default provider: a 32-byte key in an owner-only file (the next key of a
    rotation in ``NAME.next``)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.next_path = self.path.with_name(self.path.name + ".next")

    def create(self) -> None:
        write_secret(self.path, os.urandom(KEY_SIZE))

    def key(self) -> bytes:
        return read_key(self.path, "store key file")

    def has_next(self) -> bool:
        return self.next_path.exists()

    def next_key(self) -> bytes | None:
        return read_key(self.next_path, "next store key file") if self.has_next() else None

    def make_next(self) -> None:
        write_secret(self.next_path, os.urandom(KEY_SIZE))

    def promote_next(self) -> None:
        promote_secret(self.path, self.next_path)


_FIELD, _BLOB = 0, 1


def _purposes(master: bytes) -> tuple[AESGCM, AESGCM]:
    if len(master) != KEY_SIZE:
        raise StoreError("the store key must be 32 bytes", "key-size")
    return (AESGCM(derive_key(master, b"haven/store/field/v1")),
            AESGCM(derive_key(master, b"haven/store/blob/v1")))


class FieldCipher:
    def __init__(self, master: bytes, old: bytes | None = None) -> None:
        """Seal under ``master``; open under it, else under ``old`` (a rotation)."""
        new = _purposes(master)
        #: Per purpose, the keys a value opens under, the sealing one first.
        self._rings: tuple[tuple[AESGCM, ...], tuple[AESGCM, ...]] = (
            (new[0],), (new[1],)) if old is None else _rings(new, _purposes(old))
        self._master_id = derive_key(master, b"haven/store/key-id/v1")

    @property
    def rotating(self) -> bool:
        """Whether an old key is held beside the sealing one."""
        return len(self._rings[0]) > 1

    def rotate(self, master: bytes) -> None:
        """Seal under ``master`` from now on, and open under it, else under the key sealing
        until now (nothing if ``master`` seals already)."""
        if derive_key(master, b"haven/store/key-id/v1") == self._master_id:
            return
        if self.rotating:
            raise StoreError("the store key is rotating already", "rotation-running")
        old = (self._rings[0][0], self._rings[1][0])
        self._rings = _rings(_purposes(master), old)
        self._master_id = derive_key(master, b"haven/store/key-id/v1")

    def forget_old(self) -> None:
        """Open under the sealing key only (the rotation is over)."""
        self._rings = ((self._rings[0][0],), (self._rings[1][0],))

    @staticmethod
    def _ad(record_id: bytes, field: int, stamp: int, node: int) -> bytes:
        return record_id + _AD_TAIL.pack(field, stamp, node)

    def seal_field(self, record_id: bytes, field: int, stamp: int, node: int,
                   plain: bytes) -> bytes:
        nonce = os.urandom(NONCE_SIZE)
        return nonce + self._rings[_FIELD][0].encrypt(
            nonce, plain, self._ad(record_id, field, stamp, node))

    def open_field(self, record_id: bytes, field: int, stamp: int, node: int,
                   sealed: bytes) -> bytes:
        return _open(self._rings[_FIELD], sealed, self._ad(record_id, field, stamp, node))[0]

    def seal_fields(self, items: Sequence[tuple[bytes, int, int, int, bytes]]) -> list[bytes]:
        """``seal_field`` for each (record id, field, stamp, node, plaintext)."""
        nonces = os.urandom(NONCE_SIZE * len(items))
        encrypt = self._rings[_FIELD][0].encrypt
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
        return seal_many(self._rings[_BLOB][0], items)

    def seal_blob(self, label: bytes, plain: bytes) -> bytes:
        nonce = os.urandom(NONCE_SIZE)
        return nonce + self._rings[_BLOB][0].encrypt(nonce, plain, label)

    def open_blob(self, label: bytes, sealed: bytes) -> bytes:
        return _open(self._rings[_BLOB], sealed, label)[0]

    def reseal_field(self, record_id: bytes, field: int, stamp: int, node: int,
                     sealed: bytes) -> bytes | None:
        """``sealed`` sealed under the sealing key; None if it is already. ``CorruptData``
        if no key held opens it."""
        return self._reseal(_FIELD, self._ad(record_id, field, stamp, node), sealed)

    def reseal_blob(self, label: bytes, sealed: bytes) -> bytes | None:
        """``reseal_field`` for a blob."""
        return self._reseal(_BLOB, label, sealed)

    def _reseal(self, purpose: int, ad: bytes, sealed: bytes) -> bytes | None:
        ring = self._rings[purpose]
        plain, which = _open(ring, sealed, ad)
        return None if which == 0 else seal_many(ring[0], [(ad, plain)])[0]


def _rings(new: tuple[AESGCM, AESGCM], old: tuple[AESGCM, AESGCM]
           ) -> tuple[tuple[AESGCM, ...], tuple[AESGCM, ...]]:
    return (new[0], old[0]), (new[1], old[1])


def _open(ring: Sequence[AESGCM], sealed: bytes, ad: bytes) -> tuple[bytes, int]:
    """``protocol.driver.sealing.open_first``, its failure the store's ``CorruptData``."""
    try:
        return sealing.open_first(ring, sealed, ad)
    except sealing.SealBroken as exc:
        raise CorruptData(str(exc)) from None

