"""Record types, their fields, lanes and merge policies.

Theory of operation
-------------------
Every record has a type; every type has a number (what travels), a name, a
schema version, an upload lane and a table of fields. A field has a number
(what travels, below 24 so it costs one CBOR byte), a name (FHIR R4's where
FHIR has one), a value kind and a merge policy:

* ``lww``: a last-writer-wins register, ordered by the write's dot
  ``(stamp, node)``;
* ``add-wins``: an observed-remove set of strings in which an add that a
  remove had not seen survives it (allergies, conditions).

Lanes (ARCHITECTURE.md "Priority lanes"): 0 prescription; 1 lab_result;
2 checkin and appointment; 3 note and document metadata; 4 document content;
5 telemetry. Lane 0 also carries what must overtake everything: a patient's
erasure, and a vaccine fridge's temperature alarm (small, rare, and urgent: a
cold chain broken for hours spoils the vaccines). A fridge's readings and its
device record go in lane 5, with the kiosk's own telemetry. A patient travels
in the lane of whatever needs it first, so its own lane (2, the check-in's) is
only the default.

``held`` types are never merged automatically: concurrent edits put the
record on hold until a resolution. ``clinical`` types flag a concurrent
update to a deleted record for review.

Numbers a newer schema added are unknown here; the merge keeps them and
passes them on (``field_name`` spells them ``#N``, ``type_name`` ``#T``).
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from protocol import MICROPYTHON
from protocol.errors import LocalProtocolError, ProtocolError, RemoteProtocolError

if TYPE_CHECKING:
    from collections.abc import Mapping

LWW = "lww"
ADD_WINS = "add-wins"

LANE_PRESCRIPTION = 0
LANE_LAB_RESULT = 1
LANE_CHECKIN = 2
LANE_NOTE = 3
LANE_TELEMETRY = 5
LANES = {
    0: "prescription",
    1: "lab_result",
    2: "checkin/appointment",
    3: "note/document metadata",
    4: "document content",
    5: "telemetry",
}

# ASCII digits, no counted repetition, and the whole text (``_whole``): MicroPython's re
# has no {m,n} (it silently never matches) and its \d is ASCII only.
_D2 = "[0-9][0-9]"
_DATE = re.compile(f"^{_D2}{_D2}(-{_D2}(-{_D2})?)?$")
_DATETIME = re.compile(f"^{_D2}{_D2}-{_D2}-{_D2}T{_D2}:{_D2}(:{_D2}"
                       f"(\\.[0-9][0-9]?[0-9]?[0-9]?[0-9]?[0-9]?)?)?(Z|[+-]{_D2}:{_D2})$")
MAX_TEXT = 4096


class FieldValueError(LocalProtocolError):
    """A value does not fit its field (raised for local values; received ones are
    reported as ``RemoteProtocolError`` with the same code)."""

    code = "field-value"


@dataclass(frozen=True)
class FieldSpec:
    __match_args__ = ("number", "name", "kind", "policy")
    number: int
    name: str
    kind: str = "string"
    policy: str = LWW

    def to_wire(self, value: Any) -> Any:
        """Check a caller's value and return what travels (``None`` clears a register)."""
        if self.policy == ADD_WINS:
            raise LocalProtocolError(f"{self.name} is a set: add or remove elements")
        if value is None:
            return None
        return _to_wire(self.kind, value, self.name)

    def from_wire(self, value: Any) -> Any:
        if self.kind == "ref" and isinstance(value, bytes) and len(value) == 16:
            return str(uuid.UUID(bytes=value))
        return value

    def check_wire(self, value: Any, error: type[ProtocolError] = RemoteProtocolError) -> None:
        """Refuse a received value that does not fit (element for sets)."""
        try:
            if self.policy == ADD_WINS:
                _element(value, self.name)
            elif value is not None:
                wire = _to_wire(self.kind, self.from_wire(value), self.name)
                if wire != value or type(wire) is not type(value):
                    raise FieldValueError(f"{self.name}: not in wire form")
        except ProtocolError as exc:
            raise error(str(exc), "field-value") from None

    def parse(self, text: str) -> Any:
        """A value from command-line text."""
        if self.kind in ("integer",):
            return _number(text, int, self.name)
        if self.kind == "decimal":
            return _number(text, float, self.name) if "." in text or "e" in text.lower() else (
                _number(text, int, self.name))
        if self.kind == "boolean":
            if text.lower() in ("true", "yes", "1"):
                return True
            if text.lower() in ("false", "no", "0"):
                return False
            raise FieldValueError(f"{self.name}: expected true or false, got {text!r}")
        return text


def _number(text: str, kind: type[int] | type[float], name: str) -> int | float:
    try:
        return kind(text)
    except ValueError:
        raise FieldValueError(f"{name}: expected a number, got {text!r}") from None


def _element(value: Any, name: str) -> str:
    if type(value) is not str or not 0 < len(value) <= MAX_TEXT:
        raise FieldValueError(f"{name}: set elements are non-empty strings")
    return value


def _whole(pattern: re.Pattern[str], text: str) -> bool:
    """``pattern`` matches all of ``text`` (its ``$`` would let a final newline by)."""
    found = pattern.match(text)
    return found is not None and found.group(0) == text


def _to_wire(kind: str, value: Any, name: str) -> Any:
    if kind in ("string", "code"):
        if type(value) is not str or len(value) > MAX_TEXT:
            raise FieldValueError(f"{name}: expected text of at most {MAX_TEXT} characters")
        return value
    if kind == "integer":
        if type(value) is not int or not -(2**63) <= value < 2**64:
            raise FieldValueError(f"{name}: expected an integer")
        return value
    if kind == "decimal":
        if type(value) not in (int, float) or value != value or value in (
            float("inf"), float("-inf")):
            raise FieldValueError(f"{name}: expected a finite number")
        return value
    if kind == "boolean":
        if type(value) is not bool:
            raise FieldValueError(f"{name}: expected true or false")
        return value
    if kind in ("date", "datetime"):
        pattern = _DATE if kind == "date" else _DATETIME
        if type(value) is not str or not _whole(pattern, value):
            # the value is not echoed: a quarantined delta's reason is kept in the clear
            raise FieldValueError(f"{name}: expected an ISO 8601 {kind}")
        return value
    if kind == "ref":
        try:
            return uuid.UUID(str(value)).bytes
        except ValueError:
            raise FieldValueError(f"{name}: expected a record id (UUID)") from None
    raise LocalProtocolError(f"unknown field kind {kind}")


@dataclass(frozen=True)
class TypeSpec:
    __match_args__ = ("number", "name", "version", "lane", "fields", "held", "clinical", "fhir")
    number: int
    name: str
    version: int
    lane: int
    fields: tuple[FieldSpec, ...]
    held: bool = False
    clinical: bool = True
    fhir: str = ""
    if TYPE_CHECKING or not MICROPYTHON:  # MicroPython's dataclass: __post_init__ sets them
        by_name: Mapping[str, FieldSpec] = field(init=False, repr=False, compare=False)
        by_number: Mapping[int, FieldSpec] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_name", {f.name: f for f in self.fields})
        object.__setattr__(self, "by_number", {f.number: f for f in self.fields})
        if len(self.by_name) != len(self.fields) or len(self.by_number) != len(self.fields):
            raise LocalProtocolError(f"{self.name}: duplicate field")
        if any(not 0 <= f.number < 24 for f in self.fields):
            raise LocalProtocolError(f"{self.name}: field numbers are 0-23")

    def field(self, name: str) -> FieldSpec:
        spec = self.by_name.get(name)
        if spec is None:
            raise LocalProtocolError(f"{self.name} has no field {name!r}", "unknown-field")
        return spec

    def describe(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "version": self.version,
            "lane": self.lane,
            "fhir": self.fhir,
            "held_on_conflict": self.held,
            "clinical": self.clinical,
            "fields": {
                f.name: {"number": f.number, "kind": f.kind, "policy": f.policy}
                for f in self.fields
            },
        }


def _f(number: int, name: str, kind: str = "string", policy: str = LWW) -> FieldSpec:
    return FieldSpec(number, name, kind, policy)


SUBJECT = _f(1, "subject", "ref")
PATIENT = TypeSpec(1, "patient", 1, LANE_CHECKIN, (
    _f(1, "name"), _f(2, "birthDate", "date"), _f(3, "gender", "code"),
    _f(4, "telecom"), _f(5, "address"), _f(6, "communication", "code"),
    _f(7, "identifier"),
    _f(8, "allergies", policy=ADD_WINS), _f(9, "conditions", policy=ADD_WINS),
), fhir="Patient")
CHECKIN = TypeSpec(2, "checkin", 1, LANE_CHECKIN, (
    SUBJECT, _f(2, "status", "code"), _f(3, "reasonCode"), _f(4, "periodStart", "datetime"),
    _f(5, "location"), _f(6, "queueNumber"),
    # What the patient typed (a claim, never written onto the patient), and how it
    # compared with the record the kiosk held ("Identity at the kiosk" in SPEC.md).
    _f(7, "claimName"), _f(8, "claimBirthDate", "date"), _f(9, "identity", "code"),
    # A kiosk without its fleet key yet: the passport or code, sealed to the hub, which
    # writes the real subject and clears it (SPEC.md "Identity before the fleet key").
    _f(10, "sealedIdentity"),
), clinical=False, fhir="Encounter")
PRESCRIPTION = TypeSpec(3, "prescription", 1, LANE_PRESCRIPTION, (
    SUBJECT, _f(2, "status", "code"), _f(3, "medication"), _f(4, "dosageInstruction"),
    _f(5, "quantity", "decimal"), _f(6, "authoredOn", "datetime"), _f(7, "requester"),
    _f(8, "note"),
), held=True, fhir="MedicationRequest")
LAB_RESULT = TypeSpec(4, "lab_result", 1, LANE_LAB_RESULT, (
    SUBJECT, _f(2, "status", "code"), _f(3, "code"), _f(4, "value", "decimal"),
    _f(5, "unit", "code"), _f(6, "effectiveDateTime", "datetime"),
    _f(7, "interpretation", "code"), _f(8, "note"),
), fhir="Observation")
APPOINTMENT = TypeSpec(5, "appointment", 1, LANE_CHECKIN, (
    SUBJECT, _f(2, "status", "code"), _f(3, "start", "datetime"), _f(4, "end", "datetime"),
    _f(5, "serviceType"), _f(6, "description"), _f(7, "minutesDuration", "integer"),
), clinical=False, fhir="Appointment")
NOTE = TypeSpec(6, "note", 1, LANE_NOTE, (
    SUBJECT, _f(2, "text"), _f(3, "authorString"), _f(4, "time", "datetime"),
), fhir="Annotation")
DOCUMENT = TypeSpec(7, "document", 1, LANE_NOTE, (
    SUBJECT, _f(2, "status", "code"), _f(3, "title"), _f(4, "contentType", "code"),
    _f(5, "size", "integer"), _f(6, "hash"), _f(7, "creation", "datetime"),
), fhir="DocumentReference")
#: A technician's action, as the kiosk wrote it in its audit chain (SPEC.md "Audit"):
#: one put per entry, on a record named by (kiosk, sequence), never written again.
#: ``detail`` is JSON text; ``prev`` and ``signature`` are hex.
AUDIT = TypeSpec(8, "audit", 1, LANE_NOTE, (
    _f(1, "sequence", "integer"), _f(2, "recorded", "integer"), _f(3, "agent"),
    _f(4, "action", "code"), _f(5, "outcome", "code"), _f(6, "detail"), _f(7, "prev"),
    _f(8, "signature"),
), clinical=False, fhir="AuditEvent")

#: What a door kiosk holds of a returning patient (SPEC.md "Scopes and garbage
#: collection"): on a record named by (site, patient) (``ids.verifier_record_id``), a keyed
#: hash of the year of birth (``ids.year_verifier``: 32 hex digits), never the year or a
#: name. Only the hub writes it.
VERIFIER = TypeSpec(9, "verifier", 1, LANE_CHECKIN, (
    SUBJECT, _f(2, "birthYear"), _f(3, "site"),
), clinical=False, fhir="Basic")

#: A patient's erasure (``protocol.crdt.erasure``): written by the hub only, on a record
#: named by the patient (``erasure.erasure_record_id``), in every kiosk's scope and never
#: collected. Every replica that holds it purges the patient's values and husks later
#: writes of the patient's records. It says who asked and when, never what was erased.
ERASURE = TypeSpec(10, "erasure", 1, LANE_PRESCRIPTION, (
    SUBJECT, _f(2, "recorded", "datetime"), _f(3, "requester"), _f(4, "reason", "code"),
), clinical=False, fhir="AuditEvent")

#: A kiosk's aggregates of one period (SPEC.md "Telemetry"): written by the kiosk only, on
#: a record named by (kiosk, period) (``protocol.sync.telemetry``), never written again and
#: in no kiosk's scope (as audit entries). Counts and levels, never a patient's value:
#: ``summary`` is JSON text (sync, usage), ``devices`` JSON text of device states.
TELEMETRY = TypeSpec(11, "telemetry", 1, LANE_TELEMETRY, (
    _f(1, "start", "integer"), _f(2, "end", "integer"), _f(3, "storage", "code"),
    _f(4, "diskFreeMiB", "decimal"), _f(5, "memory", "code"), _f(6, "rssMiB", "decimal"),
    _f(7, "tempMaxC", "decimal"), _f(8, "devices"), _f(9, "summary"),
), clinical=False, fhir="Observation")

#: Sensor nodes' types are numbered from 20 (12 stays a number no schema knows: the test
#: vectors' "newer type").
#: A sensor node a kiosk serves (SPEC.md "Sensor nodes"): a vaccine fridge's temperature
#: node, written by its kiosk at enrolment, on a record named by (kiosk, slot)
#: (``protocol.sync.sensor_records``). ``identifier`` is the node's key fingerprint.
#: As telemetry, hub-only: in no kiosk's scope.
DEVICE = TypeSpec(20, "device", 1, LANE_TELEMETRY, (
    _f(1, "deviceName"), _f(2, "modelNumber"), _f(3, "identifier"), _f(4, "location"),
    _f(5, "status", "code"),
), clinical=False, fhir="Device")
#: A fridge's readings of one clock hour, on a record named by (device, the hour's index,
#: Unix time // 3600) (``protocol.sync.sensor_records``): FHIR's Observation with
#: ``valueSampledData``, rewritten whole as the hour's readings come. ``device`` is the
#: device record (FHIR's ``subject``; not named ``subject``: no patient's erasure or fleet
#: key rotation is about it); ``effectiveDateTime`` the hour's start; ``period`` the
#: slots' length in seconds (60); ``data`` the 60 minute slots in SampledData's data
#: syntax, hundredths of a degree Celsius (origin 0 °C, factor 0.01) or ``E`` for a slot
#: without a temperature; ``received`` a bitmap of the slots that hold a reading (bit n:
#: slot n), so a slot not received is told from a fault; ``faults`` the fault codes of
#: the slots that hold one (``protocol.sensor.FAULTS``), ``"<slot>=<code>"``
#: space-separated. A reading that fits no slot (its time unknown, its minute taken, its
#: hour no longer held whole) is a record of its own, named by (device, the node's
#: sequence number): ``effectiveDateTime`` its time, absent when the node's clock was not
#: set; ``valueCenti`` hundredths of a degree Celsius, or ``dataAbsentReason`` a fault
#: code; ``sequence``. So a reading sent twice is in one place. Telemetry's lane, behind
#: all that is clinical.
TEMPERATURE = TypeSpec(21, "temperature", 1, LANE_TELEMETRY, (
    _f(1, "device", "ref"), _f(2, "effectiveDateTime", "datetime"),
    _f(3, "valueCenti", "integer"),
    _f(4, "dataAbsentReason", "code"), _f(5, "sequence", "integer"),
    _f(6, "period", "integer"), _f(7, "data"), _f(8, "received", "integer"),
    _f(9, "faults"),
), clinical=False, fhir="Observation")
#: A fridge's alarm raised or cleared (``protocol.sensor`` ``alarm``), on a record named by
#: (device, the node's alarm number). ``interpretation`` is ``high``, ``low`` or
#: ``sensor``; ``state`` ``raised`` or ``cleared``. Lane 0, the most urgent, with
#: prescriptions and erasures: vaccines spoil within hours of an excursion, and an
#: alarm is one small record per edge, so it overtakes a backlog of readings and
#: everything clinical but costs a prescription no more than one frame's wait.
TEMPERATURE_ALARM = TypeSpec(22, "temperature_alarm", 1, LANE_PRESCRIPTION, (
    _f(1, "device", "ref"), _f(2, "interpretation", "code"), _f(3, "state", "code"),
    _f(4, "effectiveStart", "datetime"), _f(5, "minutes", "integer"),
    _f(6, "extremeCenti", "integer"), _f(7, "sequence", "integer"),
    _f(8, "issued", "datetime"),
), clinical=False, fhir="Observation")

#: A check-in's ``identity``: the kiosk's verdict on the claim (``match``: the record it
#: holds agrees; ``mismatch``: it disagrees; ``unknown``: the kiosk holds no record;
#: ``new``: a patient without documents, registered here), then staff's (``confirmed``,
#: ``attached`` to another patient, ``corrected``) and the hub's (``promoted``: the claim
#: became the record, none existing).
IDENTITY_KIOSK = ("match", "mismatch", "unknown", "new")
IDENTITY_SETTLED = ("confirmed", "attached", "corrected", "promoted")
#: Verdicts staff are asked to confirm at the desk.
IDENTITY_TO_CONFIRM = ("mismatch", "unknown")

#: A check-in's ``status``, FHIR R4 Encounter.status codes: ``arrived`` (checked in,
#: waiting), ``in-progress`` (called to the desk), ``finished`` (seen), ``cancelled``
#: (a no-show). Staff move it on from the queue (SPEC.md "The queue at the desk").
CHECKIN_STATUSES = ("arrived", "in-progress", "finished", "cancelled")
#: Done with: out of the waiting queue until staff undo it (back to ``arrived``).
CHECKIN_DONE = ("finished", "cancelled")


def checkin_status_allowed(held: Any, new: str) -> bool:
    """Whether staff may set a check-in's status from ``held`` to ``new``: one still
    waiting (``arrived``, ``in-progress``, or a code some other writer used) may be
    called (again too), seen or marked a no-show; one done with only goes back to
    ``arrived``, an undo."""
    if new not in CHECKIN_STATUSES:
        return False
    return (new == "arrived") == (held in CHECKIN_DONE)

TYPES: dict[int, TypeSpec] = {t.number: t for t in (
    PATIENT, CHECKIN, PRESCRIPTION, LAB_RESULT, APPOINTMENT, NOTE, DOCUMENT, AUDIT,
    VERIFIER, ERASURE, TELEMETRY, DEVICE, TEMPERATURE, TEMPERATURE_ALARM)}
TYPES_BY_NAME: dict[str, TypeSpec] = {t.name: t for t in TYPES.values()}


def type_by_name(name: str) -> TypeSpec:
    spec = TYPES_BY_NAME.get(name)
    if spec is None:
        known = ", ".join(sorted(TYPES_BY_NAME))
        raise LocalProtocolError(f"unknown record type {name!r} (known: {known})", "unknown-type")
    return spec


def type_name(number: int) -> str:
    spec = TYPES.get(number)
    return spec.name if spec else f"#{number}"


def field_name(type_number: int, number: int) -> str:
    spec = TYPES.get(type_number)
    fspec = spec.by_number.get(number) if spec else None
    return fspec.name if fspec else f"#{number}"


def describe() -> dict[str, Any]:
    """Every type, for ``haven-kiosk schema --json``."""
    return {t.name: t.describe() for t in TYPES.values()}


def parse_assignments(
    spec: TypeSpec, items: list[str]
) -> tuple[dict[str, Any], dict[str, list[str]], dict[str, list[str]]]:
    """``FIELD=VALUE`` assigns, ``FIELD+=ELEM`` adds to a set, ``FIELD-=ELEM`` removes.

    An empty value (``FIELD=``) clears a register. Returns (values, add, remove).
    """
    values: dict[str, Any] = {}
    add: dict[str, list[str]] = {}
    remove: dict[str, list[str]] = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not name:
            raise LocalProtocolError(f"expected FIELD=VALUE, got {item!r}", "bad-assignment")
        op = name[-1] if name[-1] in "+-" else ""
        fspec = spec.field(name[:-1] if op else name)
        if op:
            if fspec.policy != ADD_WINS:
                raise LocalProtocolError(f"{fspec.name} is not a set; use {fspec.name}=VALUE",
                                         "field-policy")
            (add if op == "+" else remove).setdefault(fspec.name, []).append(text)
        elif fspec.policy == ADD_WINS:
            raise LocalProtocolError(
                f"{fspec.name} is a set; use {fspec.name}+=ELEMENT or {fspec.name}-=ELEMENT",
                "field-policy")
        else:
            values[fspec.name] = None if text == "" else fspec.parse(text)
    return values, add, remove

