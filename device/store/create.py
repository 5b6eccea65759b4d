"""Creating a kiosk store: the data directory, its keys, and the kiosk's identity.

The directory is owner-only (0700); the database, the store key and the
fleet key are created owner-only (0600) before anything is written to them,
by the key provider the config chooses (``providers``: with a TPM, the store
key is sealed to it and the fleet key imported into it; no key file is left).
The fleet key comes from ``--fleet-key FILE`` (installed at enrolment) or is
made here for a kiosk that is not enrolled yet. Running ``init`` again
updates the site and the letter; a different fleet key is refused once the
kiosk holds patients, whose ids were derived under the old one. A kiosk that
leaves its letter to the hub keeps the one it has (``A`` in a new store)
until its certificate brings the hub's.
"""

from __future__ import annotations

import os
from pathlib import Path

from device.store.exc import BadRequest, StoreError
from device.store.fleet import FleetKeeper
from device.store.keys import KeyFile, KeyProvider
from device.store.providers import check_provider, create_keys
from device.store.store import DB_NAME, FLEET_KEY, STORE_KEY, Store
from protocol.driver.secret_files import write_secret


def init_store(data: Path, site: str, letter: str | None = "A",
               fleet_key_file: Path | None = None,
               key_provider: KeyProvider | None = None,
               fleet: FleetKeeper | None = None, *, provider: str | None = None,
               tcti: str | None = None) -> Store:
    """Create (or update the site and letter of) a kiosk store in ``data``; ``letter``
    None keeps the letter it has (``A`` in a new store) until the hub gives one. A
    ``fleet`` keeper other than the default file keeps the fleet key itself (no
    ``fleet.key`` is written). Otherwise the keys of a new store are made by
    ``provider`` (``device.store.providers``: ``file``, or ``tpm`` at ``tcti``), and an
    existing store's must be of that provider (None: a new store's are files)."""
    data = Path(data)
    if letter is not None:
        letter = letter.upper()
        if len(letter) != 1 or not "A" <= letter <= "Z":
            raise BadRequest("the kiosk letter is one letter, A to Z")
    if not site.strip():
        raise BadRequest("the site name is empty")
    new_fleet: bytes | None = None
    if fleet_key_file is not None:
        try:
            new_fleet = Path(fleet_key_file).read_bytes()
        except OSError as exc:
            raise StoreError(f"cannot read fleet key {fleet_key_file}: {exc.strerror}",
                             "key-missing") from None
        if len(new_fleet) < 32:
            raise StoreError(f"fleet key {fleet_key_file} is shorter than 32 bytes", "key-size")
    data.mkdir(mode=0o700, parents=True, exist_ok=True)
    if key_provider is None and fleet is None:
        if not (data / DB_NAME).exists():
            key_provider, fleet = create_keys(data, provider or "file", site, new_fleet, tcti)
        elif provider is not None:
            check_provider(data, provider)
    elif not (data / DB_NAME).exists():
        if key_provider is None and not (data / STORE_KEY).exists():
            KeyFile(data / STORE_KEY).create()
        if fleet is None and not (data / FLEET_KEY).exists():
            write_secret(data / FLEET_KEY, new_fleet or os.urandom(32))
    if not (data / DB_NAME).exists():
        # Owner-only from the first byte; SQLite gives the WAL the same mode.
        os.close(os.open(data / DB_NAME, os.O_WRONLY | os.O_CREAT, 0o600))
    store = Store(data, key_provider, fleet=fleet, create=True)
    try:
        store.configure(site, letter or store.status()["letter"] or "A", new_fleet)
    except BaseException:
        store.close()
        raise
    return store

