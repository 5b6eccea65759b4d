"""Keys held by a TPM 2.0: a store key sealed to it, the fleet key an HMAC key in it.

Theory of operation
-------------------
``TpmKey`` is a key provider (``key()``) for any store, the kiosk's or the
hub's: a random 32-byte key sealed to the TPM (``protocol.driver.tpm``). What
the card keeps is ``DIR/NAME.tpm``, an owner-only JSON file holding the
sealed object's public and private blobs and the TCTI that names the TPM.
The private blob is encrypted under a primary key that only that TPM can
make, from a seed that never leaves it: on another TPM, or on this one once
cleared, ``key()`` raises ``TpmKeyGone`` and the data sealed under the key is
lost for good (that is the point: a stolen card reads nothing).

``TpmFleetKeeper`` keeps a kiosk's fleet key inside the TPM. When the key
arrives in the clear (``haven-kiosk init``, enrolment), it is imported as a
persistent HMAC key, and so is the kiosk's own site key ``HKDF(fleet key,
site)``, derived in memory there (a TPM HMAC key cannot compute HKDF's
extract, which takes the fleet key as its message); ``fleet.key`` is then
removed. ``DIR/fleet.tpm`` records the two handles, the site and the key's
fingerprint: ``load`` checks the fingerprint through the TPM, so a TPM that
holds something else at those handles is refused like a cleared one.
Installing a new key imports it first, records it, then evicts the old
handles: a power cut leaves the old key or the new one in use (at worst a
handle the TPM keeps unused).
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

from device.store.exc import StoreError
from device.store.fleet import FleetSecret, MacFleetKey
from device.store.keys import KEY_SIZE
from protocol.crdt import ids
from protocol.driver.errors import SecretMissing
from protocol.driver.secret_files import fsync_dir, read_secret, write_secret
from protocol.driver.tpm import DEFAULT_TCTI, Tpm, TpmKeyGone

FORMAT = "haven-tpm-sealed/1"
FLEET_FORMAT = "haven-tpm-fleet/1"
FLEET_RECORD = "fleet.tpm"
#: The most bytes a record file may hold: a damaged one is refused before it is parsed.
MAX_RECORD = 4096


def _read_record(path: Path, what: str, form: str) -> dict[str, Any]:
    raw = read_secret(path, what)
    try:
        if len(raw) > MAX_RECORD:
            raise ValueError("too long")
        doc = json.loads(raw)
        if not isinstance(doc, dict) or doc.get("format") != form:
            raise ValueError(f"not {form}")
    except ValueError as exc:
        raise StoreError(f"{what} {path} is damaged ({exc})", "bad-key-file") from None
    return doc


def _write_record(path: Path, doc: dict[str, Any]) -> None:
    """Replace ``path`` whole (owner-only): the old record or the new after a power cut."""
    new = path.with_name(path.name + ".new")
    new.unlink(missing_ok=True)
    write_secret(new, json.dumps(doc, indent=1).encode() + b"\n")
    os.replace(new, path)
    fsync_dir(path.parent)


class TpmKey:
    """A 32-byte key sealed to a TPM, its blobs in ``directory/name.tpm``."""

    def __init__(self, directory: Path, name: str, tcti: str | None = None) -> None:
        self.path = Path(directory) / f"{name}.tpm"
        self._tcti = tcti

    @property
    def tpm(self) -> Tpm:
        """The TPM given, else the one the blobs were sealed to, else the default."""
        if self._tcti is None and self.path.exists():
            return Tpm(str(_read_record(self.path, "sealed key", FORMAT)["tcti"]))
        return Tpm(self._tcti or DEFAULT_TCTI)

    def exists(self) -> bool:
        return self.path.exists()

    def create(self) -> None:
        """Seal a new random key to the TPM; ``FileExistsError`` if one is sealed here."""
        if self.path.exists():
            raise FileExistsError(f"a key is sealed already in {self.path}")
        tpm = self.tpm
        public, private = tpm.seal(os.urandom(KEY_SIZE))
        write_secret(self.path, json.dumps({
            "format": FORMAT, "tcti": tpm.tcti,
            "public": base64.b64encode(public).decode(),
            "private": base64.b64encode(private).decode()}, indent=1).encode() + b"\n")

    def key(self) -> bytes:
        doc = _read_record(self.path, "sealed key", FORMAT)
        tpm = Tpm(self._tcti or str(doc["tcti"]))
        try:
            public, private = (base64.b64decode(doc["public"], validate=True),
                               base64.b64decode(doc["private"], validate=True))
        except (KeyError, TypeError, ValueError):
            raise StoreError(f"sealed key {self.path} is damaged", "bad-key-file") from None
        key = tpm.unseal(public, private, f"the key sealed in {self.path}")
        if len(key) != KEY_SIZE:
            raise StoreError(f"the key sealed in {self.path} is not {KEY_SIZE} bytes",
                             "key-size")
        return key


class TpmFleetKey(MacFleetKey):
    """The fleet key and the kiosk's site key as HMAC keys at persistent handles."""

    def __init__(self, tpm: Tpm, fleet: int, site: str, site_key: int) -> None:
        super().__init__(lambda msg: tpm.hmac(fleet, msg, "the fleet key"), site,
                         lambda msg: tpm.hmac(site_key, msg, "the site key"))
        self.handles = (fleet, site_key)


class TpmFleetKeeper:
    """A ``FleetKeeper`` (``device.store.fleet``) whose key lives in the TPM; ``clear_file``
    is the fleet key file removed once the key is imported."""

    def __init__(self, directory: Path, tcti: str | None = None,
                 clear_file: Path | None = None) -> None:
        self.path = Path(directory) / FLEET_RECORD
        self._tcti = tcti
        self.clear_file = clear_file

    def exists(self) -> bool:
        return self.path.exists()

    def _key(self, doc: dict[str, Any]) -> TpmFleetKey:
        try:
            return TpmFleetKey(Tpm(self._tcti or str(doc["tcti"])), int(doc["fleet"]),
                               str(doc["site"]), int(doc["site_key"]))
        except (KeyError, TypeError, ValueError):
            raise StoreError(f"fleet key record {self.path} is damaged",
                             "bad-key-file") from None

    def load(self) -> TpmFleetKey:
        try:
            doc = _read_record(self.path, "fleet key record", FLEET_FORMAT)
        except SecretMissing:
            raise StoreError(f"fleet key record {self.path} is missing: this kiosk's fleet "
                             "key is not in its TPM", "key-missing") from None
        key = self._key(doc)
        if key.fingerprint().hex() != doc.get("fingerprint"):
            raise TpmKeyGone(f"the TPM at {key.handles[0]:#x} holds another key than this "
                             "kiosk's fleet key: the TPM was cleared, or this is another "
                             "TPM; that key is gone")
        return key

    def install(self, key: bytes, site: str) -> TpmFleetKey:
        old: dict[str, Any] | None = None
        if self.path.exists():
            old = _read_record(self.path, "fleet key record", FLEET_FORMAT)
            if (old.get("site") == site
                    and old.get("fingerprint") == FleetSecret(key).fingerprint().hex()):
                held = self.load()
                self._remove_clear_file()
                return held
        tpm = Tpm(self._tcti or (str(old["tcti"]) if old else DEFAULT_TCTI))
        fleet = tpm.import_hmac(key)
        try:
            site_key = tpm.import_hmac(ids.site_key(key, site))
        except BaseException:
            tpm.evict(fleet)
            raise
        new = TpmFleetKey(tpm, fleet, site, site_key)
        _write_record(self.path, {"format": FLEET_FORMAT, "tcti": tpm.tcti, "fleet": fleet,
                                  "site_key": site_key, "site": site,
                                  "fingerprint": new.fingerprint().hex()})
        if old is not None:
            for handle in (old.get("fleet"), old.get("site_key")):
                if isinstance(handle, int) and handle not in (fleet, site_key):
                    tpm.evict(handle)
        self._remove_clear_file()
        return new

    def _remove_clear_file(self) -> None:
        if self.clear_file is not None and self.clear_file.exists():
            self.clear_file.unlink()
            fsync_dir(self.clear_file.parent)

    def evict(self) -> None:
        """Delete the fleet and site keys from the TPM (a wipe; the record stays for the
        caller to destroy)."""
        if not self.path.exists():
            return
        doc = _read_record(self.path, "fleet key record", FLEET_FORMAT)
        key = self._key(doc)
        if key.fingerprint().hex() != doc.get("fingerprint"):
            return  # the TPM was cleared: the handles hold another's keys, or none
        tpm = Tpm(self._tcti or str(doc["tcti"]))
        for handle in key.handles:
            tpm.evict(handle)
