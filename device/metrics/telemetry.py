"""Writing a telemetry record (``protocol.sync.telemetry``) into the kiosk's store.

The record goes through the store like any local write: its outbox entry in
lane 5, behind everything clinical, and acknowledged by the hub as any
other; the kiosk's garbage collection drops it once acknowledged (no scope
holds it). Before the kiosk has a node (not enrolled) nothing is written.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from device.metrics.collector import Metrics
from protocol.crdt.schema import TELEMETRY
from protocol.sync.telemetry import telemetry_id

log = logging.getLogger("haven.metrics")


def write_due(metrics: Metrics, store: Any) -> str | None:
    """Write the telemetry record if one is due; its record id, or None."""
    node = getattr(store, "node", None)
    if not node or not metrics.telemetry_due():
        return None
    values = metrics.take_telemetry()
    rid = uuid.UUID(bytes=telemetry_id(node, values["start"] // 60_000))
    try:
        store.put(TELEMETRY.name, str(rid), values)
    except Exception as exc:  # noqa: BLE001 - a locked or full store: try again later
        metrics.telemetry_failed()
        log.warning("telemetry not written: %s", type(exc).__name__)
        return None
    return str(rid)
