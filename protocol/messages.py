"""Message envelope: a CBOR map with small integer keys (SPEC.md, "Messages").

Key 0 holds the message type; every other key is a field of that type.
Decoding checks the known fields' types and keeps unknown fields as they
came, so a message from a newer peer can be passed on without loss. An
unknown message type is not an error either: it decodes to a ``Message``
whose ``spec`` is ``None``, and the caller counts and skips it.

Later layers register their message types here with ``register``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from protocol import strict_cbor
from protocol.errors import LocalProtocolError, RemoteProtocolError

if TYPE_CHECKING:
    from collections.abc import Callable

    #: What a field may be declared with: CBOR types, or a check of the whole value for a
    #: field whose shape a type alone does not say (a list of record ids, 32 bytes).
    FieldType = type | tuple[type, ...] | Callable[[Any], bool]

TYPE_KEY = 0



@dataclass(frozen=True)
class MessageSpec:
    """One message type: its number, its name and its known fields."""

    __match_args__ = ("number", "name", "required", "optional")
    number: int
    name: str
    required: dict[int, tuple[str, FieldType]] = field(default_factory=dict)
    optional: dict[int, tuple[str, FieldType]] = field(default_factory=dict)

    def field_key(self, name: str) -> int:
        for fields in (self.required, self.optional):
            for key, (fname, _) in fields.items():
                if fname == name:
                    return key
        raise LocalProtocolError(f"message {self.name} has no field {name!r}")


@dataclass(frozen=True)
class Message:
    """A decoded message. ``fields`` maps integer keys to values, unknown ones included."""

    __match_args__ = ("type", "fields")
    type: int
    fields: dict[int, Any]

    @property
    def spec(self) -> MessageSpec | None:
        return REGISTRY.get(self.type)

    @property
    def name(self) -> str:
        spec = self.spec
        return spec.name if spec else f"unknown-{self.type}"

    def get(self, name: str, default: Any = None) -> Any:
        spec = self.spec
        if spec is None:
            raise LocalProtocolError(f"message type {self.type} is unknown")
        return self.fields.get(spec.field_key(name), default)


REGISTRY: dict[int, MessageSpec] = {}
_BY_NAME: dict[str, MessageSpec] = {}


def register(spec: MessageSpec) -> MessageSpec:
    """Add a message type. Numbers and names are unique."""
    if spec.number in REGISTRY or spec.name in _BY_NAME:
        raise LocalProtocolError(f"message type {spec.number}/{spec.name} registered twice")
    if TYPE_KEY in spec.required or TYPE_KEY in spec.optional:
        raise LocalProtocolError("field key 0 is the message type")
    REGISTRY[spec.number] = spec
    _BY_NAME[spec.name] = spec
    return spec


def make(name: str, **values: Any) -> Message:
    """Build a message by type name and field names."""
    spec = _BY_NAME.get(name)
    if spec is None:
        raise LocalProtocolError(f"no message type named {name!r}")
    fields = {spec.field_key(k): v for k, v in values.items() if v is not None}
    msg = Message(spec.number, fields)
    _validate(msg, spec, LocalProtocolError)
    return msg


def encode(msg: Message) -> bytes:
    """Deterministic CBOR bytes of ``msg``."""
    if TYPE_KEY in msg.fields:
        raise LocalProtocolError("field key 0 is the message type")
    whole = dict(msg.fields)
    whole[TYPE_KEY] = msg.type
    return strict_cbor.dumps(whole)


def decode(data: bytes, *, max_size: int = strict_cbor.DEFAULT_MAX_SIZE) -> Message:
    """Decode and check one message. Raises ``RemoteProtocolError`` if it is bad."""
    obj = strict_cbor.loads(data, max_size=max_size)
    if not isinstance(obj, dict):
        raise RemoteProtocolError("a message must be a CBOR map", "not-a-map")
    if not all(type(k) is int for k in obj):
        raise RemoteProtocolError("message keys must be integers", "bad-key")
    mtype = obj.pop(TYPE_KEY, None)
    if type(mtype) is not int or mtype < 0:
        raise RemoteProtocolError("message type (key 0) missing or not an unsigned integer", "type")
    msg = Message(mtype, obj)
    spec = REGISTRY.get(mtype)
    if spec is not None:
        _validate(msg, spec, RemoteProtocolError)
    return msg


def _validate(msg: Message, spec: MessageSpec, error: type[Exception]) -> None:
    for key, (fname, _) in spec.required.items():
        if key not in msg.fields:
            raise error(f"{spec.name}: missing field {fname} ({key})", "missing-field")
    for fields in (spec.required, spec.optional):
        for key, (fname, ftype) in fields.items():
            if key in msg.fields and not _is_type(msg.fields[key], ftype):
                raise error(f"{spec.name}: field {fname} ({key}) has the wrong type",
                            "field-type")


def _is_type(value: Any, ftype: FieldType) -> bool:
    if not isinstance(ftype, (type, tuple)):
        return bool(ftype(value))
    # bool is an int in Python but not in CBOR.
    if isinstance(value, bool):
        return ftype is bool or (isinstance(ftype, tuple) and bool in ftype)
    return isinstance(value, ftype)


# The link-level messages every peer understands (SPEC.md, "Messages").
PING = register(MessageSpec(1, "ping", {1: ("nonce", int)}))
PONG = register(MessageSpec(2, "pong", {1: ("nonce", int)}))
def _uint(value: Any) -> bool:
    return type(value) is int and value >= 0


#: ``retry_ms``: with reason ``busy``, how long the peer asks to be left alone (SPEC.md
#: "Busy"); a peer that does not know the field keeps it unread and backs off its own way.
CLOSE = register(MessageSpec(3, "close", {1: ("reason", str)},
                             {2: ("detail", str), 3: ("retry_ms", _uint)}))
