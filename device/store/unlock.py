"""Staff unlock: the kiosk's keys wrapped under a passphrase that staff type after a boot.

Theory of operation
-------------------
With ``key_provider = "passphrase"`` the card holds no key in the clear. One
owner-only file, ``DATA/passphrase.keys`` (JSON, so its parameters can be
read and changed), holds:

- the store key (random, 32 bytes) sealed with AES-256-GCM under
  scrypt(passphrase, salt) at the parameters written beside it (``kdf``:
  n, r, p, salt). n = 2**14, r = 8, p = 1 needs 16 MiB and about 0.1 s here
  (a few times that on a Pi); the associated data is the file's format name
  and those parameters, so they cannot be swapped unnoticed;
- the fleet key and the private X25519 key that check-ins taken while
  locked are sealed to (``pending``), each sealed under HKDF(store key, its
  own label): once the store key is open, so are they, and changing the
  passphrase re-wraps the store key alone;
- the public half of that X25519 key, in the clear, so a locked kiosk can
  seal to it.

``unwrap`` tells a wrong passphrase (``WrongPassphrase``) from a damaged
file (``StoreError`` code ``bad-key-file``: not JSON, a field missing, a
length wrong, or a key under the store key that does not open): the file is
read and checked whole before scrypt runs. A file is replaced whole
(written beside, fsynced, renamed, the folder fsynced), so a power cut
during ``change_passphrase`` leaves the old passphrase or the new one.

``PassphraseKeys`` is what the store takes once unlocked: its key provider
(``key()``, the store key) and its fleet keeper (``device.store.fleet``: the
fleet key in memory; one installed at enrolment is wrapped again here).

A rotation of the store key (``device.store.rotation``; ``add_next_key``,
given the passphrase) keeps the next key twice in the file until the swap:
under the passphrase's key, with the store key's associated data
(``next_store_key``: it becomes ``store_key`` at the swap, with no
passphrase needed then), and under HKDF(store key) (``next_key``: what a
kiosk unlocked before the rotation began opens it with). The swap
(``promote_next``) writes the file again with the next key as the store key
and every key under the store key sealed again under the new one (the
pending key's X25519 pair stays: check-ins sealed while locked still open),
and destroys the old file (``secret_files.promote_secret``).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import threading
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from device.store.exc import StoreError
from device.store.fleet import FleetKey, FleetSecret, chained
from device.store.keys import KEY_SIZE, NONCE_SIZE, SEAL_OVERHEAD, derive_key
from protocol.driver.secret_files import (
    destroy_secret,
    fsync_dir,
    promote_secret,
    read_secret,
    write_secret,
)

KEYS_FILE = "passphrase.keys"
FORMAT = "haven-kiosk-passphrase-keys/1"
#: scrypt's cost: 128 * n * r bytes of memory (16 MiB), within the runtime's RSS budget.
N, R, P = 2**14, 8, 1
SALT_SIZE = 16
#: A passphrase's bounds, in characters once NFC-normalised (scrypt takes any length;
#: the upper bound only keeps a paste of garbage off the wire and the card).
MIN_CHARS, MAX_CHARS = 8, 256
#: What the page's passphrase keyboard types (device/ui/static/keyboard.js): a new
#: passphrase holds nothing else.
KEYBOARD = frozenset("abcdefghijklmnopqrstuvwxyz0123456789 -.")
#: The largest scrypt parameters a file may ask for (n = 2**16 is 64 MiB: past the budget).
MAX_N, MAX_R, MAX_P = 2**16, 16, 4
#: The keys file's most bytes: a damaged or hostile file is refused before it is parsed.
MAX_FILE = 4096
_LABELS = {"fleet": b"haven/unlock/fleet/v1", "pending": b"haven/unlock/pending/v1",
           "next": b"haven/unlock/next/v1"}
#: One change of the keys file at a time in this process (a swap beside an enrolment).
_CHANGING = threading.Lock()


class WrongPassphrase(StoreError, ValueError):
    code = "wrong-passphrase"


class BadPassphrase(StoreError, ValueError):
    """A passphrase refused before any key is tried: empty, too short or too long."""

    code = "bad-passphrase"


class Locked(StoreError):
    """The store's keys are wrapped under a passphrase no one has typed since the boot."""

    code = "locked"


def clean_passphrase(text: Any, *, new: bool = False) -> bytes:
    """``text`` as the bytes scrypt takes (NFC, UTF-8); ``BadPassphrase`` if it is not a
    string, empty, over ``MAX_CHARS`` or (a ``new`` one) under ``MIN_CHARS`` or with a
    character the page's keyboard lacks."""
    if not isinstance(text, str) or not text:
        raise BadPassphrase("the passphrase is empty")
    value = unicodedata.normalize("NFC", text)
    if len(value) > MAX_CHARS:
        raise BadPassphrase(f"a passphrase is at most {MAX_CHARS} characters")
    if new and len(value) < MIN_CHARS:
        raise BadPassphrase(f"a passphrase is at least {MIN_CHARS} characters")
    if any(unicodedata.category(c) == "Cc" for c in value):
        raise BadPassphrase("a passphrase holds no control characters (a line break?)")
    untypable = sorted(set(value) - KEYBOARD)
    if new and untypable:  # staff could never type it on the page to unlock the kiosk
        raise BadPassphrase("a passphrase is typed on the kiosk's on-screen keyboard: small "
                            "letters, digits, space, '-' and '.' only, not "
                            + " ".join(repr(c) for c in untypable[:5]))
    return value.encode("utf-8")


@dataclass(frozen=True)
class Unlocked:
    """What the passphrase opens."""

    store_key: bytes
    fleet_key: bytes
    pending_key: X25519PrivateKey
    #: The fleet key's later generations (after rotations: ``fleet.ChainedFleetKey``).
    fleet_later: tuple[bytes, ...] = ()


class PassphraseKeys:
    """The store's key provider and fleet keeper once staff typed the passphrase
    (``passphrase``, kept only by a caller that starts a rotation: ``make_next``)."""

    def __init__(self, data: Path, keys: Unlocked, passphrase: Any = None) -> None:
        self.data = Path(data)
        self.keys = keys
        self._passphrase = passphrase

    def key(self) -> bytes:
        return self.keys.store_key

    # A rotation of the store key (``keys.RotatingKey``) -----------------------------

    def has_next(self) -> bool:
        return "next_key" in _read(self.data)

    def next_key(self) -> bytes | None:
        return next_store_key(self.data, self.keys.store_key)

    def make_next(self) -> None:
        if self._passphrase is None:
            raise Locked("a rotation of the store key needs the passphrase")
        add_next_key(self.data, self._passphrase)

    def promote_next(self) -> None:
        with _CHANGING:
            self.keys = promote_next_key(self.data, self.keys)

    def load(self) -> FleetKey:
        return chained([FleetSecret(k) for k in (self.keys.fleet_key, *self.keys.fleet_later)])

    def install(self, key: bytes, site: str) -> FleetKey:
        """A fleet key that arrived in the clear (enrolment), kept under the store key."""
        with _CHANGING:
            if key != self.keys.fleet_key:
                self.keys = set_fleet_key(self.data, self.keys, key)
        return self.load()

    def install_later(self, later: Sequence[bytes], site: str) -> FleetKey:
        """The fleet key's later generations, kept under the store key as the first."""
        with _CHANGING:
            if len(later) > len(self.keys.fleet_later):
                self.keys = set_fleet_later(self.data, self.keys, tuple(later))
        return self.load()


def keys_path(data: Path) -> Path:
    return Path(data) / KEYS_FILE


def uses_passphrase(data: Path) -> bool:
    """Whether the kiosk in ``data`` keeps its keys under a passphrase."""
    return keys_path(data).exists()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _kek(passphrase: bytes, kdf: dict[str, Any]) -> AESGCM:
    salt = base64.b64decode(kdf["salt"])
    return AESGCM(Scrypt(salt=salt, length=KEY_SIZE, n=kdf["n"], r=kdf["r"],
                         p=kdf["p"]).derive(passphrase))


def _header(kdf: dict[str, Any]) -> bytes:
    """The store key's associated data: the format and the scrypt parameters."""
    return json.dumps([FORMAT, kdf["n"], kdf["r"], kdf["p"], kdf["salt"]]).encode()


def _seal(aead: AESGCM, plain: bytes, ad: bytes) -> str:
    nonce = os.urandom(NONCE_SIZE)
    return _b64(nonce + aead.encrypt(nonce, plain, ad))


def _under_store_key(store_key: bytes, what: str) -> AESGCM:
    return AESGCM(derive_key(store_key, _LABELS[what]))


def _wrap_store_key(passphrase: bytes, store_key: bytes,
                    n: int = N, r: int = R, p: int = P,
                    next_key: bytes | None = None) -> dict[str, Any]:
    """The store key (and ``next_key``, a rotation's) under a new salt's passphrase key."""
    kdf = {"name": "scrypt", "n": n, "r": r, "p": p, "salt": _b64(os.urandom(SALT_SIZE))}
    kek = _kek(passphrase, kdf)
    doc = {"kdf": kdf, "store_key": _seal(kek, store_key, _header(kdf))}
    if next_key is not None:
        doc["next_store_key"] = _seal(kek, next_key, _header(kdf))
    return doc


def create(data: Path, passphrase: str, fleet_key: bytes, *, store_key: bytes | None = None,
           n: int = N, r: int = R, p: int = P) -> Unlocked:
    """Write ``DATA/passphrase.keys`` (refused if it exists) with a new store key (or
    ``store_key``), ``fleet_key`` and a new key for check-ins taken while locked."""
    secret = clean_passphrase(passphrase, new=True)
    store_key = os.urandom(KEY_SIZE) if store_key is None else store_key
    pending = X25519PrivateKey.generate()
    raw = pending.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                serialization.NoEncryption())
    doc = {"format": FORMAT, **_wrap_store_key(secret, store_key, n, r, p),
           "fleet_key": _seal(_under_store_key(store_key, "fleet"), fleet_key, b"fleet"),
           "pending_key": _seal(_under_store_key(store_key, "pending"), raw, b"pending"),
           "pending_public": pending.public_key().public_bytes_raw().hex()}
    write_secret(keys_path(data), json.dumps(doc, indent=1).encode() + b"\n")
    return Unlocked(store_key, fleet_key, pending)


def init_keys(data: Path, passphrase: Any, fleet_key: bytes | None = None) -> PassphraseKeys:
    """The keys of a kiosk store made under ``passphrase`` (``haven-kiosk init``): a new
    ``passphrase.keys`` (``fleet_key``, else a random one), or the one there, opened."""
    if keys_path(data).exists():
        return PassphraseKeys(data, unwrap(data, passphrase))
    return PassphraseKeys(data, create(data, passphrase, fleet_key or os.urandom(KEY_SIZE)))


def _damaged(path: Path, why: str) -> StoreError:
    return StoreError(f"{path} is damaged ({why}): restore it from the kiosk's image or "
                      "backup; the passphrase cannot open it", "bad-key-file")


def _read(data: Path) -> dict[str, Any]:
    """The keys file, every field checked (``bad-key-file`` otherwise)."""
    path = keys_path(data)
    raw = read_secret(path, "passphrase keys file")
    if len(raw) > MAX_FILE:
        raise _damaged(path, f"over {MAX_FILE} bytes")
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise _damaged(path, "not JSON: truncated?") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise _damaged(path, f"not a {FORMAT} file")
    kdf = doc.get("kdf")
    if not (isinstance(kdf, dict) and kdf.get("name") == "scrypt"
            and all(type(kdf.get(k)) is int for k in "nrp")):
        raise _damaged(path, "no scrypt parameters")
    if not (2 <= kdf["n"] <= MAX_N and kdf["n"] & (kdf["n"] - 1) == 0
            and 1 <= kdf["r"] <= MAX_R and 1 <= kdf["p"] <= MAX_P):
        raise _damaged(path, f"scrypt parameters out of range: n={kdf['n']} r={kdf['r']} "
                       f"p={kdf['p']}")
    sizes = {"store_key": SEAL_OVERHEAD + KEY_SIZE, "fleet_key": None,
             "pending_key": SEAL_OVERHEAD + 32}
    if ("next_key" in doc) != ("next_store_key" in doc):
        raise _damaged(path, "half of a rotation's next key")
    if "next_key" in doc:
        sizes.update(next_key=SEAL_OVERHEAD + KEY_SIZE, next_store_key=SEAL_OVERHEAD + KEY_SIZE)
    try:
        if len(base64.b64decode(str(kdf.get("salt")), validate=True)) < SALT_SIZE:
            raise ValueError
        for name, size in sizes.items():
            value = base64.b64decode(str(doc.get(name)), validate=True)
            if len(value) < SEAL_OVERHEAD + 1 or size is not None and len(value) != size:
                raise _damaged(path, f"{name} has the wrong length")
        if len(bytes.fromhex(str(doc.get("pending_public")))) != 32:
            raise ValueError
    except (binascii.Error, ValueError) as exc:
        if isinstance(exc, StoreError):
            raise
        raise _damaged(path, "a field is missing or not base64/hex") from None
    return doc


def _open(sealed: str, aead: AESGCM, ad: bytes) -> bytes:
    blob = base64.b64decode(sealed)
    return aead.decrypt(blob[:NONCE_SIZE], blob[NONCE_SIZE:], ad)


def _store_key(doc: dict[str, Any], passphrase: bytes) -> bytes:
    try:
        return _open(doc["store_key"], _kek(passphrase, doc["kdf"]), _header(doc["kdf"]))
    except InvalidTag:
        raise WrongPassphrase("wrong passphrase: the store stays locked") from None


def unwrap(data: Path, passphrase: Any) -> Unlocked:
    """The keys ``passphrase`` opens: ``WrongPassphrase``, ``BadPassphrase``, or
    ``StoreError`` ``bad-key-file`` for a damaged file; nothing is written."""
    secret = clean_passphrase(passphrase)
    doc = _read(data)
    store_key = _store_key(doc, secret)
    try:
        fleet = _open(doc["fleet_key"], _under_store_key(store_key, "fleet"), b"fleet")
        raw = _open(doc["pending_key"], _under_store_key(store_key, "pending"), b"pending")
        later = tuple(_open(sealed, _under_store_key(store_key, "fleet"), _later_ad(g))
                      for g, sealed in enumerate(_later_of(data, doc), 2))
    except InvalidTag:
        raise _damaged(keys_path(data), "a key under the store key does not open") from None
    pending = X25519PrivateKey.from_private_bytes(raw)
    if pending.public_key().public_bytes_raw().hex() != doc["pending_public"]:
        raise _damaged(keys_path(data), "the public key is not the private key's")
    return Unlocked(store_key, fleet, pending, later)


def _later_ad(generation: int) -> bytes:
    """The associated data of the fleet key's generation ``generation`` (2 or more)."""
    return b"fleet/%d" % generation


def _later_of(data: Path, doc: dict[str, Any]) -> list[str]:
    later = doc.get("fleet_later", [])
    if not isinstance(later, list) or not all(isinstance(k, str) for k in later):
        raise _damaged(keys_path(data), "fleet_later is not a list of sealed keys")
    return later


def pending_public(data: Path) -> bytes:
    """The X25519 key check-ins taken while locked are sealed to (readable while locked)."""
    return bytes.fromhex(_read(data)["pending_public"])


def _replace(data: Path, doc: dict[str, Any]) -> None:
    path = keys_path(data)
    new = path.with_name(KEYS_FILE + ".new")
    new.unlink(missing_ok=True)
    write_secret(new, json.dumps(doc, indent=1).encode() + b"\n")
    os.replace(new, path)
    fsync_dir(path.parent)


def change_passphrase(data: Path, old: Any, new: Any, *, n: int = N, r: int = R,
                      p: int = P) -> None:
    """Re-wrap the store key under ``new`` (a fresh salt, these scrypt parameters); the
    fleet key and the store's data are untouched. ``WrongPassphrase`` for a wrong ``old``."""
    fresh = clean_passphrase(new, new=True)
    doc = _read(data)
    store_key = _store_key(doc, clean_passphrase(old))
    doc.update(_wrap_store_key(fresh, store_key, n, r, p, next_store_key(data, store_key, doc)))
    _replace(data, doc)


def add_next_key(data: Path, passphrase: Any) -> None:
    """Keep a new random store key as the next key of a rotation (see above), durable
    before it returns. ``WrongPassphrase``; ``StoreError`` ``rotation-running`` if a next
    key is held already."""
    secret = clean_passphrase(passphrase)
    doc = _read(data)
    store_key = _store_key(doc, secret)
    if "next_key" in doc:
        raise StoreError("a rotation of the store key is under way already", "rotation-running")
    new = os.urandom(KEY_SIZE)
    doc["next_store_key"] = _seal(_kek(secret, doc["kdf"]), new, _header(doc["kdf"]))
    doc["next_key"] = _seal(_under_store_key(store_key, "next"), new, b"next")
    _replace(data, doc)


def next_store_key(data: Path, store_key: bytes, doc: dict[str, Any] | None = None
                   ) -> bytes | None:
    """The next key of a rotation under way, opened with the store key; None if none."""
    doc = _read(data) if doc is None else doc
    if "next_key" not in doc:
        return None
    try:
        return _open(doc["next_key"], _under_store_key(store_key, "next"), b"next")
    except InvalidTag:
        raise _damaged(keys_path(data), "the next key does not open") from None


def promote_next_key(data: Path, keys: Unlocked) -> Unlocked:
    """The swap of a rotation (see above): the next key becomes the store key, every key
    under the store key is sealed again under it, the old file is destroyed. Cut by a
    power cut, the file holds the old keys or the new ones; calling again finishes."""
    path = keys_path(data)
    new_path = path.with_name(KEYS_FILE + ".new")
    doc = _read(data)
    new = next_store_key(data, keys.store_key, doc)
    if new is None:  # swapped already: what a cut may have left of the old file goes
        if destroy_secret(path.with_name(KEYS_FILE + ".old")):
            fsync_dir(path.parent)
        return keys
    old_fleet, old_pending = (_under_store_key(keys.store_key, w) for w in ("fleet", "pending"))
    new_fleet, new_pending = (_under_store_key(new, w) for w in ("fleet", "pending"))
    try:
        doc["fleet_key"] = _seal(new_fleet, _open(doc["fleet_key"], old_fleet, b"fleet"),
                                 b"fleet")
        doc["pending_key"] = _seal(new_pending, _open(doc["pending_key"], old_pending,
                                                      b"pending"), b"pending")
        doc["fleet_later"] = [_seal(new_fleet, _open(sealed, old_fleet, _later_ad(g)),
                                    _later_ad(g))
                              for g, sealed in enumerate(_later_of(data, doc), 2)]
    except InvalidTag:
        raise _damaged(path, "a key under the store key does not open") from None
    if not doc["fleet_later"]:
        del doc["fleet_later"]
    doc["store_key"] = doc.pop("next_store_key")
    del doc["next_key"]
    destroy_secret(new_path)  # a swap cut before its rename: written again below
    write_secret(new_path, json.dumps(doc, indent=1).encode() + b"\n")
    promote_secret(path, new_path)
    return Unlocked(new, keys.fleet_key, keys.pending_key, keys.fleet_later)


def set_fleet_key(data: Path, keys: Unlocked, fleet_key: bytes) -> Unlocked:
    """Keep ``fleet_key`` (installed at enrolment) wrapped under the store key."""
    doc = _read(data)
    doc["fleet_key"] = _seal(_under_store_key(keys.store_key, "fleet"), fleet_key, b"fleet")
    doc.pop("fleet_later", None)  # a first key of another fleet: no later key goes on
    _replace(data, doc)
    return Unlocked(keys.store_key, fleet_key, keys.pending_key)


def set_fleet_later(data: Path, keys: Unlocked, later: tuple[bytes, ...]) -> Unlocked:
    """Keep the fleet key's later generations (``later``: 2, 3...) under the store key."""
    doc = _read(data)
    doc["fleet_later"] = [_seal(_under_store_key(keys.store_key, "fleet"), key, _later_ad(g))
                          for g, key in enumerate(later, 2)]
    _replace(data, doc)
    return Unlocked(keys.store_key, keys.fleet_key, keys.pending_key, later)
