"""FHIR R4 export of the hub's current records, as Bulk Data NDJSON.

Theory of operation
-------------------
``haven hub export --fhir DIR [--since CURSOR]`` reads the current records
(``current``), never the log of deltas, and writes one NDJSON file per
resource type, a resource a line, and ``manifest.json`` in the shape of the
Bulk Data export manifest (``transactionTime``, ``request``, ``output``:
type, url, count; ``deleted``; ``extension.cursor``). Record types map to
resources as their schema says (``protocol.crdt.schema``: field names follow
FHIR already):

* patient -> Patient. ``identifier`` carries the fleet's patient id (the
  record id) under the deployment's system URI (``--patient-system``, by
  default ``urn:haven:<hub id>:patient``). Passport numbers are never stored,
  so never exported. Allergies and conditions, sets of words, go in
  extensions (they are not coded);
* checkin -> Encounter (class ambulatory; the queue number an identifier; the
  kiosk's identity verdict an extension; what the patient typed, and the
  identity sealed to the hub, stay on the hub);
* prescription -> MedicationRequest (intent ``order``);
* lab_result -> Observation;
* appointment -> Appointment (the patient its one participant);
* device (a fridge's sensor node) -> Device: its name, model, location,
  and its key's fingerprint an identifier (``urn:haven:<hub id>:sensor-key``);
* temperature -> Observation whose subject (and device) is the Device. A
  fridge-hour's record: ``effectiveDateTime`` the hour's start and
  ``valueSampledData`` its 60 minute slots (origin 0 °C, UCUM ``Cel``; factor
  0.01; period 60,000 ms; dimensions 1; ``E`` for a slot without a
  temperature), with extensions ``sampled-slots`` (one character a slot:
  ``1`` a reading received, ``0`` none) and ``sampled-faults`` (the slots'
  fault codes, ``<slot>=<code>``). A single reading's record: the value in
  °C (UCUM ``Cel``), or a sensor fault as ``dataAbsentReason`` ``error`` with
  the node's code as its text; no time when the node's clock was not set;
* temperature_alarm -> Observation of the Device over the excursion
  (``effectivePeriod``: its start, and its end once cleared), the furthest
  value, ``interpretation`` H or L (none for a sensor alarm), and whether it
  was raised or cleared in an extension (``alarm-state``);
* document -> DocumentReference: content held whole and at most
  ``INLINE_MAX`` bytes is an attachment (base64 data, size, SHA-1 hash, as R4
  defines ``Attachment.hash``); larger, or not held whole, a reference: the url
  of the hub's document (``--document-url`` + the record id; by default
  ``haven://<hub tag>/documents/<id>``: R4 wants a URL, and the hub serves no
  documents over HTTP), with its size and our SHA-256 in an
  extension.

Other types (notes, audit entries, verifiers, erasures, telemetry) are not
exported. A code field whose R4 element takes only the codes of a value set
(gender, each status) gets the value held when it is one of them; else the
element's "unknown" (or is left out where it has none and is optional), and the
value held goes in an extension (``recorded-<element>``).

Conflicts. A record is exported once, with its current value (the merge's).
Every conflict it holds goes in an extension (``CONFLICT``: id, class,
severity, field, and each version in conflict as its canonical JSON). A
record a conflict *holds* (a prescription changed apart, a type clash) is
marked unconfirmed: ``meta.tag`` ``UNCONFIRMED``, and where the resource has
a status that says so, that status (MedicationRequest ``on-hold``,
Observation ``preliminary``, Appointment ``pending``, DocumentReference
``docStatus`` ``preliminary``); the status the record holds is then kept in
the conflict extension (``recordedStatus``).

Deleted records are not resources: an incremental export lists those deleted
since the cursor in ``deleted.ndjson``, one Bundle of DELETE entries (Bulk
Data's convention for deleted resources), named in the manifest's ``deleted``.

The cursor is ``<hub>.<arrival number>``: the greatest arrival number of the
records read, in the one statement that read them, so the next export with
``--since`` gets every record changed after it and none before (a record
changed again is exported again, once, as it is then). It names the hub
(the first 16 hex digits of its id), so another hub's cursor is refused.

Nothing is half-written: the files go to a hidden folder beside DIR, which is
renamed to DIR at the end (DIR absent, or an empty folder).
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from host.errors import UsageError
from protocol.crdt.record import HOLD, Conflict, RecordView, version_json
from protocol.crdt.schema import (
    APPOINTMENT,
    CHECKIN,
    DEVICE,
    DOCUMENT,
    LAB_RESULT,
    PATIENT,
    PRESCRIPTION,
    TEMPERATURE,
    TEMPERATURE_ALARM,
    TypeSpec,
)
from protocol.sync import sensor_records

if TYPE_CHECKING:
    from host.hub.hub import Hub

INLINE_MAX = 64 * 1024  #: bytes: a document up to this is exported inline
EXT = "urn:haven:fhir:"  #: our extensions' URLs begin so
CONFLICT = EXT + "conflict"
UNCONFIRMED = {"system": EXT + "review", "code": "unconfirmed",
               "display": "held for review: versions in conflict"}
#: Each exported record type: its resource, and the status a held record is given
#: (element, code; None: the resource has none that says unconfirmed).
RESOURCES: dict[int, tuple[str, tuple[str, str] | None]] = {
    PATIENT.number: ("Patient", None),
    CHECKIN.number: ("Encounter", None),
    PRESCRIPTION.number: ("MedicationRequest", ("status", "on-hold")),
    LAB_RESULT.number: ("Observation", ("status", "preliminary")),
    APPOINTMENT.number: ("Appointment", ("status", "pending")),
    DOCUMENT.number: ("DocumentReference", ("docStatus", "preliminary")),
    DEVICE.number: ("Device", None),
    TEMPERATURE.number: ("Observation", ("status", "preliminary")),
    TEMPERATURE_ALARM.number: ("Observation", ("status", "preliminary")),
}
#: The codes R4 binds (required) for the elements mapped from a record's code fields,
#: and the code given when the record holds none, or one outside them (then the value
#: held goes in ``EXT + "recorded-" + element``: nothing is dropped silently).
CODES: dict[tuple[str, str], tuple[frozenset[str], str | None]] = {
    ("Patient", "gender"): (frozenset({"male", "female", "other", "unknown"}), None),
    ("Encounter", "status"): (frozenset({
        "planned", "arrived", "triaged", "in-progress", "onleave", "finished", "cancelled",
        "entered-in-error", "unknown"}), "unknown"),
    ("MedicationRequest", "status"): (frozenset({
        "active", "on-hold", "cancelled", "completed", "entered-in-error", "stopped", "draft",
        "unknown"}), "unknown"),
    ("Observation", "status"): (frozenset({
        "registered", "preliminary", "final", "amended", "corrected", "cancelled",
        "entered-in-error", "unknown"}), "unknown"),
    ("Appointment", "status"): (frozenset({
        "proposed", "pending", "booked", "arrived", "fulfilled", "cancelled", "noshow",
        "entered-in-error", "checked-in", "waitlist"}), "proposed"),
    ("DocumentReference", "status"): (frozenset({
        "current", "superseded", "entered-in-error"}), "current"),
    ("Device", "status"): (frozenset({
        "active", "inactive", "entered-in-error", "unknown"}), "unknown"),
}


def _code(out: dict[str, Any], element: str, value: Any) -> None:
    """``out[element]`` from a record's code (``CODES``)."""
    allowed, fallback = CODES[out["resourceType"], element]
    text = _text(value)
    if text in allowed:
        out[element] = text
        return
    if fallback is not None:
        out[element] = fallback
    if text is not None:
        _extend(out, [{"url": f"{EXT}recorded-{element}", "valueString": text}])


@dataclass
class Deployment:
    """What the export needs beyond the records: URIs and the document reader."""

    hub_id: str
    patient_system: str
    document_url: str
    document: Callable[[bytes], bytes | None]  #: content held whole, or None
    inline_max: int = INLINE_MAX

    @property
    def tag(self) -> str:
        return self.hub_id[:16]


def deployment_of(hub: Hub, patient_system: str | None = None,
                  document_url: str | None = None) -> Deployment:
    from host.hub.document_inbox import DOCUMENTS_DIR
    from host.hub.hub import HUB_ID
    from host.hub.sealed_documents import SealedChunks

    hub_id = str(hub.store.get_meta(HUB_ID))
    chunks = SealedChunks(hub.data / DOCUMENTS_DIR, hub.store.sealer)
    return Deployment(hub_id, patient_system or f"urn:haven:{hub_id}:patient",
                      document_url or f"haven://{hub_id[:16]}/documents/", chunks.read)


# Cursors ---------------------------------------------------------------------------


def parse_cursor(text: str, deployment: Deployment, head: int) -> int:
    """The arrival number of a cursor this hub gave; ``UsageError`` for anything else."""
    tag, dot, number = text.strip().partition(".")
    if not dot or not number.isdigit() or len(number) > 20 or not tag:
        raise UsageError(f"--since takes a cursor an earlier export gave (its manifest's "
                         f"extension.cursor, like {deployment.tag}.123), not {text!r}")
    if tag != deployment.tag:
        raise UsageError(f"cursor {text!r} is another hub's (this hub's cursors begin "
                         f"{deployment.tag}.)")
    if int(number) > head:
        raise UsageError(f"cursor {text!r} is past everything this hub holds (arrival "
                         f"{head}): from a hub restored from an older backup? Export without "
                         "--since")
    return int(number)


# Resources -------------------------------------------------------------------------


def uuid_text(rid: bytes) -> str:
    """``str(uuid.UUID(bytes=rid))``, without making the UUID (the export's hot path)."""
    h = rid.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _ref(value: Any) -> dict[str, str] | None:
    return ({"reference": "Patient/" + uuid_text(value)}
            if isinstance(value, bytes) and len(value) == 16 else None)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def _put(out: dict[str, Any], key: str, value: Any) -> None:
    if value is not None and value != [] and value != {}:
        out[key] = value


def _extend(out: dict[str, Any], extensions: list[dict[str, Any]] | None) -> None:
    if extensions:
        out.setdefault("extension", []).extend(extensions)


def _patient(view: RecordView, dep: Deployment, rid: str) -> dict[str, Any]:
    f = view.fields
    out: dict[str, Any] = {"resourceType": "Patient", "id": rid, "identifier": [
        {"system": dep.patient_system, "value": rid}]}
    if (other := _text(f.get(7))) is not None:
        out["identifier"].append({"type": {"text": "identifier recorded at the kiosk"},
                                  "value": other})
    _put(out, "name", [{"text": name}] if (name := _text(f.get(1))) else None)
    _put(out, "telecom", [{"system": "other", "value": t}] if (t := _text(f.get(4))) else None)
    _code(out, "gender", f.get(3))
    _put(out, "birthDate", _text(f.get(2)))
    _put(out, "address", [{"text": a}] if (a := _text(f.get(5))) else None)
    _put(out, "communication", [{"language": {"coding": [
        {"system": "urn:ietf:bcp:47", "code": c}]}}] if (c := _text(f.get(6))) else None)
    _extend(out, [{"url": EXT + name, "valueString": e}
                            for number, name in ((8, "allergy"), (9, "condition"))
                            for e in sorted(view.sets.get(number, ()))])
    return out


def _encounter(view: RecordView, dep: Deployment, rid: str) -> dict[str, Any]:
    f = view.fields
    out: dict[str, Any] = {
        "resourceType": "Encounter", "id": rid, "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                  "code": "AMB", "display": "ambulatory"}}
    _code(out, "status", f.get(2))
    _put(out, "identifier", [{"system": f"urn:haven:{dep.hub_id}:queue", "value": q}]
         if (q := _text(f.get(6))) else None)
    _put(out, "subject", _ref(f.get(1)))
    _put(out, "period", {"start": s} if (s := _text(f.get(4))) else None)
    _put(out, "reasonCode", [{"text": r}] if (r := _text(f.get(3))) else None)
    _put(out, "location", [{"location": {"display": loc}}] if (loc := _text(f.get(5))) else None)
    _extend(out, [{"url": EXT + "identity", "valueCode": i}]
         if (i := _text(f.get(9))) else None)
    return out


def _medication_request(view: RecordView, dep: Deployment, rid: str) -> dict[str, Any]:
    f = view.fields
    out: dict[str, Any] = {
        "resourceType": "MedicationRequest", "id": rid, "intent": "order",
        "medicationCodeableConcept": {"text": _text(f.get(3)) or "not recorded"}}
    _code(out, "status", f.get(2))
    _put(out, "subject", _ref(f.get(1)) or {"display": "not recorded"})
    _put(out, "authoredOn", _text(f.get(6)))
    _put(out, "requester", {"display": r} if (r := _text(f.get(7))) else None)
    _put(out, "note", [{"text": n}] if (n := _text(f.get(8))) else None)
    _put(out, "dosageInstruction", [{"text": d}] if (d := _text(f.get(4))) else None)
    q = f.get(5)
    _put(out, "dispenseRequest", {"quantity": {"value": q}}
         if isinstance(q, int | float) and not isinstance(q, bool) else None)
    return out


def _observation(view: RecordView, dep: Deployment, rid: str) -> dict[str, Any]:
    f = view.fields
    out: dict[str, Any] = {"resourceType": "Observation", "id": rid,
                           "code": {"text": _text(f.get(3)) or "not recorded"}}
    _code(out, "status", f.get(2))
    _put(out, "subject", _ref(f.get(1)))
    _put(out, "effectiveDateTime", _text(f.get(6)))
    value = f.get(4)
    if isinstance(value, int | float) and not isinstance(value, bool):
        quantity: dict[str, Any] = {"value": value}
        if (unit := _text(f.get(5))) is not None:
            quantity["unit"] = unit
            if not any(c.isspace() for c in unit):  # a UCUM code has no spaces
                quantity.update(system="http://unitsofmeasure.org", code=unit)
        out["valueQuantity"] = quantity
    _put(out, "interpretation", [{"coding": [{
        "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
        "code": i}]}] if (i := _text(f.get(7))) else None)
    _put(out, "note", [{"text": n}] if (n := _text(f.get(8))) else None)
    return out


def _device(view: RecordView, dep: Deployment, rid: str) -> dict[str, Any]:
    f = view.fields
    out: dict[str, Any] = {"resourceType": "Device", "id": rid,
                           "type": {"text": "vaccine fridge temperature node"}}
    _put(out, "identifier", [{"system": f"urn:haven:{dep.hub_id}:sensor-key", "value": k}]
         if (k := _text(f.get(3))) else None)
    _code(out, "status", f.get(5))
    _put(out, "deviceName", [{"name": n, "type": "user-friendly-name"}]
         if (n := _text(f.get(1))) else None)
    _put(out, "modelNumber", _text(f.get(2)))
    _put(out, "location", {"display": loc} if (loc := _text(f.get(4))) else None)
    return out


def _device_ref(value: Any) -> dict[str, str] | None:
    return ({"reference": "Device/" + uuid_text(value)}
            if isinstance(value, bytes) and len(value) == 16 else None)


def _celsius(centi: Any) -> dict[str, Any] | None:
    if type(centi) is not int:
        return None
    return {"value": centi / 100, "unit": "°C", "system": "http://unitsofmeasure.org",
            "code": "Cel"}


def _of_device(view: RecordView, rid: str, code: str) -> dict[str, Any]:
    out: dict[str, Any] = {"resourceType": "Observation", "id": rid, "code": {"text": code}}
    out["status"] = "final"
    _put(out, "subject", _device_ref(view.fields.get(1)))
    _put(out, "device", _device_ref(view.fields.get(1)))
    return out


def _absent(text: str) -> dict[str, Any]:
    return {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/data-absent-reason",
                        "code": "error"}], "text": text}


def _temperature(view: RecordView, dep: Deployment, rid: str) -> dict[str, Any]:
    f = view.fields
    out = _of_device(view, rid, "vaccine fridge temperature")
    _put(out, "effectiveDateTime", _text(f.get(2)))
    if (sampled := _sampled(f)) is not None:
        out.update(sampled)
    elif (quantity := _celsius(f.get(3))) is not None:
        out["valueQuantity"] = quantity
    else:
        out["dataAbsentReason"] = _absent(_text(f.get(4)) or "no value recorded")
    return out


def _sampled(f: dict[int, Any]) -> dict[str, Any] | None:
    """A fridge-hour's ``valueSampledData`` and its slots' extensions (None: not an hour's
    record, or one whose fields do not fit together)."""
    try:
        slots = sensor_records.hour_slots(f.get(7), f.get(8), f.get(9))
    except ValueError:
        return None
    period = f.get(6)
    if type(period) is not int or period <= 0:
        period = sensor_records.PERIOD_S
    origin = {"value": 0, "unit": "°C", "system": "http://unitsofmeasure.org", "code": "Cel"}
    out: dict[str, Any] = {"valueSampledData": {
        "origin": origin, "period": period * 1000, "factor": 0.01, "dimensions": 1,
        "data": f[7]}}
    received = "".join("1" if n in slots else "0" for n in range(sensor_records.SLOTS))
    faults = _text(f.get(9))  # as hour_slots read it
    _extend(out, [{"url": EXT + "sampled-slots", "valueString": received}]
            + ([{"url": EXT + "sampled-faults", "valueString": faults}] if faults else []))
    return out


#: An alarm's kind as R4's ObservationInterpretation code (a sensor alarm has none).
INTERPRETATION = {"high": ("H", "High"), "low": ("L", "Low")}


def _temperature_alarm(view: RecordView, dep: Deployment, rid: str) -> dict[str, Any]:
    f = view.fields
    kind, state = _text(f.get(2)), _text(f.get(3))
    out = _of_device(view, rid, f"vaccine fridge temperature alarm: {kind or 'unknown'}")
    period: dict[str, Any] = {}
    start = _text(f.get(4))
    _put(period, "start", start)
    minutes = f.get(5)
    if state == "cleared" and start is not None and type(minutes) is int:
        with contextlib.suppress(ValueError, OverflowError):  # another writer's junk
            begun = datetime.datetime.fromisoformat(start)
            end = begun + datetime.timedelta(minutes=minutes)
            period["end"] = end.isoformat().replace("+00:00", "Z")
    _put(out, "effectivePeriod", period)
    _put(out, "issued", _text(f.get(8)))
    if (quantity := _celsius(f.get(6))) is not None:
        out["valueQuantity"] = quantity
    else:
        out["dataAbsentReason"] = _absent("no temperature: the sensor failed")
    if kind in INTERPRETATION:
        code, display = INTERPRETATION[kind]
        out["interpretation"] = [{"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
            "code": code, "display": display}]}]
    _extend(out, [{"url": EXT + "alarm-state", "valueCode": state}] if state else None)
    return out


def _appointment(view: RecordView, dep: Deployment, rid: str) -> dict[str, Any]:
    f = view.fields
    participant: dict[str, Any] = {"status": "accepted"}
    _put(participant, "actor", _ref(f.get(1)))
    out: dict[str, Any] = {"resourceType": "Appointment", "id": rid,
                           "participant": [participant]}
    _code(out, "status", f.get(2))
    _put(out, "serviceType", [{"text": s}] if (s := _text(f.get(5))) else None)
    _put(out, "description", _text(f.get(6)))
    _put(out, "start", _text(f.get(3)))
    _put(out, "end", _text(f.get(4)))
    minutes = f.get(7)
    _put(out, "minutesDuration", minutes if type(minutes) is int and minutes > 0 else None)
    return out


def _document_reference(view: RecordView, dep: Deployment, rid: str) -> dict[str, Any]:
    f = view.fields
    attachment: dict[str, Any] = {}
    _put(attachment, "contentType", _text(f.get(4)))
    size = f.get(5)
    content = (dep.document(view.record_id)
               if type(size) is int and 0 <= size <= dep.inline_max else None)
    if content is not None:
        attachment.update(data=base64.b64encode(content).decode(), size=len(content),
                          hash=base64.b64encode(hashlib.sha1(content).digest()).decode())
    else:
        attachment["url"] = dep.document_url + rid
        _put(attachment, "size", size if type(size) is int and size >= 0 else None)
    _put(attachment, "title", _text(f.get(3)))
    _put(attachment, "creation", _text(f.get(7)))
    out: dict[str, Any] = {"resourceType": "DocumentReference", "id": rid,
                           "content": [{"attachment": attachment}]}
    _code(out, "status", f.get(2))
    _put(out, "subject", _ref(f.get(1)))
    _extend(out, [{"url": EXT + "sha256", "valueString": h}]
         if (h := _text(f.get(6))) else None)
    return out


MAPPERS: dict[int, Callable[[RecordView, Deployment, str], dict[str, Any]]] = {
    PATIENT.number: _patient, CHECKIN.number: _encounter,
    PRESCRIPTION.number: _medication_request, LAB_RESULT.number: _observation,
    APPOINTMENT.number: _appointment, DOCUMENT.number: _document_reference,
    DEVICE.number: _device, TEMPERATURE.number: _temperature,
    TEMPERATURE_ALARM.number: _temperature_alarm,
}


def _conflict_extension(c: Conflict, spec: TypeSpec | None,
                        recorded_status: str | None) -> dict[str, Any]:
    parts: list[dict[str, Any]] = [{"url": "id", "valueString": c.id},
                                   {"url": "class", "valueCode": c.cls},
                                   {"url": "severity", "valueCode": c.severity}]
    if c.field is not None:
        name = spec.by_number[c.field].name if spec and c.field in spec.by_number else (
            f"#{c.field}")
        parts.append({"url": "field", "valueString": name})
    if recorded_status is not None:
        parts.append({"url": "recordedStatus", "valueString": recorded_status})
    parts += [{"url": "version", "valueString": json.dumps(
        version_json(v), sort_keys=True, separators=(",", ":"))} for v in c.versions]
    return {"url": CONFLICT, "extension": parts}


def resource(view: RecordView, dep: Deployment) -> dict[str, Any] | None:
    """The record as an R4 resource (None: a type not exported, or deleted)."""
    mapper = MAPPERS.get(view.type)
    if mapper is None or view.deleted:
        return None
    out = mapper(view, dep, uuid_text(view.record_id))
    if view.conflicts:
        name, held_status = RESOURCES[view.type]
        recorded = None
        if view.held:
            out["meta"] = {"tag": [UNCONFIRMED]}
            if held_status is not None:
                element, code = held_status
                recorded = out.get(element)
                out[element] = code
        spec = TYPES_OF[view.type]
        out.setdefault("extension", []).extend(
            _conflict_extension(c, spec, recorded if c.severity == HOLD else None)
            for c in view.conflicts)
    return out


TYPES_OF: dict[int, TypeSpec] = {t.number: t for t in (
    PATIENT, CHECKIN, PRESCRIPTION, LAB_RESULT, APPOINTMENT, DOCUMENT, DEVICE, TEMPERATURE,
    TEMPERATURE_ALARM)}


# The export ------------------------------------------------------------------------


@dataclass
class Written:
    counts: dict[str, int]
    deleted: list[str]
    cursor: int


def write_records(rows: Iterable[tuple[RecordView, int]], dep: Deployment, out: Path,
                  since: int | None) -> Written:
    """Each record of ``rows`` as a line of its resource type's file in ``out``; the
    deleted ones' references (with ``since``); the greatest arrival number read."""
    files: dict[str, Any] = {}
    counts: dict[str, int] = {}
    deleted: list[str] = []
    cursor = since or 0
    dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"),
                             allow_nan=False).encode
    with contextlib.ExitStack() as stack:
        for view, hseq in rows:
            cursor = max(cursor, hseq)
            item = RESOURCES.get(view.type)
            if item is None:
                continue
            if view.deleted:
                if since is not None:
                    deleted.append(f"{item[0]}/{uuid_text(view.record_id)}")
                continue
            res = resource(view, dep)
            assert res is not None
            name = item[0]
            handle = files.get(name)
            if handle is None:
                handle = files[name] = stack.enter_context(
                    open(out / f"{name}.ndjson", "w", encoding="utf-8"))
            handle.write(dumps(res) + "\n")
            counts[name] = counts.get(name, 0) + 1
    return Written(counts, deleted, cursor)


def _deleted_bundle(refs: list[str]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "DELETE", "url": ref}} for ref in refs]}


def export(hub: Hub, target: Path, since: str | None = None,
           patient_system: str | None = None, document_url: str | None = None,
           now_ms: int | None = None) -> dict[str, Any]:
    """Write the export into ``target`` (absent or an empty folder); its manifest."""
    dep = deployment_of(hub, patient_system, document_url)
    after = None if since is None else parse_cursor(since, dep, hub.store.head())
    target = Path(target)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise UsageError(f"{target} is not an empty folder: give a new folder for the export "
                         "(it is written whole, or not at all)")
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise UsageError(f"{parent} is not a folder: the export's folder goes in one")
    try:
        work = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=parent))
    except OSError as exc:
        raise UsageError(f"cannot write in {parent}: {exc.strerror}") from None
    try:
        where, args = ("r.hseq > ?", (after,)) if after is not None else ("", ())
        written = write_records(hub.store.iter_current(where, args), dep, work, after)
        moment = datetime.datetime.fromtimestamp(
            (now_ms if now_ms is not None else int(datetime.datetime.now().timestamp() * 1000))
            / 1000, datetime.UTC)
        manifest: dict[str, Any] = {
            "transactionTime": moment.isoformat(timespec="milliseconds").replace(
                "+00:00", "Z"),
            "request": f"urn:haven:{dep.hub_id}:$export"
                       + ("" if since is None else f"?_since={since}"),
            "requiresAccessToken": False,
            "output": [{"type": name, "url": f"{name}.ndjson", "count": count}
                       for name, count in sorted(written.counts.items())],
            "deleted": [], "error": [],
            "extension": {"cursor": f"{dep.tag}.{written.cursor}",
                          "since": since, "patientSystem": dep.patient_system}}
        if written.deleted:
            (work / "deleted.ndjson").write_text(json.dumps(
                _deleted_bundle(written.deleted), separators=(",", ":")) + "\n")
            manifest["deleted"] = [{"type": "Bundle", "url": "deleted.ndjson",
                                    "count": len(written.deleted)}]
        (work / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
        os.replace(work, target)  # an empty folder there is replaced (rename(2))
    except OSError as exc:
        shutil.rmtree(work, ignore_errors=True)
        raise UsageError(f"cannot write the export to {target}: {exc.strerror}") from None
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return manifest
