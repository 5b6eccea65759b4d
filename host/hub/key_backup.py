"""``haven hub keys backup`` and ``keys restore``: the hub's secrets sealed to a recovery key.

Theory of operation
-------------------
A data backup (``host.hub.backup``) never holds a key. The keys are backed
up apart: every file of ``hub.SECRET_FILES`` the data directory holds, and the
fleet key's later generations (``fleet.2.key``...: ``fleet_rotation``), as a
CBOR map (file name -> bytes), sealed with AES-256-GCM under
HKDF-SHA256(recovery key, ``LABEL``), with the hub's id (its Ed25519 public
key) in the associated data. The recovery key is 32 fresh random bytes per
backup, printed once for a safe (``recovery_key``) and kept nowhere else.
A hub whose store key is sealed to its TPM (``hub_store.tpm``, useless on
another machine) has that key unsealed into the backup as ``hub_store.key``:
restored on a new machine, the hub opens its data with the key file.

The file is a CBOR map: its format and version, the hub's id in the clear,
the nonce and the sealed map. The id is in the clear so that a backup of
another hub is refused before anyone is asked for a recovery key: restoring
compares it with the id the data directory's database records
(``hub.HUB_ID``) and with the Ed25519 key already there, if any. Then the
recovery key is read (a typo is the parser's to catch), the map opened (a
wrong key or an altered file fails the tag), and every name checked against
``SECRET_FILES`` (or a later fleet key's) and the Ed25519 key against the id,
and a key is there for every generation of the fleet key the data directory's
database was rotated to (a backup older than the rotation is refused: the hub
would serve at the first generation while its kiosks are at a later one),
all before the first file is written. Keys already in the directory are never
replaced unless forced; each is written owner-only, whole or not at all
(``protocol.driver.secret_files``).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from host.errors import UsageError
from host.hub import fleet_rotation, recovery_key
from host.hub.at_rest import STORE_KEY, default_provider
from host.hub.backup import check_directory
from host.hub.fleet_rotation import is_later_key_name, later_key_names
from host.hub.hub import DATABASE_URL, DB, ED_KEY, FLEET_KEY, HUB_ID, SECRET_FILES, X_KEY
from protocol import strict_cbor
from protocol.driver.errors import DriverError, SecretFileError
from protocol.driver.secret_files import fsync_dir, read_at_most, read_secret, write_secret
from protocol.errors import ProtocolError

FORMAT, VERSION = "haven-hub-keys", 1
LABEL = b"haven/hub/key-backup/v1"
NONCE_SIZE = 12
#: Keys a hub cannot run without: a backup lacking one is refused, both ways.
REQUIRED = (X_KEY, ED_KEY, FLEET_KEY)
MAX_FILE = 64 * 1024


@dataclass(frozen=True)
class KeyBackup:
    hub_id: bytes  #: the hub's Ed25519 public key
    nonce: bytes
    sealed: bytes


def hub_id_of(ed_private: bytes) -> bytes:
    return Ed25519PrivateKey.from_private_bytes(ed_private).public_key().public_bytes_raw()


def _secret(path: Path) -> bytes:
    try:
        return read_secret(path, "hub key")
    except SecretFileError as exc:
        raise UsageError(str(exc)) from None


def _cipher(key: bytes) -> AESGCM:
    return AESGCM(HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                       info=LABEL).derive(key))


def _ad(hub_id: bytes) -> bytes:
    return LABEL + hub_id


def backup_keys(data: Path, to: Path) -> tuple[str, list[str], str]:
    """Seal the hub's secrets in ``data`` to a new recovery key, into ``to`` (never
    overwritten); returns (hub id hex, the files saved, the recovery key as printed)."""
    if not (data / ED_KEY).exists():
        raise UsageError(f"{data} holds no hub keys ({ED_KEY} is missing)")
    names = [n for n in SECRET_FILES if n in REQUIRED or (data / n).exists()]
    names += later_key_names(data)  # the fleet key's later generations (rotate-fleet)
    keys = {name: _secret(data / name) for name in names}
    if STORE_KEY not in keys:  # sealed to this machine's TPM: the key itself, unsealed
        try:
            keys[STORE_KEY] = default_provider(data).key()
        except DriverError as exc:
            raise UsageError(f"cannot read the hub's store key to back it up: {exc}") from None
        names.append(STORE_KEY)
    hub_id = hub_id_of(keys[ED_KEY])
    key, nonce = secrets.token_bytes(recovery_key.KEY_SIZE), os.urandom(NONCE_SIZE)
    sealed = _cipher(key).encrypt(nonce, strict_cbor.dumps(keys), _ad(hub_id))
    doc = strict_cbor.dumps({"format": FORMAT, "version": VERSION, "hub": hub_id,
                             "nonce": nonce, "sealed": sealed})
    try:
        write_secret(to, doc)
    except FileExistsError:
        raise UsageError(f"{to} exists; not overwriting it (give another --to)") from None
    except OSError as exc:
        raise UsageError(f"cannot write {to}: {exc.strerror}") from None
    return hub_id.hex(), names, recovery_key.display(key)


def read_backup(path: Path) -> KeyBackup:
    """A key backup file's clear part; ``UsageError`` for anything else."""
    bad = UsageError(f"{path} is not a hub key backup (haven hub keys backup writes one), "
                     "or it is damaged (cut short or altered)")
    try:
        data = read_at_most(path, MAX_FILE)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    except ValueError:
        raise bad from None
    try:
        doc = strict_cbor.loads(data, max_size=MAX_FILE)
    except ProtocolError:
        raise bad from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise bad
    if not isinstance(doc.get("version"), int):
        raise bad
    if doc["version"] != VERSION:
        raise UsageError(f"{path} is a key backup of version {doc.get('version')!r}; this "
                         f"release reads version {VERSION}")
    hub_id, nonce, sealed = (doc.get(k) for k in ("hub", "nonce", "sealed"))
    if not (isinstance(hub_id, bytes) and isinstance(nonce, bytes)
            and isinstance(sealed, bytes)):
        raise bad
    if len(hub_id) != 32 or len(nonce) != NONCE_SIZE or len(sealed) < 16:
        raise bad
    return KeyBackup(hub_id, nonce, sealed)


def database_hub_id(data: Path) -> str | None:
    """The hub id the database in ``data`` records (None: no database, or none recorded)."""
    return _database_meta(data, HUB_ID)


def _database_meta(data: Path, key: str) -> str | None:
    if (data / DATABASE_URL).exists():
        from host.hub.database.postgres import read_meta
        value = read_meta((data / DATABASE_URL).read_text().strip(), key)
        return None if value is None else str(value)
    path = data / DB
    if not path.exists():
        return None
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            row = conn.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise UsageError(f"cannot read {path}: {exc}") from None
    return None if row is None else str(row[0])


def check_generations(keys: dict[str, bytes], data: Path) -> None:
    """Refuse keys that lack a later generation of the fleet key the data in ``data``
    was rotated to (a key backup taken before the rotation): the hub would serve at the
    first generation while its kiosks are at a later one."""
    state = _database_meta(data, fleet_rotation.PASS)
    held = sorted({*later_key_names(data), *filter(is_later_key_name, keys)})
    missing = fleet_rotation.missing_key(data, json.loads(state) if state else None, held)
    if missing is not None:
        raise UsageError(f"this key backup is older than the data: {missing}")


def check_target(backup: KeyBackup, data: Path, *, force: bool) -> None:
    """Refuse, before a recovery key is asked for, a backup of another hub than the one
    ``data`` holds, and (unless ``force``) keys already there."""
    check_directory(data)
    theirs = backup.hub_id.hex()
    held = database_hub_id(data)
    if held is not None and held != theirs:
        raise UsageError(f"this key backup is hub {theirs}'s, but {data / DB} belongs to "
                         f"hub {held}: restore that hub's key backup, or these keys into "
                         "a data directory restored from a backup of their own hub")
    mine = None
    if (data / ED_KEY).exists():
        with contextlib.suppress(UsageError, ValueError):  # unreadable: replaced if forced
            mine = hub_id_of(_secret(data / ED_KEY)).hex()
    if mine is not None and mine != theirs:
        raise UsageError(f"this key backup is hub {theirs}'s, but {data} holds hub "
                         f"{mine}'s keys")
    there = [n for n in SECRET_FILES if (data / n).exists()] + later_key_names(data)
    if there and not force:
        raise UsageError(f"{data} holds keys already ({', '.join(there)}); not replacing "
                         "them (give --force to replace them with the backup's)")


def open_backup(backup: KeyBackup, key_text: str) -> dict[str, bytes]:
    """The keys a backup holds, checked: names known, the Ed25519 key the hub id's."""
    key = recovery_key.parse(key_text)
    try:
        plain = _cipher(key).decrypt(backup.nonce, backup.sealed, _ad(backup.hub_id))
    except InvalidTag:
        raise UsageError("the recovery key does not open this backup: it is another "
                         "backup's key, or the file was altered") from None
    try:
        keys: Any = strict_cbor.loads(plain, max_size=MAX_FILE)
    except ProtocolError:
        raise UsageError("the key backup's content is not a map of keys") from None
    if not isinstance(keys, dict) or not all(
            isinstance(k, str) and isinstance(v, bytes) for k, v in keys.items()):
        raise UsageError("the key backup's content is not a map of keys")
    unknown = sorted(n for n in set(keys) - set(SECRET_FILES) if not is_later_key_name(n))
    if unknown:
        raise UsageError(f"the key backup holds {', '.join(unknown)}, which this release "
                         "does not know: restore it with the release that made it")
    missing = [n for n in REQUIRED if n not in keys]
    if missing or any(len(keys[n]) != 32 for n in keys if n in REQUIRED
                      or is_later_key_name(n)):
        raise UsageError(f"the key backup lacks {', '.join(missing) or 'whole keys'}")
    if hub_id_of(keys[ED_KEY]) != backup.hub_id:
        raise UsageError("the key backup's Ed25519 key is not its hub's")
    return dict(keys)


def write_keys(keys: dict[str, bytes], data: Path, *, force: bool) -> None:
    """Write each key owner-only; one already there is replaced only with ``force``."""
    data.mkdir(mode=0o700, parents=True, exist_ok=True)
    for name, secret in sorted(keys.items()):
        path = data / name
        if not force:
            try:
                write_secret(path, secret)
            except FileExistsError:
                raise UsageError(f"{path} appeared meanwhile; not replacing it") from None
            continue
        staged = data / f".{name}.restored"
        with contextlib.suppress(FileNotFoundError):
            staged.unlink()
        write_secret(staged, secret)
        os.replace(staged, path)
        fsync_dir(data)
