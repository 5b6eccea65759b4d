"""Claims a patient typed at a kiosk, made the patient's record only where none exists.

Theory of operation
-------------------
A kiosk never writes what a patient typed onto a patient named by a passport:
it keeps it on the check-in (``claimName``, ``claimBirthDate``) with its own
verdict (``identity``; SPEC.md "Identity at the kiosk"). The hub holds every
delta the fleet has sent, so it is the one place that can tell whether a
patient's record exists. ``promote`` looks at each check-in whose verdict is
``unknown`` (the kiosk held no record) or ``confirmed`` by staff:

* the patient has neither a name nor a birth date at the hub: the claim is
  written onto the patient (only the fields the claim has), and the check-in
  is marked ``promoted``;
* the record exists and agrees: the check-in is marked ``match``;
* it exists and disagrees: the check-in is marked ``mismatch``, and stays on
  the staff screens' list of identities to confirm. The record is untouched.

Each is an ordinary delta by the hub's node and clock, pulled by every kiosk,
kept in the hub's log of writes (``haven hub dump`` shows the fields, the
write log their writer). A record written on a kiosk that has not synced yet
is unknown here: a promotion made meanwhile is a concurrent write to it, which
the merge keeps as a conflict for review rather than losing either.

A kiosk provisioned offline checks patients in before its first sync brings
the fleet key: their check-ins carry a provisional subject and the passport
or code sealed to the hub (``sealedIdentity``; SPEC.md "Identity before the
fleet key"). ``complete`` opens each, derives the real patient id with the
fleet key, and writes the check-in's subject and clears the sealed field (an
ordinary write by the hub's node, as above), with an empty write to the
patient where the hub holds none, as an enrolled kiosk makes. The check-in's
verdict is ``unknown`` (the kiosk could not compare), so ``plan``, run after
it in the same pass, settles it against the real record; ``plan`` leaves a
check-in whose identity is still sealed (one that did not open) alone.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from protocol.crdt import schema
from protocol.crdt.clock import HLC
from protocol.crdt.delta import Delta
from protocol.crdt.record import RecordView
from protocol.crdt.writes import build_put
from protocol.errors import ProtocolError
from protocol.sync.sealed_identity import open_identity

if TYPE_CHECKING:
    from host.hub.fleet_rotation import FleetKeys

CHECKIN, PATIENT = schema.CHECKIN, schema.PATIENT
_C = {f.name: f.number for f in CHECKIN.fields}
SUBJECT = _C["subject"]
SEALED = _C["sealedIdentity"]
_P = {f.name: f.number for f in PATIENT.fields}
#: Verdicts the hub settles: the kiosk held no record, or staff confirmed the claim.
PROMOTABLE = ("unknown", "confirmed")


def _agrees(fields: Mapping[int, Any], claim: dict[str, Any]) -> bool:
    for key, value in claim.items():
        held = fields.get(_P[key])
        if not isinstance(held, str):
            return False
        if key == "birthDate" and held[:4] != value[:4]:
            return False
        if key == "name" and " ".join(held.casefold().split()) != " ".join(
                value.casefold().split()):
            return False
    return True


def plan(views: list[RecordView], node: int, hlc: HLC, now_ms: int,
         ) -> tuple[list[Delta], list[dict[str, Any]]]:
    """The writes that settle every promotable claim in ``views``, and what each did."""
    by_id = {v.record_id: v for v in views}
    deltas: list[Delta] = []
    done: list[dict[str, Any]] = []
    promoted: dict[bytes, dict[int, Any]] = {}  # patients promoted in this pass: fields
    for view in sorted(views, key=lambda v: v.record_id):  # check-in ids are time-ordered
        identity = view.fields.get(_C["identity"])
        if view.type != CHECKIN.number or view.deleted or identity not in PROMOTABLE:
            continue
        if isinstance(view.fields.get(SEALED), str):
            continue  # its subject is provisional until ``complete`` opens its identity
        subject = view.fields.get(_C["subject"])
        if not isinstance(subject, bytes) or len(subject) != 16:
            continue
        claim = {k: v for k, v in (("name", view.fields.get(_C["claimName"])),
                                   ("birthDate", view.fields.get(_C["claimBirthDate"])))
                 if isinstance(v, str) and v}
        patient = by_id.get(subject)
        fields = promoted.get(subject, patient.fields if patient is not None else {})
        empty = not any(isinstance(fields.get(_P[k]), str) for k in ("name", "birthDate"))
        if empty and claim and not (patient is not None and patient.deleted):
            deltas.append(build_put(patient, subject, PATIENT, node, hlc.now(now_ms), claim))
            promoted[subject] = {_P[k]: v for k, v in claim.items()}
            verdict = "promoted"
        elif identity == "confirmed":
            continue  # staff confirmed it against a record that exists: nothing to add
        else:
            verdict = "match" if claim and _agrees(fields, claim) else "mismatch"
        deltas.append(build_put(view, view.record_id, CHECKIN, node, hlc.now(now_ms),
                                {"identity": verdict}))
        done.append({"checkin": str(uuid.UUID(bytes=view.record_id)),
                     "patient": str(uuid.UUID(bytes=subject)), "identity": verdict})
    return deltas, done


def complete(views: list[RecordView], hub_x: X25519PrivateKey, fleet: FleetKeys,
             held: Callable[[bytes], RecordView | None], node: int, hlc: HLC, now_ms: int,
             registered: Callable[[bytes], bytes] | None = None,
             ) -> tuple[list[Delta], list[dict[str, Any]]]:
    """The writes that give every check-in in ``views`` with a sealed identity its real
    subject (``held``: the hub's view of a record, or None), and what each did. One
    that does not open (not sealed to this hub, or for another check-in) is left as
    it is, and reported. ``fleet``: the hub's fleet keys (the id is the newest
    generation's). ``registered``: the id a patient is registered under from the first
    generation's id their passport or code gives (carried to the newest; an erased
    patient's successor, ``erasure.registered_id``)."""
    if registered is None:
        registered = functools.partial(fleet.forward, generation=1)
    deltas: list[Delta] = []
    done: list[dict[str, Any]] = []
    made: set[bytes] = set()
    for view in sorted(views, key=lambda v: v.record_id):
        sealed = view.fields.get(SEALED)
        if view.type != CHECKIN.number or view.deleted or not isinstance(sealed, str):
            continue
        checkin = str(uuid.UUID(bytes=view.record_id))
        try:
            kind, value = open_identity(sealed, view.record_id, hub_x)
            first = fleet.first_id(kind, value)
        except ProtocolError as exc:
            done.append({"checkin": checkin, "error": str(exc)})
            continue
        pid = registered(first)
        if pid not in made and held(pid) is None:
            deltas.append(build_put(None, pid, PATIENT, node, hlc.now(now_ms), {}))
            made.add(pid)
        subject = str(uuid.UUID(bytes=pid))
        deltas.append(build_put(view, view.record_id, CHECKIN, node, hlc.now(now_ms),
                                {"subject": subject, "sealedIdentity": None}))
        done.append({"checkin": checkin, "patient": subject, "completed": kind})
    return deltas, done
