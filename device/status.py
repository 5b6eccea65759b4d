"""The kiosk's sync status: one set of names for the status LED and the page.

The runtime decides the status after each sync round; the LED
(``device.hardware.panel.PATTERNS``) shows it as a blink pattern and the page
(``device.ui.live``, then ``static/app.js``) as a coloured dot and the string
``sync_<status>`` from ``static/i18n.json``. The names are the wire values the
page receives, so they are plain strings, defined here once.
"""

from __future__ import annotations

SYNCED = "synced"  #: everything written here has reached the hub
PENDING = "pending"  #: check-ins wait to be sent, or a round is under way
OFFLINE = "offline"  #: the hub cannot be reached; the kiosk keeps working alone
ERROR = "error"  #: something needs a technician (the hub refused us, storage is failing)
REVOKED = "revoked"  #: the hub revoked this kiosk: it no longer syncs
SUSPECTED_CLONE = "suspected-clone"  #: another kiosk runs with this one's identity

STATUSES = (SYNCED, PENDING, OFFLINE, ERROR, REVOKED, SUSPECTED_CLONE)
#: The LED only (the page's header keeps the sync status): a fridge node's alarm is raised
#: (``device.fridges``); the staff screen says which fridge and why.
FRIDGE_ALARM = "fridge-alarm"
