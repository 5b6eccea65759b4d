"""Technicians' actions as the kiosks recorded them: each kiosk's audit chain, checked.

Theory of operation
-------------------
A kiosk writes every technician action as a signed, hash-chained entry
(``protocol.sync.audit``, SPEC.md "Audit"), and its ordinary sync rounds
bring the entries here as writes of ``audit`` records. ``report`` reads
each kiosk's entries (one range of record ids) and checks them against the
kiosk's enrolled Ed25519 key: every signature, every link to the entry
before, and the numbers missing. Nothing is stored about the check: it is
made again from the entries held each time, so a gap stays reported while
the hole is open and closes when the entry arrives, whatever its order.

This is not ``Hub.history``, which lists the writes to one record.
"""

from __future__ import annotations

from typing import Any

from host.errors import UsageError
from host.hub.storage import HubStore
from protocol.crdt.delta import decode
from protocol.errors import ProtocolError
from protocol.sync import audit


def report(store: HubStore, device_id: str | None = None) -> list[dict[str, Any]]:
    """Each enrolled kiosk's audit (one kiosk's with ``device_id``): its entries oldest
    first with a status each, its gaps (``[first, last]`` numbers missing) and ``ok``."""
    devices = store.devices()
    if device_id is not None:
        devices = [d for d in devices if d.device_id == device_id]
        if not devices:
            raise UsageError(f"no kiosk {device_id} (haven hub status lists them)")
    out: list[dict[str, Any]] = []
    for dev in sorted(devices, key=lambda d: d.device_id):
        deltas, unreadable = [], 0
        for op in store.ops_in(*audit.id_range(dev.node)):
            try:
                deltas.append(decode(op.data))
            except ProtocolError:
                unreadable += 1
        checked = audit.verify(dev.node, dev.ed25519, deltas)
        checked["ok"] = checked["ok"] and not unreadable
        out.append({"device": dev.device_id, "site": dev.site, "letter": dev.letter,
                    "state": dev.state, "unreadable": unreadable, **checked})
    return out


def problems(kiosk: dict[str, Any]) -> list[str]:
    """What is wrong with one kiosk's audit, in words (none: all verified)."""
    out = [f"GAP: entries {a}-{b} missing" if a != b else f"GAP: entry {a} missing"
           for a, b in kiosk["gaps"]]
    counts: dict[str, int] = {}
    for e in kiosk["entries"]:
        if e["status"] != audit.VERIFIED:
            counts[e["status"]] = counts.get(e["status"], 0) + 1
    out += [f"{n} {status.upper()}" for status, n in sorted(counts.items())]
    if kiosk["unreadable"]:
        out.append(f"{kiosk['unreadable']} UNREADABLE")
    return out
