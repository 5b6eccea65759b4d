"""Which key provider a kiosk's data directory uses, and making its keys at init.

Theory of operation
-------------------
The config's ``key_provider`` chooses at ``haven-kiosk init``; from then on
the data directory says which it is, so every command that opens the store
(status, dump, enrol, the runtime) finds its keys without being told:

- ``file`` (the default): ``store.key`` and ``fleet.key``, owner-only files
  on the card;
- ``tpm``: ``store.tpm`` (the store key sealed to the TPM) and ``fleet.tpm``
  (the fleet key and the site key as HMAC keys in it: ``device.store.tpm_key``),
  each naming the TPM's TCTI;
- ``passphrase``: ``passphrase.keys`` (``device.store.unlock``), which the
  store opens only once staff type the passphrase.

A directory holding keys of one provider is not switched to another by a
second ``init``: that would need the store's data sealed again.

Each provider can rotate the store key (``device.store.rotation``): the next
key waits in ``store.key.next``, ``store.next.tpm`` or inside
``passphrase.keys`` until the swap, and the swap leaves the old one, for the
moment it takes, in ``store.key.old``, ``store.tpm.old`` or
``passphrase.keys.old`` (``ROTATION_FILES``: a wipe destroys them too).
"""

from __future__ import annotations

import os
from pathlib import Path

from device.store.exc import StoreError
from device.store.fleet import FleetKeeper, FleetKeyFile
from device.store.keys import KeyFile, KeyProvider, RotatingKey
from device.store.tpm_key import FLEET_RECORD, RotatingTpmKey, TpmFleetKeeper
from device.store.unlock import KEYS_FILE as PASSPHRASE_KEYS

PROVIDERS = ("file", "tpm", "passphrase")
STORE_KEY = "store.key"
FLEET_KEY = "fleet.key"
#: The name of the kiosk's store key sealed to a TPM (``DATA/store.tpm``).
TPM_STORE_KEY = "store"
#: What a key rotation keeps beside the keys while it runs (see above).
ROTATION_FILES = (f"{STORE_KEY}.next", f"{STORE_KEY}.old", f"{TPM_STORE_KEY}.next.tpm",
                  f"{TPM_STORE_KEY}.tpm.old", f"{PASSPHRASE_KEYS}.new", f"{PASSPHRASE_KEYS}.old")


def provider_of(data: Path) -> str | None:
    """The provider whose keys ``data`` holds; None before ``init``."""
    data = Path(data)
    if (data / PASSPHRASE_KEYS).exists():
        return "passphrase"
    if (data / f"{TPM_STORE_KEY}.tpm").exists() or (data / FLEET_RECORD).exists():
        return "tpm"
    if (data / STORE_KEY).exists():
        return "file"
    return None


def open_keys(data: Path, tcti: str | None = None) -> tuple[RotatingKey, FleetKeeper]:
    """The store key's provider and the fleet key's keeper of the kiosk in ``data``
    (``tcti`` instead of the TPM recorded there)."""
    data = Path(data)
    kind = provider_of(data)
    if kind == "tpm":
        return (RotatingTpmKey(data, TPM_STORE_KEY, tcti),
                TpmFleetKeeper(data, tcti, data / FLEET_KEY))
    if kind == "passphrase":
        raise StoreError(f"the keys in {data} are under a passphrase: the store opens once "
                         "staff unlock it", "locked")
    return KeyFile(data / STORE_KEY), FleetKeyFile(data / FLEET_KEY)


def check_provider(data: Path, provider: str) -> None:
    """Refuse ``provider`` for a directory that holds another provider's keys."""
    held = provider_of(data)
    if held is not None and provider != held:
        raise StoreError(f"{data} holds keys of the {held} key provider, not {provider}: a "
                         "store's key provider is chosen when it is made", "key-provider")


def create_keys(data: Path, provider: str, site: str, fleet_key: bytes | None,
                tcti: str | None = None) -> tuple[KeyProvider | None, FleetKeeper | None]:
    """Make the keys of a new store in ``data`` (an existing one keeps its own): the
    store key, and the fleet key (``fleet_key``, else a new random one) installed for
    ``site``. Returns what ``Store`` takes (None: the default files)."""
    data = Path(data)
    check_provider(data, provider)
    if provider == "file":
        if not (data / STORE_KEY).exists():
            KeyFile(data / STORE_KEY).create()
        if not (data / FLEET_KEY).exists():
            FleetKeyFile(data / FLEET_KEY).install(fleet_key or os.urandom(32), site)
        return None, None
    if provider == "tpm":
        key, keeper = (RotatingTpmKey(data, TPM_STORE_KEY, tcti),
                       TpmFleetKeeper(data, tcti, data / FLEET_KEY))
        if not key.exists():
            key.create()
        if not keeper.exists():
            keeper.install(fleet_key or os.urandom(32), site)
        return key, keeper
    raise StoreError(f"key provider {provider!r} is not one of {', '.join(PROVIDERS[:2])}",
                     "key-provider")


def next_key_held(data: Path) -> bool:
    """Whether the kiosk in ``data`` holds the next key of a rotation (read without keys)."""
    data = Path(data)
    if (data / ROTATION_FILES[0]).exists() or (data / ROTATION_FILES[2]).exists():
        return True
    try:
        return b'"next_key"' in (data / PASSPHRASE_KEYS).read_bytes()
    except OSError:
        return False
