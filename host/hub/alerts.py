"""What in the fleet needs a person: ``haven hub alerts`` and ``haven hub status``.

Theory of operation
-------------------
``alerts(hub, now_ms)`` looks at what the hub holds, each time, and keeps no
state: an alert is raised while its cause is there and gone once it is not.
Each says which kiosk (if one), what is wrong, since when where known, and
what to do. The kinds:

* ``not-seen``: an approved kiosk silent longer than it said it would be.
  A kiosk writes a telemetry record at least every ``contact_s`` seconds
  (its summary says how often; ``DEFAULT_CONTACT_S`` for one that never
  said), which reaches the hub in a batch whenever it has a link, so a
  kiosk unheard for half as long again has no link, no power or no card;
* ``low-disk``, ``low-memory``, ``printer``, ``sensor``: from the kiosk's
  latest telemetry record (``protocol.sync.telemetry``, read by the writer
  the session authenticated, never by the record id alone); a newer record
  that says all is well clears them;
* ``suspected-clone``: the hub saw two batches under one sequence;
* ``quarantine``: deltas quarantined, by kiosk;
* ``audit-gap``: a kiosk's audit chain has entries missing or failing
  their check (``host.hub.audit``);
* ``conflict-waiting``: a conflict held or waiting for review for more than
  ``CONFLICT_WAIT_MS``, by its newest version's time;
* ``fridge-alarm``: a vaccine fridge's node (``protocol.sync.sensor_records``)
  raised an alarm its kiosk sent and no later message of it cleared: read
  by the writer the session authenticated, as telemetry.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from protocol.crdt.clock import wall_of
from protocol.crdt.delta import decode
from protocol.crdt.schema import DEVICE, TELEMETRY, TEMPERATURE_ALARM
from protocol.driver.wall_clock import wall_ms
from protocol.errors import ProtocolError
from protocol.sync import sensor_records, telemetry

if TYPE_CHECKING:
    from collections.abc import Iterable

    from host.hub.hub import Hub
    from host.hub.storage import Device
    from protocol.crdt.record import RecordView

DEFAULT_CONTACT_S = 24 * 3600
CONFLICT_WAIT_MS = 86_400_000
HOT_C = 80.0
#: Printer states that stop tickets (``device.hardware.escpos.STATES``), with what to do.
PRINTER_ACTIONS = {
    "paper-out": "load a paper roll",
    "cover-open": "close the printer's cover",
    "error": "clear the printer's error (paper jam, cutter): open it, then close it",
    "failed": "check the printer's cable and power; tickets do not print",
    "absent": "plug the printer back in (its device is gone)",
}
CRITICAL, WARNING = "critical", "warning"


def latest_telemetry(hub: Hub, dev: Device) -> dict[str, Any] | None:
    """The kiosk's newest telemetry record (by its period's end), as plain data."""
    best: dict[str, Any] | None = None
    for op in hub.store.ops_in(*telemetry.id_range(dev.node)):
        if op.node != dev.node:
            continue  # another kiosk's write on this kiosk's ids: not its word
        try:
            delta = decode(op.data)
        except ProtocolError:
            continue
        if delta.type != TELEMETRY.number or delta.is_delete:
            continue
        values = telemetry.from_fields(delta.set)
        if isinstance(values.get("end"), int) and (
                best is None or values["end"] > best["end"]):
            best = values
    return best


def _kiosk_deltas(hub: Hub, dev: Device, first: bytes, last: bytes, rtype: int
                  ) -> Iterable[Any]:
    """The kiosk's own puts of type ``rtype`` on records ``first`` to ``last``, in id
    order (another kiosk's write on these ids is not its word)."""
    for op in hub.store.ops_in(first, last):
        if op.node != dev.node:
            continue
        try:
            delta = decode(op.data)
        except ProtocolError:
            continue
        if delta.type == rtype and not delta.is_delete:
            yield delta


def fridge_alerts(hub: Hub, dev: Device) -> list[dict[str, Any]]:
    """The kiosk's fridges whose latest alarm message of a kind says ``raised``."""
    names = {sensor_records.slot_of(d.record_id): d.set.get(1) for d in _kiosk_deltas(
        hub, dev, *sensor_records.kiosk_range(sensor_records.DEVICE_KIND, dev.node),
        DEVICE.number)}
    latest: dict[tuple[int, Any], Any] = {}
    for d in _kiosk_deltas(hub, dev, *sensor_records.kiosk_range(
            sensor_records.ALARM_KIND, dev.node), TEMPERATURE_ALARM.number):
        latest[sensor_records.slot_of(d.record_id), d.set.get(2)] = d  # ids in seq order
    out = []
    for (slot, kind), d in sorted(latest.items(), key=lambda kv: str(kv[0])):
        if d.set.get(3) != "raised":
            continue
        extreme = d.set.get(6)
        reading = f", {extreme / 100:g} °C" if type(extreme) is int else ""
        out.append(_alert(
            "fridge-alarm", CRITICAL, dev.device_id,
            f"fridge {names.get(slot) or slot}: temperature alarm {kind}{reading}, "
            f"since {d.set.get(4)}",
            "check the fridge now: its door, power and thermostat; move the vaccines to "
            "a working fridge if it cannot hold 2-8 °C, and follow the cold-chain policy "
            "for those exposed"))
    return out


def _alert(kind: str, severity: str, device: str | None, what: str, action: str,
           since_ms: int | None = None) -> dict[str, Any]:
    return {"kind": kind, "severity": severity, "kiosk": device, "what": what,
            "action": action, "since_ms": since_ms}


def _ago(ms: int) -> str:
    s = max(0, ms // 1000)
    if s < 3600:
        return f"{s // 60} min"
    if s < 2 * 86400:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} days"


def kiosk_alerts(hub: Hub, dev: Device, now: int) -> list[dict[str, Any]]:
    """A kiosk's own alerts: silence and what its telemetry reports."""
    out: list[dict[str, Any]] = []
    name = dev.device_id
    tel = latest_telemetry(hub, dev)
    summary = tel.get("summary", {}) if tel else {}
    contact = summary.get("contact_s")
    contact_s = contact if isinstance(contact, int) and contact > 0 else DEFAULT_CONTACT_S
    seen = dev.last_seen
    if seen is None or now - seen > contact_s * 1500:
        out.append(_alert(
            "not-seen", CRITICAL, name,
            "never synced" if seen is None else
            f"not seen for {_ago(now - seen)} (expected within {_ago(contact_s * 1000)})",
            "check the kiosk's power and its link (modem, cable, Wi-Fi) on site; "
            "with no link, carry its data by stick (haven-kiosk relay export)", seen))
    if tel is None:
        return out
    at = tel["end"]
    storage = tel.get("storage")
    if storage in ("low", "critical"):
        free = tel.get("diskFreeMiB")
        out.append(_alert(
            "low-disk", CRITICAL if storage == "critical" else WARNING, name,
            f"disk space {storage}" + (f": {free:g} MiB free" if free is not None else "")
            + (" (check-ins are refused)" if storage == "critical" else ""),
            "replace its SD card with a larger one, or pull a debug bundle "
            "(haven tech bundle) to see what fills it", at))
    memory = tel.get("memory")
    if memory in ("soft", "hard"):
        rss = tel.get("rssMiB")
        out.append(_alert(
            "low-memory", CRITICAL if memory == "hard" else WARNING, name,
            f"memory {memory}" + (f": runtime at {rss:g} MiB" if rss is not None else ""),
            "restart the kiosk; if it comes back, pull a debug bundle (haven tech bundle) "
            "for the developers", at))
    devices = tel.get("devices", {})
    printer = devices.get("printer")
    if isinstance(printer, str) and printer in PRINTER_ACTIONS:
        out.append(_alert("printer", WARNING, name, f"ticket printer {printer}",
                          PRINTER_ACTIONS[printer], at))
    if devices.get("thermal") == "failing":
        out.append(_alert("sensor", WARNING, name, "the CPU temperature sensor does not read",
                          "pull a debug bundle (haven tech bundle); the board may need "
                          "replacing", at))
    temp = tel.get("tempMaxC")
    if isinstance(temp, (int, float)) and temp >= HOT_C:
        out.append(_alert("sensor", WARNING, name, f"CPU at {temp:g} °C",
                          "shade the kiosk and clear its vents; it slows down when hot", at))
    return out


def alerts(hub: Hub, now_ms: int | None = None,
           views: Iterable[RecordView] | None = None) -> list[dict[str, Any]]:
    """Every alert, most severe first, then by kiosk (``views``: the state, if the caller
    read it already)."""
    from host.hub import audit

    now = wall_ms() if now_ms is None else now_ms
    devices = [d for d in hub.store.devices() if d.state == "approved"]
    out: list[dict[str, Any]] = []
    for dev in devices:
        out += kiosk_alerts(hub, dev, now)
        out += fridge_alerts(hub, dev)
        if dev.suspected_clone:
            out.append(_alert(
                "suspected-clone", CRITICAL, dev.device_id,
                "two kiosks run with this identity: their batches are held",
                f"find the copy (haven hub held lists what it sent); once settled, "
                f"haven hub clear-clone {dev.device_id}"))
    quarantined: dict[str | None, list[dict[str, Any]]] = {}
    for q in hub.store.quarantined():
        quarantined.setdefault(q["device"], []).append(q)
    for device, rows in sorted(quarantined.items(), key=lambda kv: str(kv[0])):
        codes = sorted({str(r["code"]) for r in rows})
        out.append(_alert(
            "quarantine", WARNING, device, f"{len(rows)} deltas quarantined ({', '.join(codes)})",
            "read why (haven hub quarantine list), then release or drop each",
            min(int(r["at"]) for r in rows)))
    for k in audit.report(hub.store):
        trouble = audit.problems(k)
        if trouble and any(d.device_id == k["device"] for d in devices):
            out.append(_alert(
                "audit-gap", CRITICAL, k["device"], "audit chain: " + "; ".join(trouble),
                f"haven hub audit {k['device']}; entries still missing after the kiosk "
                "synced mean its card was restored or tampered with: call a technician"))
    waiting = []
    for view in hub.conflicted() if views is None else views:
        for c in view.conflicts:
            if c.severity == "info":
                continue
            newest = max(wall_of(v.dot.stamp) for v in c.versions)
            if now - newest > CONFLICT_WAIT_MS:
                waiting.append(newest)
    if waiting:
        out.append(_alert(
            "conflict-waiting", WARNING, None,
            f"{len(waiting)} conflicts waiting for review for over a day "
            f"(oldest {_ago(now - min(waiting))})",
            "review them: haven review list, then haven review resolve", min(waiting)))
    order = {CRITICAL: 0, WARNING: 1}
    return sorted(out, key=lambda a: (order[a["severity"]], str(a["kiosk"]), a["kind"]))


def _stamp(ms: int) -> str:
    """A time a kiosk reported, as UTC; one no calendar holds (a kiosk's absurd clock)
    said as it came."""
    try:
        return time.strftime("%Y-%m-%d %H:%M", time.gmtime(ms / 1000)) + "Z"
    except (OverflowError, OSError, ValueError):
        return f"{ms} ms since 1970 (not a date)"


def lines(found: list[dict[str, Any]]) -> list[str]:
    """The alerts as text, two lines each: what, then what to do."""
    out = []
    for a in found:
        since = "" if a["since_ms"] is None else "  since " + _stamp(a["since_ms"])
        who = f"kiosk {a['kiosk']}: " if a["kiosk"] else ""
        out.append(f"{a['severity'].upper()} {a['kind']}  {who}{a['what']}{since}")
        out.append(f"  do: {a['action']}")
    return out
