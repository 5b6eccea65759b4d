"""Both roles of a sync round: the kiosk (client) and the hub (server), without I/O.

Theory of operation
-------------------
SPEC.md, "Sync". As h11 holds both ends of HTTP, this package holds both ends
of a sync round. A role takes a message its peer sent, with the current time,
and returns the messages to send back as ``(lane, bytes)``. It never touches a
socket, a file, a database or a clock: it asks its storage (``KioskStorage``,
``HubStorage``) what it holds, decides, and tells the storage what to keep.
Every rule is in the role's module:

* ``protocol.sync.kiosk_round``: the kiosk (``KioskSync``, ``KioskStorage``):
  its chain held against the hub's checkpoint, one batch in flight, pulls,
  snapshots and rebases, a forked chain's held batches;
* ``protocol.sync.hub_round``: the hub (``HubSync``, ``HubStorage``,
  ``KioskRecord``): hellos and enrolment by approval, batches committed,
  quarantined or held (clones), pulls and snapshots of the kiosk's scope;
* ``protocol.sync.round_common``: what both share: lanes, ``sync-alert``
  codes, message encoding, ``BatchRefused`` and ``SnapshotRefused``.

This module names them all, for callers that speak of "the conversation".
"""

from __future__ import annotations

from protocol.sync.hub_round import (
    CHANGES_BYTES,
    FULL,
    LIVE_STATES,
    STALE_CURSOR_US,
    TAIL_WRITES,
    ApprovalEnrolment,
    Enroller,
    HubStorage,
    HubSync,
    KioskRecord,
)
from protocol.sync.kiosk_round import FOREIGN_ADOPTS, KioskStorage, KioskSync
from protocol.sync.round_common import (
    CHANGES_LANE,
    CLONE_CLEARED,
    CONTROL_LANE,
    DECOMMISSIONED,
    LAST_LANE,
    SUSPECTED_CLONE,
    BatchRefused,
    Reply,
    SnapshotRefused,
)
from protocol.sync.scope import utc_day

__all__ = [
    "CHANGES_BYTES", "CHANGES_LANE", "CLONE_CLEARED", "CONTROL_LANE", "DECOMMISSIONED",
    "FOREIGN_ADOPTS", "FULL", "LAST_LANE", "LIVE_STATES", "STALE_CURSOR_US",
    "SUSPECTED_CLONE", "TAIL_WRITES", "ApprovalEnrolment", "BatchRefused", "Enroller",
    "HubStorage", "HubSync", "KioskRecord", "KioskStorage", "KioskSync", "Reply",
    "SnapshotRefused", "utc_day",
]
