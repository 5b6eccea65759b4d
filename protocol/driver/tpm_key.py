"""A key provider whose key is sealed to a TPM 2.0, for the kiosk's store or the hub's.

``TpmKey(directory, name)`` keeps ``directory/NAME.tpm``: an owner-only JSON
record of the sealed object's public and private blobs (``protocol.driver.tpm``)
and of the TCTI naming the TPM. ``create`` seals a new random 32-byte key;
``key()`` unseals it. The private blob is encrypted under a primary key only
that TPM can make, from a seed that never leaves it: on another TPM, or on
this one once cleared, ``key()`` raises ``TpmKeyGone`` and whatever was sealed
under the key is lost for good (that is the point: a stolen card reads
nothing).
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

from protocol.driver.sealing import KEY_SIZE
from protocol.driver.secret_files import read_secret, write_secret
from protocol.driver.tpm import DEFAULT_TCTI, Tpm, TpmRecordDamaged

FORMAT = "haven-tpm-sealed/1"
#: The most bytes a record may hold: a damaged one is refused before it is parsed.
MAX_RECORD = 4096


def read_record(path: Path, what: str, form: str) -> dict[str, Any]:
    """An owner-only JSON record of format ``form``; ``TpmRecordDamaged`` if it is not."""
    raw = read_secret(path, what)
    try:
        if len(raw) > MAX_RECORD:
            raise ValueError("too long")
        doc = json.loads(raw)
        if not isinstance(doc, dict) or doc.get("format") != form:
            raise ValueError(f"not {form}")
    except ValueError as exc:
        raise TpmRecordDamaged(f"{what} {path} is damaged ({exc})") from None
    return doc


def record_bytes(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, indent=1).encode() + b"\n"


class TpmKey:
    """A 32-byte key sealed to a TPM, its blobs in ``directory/name.tpm``; ``tcti``
    instead of the TPM recorded there (a new key: instead of the default)."""

    def __init__(self, directory: Path, name: str, tcti: str | None = None) -> None:
        self.path = Path(directory) / f"{name}.tpm"
        self._tcti = tcti

    def exists(self) -> bool:
        return self.path.exists()

    def create(self) -> None:
        """Seal a new random key to the TPM; ``FileExistsError`` if one is sealed here."""
        if self.path.exists():
            raise FileExistsError(f"a key is sealed already in {self.path}")
        tpm = Tpm(self._tcti or DEFAULT_TCTI)
        public, private = tpm.seal(os.urandom(KEY_SIZE))
        write_secret(self.path, record_bytes({
            "format": FORMAT, "tcti": tpm.tcti,
            "public": base64.b64encode(public).decode(),
            "private": base64.b64encode(private).decode()}))

    def key(self) -> bytes:
        doc = read_record(self.path, "sealed key", FORMAT)
        try:
            tpm = Tpm(self._tcti or str(doc["tcti"]))
            public, private = (base64.b64decode(doc["public"], validate=True),
                               base64.b64decode(doc["private"], validate=True))
        except (KeyError, TypeError, ValueError):
            raise TpmRecordDamaged(f"sealed key {self.path} is damaged") from None
        key = tpm.unseal(public, private, f"the key sealed in {self.path}")
        if len(key) != KEY_SIZE:
            raise TpmRecordDamaged(f"the key sealed in {self.path} is not {KEY_SIZE} bytes")
        return key
