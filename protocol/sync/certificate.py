"""Enrolment requests, kiosk certificates and sealing (SPEC.md, "Sync").

Theory of operation
-------------------
A kiosk makes an Ed25519 key (it signs its batch chain) and an X25519 key
(its session identity, and what the fleet key is sealed to). Its enrolment
request is a deterministic CBOR map of its public keys, node, site and the
letter it asks for, signed by its own Ed25519 key (proof of possession). A
request without a letter leaves it to the hub: the first free at the site.

The hub answers with a certificate: ``[body, signature]`` where ``body`` is
the deterministic CBOR of the certified facts plus the hub's public keys and
the fleet key sealed to the kiosk, and ``signature`` is the hub's Ed25519
signature over those raw body bytes (never a re-encoding). A certificate
issued since kiosks are numbered also carries the kiosk's number (field 11,
the first part of its short patient codes: SPEC.md "Short patient codes");
one issued before has none, and is still read.

Sealing is HPKE base mode (RFC 9180) with DHKEM(X25519, HKDF-SHA256),
HKDF-SHA256 and AES-256-GCM, from ``cryptography``'s ``hpke`` module
(``protocol.crypto``'s, the same under MicroPython).
Nothing here reads a clock or a file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from protocol import strict_cbor
from protocol.crdt import short_code
from protocol.crypto import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
    InvalidSignature,
    InvalidTag,
    X25519PrivateKey,
    X25519PublicKey,
    hpke,
)
from protocol.errors import RemoteProtocolError

SEAL_INFO = b"haven/fleet-key/v1"
REQUEST_LABEL = b"haven/enrolment-request/v1\x00"
CERT_LABEL = b"haven/certificate/v1\x00"
MAX_DOC = 4096


class CertificateError(RemoteProtocolError):
    code = "bad-certificate"


# HPKE (RFC 9180) -------------------------------------------------------------------

_SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)


def seal(plain: bytes, recipient: bytes, info: bytes = SEAL_INFO) -> bytes:
    """HPKE base-mode single-shot seal to an X25519 public key: ``enc || ciphertext``."""
    out: bytes = _SUITE.encrypt(plain, X25519PublicKey.from_public_bytes(recipient), info=info)
    return out


def open_sealed(sealed: bytes, key: X25519PrivateKey, info: bytes = SEAL_INFO) -> bytes:
    """Open what ``seal`` made; ``CertificateError`` if it was not sealed to ``key``."""
    if len(sealed) < 32 + 16:
        raise CertificateError("sealed value too short", "bad-seal")
    try:
        out: bytes = _SUITE.decrypt(sealed, key, info=info)
    except (InvalidTag, ValueError):
        raise CertificateError("sealed value does not open with this kiosk's key",
                               "bad-seal") from None
    return out


# Requests and certificates ---------------------------------------------------------

_REQ_FIELDS = {1: ("node", int), 2: ("site", str), 4: ("x25519", bytes),
               5: ("ed25519", bytes)}
#: A request without a letter leaves it to the hub.
_REQ_OPTIONAL: dict[int, tuple[str, type]] = {3: ("letter", str)}
_CERT_FIELDS = dict(_REQ_FIELDS)
_CERT_FIELDS.update({3: ("letter", str), 6: ("hub_x25519", bytes), 7: ("hub_ed25519", bytes),
                     8: ("fleet_sealed", bytes), 9: ("issued_ms", int), 10: ("serial", int)})
#: Fields a certificate may lack: one issued before kiosks were numbered has no number.
_CERT_OPTIONAL: dict[int, tuple[str, type]] = {11: ("kiosk_number", int)}


def _signed(doc: bytes, what: str) -> tuple[bytes, bytes]:
    obj = strict_cbor.loads(doc, max_size=MAX_DOC)
    if not (isinstance(obj, list) and len(obj) == 2 and all(type(x) is bytes for x in obj)):
        raise CertificateError(f"{what} is not [body, signature]")
    return obj[0], obj[1]


def _fields(body: bytes, spec: dict[int, tuple[str, type]], what: str,
            optional: dict[int, tuple[str, type]] | None = None) -> dict[str, Any]:
    obj = strict_cbor.loads(body, max_size=MAX_DOC)
    if not isinstance(obj, dict):
        raise CertificateError(f"{what} body is not a map")
    out: dict[str, Any] = {}
    for key, (name, kind) in spec.items():
        value = obj.get(key)
        if type(value) is not kind:
            raise CertificateError(f"{what}: field {name} missing or of the wrong type")
        out[name] = value
    for key, (name, kind) in (optional or {}).items():
        value = obj.get(key)
        if value is not None and type(value) is not kind:
            raise CertificateError(f"{what}: field {name} of the wrong type")
        out[name] = value
    for name in ("x25519", "ed25519", "hub_x25519", "hub_ed25519"):
        if name in out and len(out[name]) != 32:
            raise CertificateError(f"{what}: {name} is not a 32-byte key")
    return out


def _verify(pub: bytes, sig: bytes, label: bytes, body: bytes, what: str) -> None:
    try:
        Ed25519PublicKey.from_public_bytes(pub).verify(sig, label + body)
    except (InvalidSignature, ValueError):
        raise CertificateError(f"{what}: bad signature", "bad-signature") from None


def device_id(node: int) -> str:
    return f"{node:08x}"


@dataclass(frozen=True)
class Request:
    __match_args__ = ("node", "site", "letter", "x25519", "ed25519")
    node: int
    site: str
    #: The queue letter asked for; None leaves it to the hub (the first free at the site).
    letter: str | None
    x25519: bytes
    ed25519: bytes

    @property
    def device_id(self) -> str:
        return device_id(self.node)


def make_request(node: int, site: str, letter: str | None, x_key: X25519PrivateKey,
                 ed_key: Ed25519PrivateKey) -> bytes:
    """The signed request; ``letter`` None leaves the kiosk's letter to the hub."""
    fields: dict[int, Any] = {1: node, 2: site, 4: x_key.public_key().public_bytes_raw(),
                              5: ed_key.public_key().public_bytes_raw()}
    if letter is not None:
        fields[3] = letter
    body = strict_cbor.dumps(fields)
    return strict_cbor.dumps([body, ed_key.sign(REQUEST_LABEL + body)])


def read_request(doc: bytes) -> Request:
    body, sig = _signed(doc, "enrolment request")
    f = _fields(body, _REQ_FIELDS, "enrolment request", _REQ_OPTIONAL)
    _verify(f["ed25519"], sig, REQUEST_LABEL, body, "enrolment request")
    return Request(**f)


@dataclass(frozen=True)
class Certificate:
    __match_args__ = ("node", "site", "letter", "x25519", "ed25519", "hub_x25519", "hub_ed25519",
                      "fleet_sealed", "issued_ms", "serial", "kiosk_number", "raw")
    node: int
    site: str
    letter: str
    x25519: bytes
    ed25519: bytes
    hub_x25519: bytes
    hub_ed25519: bytes
    fleet_sealed: bytes
    issued_ms: int
    serial: int
    #: The kiosk's number (its short patient codes' first part); None in a certificate
    #: issued before kiosks were numbered: the hub's welcome then gives it.
    kiosk_number: int | None = None
    raw: bytes = b""

    @property
    def device_id(self) -> str:
        return device_id(self.node)


def issue(req: Request, hub_ed: Ed25519PrivateKey, hub_x25519: bytes, fleet_key: bytes,
          letter: str, issued_ms: int, serial: int, kiosk_number: int | None = None) -> bytes:
    """The certificate for an approved request, signed by the hub."""
    fields: dict[int, Any] = {
        1: req.node, 2: req.site, 3: letter, 4: req.x25519, 5: req.ed25519,
        6: hub_x25519, 7: hub_ed.public_key().public_bytes_raw(),
        8: seal(fleet_key, req.x25519), 9: issued_ms, 10: serial}
    if kiosk_number is not None:
        fields[11] = kiosk_number
    body = strict_cbor.dumps(fields)
    return strict_cbor.dumps([body, hub_ed.sign(CERT_LABEL + body)])


def read_certificate(doc: bytes, hub_ed25519: bytes | None = None) -> Certificate:
    """Parse a certificate and check its signature (by ``hub_ed25519``, or the key inside)."""
    body, sig = _signed(doc, "certificate")
    f = _fields(body, _CERT_FIELDS, "certificate", _CERT_OPTIONAL)
    _verify(hub_ed25519 or f["hub_ed25519"], sig, CERT_LABEL, body, "certificate")
    if f["kiosk_number"] is not None and not 0 <= f["kiosk_number"] <= short_code.MAX_KIOSK:
        raise CertificateError(f"certificate: kiosk number {f['kiosk_number']} out of range")
    return Certificate(**f, raw=doc)
