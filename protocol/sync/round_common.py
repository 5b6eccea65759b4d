"""What both roles of a sync round share: lanes, alert codes, encoding, refusals.

``protocol.sync.conversation`` tells how the roles fit together; ``kiosk_round``
and ``hub_round`` hold one role each.
"""

from __future__ import annotations

from typing import Any

from protocol import messages
from protocol.errors import RemoteProtocolError

Reply = tuple[int, bytes]  #: (session lane, message bytes)
CONTROL_LANE, CHANGES_LANE, LAST_LANE = 0, 1, 3
#: ``sync-alert`` codes: another kiosk runs with this identity; a technician cleared it.
SUSPECTED_CLONE, CLONE_CLEARED = "suspected-clone", "clone-cleared"
#: A kiosk the hub decommissioned: its state there, and the ``sync-alert`` it is sent.
DECOMMISSIONED = "decommissioned"


def encode(name: str, **values: Any) -> bytes:
    """The bytes of sync message ``name`` with these fields."""
    return messages.encode(messages.make(name, **values))


class BatchRefused(RemoteProtocolError):
    """The hub refused a batch (``code``: its reason)."""

    code = "batch-refused"


class SnapshotRefused(RemoteProtocolError):
    """The hub's snapshot is not one the kiosk can take (its sum disagrees, it is
    malformed, or it was not asked for): nothing it carried was kept."""

    code = "bad-snapshot"
