"""The hub's data at rest: a keyring of data keys wrapped by a key-encryption key.

Theory of operation
-------------------
A key provider (``protocol.driver.sealing.KeyProvider``: any object with ``key()``
of 32 bytes; by default ``KeyFile(DATA/hub_store.key)``, owner-only, or a
key sealed to a TPM, ``DATA/hub_store.tpm``) gives the hub its
key-encryption key (KEK). The KEK seals nothing but the keys in
``keyring``: each row a random 32-byte key, AES-256-GCM under
HKDF(KEK, "haven/hub/wrap/v1"), its version in the associated data. Version
0 is the *name key*, never rotated: it names document chunks by keyed hash,
so a name stays the same across rotations and says nothing about content.
Versions 1 to 127 are data keys (DEKs); ``meta.current_key`` is the one that
seals new rows. ``haven hub keys rotate`` adds the next version and makes it
current; the re-sealer (``storage.HubStore.reseal_slice``) re-seals older
rows and deletes the old key once none remain.

A sealed blob is ``version (1 byte) || nonce (12) || AES-256-GCM ciphertext
and tag`` under a purpose key derived from the version's DEK, with
associated data that binds it to its place: a delta to its record id and dot
(``op_ad``), a quarantined delta to its row, a held batch to its kiosk and
hash, a document chunk to its keyed name. A blob moved to another row fails
to open. A delta as release a84fa97 and before held it is plain CBOR, whose
first byte (an array or map header) is at least 0x80: such a row is read as
it is until the re-sealer seals it, so an upgraded hub serves at once. (A
quarantined delta or a held batch from before may be any bytes: it counts as
sealed only if it opens.) Once a pass has sealed every row
(``meta.all_sealed``), a plain value is refused.

Every read of a sealed value goes through ``Sealer.open``; SQL that reads
deltas calls it as the SQL function ``hub_open(rid, stamp, node, data)``
(``register``), so a page of a pull is cut by the plaintext's size as before.
Sealing many deltas at once (a batch) uses one AES-GCM object per purpose and
draws the nonces in one call (``protocol.driver.sealing.seal_many``).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
import time
from collections.abc import Sequence
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from host.errors import UsageError
from host.hub.database import Db, meta_get, meta_set, register_function
from protocol.driver.errors import DriverError
from protocol.driver.sealing import (
    KEY_SIZE,
    NONCE_SIZE,
    KeyFile,
    KeyProvider,
    derive_key,
    open_sealed,
    seal_many,
)
from protocol.driver.sealing import (
    SealBroken as SealBroken,
)
from protocol.driver.tpm_key import TpmKey

STORE_KEY = "hub_store.key"
TPM_KEY = "hub_store"  #: ``DATA/hub_store.tpm``: the KEK sealed to a TPM instead
NAME_KEY = 0  #: the keyring's version of the name key
MAX_VERSION = 127  #: versions are 1..127: a sealed blob's first byte is below 0x80
#: ``meta`` keys: the version sealing new rows, and the re-sealer's progress
#: ("table rowid"; absent: nothing to re-seal).
CURRENT, PROGRESS = "current_key", "reseal_progress"
#: ``meta`` key: set once every row has been sealed; from then on a plain row is refused.
ALL_SEALED = "all_sealed"
_OP_AD = struct.Struct(">QI")


def default_provider(data: Path) -> KeyProvider:
    """The hub's KEK provider: sealed to a TPM when ``DATA/hub_store.tpm`` says so
    (``haven hub init --key-provider tpm``), else the owner-only file."""
    tpm = TpmKey(Path(data), TPM_KEY)
    return tpm if tpm.exists() else KeyFile(Path(data) / STORE_KEY, "hub store key file")


def create_provider(data: Path, kind: str, tcti: str | None = None) -> None:
    """Make a new hub's KEK: ``file`` (made at the store's first open) or ``tpm`` (a key
    sealed to the TPM ``tcti`` names, its blobs in ``DATA/hub_store.tpm``)."""
    if kind == "tpm":
        try:
            TpmKey(Path(data), TPM_KEY, tcti).create()
        except DriverError as exc:
            raise UsageError(f"cannot seal the hub's store key to the TPM: {exc}") from None
    elif kind != "file":
        raise UsageError(f"the hub's key provider is file or tpm, not {kind}")


def is_sealed(blob: bytes) -> bool:
    """Whether a stored value is sealed (a key version), not plain CBOR from before."""
    return bool(blob) and blob[0] < 0x80


def op_ad(rid: bytes, stamp: int, node: int) -> bytes:
    return b"op" + rid + _OP_AD.pack(stamp, node)


def quarantine_ad(qid: int) -> bytes:
    return b"quarantine" + qid.to_bytes(8, "big")


def held_ad(device_id: str, batch_hash: bytes) -> bytes:
    return b"held" + device_id.encode() + b"\0" + batch_hash


def _wrapper(kek: bytes) -> AESGCM:
    if len(kek) != KEY_SIZE:
        raise UsageError("the hub's store key must be 32 bytes")
    return AESGCM(derive_key(kek, b"haven/hub/wrap/v1"))


def _wrap_ad(version: int) -> bytes:
    return b"haven-hub-dek" + bytes([version])


class Sealer:
    """Seals and opens the hub's values with the keyring's keys."""

    def __init__(self, keys: dict[int, bytes], current: int, plain_ok: bool = True) -> None:
        self.current = current
        self.plain_ok = plain_ok
        self.versions = frozenset(v for v in keys if v != NAME_KEY)
        self._names = derive_key(keys[NAME_KEY], b"haven/hub/names/v1")
        self._ops = {v: AESGCM(derive_key(k, b"haven/hub/op/v1"))
                     for v, k in keys.items() if v != NAME_KEY}
        self._blobs = {v: AESGCM(derive_key(k, b"haven/hub/blob/v1"))
                       for v, k in keys.items() if v != NAME_KEY}
        self._prefix = bytes([current])

    def seal_ops(self, items: Sequence[tuple[bytes, int, int, bytes]]) -> list[bytes]:
        """Each (record id, stamp, node, delta) sealed, bound to its record and dot."""
        return seal_many(self._ops[self.current],
                         [(op_ad(rid, stamp, node), plain) for rid, stamp, node, plain in items],
                         self._prefix)

    def seal(self, ad: bytes, plain: bytes) -> bytes:
        return seal_many(self._blobs[self.current], [(ad, plain)], self._prefix)[0]

    def seal_values(self, items: Sequence[tuple[bytes, bytes]]) -> list[bytes]:
        """Each (associated data, value) sealed, as ``seal`` does, in one call."""
        return seal_many(self._blobs[self.current], items, self._prefix)

    def open_value(self, ad: bytes, blob: bytes) -> bytes:
        """A value ``seal_values`` sealed; never read as plain (none was ever plain). On
        the hot path of every read of the current records: no layer between."""
        try:
            return self._blobs[blob[0]].decrypt(blob[1:13], blob[13:], ad)
        except (KeyError, IndexError):
            raise SealBroken("a value sealed under a key version the keyring does not "
                             "hold") from None
        except (InvalidTag, ValueError):
            raise SealBroken("a value failed authentication (corrupted, or moved)") from None

    def open(self, ad: bytes, blob: bytes, ops: bool = False) -> bytes:
        """The plaintext of a stored value (a value from before sealing: itself)."""
        plain = self._sealed(ad, blob, ops)
        if plain is not None:
            return plain
        if not self.plain_ok:
            raise SealBroken("a plain value where every value is sealed")
        return blob

    def _sealed(self, ad: bytes, blob: bytes, ops: bool) -> bytes | None:
        """The plaintext of a sealed value; None for a plain one from before sealing. A
        delta is plain CBOR (first byte at least 0x80); a quarantined delta or a held
        batch from before may be any bytes: it is plain unless it opens (a tag that
        verifies by chance: 2**-128)."""
        if ops and not is_sealed(blob):
            return None
        aead = (self._ops if ops else self._blobs).get(blob[0]) if blob else None
        if aead is None:
            if ops:
                raise SealBroken(f"sealed under key version {blob[0]}, which the keyring "
                                 "does not hold")
            return None
        try:
            return open_sealed(aead, blob[1:], ad)
        except SealBroken:
            if ops or not self.plain_ok:
                raise
            return None

    def is_current(self, ad: bytes, blob: bytes, ops: bool = False) -> bool:
        """Whether a stored value is sealed under the current version."""
        return blob[:1] == self._prefix and (ops or self._sealed(ad, blob, ops) is not None)

    def open_op(self, rid: bytes, stamp: int, node: int, blob: bytes) -> bytes:
        return self.open(op_ad(rid, stamp, node), blob, ops=True)

    def reseal(self, ad: bytes, blob: bytes, ops: bool = False) -> bytes:
        """``blob`` sealed under the current version (opened first if it was not)."""
        plain = self.open(ad, blob, ops)
        return seal_many((self._ops if ops else self._blobs)[self.current], [(ad, plain)],
                         self._prefix)[0]

    def name(self, kind: bytes, ident: bytes) -> str:
        """A stable keyed name for a stored object (hex): reveals nothing of ``ident``."""
        return hmac.new(self._names, kind + b"\0" + ident, hashlib.sha256).hexdigest()


class _Plain:
    """Opens only what was never sealed (a hub's rows before migration 8)."""

    def open_op(self, rid: bytes, stamp: int, node: int, blob: bytes) -> bytes:
        if is_sealed(blob):
            raise SealBroken("a sealed delta where only plain ones can be")
        return blob


PLAIN = _Plain()


def register(db: Db, sealer: Sealer | _Plain) -> None:
    """``hub_open(rid, stamp, node, data)`` in SQL on this connection: a delta's bytes."""
    def hub_open(rid: bytes, stamp: int, node: int, data: bytes) -> bytes:
        return sealer.open_op(bytes(rid), stamp, node, bytes(data))
    register_function(db, "hub_open", 4, hub_open)


#: SQL: a delta's plaintext, from the columns of ``ops`` (prefix: its table alias).
def opened(prefix: str = "") -> str:
    return f"hub_open({prefix}rid, {prefix}stamp, {prefix}node, {prefix}data)"


def _kek(provider: KeyProvider) -> bytes:
    try:
        return provider.key()
    except Exception as exc:  # noqa: BLE001 - whatever the provider's failure, told as it is
        raise UsageError(f"the hub's store key: {exc}") from None


def load(db: Db, provider: KeyProvider) -> Sealer:
    """The keyring opened with the provider's KEK, in the caller's transaction. An empty
    keyring (a new hub, or one from before sealing) is filled first: the name key and
    data key 1, made current; a ``KeyFile`` that does not exist yet is created then (and
    only then: a keyring sealed under a lost key is never silently replaced)."""
    rows = db.execute("SELECT version, wrapped FROM keyring").fetchall()
    if not rows and isinstance(provider, KeyFile) and not provider.path.exists():
        provider.create()
    wrap = _wrapper(_kek(provider))
    if not rows:
        now = int(time.time() * 1000)
        for version in (NAME_KEY, 1):
            _add(db, wrap, version, now)
        meta_set(db, CURRENT, 1)
        if any(db.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchone()
               for table in ("ops", "quarantine", "held_batches")):
            # a hub from before sealing: its rows (and documents) are sealed in the
            # background
            meta_set(db, PROGRESS, "ops 0")
        else:  # a new hub: nothing to walk
            meta_set(db, ALL_SEALED, 1)
        rows = db.execute("SELECT version, wrapped FROM keyring").fetchall()
    keys = {}
    for version, wrapped in rows:
        try:
            keys[int(version)] = open_sealed(wrap, bytes(wrapped), _wrap_ad(int(version)))
        except SealBroken:
            raise UsageError("the hub's store key does not open its keyring: a key file from "
                             "another hub, or a lost key (restore it from the key backup)"
                             ) from None
    return Sealer(keys, current_version(db), plain_ok=meta_get(db, ALL_SEALED) is None)


def _add(db: Db, wrap: AESGCM, version: int, now: int) -> None:
    nonce = os.urandom(NONCE_SIZE)
    wrapped = nonce + wrap.encrypt(nonce, os.urandom(KEY_SIZE), _wrap_ad(version))
    db.execute("INSERT INTO keyring (version, wrapped, created) VALUES (?, ?, ?)",
               [version, wrapped, now])


def rotate(db: Db, provider: KeyProvider, now: int) -> int:
    """Add the next data key and make it current, in the caller's transaction; the
    re-sealer starts over. Returns the new version."""
    current = current_version(db)
    held = {int(v) for (v,) in db.execute("SELECT version FROM keyring")}
    version: int | None = next((v for v in [*range(current + 1, MAX_VERSION + 1),
                                            *range(1, current)] if v not in held), None)
    if version is None:
        raise UsageError("every key version is held: let the re-sealing of the last "
                         "rotation finish first (haven hub status)")
    _add(db, _wrapper(_kek(provider)), version, now)
    db.execute("UPDATE keyring SET retired = ? WHERE version = ?", [now, current])
    meta_set(db, CURRENT, version)
    meta_set(db, PROGRESS, "ops 0")
    return version


def current_version(db: Db) -> int:
    return int(meta_get(db, CURRENT) or 0)
