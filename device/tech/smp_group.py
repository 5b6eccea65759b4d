"""The Haven SMP group (64): the technician's credential and signed time.

Theory of operation
-------------------
SPEC.md "Technicians". SMP has no authentication, so a technician's tool
takes a console port in two requests, both open:

- ``CHALLENGE`` (read): the kiosk answers a fresh nonce and the port's token
  (random, per port), its id and site, and which time it trusts;
- ``AUTH`` (write): ``cert`` (the hub-signed certificate), ``sig`` (the
  technician's Ed25519 signature over ``credential.auth_message(nonce, kiosk
  id, token)``) and, optionally, ``revocations`` (the list the tool
  carries). Accepted, the port's access becomes a ``TechnicianAccess`` until
  the port idles or closes. Each nonce answers once.

A kiosk with no trusted time asks the tool for the hub's: ``TIME_NONCE``
(read) gives a nonce, which the tool has the hub sign with its time (``haven
hub technician time``, or the hub online), and ``TIME`` (write) brings the
statement back within ``TIME_NONCE_S``. A statement over any other nonce (an
old one) is refused. ``REVOCATIONS`` (write) hands the kiosk the tool's
revocation list; the kiosk keeps it if it is the hub's and newer.

Refusals use SMP's own codes, with a reason (``rsn``) the tool shows:
``EINVAL`` for a malformed request, ``ENOENT`` for no challenge outstanding,
``EBADSTATE`` when the kiosk needs the service button held (no trusted
time), ``EACCESSDENIED`` for a credential, proof or statement refused.
Handlers find the kiosk's ``Technicians`` as ``call.env.technicians()``.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from device.console.groups import (
    EACCESSDENIED,
    EBADSTATE,
    EINVAL,
    ENOENT,
    HAVEN,
    Call,
    SmpError,
    register,
)
from device.tech.access import Refused, TechnicianAccess, Technicians
from protocol.errors import ProtocolError

CHALLENGE, AUTH, TIME_NONCE, TIME, REVOCATIONS = 0, 1, 2, 3, 4
NONCE_BYTES = 32
#: How long a challenge answers (its tool signs it at once).
CHALLENGE_S = 120.0
#: How long a time nonce answers: the tool may have to reach the hub over a poor link.
TIME_NONCE_S = 900.0
STATE_KEY = "haven-tech"


@dataclass
class PortChallenges:
    """One port's outstanding nonces, each with when it was given (monotonic s)."""

    token: bytes = field(default_factory=lambda: secrets.token_bytes(16))
    #: ``AUTH`` or ``TIME`` -> (nonce, when given)
    nonces: dict[int, tuple[bytes, float]] = field(default_factory=dict)
    clock: Callable[[], float] = time.monotonic

    def give(self, command: int) -> bytes:
        nonce = secrets.token_bytes(NONCE_BYTES)
        self.nonces[command] = (nonce, self.clock())
        return nonce

    def take(self, command: int, within: float) -> bytes:
        """The nonce outstanding for ``command``, used up; ``SmpError(ENOENT)`` if none."""
        held = self.nonces.pop(command, None)
        if held is None or self.clock() - held[1] > within:
            raise SmpError(ENOENT, "no challenge outstanding on this port; ask again")
        return held[0]

    def close(self) -> None:
        self.nonces.clear()


def _challenges(call: Call) -> PortChallenges:
    state = call.port.state.get(STATE_KEY)
    if not isinstance(state, PortChallenges):
        state = call.port.state[STATE_KEY] = PortChallenges()
    return state


def _technicians(call: Call) -> Technicians:
    tech = call.env.technicians()
    if not isinstance(tech, Technicians):
        raise SmpError(EBADSTATE, "this kiosk is not enrolled: no technician credential "
                       "can be checked")
    return tech


def _bytes(body: Mapping[str, Any], key: str, *, optional: bool = False) -> bytes | None:
    value = body.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, bytes | bytearray):
        raise SmpError(EINVAL, f"{key}: bytes expected")
    return bytes(value)


def _refused(exc: Refused) -> SmpError:
    rc = EBADSTATE if exc.code == "presence-needed" else EACCESSDENIED
    return SmpError(rc, f"{exc.code}: {exc}"[:200])


@register(HAVEN, CHALLENGE, op="read", open_=True)
def challenge(call: Call) -> Mapping[str, Any]:
    tech = _technicians(call)
    state = _challenges(call)
    nonce = state.give(AUTH)
    now = tech.clock.now()
    return {"nonce": nonce, "token": state.token, "device": tech.device_id,
            "site": tech.site, "time": "none" if now is None else now.describe(),
            "revocations": tech.revocations.number}


@register(HAVEN, AUTH, op="write", open_=True)
def auth(call: Call) -> Mapping[str, Any]:
    tech = _technicians(call)
    cert, sig = _bytes(call.body, "cert"), _bytes(call.body, "sig")
    revocations = _bytes(call.body, "revocations", optional=True)
    assert cert is not None and sig is not None
    state = _challenges(call)
    nonce = state.take(AUTH, CHALLENGE_S)
    try:
        accepted = tech.authenticate(cert, sig, nonce, state.token, revocations)
    except Refused as exc:
        raise _refused(exc) from None
    call.port.access = TechnicianAccess(tech, accepted)
    return {"serial": accepted.tech.serial, "name": accepted.tech.name,
            "expires": accepted.tech.expires, "time": accepted.how}


@register(HAVEN, TIME_NONCE, op="read", open_=True)
def time_nonce(call: Call) -> Mapping[str, Any]:
    _technicians(call)
    return {"nonce": _challenges(call).give(TIME)}


@register(HAVEN, TIME, op="write", open_=True)
def signed_time(call: Call) -> Mapping[str, Any]:
    tech = _technicians(call)
    statement = _bytes(call.body, "time")
    assert statement is not None
    nonce = _challenges(call).take(TIME, TIME_NONCE_S)
    try:
        hub_ms = tech.note_signed_time(statement, nonce)
    except Refused as exc:
        raise _refused(exc) from None
    return {"time": hub_ms}


@register(HAVEN, REVOCATIONS, op="write", open_=True)
def revocations(call: Call) -> Mapping[str, Any]:
    tech = _technicians(call)
    doc = _bytes(call.body, "list")
    assert doc is not None
    try:
        kept = tech.revocations.offer(doc)
    except ProtocolError as exc:  # not the hub's list, or malformed
        raise SmpError(EACCESSDENIED, f"revocation list refused: {exc}"[:200]) from None
    return {"number": tech.revocations.number, "kept": kept}
