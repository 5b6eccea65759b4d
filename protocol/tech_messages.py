"""``haven tech`` over a Haven session: the messages, and the technician's session key.

Theory of operation
-------------------
SPEC.md "Technician sessions". A technician's tool opens a Haven session
(Noise ``XX``) to the kiosk's console. Its static key is the X25519 key of
its certificate's Ed25519 key (``x25519_public`` / ``x25519_private``: the
birational map every Ed25519/X25519 pair shares), so the kiosk can tell that
the session's remote static is the certificate's key. Then, on lane 0:

    kiosk                                       tool
    tech-challenge (nonce, device, site, time, kiosk certificate) ->
                                            <- tech-hello (cert, sig [, revocations, time])
    tech-welcome (serial, technician, actions, time) ->   or tech-refused (code, reason)
                                            <- tech-request (id, command, args)
    tech-note (id, text)                    ->   zero or more, while it runs
    tech-reply (id, ok, result | code, error) ->

The tool checks that the kiosk's certificate is its hub's and names the
session's remote static key: a device on the cable that is not an enrolled
kiosk of that hub is told apart before the tool signs anything.
``sig`` is ``credential.sign_auth(key, nonce, device, binding)`` where the
binding is the session id (the first 16 bytes of the handshake hash), so a
signature is good for this kiosk, this challenge and this session only.
``time`` in the hello is an optional hub-signed time over the challenge's
nonce. A request before the welcome, or one the certificate does not allow,
is answered by a ``tech-reply`` with ``ok`` false and a code.

A command that moves a file (``pull``) runs the transfer protocol
(``transfer.py``) with the request's id as its transfer id: the kiosk's
``xfer-offer``, manifest and data on lane 1, the tool's needs, done and
abort on lane 0, then the ``tech-reply``. Run again, the tool's store
already holds what it received, so only the missing chunks cross.

``args`` and ``result`` are CBOR maps with text keys. Every decoder here
raises ``RemoteProtocolError`` for anything else. Pure: no I/O, no clock.
"""

from __future__ import annotations

from typing import Any

from protocol import MICROPYTHON, messages
from protocol.crypto import hash_digest
from protocol.errors import RemoteProtocolError
from protocol.messages import Message, MessageSpec, register

CONTROL_LANE = 0  #: the conversation, needs and acknowledgements
BULK_LANE = 1  #: a pull's offer, manifest and data
MAX_MESSAGE = 32 * 1024
MAX_COMMAND = 32  #: characters of a command name
MAX_TEXT = 400  #: characters of a reason, an error or a note

CHALLENGE = register(MessageSpec(100, "tech-challenge", {
    1: ("nonce", bytes), 2: ("device", str), 3: ("site", str), 4: ("time", str)},
    {5: ("kiosk", bytes)}))
HELLO = register(MessageSpec(101, "tech-hello", {1: ("cert", bytes), 2: ("sig", bytes)},
                             {3: ("revocations", bytes), 4: ("time", bytes)}))
WELCOME = register(MessageSpec(102, "tech-welcome", {
    1: ("serial", int), 2: ("technician", str), 3: ("actions", list), 4: ("time", str)}))
REFUSED = register(MessageSpec(103, "tech-refused", {1: ("code", str), 2: ("reason", str)}))
REQUEST = register(MessageSpec(104, "tech-request", {1: ("id", int), 2: ("command", str)},
                               {3: ("args", dict)}))
REPLY = register(MessageSpec(105, "tech-reply", {1: ("id", int), 2: ("ok", bool)},
                             {3: ("result", dict), 4: ("code", str), 5: ("error", str)}))
NOTE = register(MessageSpec(106, "tech-note", {1: ("id", int), 2: ("text", str)}))
TECH_TYPES = frozenset(s.number for s in (CHALLENGE, HELLO, WELCOME, REFUSED, REQUEST, REPLY,
                                          NOTE))


def decode(data: bytes) -> Message:
    """One message of a technician session (a ``tech-*`` or a transfer message), its
    fields checked; ``RemoteProtocolError`` for anything malformed."""
    msg = messages.decode(data, max_size=MAX_MESSAGE)
    if msg.spec is None:
        raise RemoteProtocolError(f"unknown message type {msg.type}", "unknown-type")
    if msg.type in TECH_TYPES:
        _check(msg)
    return msg


def _check(msg: Message) -> None:
    name = msg.name
    if name in ("tech-request", "tech-reply", "tech-note"):
        ident = msg.get("id")
        if ident < 0 or ident >= 1 << 32:
            raise RemoteProtocolError(f"{name}: id {ident} out of range", "bad-field")
    if name == "tech-request":
        command = msg.get("command")
        if not 0 < len(command) <= MAX_COMMAND or not _printable(command):
            raise RemoteProtocolError("tech-request: a bad command name", "bad-field")
        _text_keys(msg.get("args", {}), name)
    elif name == "tech-reply":
        _text_keys(msg.get("result", {}), name)
        if not msg.get("ok") and msg.get("code") is None:
            raise RemoteProtocolError("tech-reply: a refusal without a code", "bad-field")
    for field in ("reason", "error", "text"):
        value = msg.fields.get(_key(msg, field))
        if isinstance(value, str) and len(value) > MAX_TEXT:
            raise RemoteProtocolError(f"{name}: {field} longer than {MAX_TEXT}", "bad-field")


def _printable(text: str) -> bool:
    if MICROPYTHON:  # no str.isprintable (no Unicode tables): printable ASCII only there
        return all(" " <= c <= "~" for c in text)
    return text.isprintable()


def _key(msg: Message, field: str) -> int:
    assert msg.spec is not None
    try:
        return msg.spec.field_key(field)
    except Exception:
        return -1


def _text_keys(value: dict[Any, Any], what: str) -> None:
    if not all(type(k) is str for k in value):
        raise RemoteProtocolError(f"{what}: keys must be text", "bad-field")


def encode(kind: str, **values: Any) -> bytes:
    """The bytes of one ``tech-*`` message (``LocalProtocolError`` for a bad field)."""
    return messages.encode(messages.make(kind, **values))


def reply_ok(ident: int, result: dict[str, Any]) -> bytes:
    return encode("tech-reply", id=ident, ok=True, result=result)


def reply_error(ident: int, code: str, error: str) -> bytes:
    return encode("tech-reply", id=ident, ok=False, code=code, error=error[:MAX_TEXT])


# The technician's session key ---------------------------------------------------------

_P = 2**255 - 19


def x25519_public(ed25519_public: bytes) -> bytes:
    """The X25519 public key of an Ed25519 public key (RFC 7748's map u = (1+y)/(1-y))."""
    if len(ed25519_public) != 32:
        raise RemoteProtocolError("an Ed25519 key is 32 bytes", "bad-key")
    y = int.from_bytes(ed25519_public, "little") & ((1 << 255) - 1)
    if y >= _P or y == 1:
        raise RemoteProtocolError("not an Ed25519 public key", "bad-key")
    u = (1 + y) * pow(1 - y, _P - 2, _P) % _P
    return u.to_bytes(32, "little")


def x25519_private(ed25519_seed: bytes) -> bytes:
    """The X25519 private key (before clamping, which X25519 does) of an Ed25519 seed:
    the first half of SHA-512(seed), Ed25519's own secret scalar."""
    if len(ed25519_seed) != 32:
        raise RemoteProtocolError("an Ed25519 seed is 32 bytes", "bad-key")
    return hash_digest("SHA512", ed25519_seed)[:32]
