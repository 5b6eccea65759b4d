"""The kiosk's side of a fleet key rotation: the later keys the hub's welcome carries.

Theory of operation
-------------------
SPEC.md "Fleet key rotation". ``KioskFleetKeys`` is what the kiosk's role in
a round (``KioskSync``) asks of the fleet key: the kiosk's moves to later
generations, which its hello and batches carry, and what to do with a
welcome's sealed chain: open it with the kiosk's X25519 key and hand it to
the store (``Store.install_fleet_later``), which keeps it and makes ids of
the newest generation from then on. A chain that does not open, or goes on
from another first key than the kiosk's, is refused with the reason logged:
nothing changes, and sync goes on under the generation held.
"""

from __future__ import annotations

import logging

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from device.store import Store, StoreError
from protocol.sync.fleet_chain import ChainError, open_chain

log = logging.getLogger("haven.sync")


class KioskFleetKeys:
    def __init__(self, store: Store, x_key: X25519PrivateKey) -> None:
        self.store = store
        self.x_key = x_key

    def moves(self) -> list[list[int]]:
        return self.store.fleet_generations()

    def offered(self, sealed: bytes) -> None:
        if self.store.fleet_pending:
            return  # its first key comes with its certificate; the rest next time
        try:
            first, later = open_chain(sealed, self.x_key)
            if self.store.install_fleet_later(first, later):
                log.info("the hub rotated the fleet key: patient ids of generation %d from "
                         "now on", self.store.fleet.generation)
        except (ChainError, StoreError) as exc:
            log.error("the hub's fleet key chain was refused: %s", exc)
