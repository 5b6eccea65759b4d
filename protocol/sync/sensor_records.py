"""The records a kiosk writes for its sensor nodes: their ids and their values (SPEC.md
"Sensor nodes").

Theory of operation
-------------------
A kiosk enrols each fridge node in a slot of its own (0-255) and writes a
``device`` record for it; a fridge-hour's readings become one ``temperature``
record (a FHIR Observation with ``valueSampledData``) and each alarm message a
``temperature_alarm`` record (``protocol.crdt.schema``). Their ids are made,
not drawn: ``ID_PREFIX``, the kind (device, hour, single reading, alarm), the
kiosk's node (u32), the slot (u8) and a number (u32): the hour's index (Unix
time // 3600) for an hour, the node's sequence number for a single reading or
an alarm, 0 for the device record. So a reading the node sends again (its
acknowledgement was lost) lands where it already is, and one kiosk's fridge
records are one range of ids.

An hour's record holds the minute slots of one clock hour (``SLOTS``, each
``PERIOD_S`` long; a reading's slot is its time's minute): ``data`` the 60
slots in SampledData's data syntax (hundredths of °C, space-separated; ``E``
for a slot without a temperature), ``received`` a bitmap of the slots that
hold a reading (bit n: slot n), so a slot not received is told from a
fault, and ``faults`` the fault codes of the slots that hold one
(``"<slot>=<code>"``, space-separated). ``hour_slots`` reads those fields
back into ``{slot: hundredths or fault code}``, ``hour_values`` writes them.
A reading that cannot go in a slot is a single-reading record of its own
(``reading_id``, by sequence number), as every reading was before: its time
unknown (the node's clock not set), or its slot taken (two readings in one
minute: the node's clock was stepped), or its hour no longer held whole
(``device.fridges.records``).

As telemetry's, these records are the hub's alone: the hub never sends one
to a kiosk and leaves them out of every scope checksum, by the id's first
six bytes (``is_sensor_id``), and the kiosk drops each once the hub
acknowledged it. Sequence numbers past 32 bits (some 8,000 years of a
reading a minute) are refused.

``action_lines`` says what a technician's fridge action did, in the words
``haven-kiosk fridge`` and ``haven tech fridge`` both print.

Everything here is pure.
"""

from __future__ import annotations

import datetime
import hashlib
import uuid
from typing import Any

ID_PREFIX = b"hAvSns"
DEVICE_KIND, READING_KIND, ALARM_KIND, HOUR_KIND = 0, 1, 2, 3
MAX_SLOT = 255
MAX_SEQ = (1 << 32) - 1
HOUR_S = 3600
PERIOD_S = 60  #: a minute slot
SLOTS = HOUR_S // PERIOD_S
#: SampledData's value for a slot without a temperature (a fault, or nothing received)
NO_VALUE = "E"


def device_id(node: int, slot: int) -> bytes:
    """The device record of the node in ``slot`` of kiosk ``node``."""
    if not (0 <= node < 1 << 32 and 0 <= slot <= MAX_SLOT):
        raise ValueError("a sensor device id is a 32-bit kiosk node and an 8-bit slot")
    return ID_PREFIX + bytes((DEVICE_KIND,)) + node.to_bytes(4, "big") + bytes((slot,)) + (
        b"\x00" * 4)


def _entry_id(device: bytes, kind: int, seq: int) -> bytes:
    if not is_sensor_id(device) or device[6] != DEVICE_KIND:
        raise ValueError("not a sensor device record id")
    if not 0 <= seq <= MAX_SEQ:
        raise ValueError(f"a sensor sequence number is 0 to {MAX_SEQ}, not {seq}")
    return ID_PREFIX + bytes((kind,)) + device[7:12] + seq.to_bytes(4, "big")


def reading_id(device: bytes, seq: int) -> bytes:
    """The record of reading ``seq`` of the node whose device record is ``device``."""
    return _entry_id(device, READING_KIND, seq)


def hour_id(device: bytes, hour: int) -> bytes:
    """The record of that node's readings in hour ``hour`` (Unix time // 3600)."""
    return _entry_id(device, HOUR_KIND, hour)


def hour_slot(time: int) -> tuple[int, int]:
    """The hour's index and the minute slot of a reading taken at ``time``."""
    return time // HOUR_S, time % HOUR_S // PERIOD_S


def alarm_id(device: bytes, seq: int) -> bytes:
    """The record of alarm message ``seq`` of that node."""
    return _entry_id(device, ALARM_KIND, seq)


def kiosk_range(kind: int, node: int) -> tuple[bytes, bytes]:
    """The first and last id of kiosk ``node``'s records of ``kind`` (every slot)."""
    head = ID_PREFIX + bytes((kind,)) + node.to_bytes(4, "big")
    return head + b"\x00" * 5, head + b"\xff" * 5


def slot_of(rid: bytes) -> int:
    return rid[11]


def is_sensor_id(rid: bytes) -> bool:
    return rid[:6] == ID_PREFIX


def fingerprint(public_key: bytes) -> str:
    """A node's key fingerprint: the first 16 bytes of SHA-256 of its X25519 public key,
    hex, in groups of four for reading aloud."""
    digest = hashlib.sha256(public_key).hexdigest()[:32]
    return "-".join(digest[i:i + 4] for i in range(0, 32, 4))


def iso_time(seconds: int | float | None) -> str | None:
    """Unix seconds as an R4 dateTime in UTC (None stays None)."""
    if seconds is None:
        return None
    moment = datetime.datetime.fromtimestamp(int(seconds), datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _set(values: dict[str, Any]) -> dict[str, Any]:
    """The values that are there (an absent one is not written, not cleared)."""
    return {name: value for name, value in values.items() if value is not None}


def device_values(name: str, model: str, key: bytes, location: str,
                  status: str = "active") -> dict[str, Any]:
    return _set({"deviceName": name, "modelNumber": model or None,
                 "identifier": fingerprint(key), "location": location or None,
                 "status": status})


def reading_values(device: bytes, seq: int, time: int | None, value: int | str
                   ) -> dict[str, Any]:
    """A single-reading ``temperature`` record's values from one checked reading
    (``protocol.sensor.check_reading``)."""
    number = type(value) is int
    return _set({"device": str(uuid.UUID(bytes=device)), "sequence": seq,
                 "effectiveDateTime": iso_time(time), "valueCenti": value if number else None,
                 "dataAbsentReason": None if number else value})


def hour_values(device: bytes, hour: int, slots: dict[int, int | str]) -> dict[str, Any]:
    """An hour's ``temperature`` record's values from its slots (``{slot: hundredths of
    °C or a fault code}``)."""
    data = " ".join(str(slots[n]) if type(slots.get(n)) is int else NO_VALUE
                    for n in range(SLOTS))
    faults = " ".join(f"{n}={v}" for n, v in sorted(slots.items()) if type(v) is str)
    return _set({"device": str(uuid.UUID(bytes=device)),
                 "effectiveDateTime": iso_time(hour * HOUR_S), "period": PERIOD_S,
                 "data": data, "received": sum(1 << n for n in slots),
                 "faults": faults or None})


def hour_slots(data: Any, received: Any, faults: Any) -> dict[int, int | str]:
    """The slots an hour's record holds, from its ``data``, ``received`` and ``faults``
    fields; ``ValueError`` if they do not fit together."""
    values = str(data).split(" ")
    if len(values) != SLOTS or type(received) is not int or not 0 <= received < 1 << SLOTS:
        raise ValueError("not an hour's temperature record")
    codes = dict(item.split("=", 1) for item in str(faults or "").split())
    slots: dict[int, int | str] = {}
    for n in range(SLOTS):
        if received >> n & 1:
            slots[n] = int(values[n]) if values[n] != NO_VALUE else codes.get(str(n), NO_VALUE)
    return slots


def alarm_values(device: bytes, alarm: Any, received: float) -> dict[str, Any]:
    """A ``temperature_alarm`` record's values from one checked ``alarm`` message."""
    return _set({"device": str(uuid.UUID(bytes=device)), "sequence": alarm.get("seq"),
                 "interpretation": alarm.get("kind"), "state": alarm.get("state"),
                 "effectiveStart": iso_time(alarm.get("since")),
                 "minutes": alarm.get("minutes"), "extremeCenti": alarm.get("extreme"),
                 "issued": iso_time(received)})


def action_lines(op: str, r: dict[str, Any]) -> list[str]:
    """A technician's fridge action's result (``device.fridges.actions.act``, at the kiosk
    or through ``haven tech fridge``) as the lines the technician reads."""
    if op == "list":
        return [f"{f['slot']:3}  {f['name']}  {f['fingerprint']}  {f['stored']} readings"
                + (f"  ALARM: {', '.join(f['alarms'])}" if f["alarms"] else "")
                for f in r["fridges"]] or ["no fridge enrolled"]
    if op == "remove":
        return [f"fridge {r['removed']!r} removed: its node is refused from now on"]
    return [f"fridge {r['name']!r} enrolled (slot {r['slot']}), node key {r['fingerprint']}",
            "On the node's console, type:",
            *([f"  key {r['node_key']}"] if "node_key" in r else []),
            f"  kiosk {r['kiosk']}", f"  name {r['name']}"]
