"""Offline enrolment approvals (SPEC.md, "Offline approvals").

Theory of operation
-------------------
Where the hub is out of reach, a technician provisions kiosks with approvals
the hub issued beforehand (``haven hub approve``). An approval is
``[body, signature]`` as a kiosk's certificate is (``certificate.py``):
``body`` the deterministic CBOR of a map with integer keys, ``signature``
the hub's Ed25519 signature over ``APPROVAL_LABEL`` and those raw body bytes
(never a re-encoding). Its own label keeps it from passing for a
certificate or a technician's credential.

An approval names the site and carries what the hub reserved for one kiosk
there: a queue letter, a node (the kiosk's identity: its device id is the
node in 8 hex digits) and a kiosk number (its short patient codes' first
part). The hub never reserves one twice, so two kiosks provisioned offline
never share one. It also carries the hub's keys: its X25519 key (the kiosk
pins it for its first sync, as a certificate's) and its Ed25519 key. It
expires: ``issued`` and ``expires`` (ms since 1970) bound it, and at most
``MAX_VALIDITY_MS`` apart. It is good until it expires, for provisioning
and for the first sync that completes the enrolment.

The kiosk presents it at its first sync, in its hello, with its own
enrolment request (``enrolment``: the CBOR array ``[approval, request]``);
``check_request`` holds the request to the approval. A file of approvals is
the CBOR array of the approval documents.

Nothing here reads a clock or a file. Every decoder refuses with an
``ApprovalError`` whose ``code`` says why.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from protocol import strict_cbor
from protocol.crdt.short_code import MAX_KIOSK
from protocol.crypto import Ed25519PrivateKey, Ed25519PublicKey, InvalidSignature
from protocol.errors import LocalProtocolError, RemoteProtocolError

if TYPE_CHECKING:
    from collections.abc import Callable

    from protocol.sync.certificate import Request

APPROVAL_LABEL = b"haven/enrolment-approval/v1\x00"
HOUR_MS = 3600 * 1000
#: An approval lasts at most this long: a trip to clinics days from the hub.
MAX_VALIDITY_MS = 31 * 24 * HOUR_MS
MAX_DOC = 1024
MAX_FILE = 1 << 20  #: a file of approvals, about 4,000 of them
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
MAX_SITE = 64

_FIELDS: dict[int, tuple[str, type]] = {
    1: ("serial", int), 2: ("site", str), 3: ("letter", str), 4: ("node", int),
    5: ("kiosk_number", int), 6: ("issued", int), 7: ("expires", int),
    8: ("hub_x25519", bytes), 9: ("hub_ed25519", bytes)}


class ApprovalError(RemoteProtocolError):
    """An approval, or an enrolment that presents one, that we refuse."""

    code = "bad-approval"


@dataclass(frozen=True)
class Approval:
    __match_args__ = ("serial", "site", "letter", "node", "kiosk_number", "issued", "expires",
                      "hub_x25519", "hub_ed25519", "raw")
    serial: int  #: the hub's number for this reservation
    site: str
    letter: str
    node: int
    kiosk_number: int
    issued: int
    expires: int
    hub_x25519: bytes
    hub_ed25519: bytes
    raw: bytes = b""

    @property
    def device_id(self) -> str:
        return f"{self.node:08x}"


def _check_values(f: dict[str, Any], error: Callable[[str], Exception]) -> None:
    if not 0 < len(f["site"]) <= MAX_SITE:
        raise error(f"approval: the site is 1 to {MAX_SITE} characters")
    if len(f["letter"]) != 1 or f["letter"] not in LETTERS:
        raise error(f"approval: the letter is one of A to Z, not {f['letter']!r}")
    if not 0 < f["node"] < 1 << 32:
        raise error(f"approval: node {f['node']} is not a 32-bit node")
    if not 0 <= f["kiosk_number"] <= MAX_KIOSK:
        raise error(f"approval: kiosk number {f['kiosk_number']} is not 0 to {MAX_KIOSK}")
    if f["serial"] < 1 or f["issued"] < 0:
        raise error("approval: serial or issue time out of range")
    if not f["issued"] < f["expires"] <= f["issued"] + MAX_VALIDITY_MS:
        raise error(f"approval: it must expire after it is issued and within "
                    f"{MAX_VALIDITY_MS // HOUR_MS} h")
    for name in ("hub_x25519", "hub_ed25519"):
        if len(f[name]) != 32:
            raise error(f"approval: {name} is not a 32-byte key")


def issue(hub_ed: Ed25519PrivateKey, hub_x25519: bytes, *, serial: int, site: str,
          letter: str, node: int, kiosk_number: int, issued: int, expires: int) -> bytes:
    """One approval, signed by the hub (``LocalProtocolError`` for values out of range)."""
    f = {"serial": serial, "site": site, "letter": letter, "node": node,
         "kiosk_number": kiosk_number, "issued": issued, "expires": expires,
         "hub_x25519": hub_x25519, "hub_ed25519": hub_ed.public_key().public_bytes_raw()}
    _check_values(f, LocalProtocolError)
    body = strict_cbor.dumps({key: f[name] for key, (name, _) in _FIELDS.items()})
    return strict_cbor.dumps([body, hub_ed.sign(APPROVAL_LABEL + body)])


def read_approval(doc: bytes, hub_ed25519: bytes, now: int | None = None) -> Approval:
    """The approval in ``doc`` once its signature by ``hub_ed25519`` (the hub the reader
    trusts, never the key inside) is checked; with ``now``, refused once expired."""
    if type(doc) is not bytes or len(doc) > MAX_DOC:
        raise ApprovalError(f"an approval is at most {MAX_DOC} bytes", "bad-shape")
    try:
        obj = strict_cbor.loads(doc, max_size=MAX_DOC)
    except RemoteProtocolError as exc:
        raise ApprovalError(f"approval: {exc}", "bad-shape") from None
    if not (isinstance(obj, list) and len(obj) == 2 and all(type(x) is bytes for x in obj)):
        raise ApprovalError("approval is not [body, signature]", "bad-shape")
    body, sig = obj
    try:
        Ed25519PublicKey.from_public_bytes(hub_ed25519).verify(sig, APPROVAL_LABEL + body)
    except (InvalidSignature, ValueError):
        raise ApprovalError("approval: bad signature (not this hub's)",
                            "bad-signature") from None
    try:
        fields = strict_cbor.loads(body, max_size=MAX_DOC)
    except RemoteProtocolError as exc:
        raise ApprovalError(f"approval: {exc}", "bad-shape") from None
    if not isinstance(fields, dict):
        raise ApprovalError("approval body is not a map", "bad-shape")
    f: dict[str, Any] = {}
    for key, (name, kind) in _FIELDS.items():
        value = fields.get(key)
        if type(value) is not kind:
            raise ApprovalError(f"approval: field {name} missing or of the wrong type",
                                "bad-field")
        f[name] = value
    _check_values(f, lambda text: ApprovalError(text, "bad-field"))
    if f["hub_ed25519"] != hub_ed25519:
        raise ApprovalError("approval: it names another hub's key", "bad-field")
    approval = Approval(**f, raw=doc)
    if now is not None and now >= approval.expires:
        raise ApprovalError(f"approval {approval.serial} expired", "expired")
    return approval


def check_request(approval: Approval, request: Request) -> None:
    """The enrolment request is the one this approval is for: its node and site, and its
    letter if it asks for one."""
    if request.node != approval.node or request.site != approval.site:
        raise ApprovalError(f"the enrolment request (kiosk {request.device_id}, site "
                            f"{request.site!r}) is not the approval's (kiosk "
                            f"{approval.device_id}, site {approval.site!r})", "mismatch")
    if request.letter not in (None, approval.letter):
        raise ApprovalError(f"the enrolment request asks for letter {request.letter}, the "
                            f"approval gives {approval.letter}", "mismatch")


def enrolment(approval: bytes, request: bytes) -> bytes:
    """What a kiosk's hello carries to enrol with an approval: ``[approval, request]``."""
    return strict_cbor.dumps([approval, request])


def read_enrolment(doc: bytes) -> tuple[bytes, bytes]:
    """(approval, request) from ``enrolment``'s bytes; neither is checked yet."""
    try:
        obj = strict_cbor.loads(doc, max_size=2 * MAX_DOC + 4096)
    except RemoteProtocolError as exc:
        raise ApprovalError(f"enrolment: {exc}", "bad-shape") from None
    if not (isinstance(obj, list) and len(obj) == 2 and all(type(x) is bytes for x in obj)):
        raise ApprovalError("enrolment is not [approval, request]", "bad-shape")
    return obj[0], obj[1]


def dump_file(approvals: list[bytes]) -> bytes:
    """A file of approvals (``haven hub approve --out``)."""
    return strict_cbor.dumps(list(approvals))


def load_file(data: bytes) -> list[bytes]:
    """The approval documents of a file (each still to be read with ``read_approval``)."""
    if len(data) > MAX_FILE:
        raise ApprovalError(f"a file of approvals is at most {MAX_FILE} bytes", "too-large")
    try:
        obj = strict_cbor.loads(data, max_size=MAX_FILE)
    except RemoteProtocolError as exc:
        raise ApprovalError(f"not a file of approvals: {exc}", "bad-shape") from None
    if not isinstance(obj, list) or not obj or not all(type(x) is bytes for x in obj):
        raise ApprovalError("not a file of approvals: expected an array of approvals",
                            "bad-shape")
    return obj
