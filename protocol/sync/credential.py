"""Technician credentials, hub-signed time and revocation lists (SPEC.md, "Technicians").

Theory of operation
-------------------
Everything here is ``[body, signature]`` as a kiosk's certificate is
(``certificate.py``): ``body`` the deterministic CBOR of a map with integer
keys, ``signature`` an Ed25519 signature over a label and those raw body
bytes (never a re-encoding). Each document has its own label, so one kind
can never be passed off as another.

- A **technician certificate** is signed by the hub's Ed25519 key. It names
  the technician, a serial, the scope (sites and kiosk ids, at least one of
  them, and the allowed actions), a validity window of at most
  ``MAX_VALIDITY_MS`` (7 days: clinics can be days from the hub) and the
  technician's own Ed25519 public key. ``issue`` refuses a longer window and
  ``read_technician`` refuses one too.
- ``check`` holds a certificate against a kiosk (its site and id), a time and
  a revocation list. The time is the kiosk's trusted time, never its wall
  clock; when that time is only a lower bound (the kiosk rebooted since it
  last learnt the hub's time) a not-yet-valid window cannot be judged and is
  not refused: only expiry is.
- The technician proves the key by signing ``auth_message``: the kiosk's
  nonce, the kiosk's id and the port's binding, so a signature is good once,
  on one kiosk, on one port.
- A **time statement** is the hub's time signed over a nonce the kiosk chose:
  an old statement names another nonce and is refused.
- A **revocation list** is hub-signed: a number that grows with every list
  the hub makes (its clock plays no part in which list is newer), when it was
  made, and the revoked serials.
- A **credential file** (``haven hub technician issue --out``) holds the
  technician's private key, the certificate and the revocation list of the
  day, for the technician's tool.

Nothing here reads a clock or a file. Every decoder refuses with a
``CredentialError`` whose ``code`` says why.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from protocol import strict_cbor
from protocol.crypto import Ed25519PrivateKey, Ed25519PublicKey, InvalidSignature
from protocol.errors import LocalProtocolError, RemoteProtocolError

if TYPE_CHECKING:
    from collections.abc import Iterable

TECH_LABEL = b"haven/technician-certificate/v1\x00"
TIME_LABEL = b"haven/hub-time/v1\x00"
REVOCATIONS_LABEL = b"haven/technician-revocations/v1\x00"
AUTH_LABEL = b"haven/technician-auth/v1\x00"
HOUR_MS = 3600 * 1000
MAX_VALIDITY_MS = 7 * 24 * HOUR_MS
#: What a technician may be allowed to do. ``read``: every read the console
#: serves beyond the open ones (logs, files, status); ``configure``: config and
#: credential uploads, the clock; ``restart``; ``provision``; ``wipe``.
ACTIONS = ("read", "configure", "restart", "provision", "wipe")
MAX_DOC = 4096
MAX_REVOCATIONS_DOC = 64 * 1024
MAX_NAME, MAX_SCOPE = 64, 64  #: characters of a name or site; entries of a scope list
NONCE_MIN, NONCE_MAX = 16, 64


class CredentialError(RemoteProtocolError):
    """A credential, time statement or revocation list we refuse."""

    code = "bad-credential"


# Shared shapes -----------------------------------------------------------------------

def sign_document(key: Ed25519PrivateKey, label: bytes, fields: dict[int, Any]) -> bytes:
    """``[body, signature]``: ``body`` the deterministic CBOR of ``fields``, signed with
    ``label`` (the hub's documents here and ``scope.sign_stable_point``)."""
    body = strict_cbor.dumps(fields)
    return strict_cbor.dumps([body, key.sign(label + body)])


def open_document(doc: bytes, label: bytes, hub_ed25519: bytes, what: str,
                  max_size: int = MAX_DOC) -> dict[int, Any]:
    """The body's map of a signed document, once its signature is checked."""
    if not isinstance(doc, (bytes, bytearray)):
        raise CredentialError(f"{what} is not bytes", "bad-shape")
    if len(doc) > max_size:
        raise CredentialError(f"{what} is {len(doc)} bytes, more than {max_size}", "too-large")
    try:
        obj = strict_cbor.loads(bytes(doc), max_size=max_size)
    except RemoteProtocolError as exc:
        raise CredentialError(f"{what}: {exc}", "bad-shape") from None
    if not (isinstance(obj, list) and len(obj) == 2 and all(type(x) is bytes for x in obj)):
        raise CredentialError(f"{what} is not [body, signature]", "bad-shape")
    body, sig = obj
    try:
        Ed25519PublicKey.from_public_bytes(hub_ed25519).verify(sig, label + body)
    except (InvalidSignature, ValueError):
        raise CredentialError(f"{what}: bad signature (not this hub's)",
                              "bad-signature") from None
    try:
        fields = strict_cbor.loads(body, max_size=max_size)
    except RemoteProtocolError as exc:
        raise CredentialError(f"{what}: {exc}", "bad-shape") from None
    if not isinstance(fields, dict):
        raise CredentialError(f"{what} body is not a map", "bad-shape")
    return fields


def _field(fields: dict[int, Any], key: int, kind: type, name: str, what: str) -> Any:
    value = fields.get(key)
    if type(value) is not kind:
        raise CredentialError(f"{what}: field {name} missing or of the wrong type", "bad-field")
    return value


def _texts(value: Any, name: str, what: str) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) > MAX_SCOPE or not all(
            type(v) is str and 0 < len(v) <= MAX_NAME for v in value):
        raise CredentialError(f"{what}: {name} is not a list of at most {MAX_SCOPE} short "
                              "texts", "bad-field")
    return tuple(value)


def _nonce(nonce: bytes, what: str) -> bytes:
    if type(nonce) is not bytes or not NONCE_MIN <= len(nonce) <= NONCE_MAX:
        raise CredentialError(f"{what}: the nonce is not {NONCE_MIN} to {NONCE_MAX} bytes",
                              "bad-nonce")
    return nonce


# Technician certificates ---------------------------------------------------------------

@dataclass(frozen=True)
class Technician:
    """A technician certificate, as signed by the hub."""

    __match_args__ = ("name", "serial", "sites", "kiosks", "actions", "not_before", "expires",
                      "ed25519", "raw")

    name: str
    serial: int
    sites: tuple[str, ...]
    kiosks: tuple[str, ...]  #: kiosk ids (8 hex digits)
    actions: tuple[str, ...]
    not_before: int  #: ms since 1970
    expires: int  #: ms since 1970
    ed25519: bytes  #: the technician's public key
    raw: bytes = b""

    def covers(self, site: str, device_id: str) -> bool:
        return site in self.sites or device_id in self.kiosks

    def allows(self, action: str) -> bool:
        return action in self.actions


def issue(hub_ed: Ed25519PrivateKey, *, name: str, serial: int, technician_ed25519: bytes,
          not_before: int, expires: int, sites: Iterable[str] = (),
          kiosks: Iterable[str] = (), actions: Iterable[str] = ACTIONS) -> bytes:
    """A technician certificate. ``LocalProtocolError`` for a window longer than 7 days,
    an empty scope or an unknown action: the hub never signs what a kiosk refuses."""
    fields: dict[int, Any] = {1: name, 2: serial, 3: sorted(set(sites)),
                              4: sorted(set(kiosks)), 5: sorted(set(actions)),
                              6: not_before, 7: expires, 8: technician_ed25519}
    try:
        _technician_fields(fields, "technician certificate")
    except CredentialError as exc:
        raise LocalProtocolError(str(exc), exc.code) from None
    return sign_document(hub_ed, TECH_LABEL, fields)


def read_technician(doc: bytes, hub_ed25519: bytes) -> Technician:
    """A technician certificate signed by ``hub_ed25519``, its shape and window checked
    (not yet against a time: ``check``)."""
    fields = open_document(doc, TECH_LABEL, hub_ed25519, "technician certificate")
    return Technician(**_technician_fields(fields, "technician certificate"), raw=bytes(doc))


def _technician_fields(fields: dict[int, Any], what: str) -> dict[str, Any]:
    out = {"name": _field(fields, 1, str, "name", what),
           "serial": _field(fields, 2, int, "serial", what),
           "sites": _texts(fields.get(3), "sites", what),
           "kiosks": _texts(fields.get(4), "kiosks", what),
           "actions": _texts(fields.get(5), "actions", what),
           "not_before": _field(fields, 6, int, "not_before", what),
           "expires": _field(fields, 7, int, "expires", what),
           "ed25519": _field(fields, 8, bytes, "ed25519", what)}
    if not 0 < len(out["name"]) <= MAX_NAME:
        raise CredentialError(f"{what}: the name is empty or longer than {MAX_NAME}",
                              "bad-field")
    if out["serial"] < 1:
        raise CredentialError(f"{what}: serial {out['serial']} is not positive", "bad-field")
    if not out["sites"] and not out["kiosks"]:
        raise CredentialError(f"{what}: names no site and no kiosk", "no-scope")
    if unknown := sorted(set(out["actions"]) - set(ACTIONS)):
        raise CredentialError(f"{what}: unknown actions {', '.join(unknown)}", "bad-field")
    if len(out["ed25519"]) != 32:
        raise CredentialError(f"{what}: the technician's key is not 32 bytes", "bad-field")
    span = out["expires"] - out["not_before"]
    if span <= 0:
        raise CredentialError(f"{what}: expires before it begins", "bad-window")
    if span > MAX_VALIDITY_MS:
        raise CredentialError(f"{what}: valid {span / HOUR_MS:.1f} h, more than "
                              f"{MAX_VALIDITY_MS // HOUR_MS} h", "too-long")
    return out


def check(tech: Technician, *, now: int, site: str, device_id: str,
          revoked: frozenset[int] = frozenset(), lower_bound: bool = False,
          action: str | None = None) -> None:
    """Whether ``tech`` is good on this kiosk at ``now`` (trusted time; with
    ``lower_bound`` only known not to be earlier), not revoked and, with ``action``,
    allowed it. ``CredentialError`` (``expired``, ``not-yet-valid``, ``out-of-scope``,
    ``revoked``, ``not-allowed``) if not."""
    if tech.serial in revoked:
        raise CredentialError(f"technician certificate {tech.serial} was revoked", "revoked")
    if now > tech.expires:
        raise CredentialError(f"technician certificate {tech.serial} expired", "expired")
    if now < tech.not_before and not lower_bound:
        raise CredentialError(f"technician certificate {tech.serial} is not valid yet",
                              "not-yet-valid")
    if not tech.covers(site, device_id):
        raise CredentialError(f"technician certificate {tech.serial} is not for site "
                              f"{site!r} or kiosk {device_id}", "out-of-scope")
    if action is not None and not tech.allows(action):
        raise CredentialError(f"technician certificate {tech.serial} does not allow "
                              f"{action!r}", "not-allowed")


def auth_message(nonce: bytes, device_id: str, binding: bytes) -> bytes:
    """What the technician signs to take a kiosk's port: its nonce, its id, the port."""
    return (AUTH_LABEL + len(nonce).to_bytes(1, "big") + nonce
            + device_id.encode() + b"\x00" + binding)


def sign_auth(key: Ed25519PrivateKey, nonce: bytes, device_id: str, binding: bytes) -> bytes:
    return key.sign(auth_message(_nonce(nonce, "challenge"), device_id, binding))


def verify_auth(tech: Technician, sig: bytes, nonce: bytes, device_id: str,
                binding: bytes) -> None:
    """``CredentialError`` (``bad-proof``) unless the certificate's key signed this
    kiosk's challenge on this port."""
    try:
        Ed25519PublicKey.from_public_bytes(tech.ed25519).verify(
            sig, auth_message(nonce, device_id, binding))
    except (InvalidSignature, ValueError, TypeError):
        raise CredentialError("the technician's signature over the challenge does not "
                              "verify", "bad-proof") from None


# Hub-signed time -----------------------------------------------------------------------

def sign_time(hub_ed: Ed25519PrivateKey, nonce: bytes, now: int) -> bytes:
    """The hub's time ``now`` (ms since 1970), bound to the kiosk's ``nonce``."""
    try:
        _nonce(nonce, "time statement")
    except CredentialError as exc:
        raise LocalProtocolError(str(exc), exc.code) from None
    return sign_document(hub_ed, TIME_LABEL, {1: nonce, 2: now})


def read_time(doc: bytes, hub_ed25519: bytes, nonce: bytes) -> int:
    """The hub's time in a statement over ``nonce``; ``CredentialError`` (``stale-time``)
    for a statement over another nonce: an old one, replayed."""
    fields = open_document(doc, TIME_LABEL, hub_ed25519, "time statement")
    signed = _nonce(_field(fields, 1, bytes, "nonce", "time statement"), "time statement")
    time = _field(fields, 2, int, "time", "time statement")
    if signed != nonce:
        raise CredentialError("the time statement is over another nonce (an old one?)",
                              "stale-time")
    if time < 0:
        raise CredentialError("time statement: negative time", "bad-field")
    return int(time)


# Revocation lists ----------------------------------------------------------------------

@dataclass(frozen=True)
class Revocations:
    __match_args__ = ("number", "issued", "serials", "raw")
    number: int  #: grows with every list the hub makes
    issued: int  #: ms since 1970
    serials: frozenset[int]
    raw: bytes = b""


def sign_revocations(hub_ed: Ed25519PrivateKey, number: int, issued: int,
                     serials: Iterable[int]) -> bytes:
    return sign_document(hub_ed, REVOCATIONS_LABEL,
                         {1: number, 2: issued, 3: sorted(set(serials))})


def read_revocations(doc: bytes, hub_ed25519: bytes) -> Revocations:
    what = "revocation list"
    fields = open_document(doc, REVOCATIONS_LABEL, hub_ed25519, what, MAX_REVOCATIONS_DOC)
    number = _field(fields, 1, int, "number", what)
    issued = _field(fields, 2, int, "issued", what)
    serials = fields.get(3)
    if not isinstance(serials, list) or not all(type(s) is int and s > 0 for s in serials):
        raise CredentialError(f"{what}: serials is not a list of positive integers",
                              "bad-field")
    if number < 1:
        raise CredentialError(f"{what}: number {number} is not positive", "bad-field")
    return Revocations(number, issued, frozenset(serials), bytes(doc))


def newer(held: Revocations | None, offered: Revocations) -> bool:
    """Whether ``offered`` replaces the list held: a later number only."""
    return held is None or offered.number > held.number


# The technician's credential file ------------------------------------------------------

@dataclass(frozen=True)
class CredentialFile:
    __match_args__ = ("key", "certificate", "hub_ed25519", "revocations")
    key: Ed25519PrivateKey
    certificate: bytes
    hub_ed25519: bytes
    revocations: bytes | None = None


def dump_file(cred: CredentialFile) -> bytes:
    fields: dict[int, Any] = {0: "haven-technician-credential", 1: cred.key.private_bytes_raw(),
                              2: cred.certificate, 3: cred.hub_ed25519}
    if cred.revocations is not None:
        fields[4] = cred.revocations
    return strict_cbor.dumps(fields)


def load_file(data: bytes) -> CredentialFile:
    """A credential file's contents, its certificate and list checked against the hub key
    it names; ``CredentialError`` if it is not one."""
    what = "credential file"
    try:
        obj = strict_cbor.loads(data, max_size=MAX_DOC + MAX_REVOCATIONS_DOC + 256)
    except RemoteProtocolError as exc:
        raise CredentialError(f"not a technician credential file: {exc}", "bad-shape") from None
    if not isinstance(obj, dict) or obj.get(0) != "haven-technician-credential":
        raise CredentialError("not a technician credential file", "bad-shape")
    seed = _field(obj, 1, bytes, "key", what)
    hub = _field(obj, 3, bytes, "hub key", what)
    if len(seed) != 32 or len(hub) != 32:
        raise CredentialError(f"{what}: a key is not 32 bytes", "bad-field")
    key = Ed25519PrivateKey.from_private_bytes(seed)
    cert = _field(obj, 2, bytes, "certificate", what)
    tech = read_technician(cert, hub)
    if tech.ed25519 != key.public_key().public_bytes_raw():
        raise CredentialError(f"{what}: the key is not the certificate's", "bad-field")
    revocations = obj.get(4)
    if revocations is not None:
        if type(revocations) is not bytes:
            raise CredentialError(f"{what}: revocations of the wrong type", "bad-field")
        read_revocations(revocations, hub)
    return CredentialFile(key, cert, hub, revocations)
