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

After the hub rotated the fleet key (SPEC.md "Fleet key rotation"), a kiosk
holds a chain: the key of generation 1 and one key per later generation,
each a ``MacFleetKey`` of its own. ``ChainedFleetKey`` makes the newest
generation's ids from them (``ids.chained_id``), and its door verifiers
under the newest key; its fingerprint stays the first key's, which names
the fleet. ``generations`` lists the chain's views newest first, for
lookups while the hub migrates records from one generation to the next.
``FleetKeyFile`` keeps generation ``g`` in ``fleet.g.key`` beside
``fleet.key``; a keeper's ``install_later`` adds the later keys.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from device.store.exc import KeyMismatch
from device.store.keys import read_key
from protocol.crdt import ids
from protocol.driver.secret_files import write_secret
from protocol.sync.fleet_chain import FINGERPRINT_INPUT, key_file_name


class FleetKey(Protocol):
    #: The one site whose year verifiers it makes; None: every site's.
    site: str | None
    #: 1 for the fleet's first key; one more for each rotation it holds.
    generation: int

    def patient_id(self, passport: str) -> uuid.UUID: ...

    def code_patient_id(self, code: str) -> uuid.UUID: ...

    def verifier_record_id(self, site: str, pid: bytes) -> bytes: ...

    def year_verifier(self, site: str, pid: bytes, year: str) -> str: ...

    def fingerprint(self) -> bytes:
        """What the store remembers of the key: enough to notice a different one."""
        ...

    def generations(self) -> list[FleetKey]:
        """This key and the older generations it chains from, newest first."""
        ...

    def key_fingerprints(self) -> list[bytes]:
        """Each generation's own key's fingerprint, the first generation's first."""
        ...

    def rotations(self) -> list[Callable[[bytes], bytes]]:
        """One function per generation after the first: a patient's id in it from their
        id one generation before."""
        ...


class MacFleetKey:
    """A ``FleetKey`` from the fleet key's MAC and the MAC of ``site``'s key."""

    generation = 1

    def __init__(self, mac: ids.Mac, site: str | None, site_mac: ids.Mac | None) -> None:
        self._mac = mac
        self.site = site
        self._site_mac = site_mac

    def rotated_id(self, previous: bytes) -> uuid.UUID:
        """The id, as this key's generation, of the patient whose id is ``previous`` one
        generation before (``ids.rotated_id``)."""
        return ids.rotated_id_by(self._mac, previous)

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

    def generations(self) -> list[FleetKey]:
        return [self]

    def key_fingerprints(self) -> list[bytes]:
        return [self.fingerprint()]

    def rotations(self) -> list[Callable[[bytes], bytes]]:
        return []


class ChainedFleetKey:
    """Generation ``len(chain)`` of the fleet key: ``chain`` holds one key per
    generation, the first key first."""

    def __init__(self, chain: Sequence[MacFleetKey]) -> None:
        self.chain = list(chain)
        self.generation = len(self.chain)
        self.site = self.chain[-1].site

    def _rotate(self, first: uuid.UUID) -> uuid.UUID:
        for key in self.chain[1:]:
            first = key.rotated_id(first.bytes)
        return first

    def patient_id(self, passport: str) -> uuid.UUID:
        return self._rotate(self.chain[0].patient_id(passport))

    def code_patient_id(self, code: str) -> uuid.UUID:
        return self._rotate(self.chain[0].code_patient_id(code))

    def verifier_record_id(self, site: str, pid: bytes) -> bytes:
        return self.chain[-1].verifier_record_id(site, pid)

    def year_verifier(self, site: str, pid: bytes, year: str) -> str:
        return self.chain[-1].year_verifier(site, pid, year)

    def fingerprint(self) -> bytes:
        return self.chain[0].fingerprint()

    def generations(self) -> list[FleetKey]:
        return [chained(self.chain[:g]) for g in range(len(self.chain), 0, -1)]

    def key_fingerprints(self) -> list[bytes]:
        return [key.fingerprint() for key in self.chain]

    def rotations(self) -> list[Callable[[bytes], bytes]]:
        return [_id_bytes(key.rotated_id) for key in self.chain[1:]]


def _id_bytes(made: Callable[[bytes], uuid.UUID]) -> Callable[[bytes], bytes]:
    return lambda pid: made(pid).bytes


def chained(chain: Sequence[MacFleetKey]) -> FleetKey:
    """The fleet key of generation ``len(chain)`` (``chain``: one key per generation)."""
    return chain[0] if len(chain) == 1 else ChainedFleetKey(chain)


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

    def install_later(self, later: Sequence[bytes], site: str) -> FleetKey:
        """Keep the keys of generations 2, 3... (``later``) after the first key held;
        returns the newest generation."""
        ...


def later_key_path(first: Path, generation: int) -> Path:
    """Where a key file keeper keeps generation ``generation`` (2 or more) of the fleet
    key whose first generation is ``first`` (``fleet.key``: ``fleet.2.key``...)."""
    return first.with_name(key_file_name(first.name, generation))


def later_key_files(first: Path) -> list[Path]:
    """The files of generations 2, 3... held beside ``first``, in order, up to the first
    missing one."""
    out: list[Path] = []
    while (path := later_key_path(first, len(out) + 2)).exists():
        out.append(path)
    return out


class FleetKeyFile:
    """The default keeper: the key's bytes in an owner-only file, and each later
    generation's in one beside it."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def load(self) -> FleetKey:
        return chained([FleetSecret(read_key(path, "fleet key file", None))
                        for path in [self.path, *later_key_files(self.path)]])

    def install(self, key: bytes, site: str) -> FleetKey:
        if self.path.exists() and read_key(self.path, "fleet key file", None) == key:
            return self.load()
        for path in later_key_files(self.path):
            path.unlink()  # a first key of another fleet: no later key of ours goes on
        self.path.unlink(missing_ok=True)
        write_secret(self.path, key)
        return FleetSecret(key)

    def install_later(self, later: Sequence[bytes], site: str) -> FleetKey:
        for generation, key in enumerate(later, 2):  # in order: a power cut leaves a chain
            path = later_key_path(self.path, generation)
            if not path.exists():
                write_secret(path, key)
        return self.load()
