"""The kiosk's copy of the hub's technician revocation list.

The list is hub-signed (``protocol.sync.credential``), so whoever brings it
(the hub at sync, a technician's tool over the console) is trusted with
nothing: the kiosk keeps the offered list only if the hub signed it and its
number is above the one held, and never goes back to an older one. It is
one small file, written whole (temporary file, fsync, rename), read again
when it changed.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from device.tech.files import stamp, write_whole
from protocol.errors import ProtocolError
from protocol.sync import credential

log = logging.getLogger("haven.tech")

FILE = "technician_revocations.cbor"


class RevocationList:
    """The revocation list held in ``data``, checked against the hub's key."""

    def __init__(self, data: Path, hub_ed25519: bytes) -> None:
        self.path = Path(data) / FILE
        self.hub_ed25519 = hub_ed25519
        self._lock = threading.Lock()  #: the cache
        self._writing = threading.Lock()  #: one offer at a time: never an older list last
        self._seen: tuple[tuple[int, int, int] | None, credential.Revocations | None] = (
            None, None)

    def current(self) -> credential.Revocations | None:
        now = stamp(self.path)
        with self._lock:
            if now is not None and self._seen[0] == now:
                return self._seen[1]
            held = None
            if now is not None:
                try:
                    held = credential.read_revocations(self.path.read_bytes(), self.hub_ed25519)
                except (OSError, ProtocolError) as exc:
                    log.warning("ignoring %s: %s", self.path, exc)
            self._seen = (now, held)
            return held

    @property
    def number(self) -> int:
        held = self.current()
        return 0 if held is None else held.number

    @property
    def serials(self) -> frozenset[int]:
        held = self.current()
        return frozenset() if held is None else held.serials

    def offer(self, doc: bytes) -> bool:
        """Keep ``doc`` if it is the hub's and newer than the list held; True if kept.
        ``CredentialError`` if it is not a list the hub signed."""
        offered = credential.read_revocations(doc, self.hub_ed25519)
        with self._writing:
            if not credential.newer(self.current(), offered):
                return False
            self._write(offered.raw)
        log.info("technician revocation list %d kept (%d serials)", offered.number,
                 len(offered.serials))
        return True

    def _write(self, doc: bytes) -> None:
        with self._lock:
            write_whole(self.path, doc)
            self._seen = (None, None)
