"""A check-in's identity sealed to the hub, for a kiosk that has no fleet key yet.

Theory of operation
-------------------
A kiosk provisioned offline holds no fleet key until its first sync (SPEC.md
"Offline approvals"), so it cannot derive a patient's id from a passport
number or a short patient code. It records the check-in under a provisional
random subject and seals what the patient gave to the hub: HPKE (as
``certificate.seal``, under its own info label) of the deterministic CBOR
``[check-in id, kind, value]``, ``kind`` ``passport`` (the number
normalised) or ``code`` (the code parsed). The check-in's id inside binds
the sealed value to its check-in: copied onto another, it does not open.
It travels as base64 text in the check-in's ``sealedIdentity``. The hub
opens it, derives the real id, writes the check-in's subject and clears the
field (``host.hub.claims.complete``). Nothing here reads a clock or a file.
"""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING

from protocol import strict_cbor
from protocol.errors import ProtocolError, RemoteProtocolError
from protocol.sync.certificate import open_sealed, seal

if TYPE_CHECKING:
    from protocol.crypto import X25519PrivateKey

INFO = b"haven/sealed-identity/v1"
KINDS = ("passport", "code")
#: A sealed identity's most bytes: the HPKE overhead (48) and a small CBOR array.
MAX_SEALED = 256


class SealedIdentityError(RemoteProtocolError):
    code = "bad-sealed-identity"


def seal_identity(checkin_id: bytes, kind: str, value: str, hub_x25519: bytes) -> str:
    """``value`` (a normalised passport number or a parsed short code) sealed to the
    hub's X25519 key, bound to ``checkin_id``; base64 text for the check-in field."""
    if kind not in KINDS:
        raise ValueError(f"unknown identity kind {kind!r}")
    plain = strict_cbor.dumps([checkin_id, kind, value])
    return base64.b64encode(seal(plain, hub_x25519, INFO)).decode("ascii")


def open_identity(text: str, checkin_id: bytes, hub_x: X25519PrivateKey) -> tuple[str, str]:
    """``(kind, value)`` from a check-in's sealed identity; ``SealedIdentityError``
    if it is not base64, not sealed to this hub, or sealed for another check-in."""
    try:
        sealed = base64.b64decode(text.encode("ascii"), validate=True)
    except ValueError:  # binascii.Error and UnicodeEncodeError are ValueErrors
        raise SealedIdentityError("a sealed identity is not base64") from None
    if len(sealed) > MAX_SEALED:
        raise SealedIdentityError("a sealed identity is too long")
    try:
        obj = strict_cbor.loads(open_sealed(sealed, hub_x, INFO), max_size=MAX_SEALED)
    except ProtocolError as exc:
        raise SealedIdentityError(f"a sealed identity does not open: {exc}") from None
    if not (isinstance(obj, list) and len(obj) == 3 and type(obj[0]) is bytes
            and obj[1] in KINDS and type(obj[2]) is str):
        raise SealedIdentityError("a sealed identity is not [check-in, kind, value]")
    if obj[0] != checkin_id:
        raise SealedIdentityError("a sealed identity of another check-in")
    return obj[1], obj[2]
