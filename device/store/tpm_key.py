"""A kiosk's keys held by a TPM 2.0: the store key sealed to it, the fleet key in it.

Theory of operation
-------------------
The store key is a ``protocol.driver.tpm_key.TpmKey`` (``DATA/store.tpm``):
a random 32-byte key sealed to the TPM, which another TPM, or this one once
cleared, cannot unseal. ``RotatingTpmKey`` seals the next key of a rotation
to the same TPM in ``DATA/store.next.tpm`` until the swap.

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
handle the TPM keeps unused). The keys of later generations of the fleet key
(``install_later``, after the hub rotated it) are imported the same way, each
with its site key, and recorded under ``later``; a new first key evicts them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from device.store.exc import StoreError
from device.store.fleet import FleetKey, FleetSecret, MacFleetKey, chained
from protocol.crdt import ids
from protocol.driver.errors import SecretMissing
from protocol.driver.secret_files import fsync_dir, promote_secret, write_whole
from protocol.driver.tpm import DEFAULT_TCTI, Tpm, TpmKeyGone
from protocol.driver.tpm_key import FORMAT as SEALED_FORMAT
from protocol.driver.tpm_key import TpmKey as TpmKey
from protocol.driver.tpm_key import read_record, record_bytes

FLEET_FORMAT = "haven-tpm-fleet/1"
FLEET_RECORD = "fleet.tpm"


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

    def load(self) -> FleetKey:
        try:
            doc = read_record(self.path, "fleet key record", FLEET_FORMAT)
        except SecretMissing:
            raise StoreError(f"fleet key record {self.path} is missing: this kiosk's fleet "
                             "key is not in its TPM", "key-missing") from None
        keys = [self._key({**doc, **gen}) for gen in [doc, *doc.get("later", [])]]
        for key, gen in zip(keys, [doc, *doc.get("later", [])], strict=True):
            if key.fingerprint().hex() != gen.get("fingerprint"):
                raise TpmKeyGone(f"the TPM at {key.handles[0]:#x} holds another key than "
                                 "this kiosk's fleet key: the TPM was cleared, or this is "
                                 "another TPM; that key is gone")
        return chained(keys)

    def install_later(self, later: Sequence[bytes], site: str) -> FleetKey:
        doc = read_record(self.path, "fleet key record", FLEET_FORMAT)
        held = list(doc.get("later", []))
        tpm = Tpm(self._tcti or str(doc["tcti"]))
        for key in later[len(held):]:
            fleet, site_key = _import(tpm, key, site)
            held.append({"fleet": fleet, "site_key": site_key,
                         "fingerprint": FleetSecret(key).fingerprint().hex()})
            write_whole(self.path, record_bytes({**doc, "later": held}))
        return self.load()

    def install(self, key: bytes, site: str) -> FleetKey:
        old: dict[str, Any] | None = None
        if self.path.exists():
            old = read_record(self.path, "fleet key record", FLEET_FORMAT)
            if (old.get("site") == site
                    and old.get("fingerprint") == FleetSecret(key).fingerprint().hex()):
                held = self.load()
                self._remove_clear_file()
                return held
        tpm = Tpm(self._tcti or (str(old["tcti"]) if old else DEFAULT_TCTI))
        fleet, site_key = _import(tpm, key, site)
        new = TpmFleetKey(tpm, fleet, site, site_key)
        write_whole(self.path, record_bytes({
            "format": FLEET_FORMAT, "tcti": tpm.tcti, "fleet": fleet, "site_key": site_key,
            "site": site, "fingerprint": new.fingerprint().hex()}))
        if old is not None:
            for handle in _handles(old):
                if handle not in (fleet, site_key):
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
        doc = read_record(self.path, "fleet key record", FLEET_FORMAT)
        key = self._key(doc)
        if key.fingerprint().hex() != doc.get("fingerprint"):
            return  # the TPM was cleared: the handles hold another's keys, or none
        tpm = Tpm(self._tcti or str(doc["tcti"]))
        for handle in _handles(doc):
            tpm.evict(handle)


def _import(tpm: Tpm, key: bytes, site: str) -> tuple[int, int]:
    """A fleet key and its site key imported as HMAC keys: (their handles); neither left
    behind if the second fails."""
    fleet = tpm.import_hmac(key)
    try:
        return fleet, tpm.import_hmac(ids.site_key(key, site))
    except BaseException:
        tpm.evict(fleet)
        raise


def _handles(doc: dict[str, Any]) -> list[int]:
    """Every handle a fleet key record names: its first key's, then its later ones'."""
    return [handle for gen in [doc, *doc.get("later", [])]
            for handle in (gen.get("fleet"), gen.get("site_key")) if isinstance(handle, int)]


class RotatingTpmKey(TpmKey):
    """The store key sealed to the TPM (``DATA/NAME.tpm``), and the next key of a rotation
    sealed to the same TPM in ``DATA/NAME.next.tpm`` (``keys.RotatingKey``)."""

    def __init__(self, directory: Path, name: str, tcti: str | None = None) -> None:
        super().__init__(directory, name, tcti)
        self._next_name, self._tcti_given = f"{name}.next", tcti
        self._next = TpmKey(directory, self._next_name, tcti)

    def has_next(self) -> bool:
        return self._next.exists()

    def next_key(self) -> bytes | None:
        return self._next.key() if self.has_next() else None

    def make_next(self) -> None:
        """Seal the next key to the TPM the key is sealed to."""
        doc = read_record(self.path, "sealed key", SEALED_FORMAT)
        tcti = self._tcti_given or str(doc.get("tcti") or DEFAULT_TCTI)
        TpmKey(self.path.parent, self._next_name, tcti).create()

    def promote_next(self) -> None:
        promote_secret(self.path, self._next.path)
