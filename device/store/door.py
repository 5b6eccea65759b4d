"""A door kiosk's verdict on a returning patient's year of birth, without the year.

A door kiosk holds no patient record, only, for each returning patient of
its site, a verifier record (``protocol.crdt.ids``): a keyed hash of the year
of birth under a key of the site's, named by (site, patient). The year the
patient types is hashed the same way and compared: ``match`` or
``mismatch``; ``unknown`` when no year was typed (a name cannot be checked
here), and None when no verifier is held (the caller says ``unknown`` too).
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from typing import Any

import sqlite_utils

from device.store.fleet import FleetKey
from device.store.keys import FieldCipher
from protocol import strict_cbor
from protocol.crdt.schema import VERIFIER

BIRTH_YEAR = VERIFIER.field("birthYear").number


def verifier_verdict(db: sqlite_utils.Database, cipher: FieldCipher, fleet: FleetKey,
                     site: str, pid: bytes, claim: Mapping[str, Any]) -> str | None:
    vid = fleet.verifier_record_id(site, pid)
    row = db.execute(
        "SELECT f.stamp, f.node, f.sealed FROM records r JOIN field_values f USING (rid)"
        " WHERE r.rid = ? AND r.deleted = 0 AND r.type = ? AND f.field = ?",
        [vid, VERIFIER.number, BIRTH_YEAR]).fetchone()
    if row is None:
        return None
    held = strict_cbor.loads(cipher.open_field(vid, BIRTH_YEAR, row[0], row[1], row[2]))
    year = claim.get("birthDate")
    if not isinstance(held, str) or not isinstance(year, str):
        return "unknown"
    typed = fleet.year_verifier(site, pid, year[:4])
    return "match" if hmac.compare_digest(typed, held) else "mismatch"
