"""Record ids: keyed hashes of passport numbers, random ids otherwise.

Theory of operation
-------------------
Two offline kiosks that register the same person must create the same
patient record, so a patient's id is derived from the passport number:
HMAC-SHA256 under the fleet key (shared by every kiosk of a deployment,
installed at enrolment) of the normalised number, cut to 16 bytes and marked
as an RFC 9562 version-8 UUID. Without the key, the id reveals nothing and
cannot be recomputed from a list of numbers. The same construction under a
different label gives the lookup hash the store indexes by.

Normalising: Unicode NFKC, upper case, and only letters and digits kept, so
``ab 12-34`` and ``AB1234`` are one person. An issuing country may be given
as ``CC:NUMBER`` and is then part of the identity.

A patient without documents is given a short code (``short_code``), and
their id is derived from it the same way, under the label's ``code:``
prefix: ``code_patient_id``. Any kiosk of the fleet finds the patient from
the code alone. A passport number never normalises to that input (it keeps
letters and digits only, in upper case), so the two kinds of id cannot meet.
A kiosk with no number yet (enrolled before kiosks had one) gives such a
patient a random version-4 UUID instead; the caller passes the 16 random
bytes in (``os.urandom(16)``), keeping this module pure.

A door kiosk holds, for each returning patient of its site, a verifier
record instead of the patient's: its id is the same keyed construction over
the site and the patient id (``verifier_record_id``), so the hub and every
kiosk name it alike; its value is a keyed hash of the year of birth under a
key of the site's, derived from the fleet key by HKDF-SHA256
(``year_verifier``). A kiosk compares the year a patient types with it and
never holds the year itself.

Each keyed construction is also given over a MAC function instead of a key
(``patient_id_by``...): a kiosk whose fleet key lives in a TPM computes the
same ids with the TPM's HMAC, and the message and the cut are written once.
The year verifier's site key comes from HKDF, whose extract step takes the
fleet key as its *message*; such a kiosk holds its own site's key
(``site_key``) as a second MAC key instead.

Rotating the fleet key (SPEC.md "Fleet key rotation") chains ids: the hub holds
no passport number, so it cannot recompute a patient's id under a new key
from the passport. Generation 1 is the key above; generation ``g >= 2`` has
its own key ``k_g``, and a patient's id of generation ``g`` is
``UUIDv8(HMAC(k_g, "haven/patient-id/rotate" NUL || id_{g-1}))``
(``rotated_id``): the hub derives it from the id it holds, a kiosk holding
``k_1..k_g`` from the passport or the code (``chained_id``). A key of an
older generation alone gives ids that no longer name anyone once the hub
has migrated the records.
"""

from __future__ import annotations

import hashlib
import hmac
import unicodedata
import uuid
from typing import TYPE_CHECKING

from protocol import MICROPYTHON
from protocol.crdt import short_code
from protocol.crypto import hkdf_sha256
from protocol.errors import LocalProtocolError

if TYPE_CHECKING:
    from collections.abc import Sequence

MIN_KEY_SIZE = 32
PATIENT_LABEL = b"haven/patient-id/v1\x00"
LOOKUP_LABEL = b"haven/passport-lookup/v1\x00"
VERIFIER_ID_LABEL = b"haven/verifier-id\x00"
ROTATE_LABEL = b"haven/patient-id/rotate\x00"
YEAR_VERIFIER_INFO = b"haven/year-verifier/v1\x00"

if TYPE_CHECKING or not MICROPYTHON:
    from collections.abc import Callable

    #: HMAC-SHA256 under one key: message in, 32-byte digest out.
    Mac = Callable[[bytes], bytes]


def _alnum(ch: str) -> bool:
    # MicroPython's str has no isalnum; its unicodedata stand-in lets ASCII through only,
    # where the two agree.
    return ch.isalnum() if hasattr(ch, "isalnum") else ch.isalpha() or ch.isdigit()


def normalise_passport(text: str) -> str:
    norm = unicodedata.normalize("NFKC", text).upper().strip()
    country, sep, number = norm.rpartition(":")
    number = "".join(ch for ch in number if _alnum(ch))
    country = "".join(ch for ch in country if _alnum(ch))
    if not 4 <= len(number) <= 20:
        raise LocalProtocolError("a passport number has 4 to 20 letters and digits",
                                 "bad-passport")
    return f"{country}:{number}" if sep and country else number


def _check_key(key: bytes) -> None:
    if len(key) < MIN_KEY_SIZE:
        raise LocalProtocolError(f"the fleet key must be at least {MIN_KEY_SIZE} bytes",
                                 "bad-key")


def _as_uuid(digest: bytes, version: int) -> uuid.UUID:
    raw = bytearray(digest[:16])
    raw[6] = (raw[6] & 0x0F) | (version << 4)
    raw[8] = (raw[8] & 0x3F) | 0x80
    return uuid.UUID(bytes=bytes(raw))


def patient_id(fleet_key: bytes, passport: str) -> uuid.UUID:
    """The patient id every kiosk of the fleet derives for ``passport``."""
    return patient_id_by(hmac_of(fleet_key), passport)


def patient_id_by(mac: Mac, passport: str) -> uuid.UUID:
    """``patient_id`` with the fleet key's HMAC given as ``mac``."""
    return _as_uuid(mac(PATIENT_LABEL + normalise_passport(passport).encode()), 8)


def code_patient_id(fleet_key: bytes, code: str) -> uuid.UUID:
    """The patient id every kiosk of the fleet derives for a short patient code
    (``short_code.parse`` first: a bad check character raises ``ShortCodeError``)."""
    return code_patient_id_by(hmac_of(fleet_key), code)


def code_patient_id_by(mac: Mac, code: str) -> uuid.UUID:
    """``code_patient_id`` with the fleet key's HMAC given as ``mac``."""
    return _as_uuid(mac(PATIENT_LABEL + b"code:" + short_code.parse(code).encode()), 8)


def rotated_id(key: bytes, previous: bytes) -> uuid.UUID:
    """The id of the next generation, under its key ``key``, of the patient whose id of
    the generation before is ``previous`` (16 bytes)."""
    return rotated_id_by(hmac_of(key), previous)


def rotated_id_by(mac: Mac, previous: bytes) -> uuid.UUID:
    """``rotated_id`` with the next generation's HMAC given as ``mac``."""
    _check_pid(previous)
    return _as_uuid(mac(ROTATE_LABEL + previous), 8)


def chained_id(first: uuid.UUID, later: Sequence[Mac]) -> uuid.UUID:
    """The id of generation ``1 + len(later)`` of the patient whose generation-1 id is
    ``first``: ``rotated_id_by`` under each later generation's MAC in turn."""
    pid = first
    for mac in later:
        pid = rotated_id_by(mac, pid.bytes)
    return pid


def passport_lookup(key: bytes, passport: str) -> bytes:
    """A keyed hash to index a passport number by, without storing it."""
    _check_key(key)
    msg = LOOKUP_LABEL + normalise_passport(passport).encode()
    return hmac.new(key, msg, hashlib.sha256).digest()


def random_id(entropy: bytes) -> uuid.UUID:
    """A version-4 UUID from 16 random bytes."""
    if len(entropy) != 16:
        raise LocalProtocolError("a random id needs 16 random bytes")
    return _as_uuid(entropy, 4)


def time_ordered_id(unix_ms: int, entropy: bytes) -> uuid.UUID:
    """A version-7 UUID (RFC 9562): 48 bits of Unix milliseconds, then randomness.

    Records created one after another get ids that sort one after another, so
    their rows land side by side in the store's indexes, not on a random page
    each: fewer pages written per check-in."""
    if len(entropy) != 10:
        raise LocalProtocolError("a time-ordered id needs 10 random bytes")
    if not 0 <= unix_ms < 1 << 48:
        raise LocalProtocolError("a time-ordered id needs a time in 48 bits of milliseconds")
    return _as_uuid(unix_ms.to_bytes(6, "big") + entropy, 7)


def verifier_record_id(fleet_key: bytes, site: str, pid: bytes) -> bytes:
    """The id of the verifier record of patient ``pid`` (16 bytes) at ``site``: 16 bytes
    of ``HMAC-SHA256(fleet key, label || site || 0 || pid)`` marked as a version-8 UUID."""
    return verifier_record_id_by(hmac_of(fleet_key), site, pid)


def verifier_record_id_by(mac: Mac, site: str, pid: bytes) -> bytes:
    """``verifier_record_id`` with the fleet key's HMAC given as ``mac``."""
    _check_pid(pid)
    return _as_uuid(mac(VERIFIER_ID_LABEL + site.encode() + b"\x00" + pid), 8).bytes


def year_verifier(fleet_key: bytes, site: str, pid: bytes, year: str) -> str:
    """The verifier of ``year`` (4 digits) of birth of patient ``pid`` at ``site``:
    32 hex digits of ``HMAC-SHA256(K_site, pid || year)``, ``K_site`` from the fleet key
    by HKDF-SHA256 (no salt, info ``label || site``, 32 bytes)."""
    return year_verifier_by(hmac_of(site_key(fleet_key, site)), pid, year)


def site_key(fleet_key: bytes, site: str) -> bytes:
    """``K_site`` of ``year_verifier``: HKDF-SHA256 of the fleet key for ``site``."""
    _check_key(fleet_key)
    return hkdf_sha256(fleet_key, YEAR_VERIFIER_INFO + site.encode())


def year_verifier_by(site_mac: Mac, pid: bytes, year: str) -> str:
    """``year_verifier`` with the site key's HMAC given as ``site_mac``."""
    _check_pid(pid)
    if type(year) is not str or len(year) != 4 or not all("0" <= ch <= "9" for ch in year):
        raise LocalProtocolError(f"a year of birth is 4 digits, not {year!r}", "bad-year")
    return site_mac(pid + year.encode())[:16].hex()


def hmac_of(key: bytes) -> Mac:
    """HMAC-SHA256 under ``key`` (at least ``MIN_KEY_SIZE`` bytes) as a ``Mac``."""
    _check_key(key)
    return lambda msg: hmac.new(key, msg, hashlib.sha256).digest()


def _check_pid(pid: bytes) -> None:
    if type(pid) is not bytes or len(pid) != 16:
        raise LocalProtocolError("a patient id is 16 bytes", "bad-id")
