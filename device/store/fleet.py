"""The fleet key behind an interface: patient ids without holding the key's bytes.

Theory of operation
-------------------
Every id a kiosk derives from the fleet key (``protocol.crdt.ids``) is an
HMAC-SHA256 under it, except the door's year verifier, an HMAC under the
site's key ``HKDF(fleet key, site)``. ``FleetKey`` is what the store needs
of the key: those ids and a fingerprint. ``MacFleetKey`` builds them all
from two MAC functions, one under the fleet key and one under the kiosk's
own site key, so each holder of the key gives only its MAC, and a
``FleetKeeper`` loads it when the store opens and installs one that arrives
in the clear:

- ``FleetSecret``: the key's bytes in memory (``FleetKeyFile`` reads them from
  ``fleet.key``, the default; a passphrase provider unwraps them);
- ``device.store.tpm_key.TpmFleetKey``: both keys are HMAC keys inside a
  TPM, and no byte of them lies on the card.

A MAC key held outside memory can make the site key of the site it was made
for only (HKDF's extract takes the fleet key as its message): asked for
another site's verifier, it raises ``KeyMismatch``.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Protocol

from device.store.exc import KeyMismatch
from device.store.keys import read_key
from protocol.crdt import ids
from protocol.driver.secret_files import write_secret

#: The passport whose patient id is the fleet key's fingerprint (``FleetKey.fingerprint``).
FINGERPRINT_INPUT = "FINGERPRINT0"


class FleetKey(Protocol):
    #: The one site whose year verifiers it makes; None: every site's.
    site: str | None

    def patient_id(self, passport: str) -> uuid.UUID: ...

    def code_patient_id(self, code: str) -> uuid.UUID: ...

    def verifier_record_id(self, site: str, pid: bytes) -> bytes: ...

    def year_verifier(self, site: str, pid: bytes, year: str) -> str: ...

    def fingerprint(self) -> bytes:
        """What the store remembers of the key: enough to notice a different one."""
        ...


class MacFleetKey:
    """A ``FleetKey`` from the fleet key's MAC and the MAC of ``site``'s key."""

    def __init__(self, mac: ids.Mac, site: str | None, site_mac: ids.Mac | None) -> None:
        self._mac = mac
        self.site = site
        self._site_mac = site_mac

    def patient_id(self, passport: str) -> uuid.UUID:
        return ids.patient_id_by(self._mac, passport)

    def code_patient_id(self, code: str) -> uuid.UUID:
        return ids.code_patient_id_by(self._mac, code)

    def verifier_record_id(self, site: str, pid: bytes) -> bytes:
        return ids.verifier_record_id_by(self._mac, site, pid)

    def year_verifier(self, site: str, pid: bytes, year: str) -> str:
        return ids.year_verifier_by(self._site_mac_for(site), pid, year)

    def _site_mac_for(self, site: str) -> ids.Mac:
        if self._site_mac is None or site != self.site:
            raise KeyMismatch(f"this kiosk holds the site key of {self.site!r}, not of "
                              f"{site!r}: install the fleet key again for the new site "
                              "(haven-kiosk init --fleet-key FILE, or enrol)")
        return self._site_mac

    def fingerprint(self) -> bytes:
        return self.patient_id(FINGERPRINT_INPUT).bytes


class FleetSecret(MacFleetKey):
    """The fleet key's bytes in memory: every site's key can be derived."""

    def __init__(self, key: bytes) -> None:
        super().__init__(ids.hmac_of(key), None, None)
        self.secret = key

    def _site_mac_for(self, site: str) -> ids.Mac:
        return ids.hmac_of(ids.site_key(self.secret, site))


class FleetKeeper(Protocol):
    """Where a kiosk keeps its fleet key: ``load`` it at open, ``install`` one that
    arrived in the clear (``haven-kiosk init --fleet-key``, enrolment) for the kiosk's
    ``site``, replacing the one held."""

    def load(self) -> FleetKey: ...

    def install(self, key: bytes, site: str) -> FleetKey: ...


class FleetKeyFile:
    """The default keeper: the key's bytes in an owner-only file."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def load(self) -> FleetSecret:
        return FleetSecret(read_key(self.path, "fleet key file", None))

    def install(self, key: bytes, site: str) -> FleetSecret:
        if self.path.exists() and read_key(self.path, "fleet key file", None) == key:
            return FleetSecret(key)
        self.path.unlink(missing_ok=True)
        write_secret(self.path, key)
        return FleetSecret(key)
