"""Bytes of the session layer: frame kinds, headers and control messages.

See SPEC.md, "Session". A session frame is the payload of one COBS frame
(``protocol.framing`` with ``crc=False``); its first byte says what it is:

* ``0x01`` handshake: ``kind step noise-message crc32c`` (the CRC guards the
  only frames that carry no AEAD tag);
* ``0x02`` refusal: ``kind close-message crc32c``, sent in the clear before
  keys exist (for example when no wire version is shared);
* ``0x10 | lane`` data, ``0x20`` control and ``0x30`` mixed: ``kind pn16``
  then the AEAD ciphertext. The three header bytes are the associated data;
  the nonce is the full packet number, a per-transmission counter rebuilt
  from its low 16 bits. Data plaintext is ``varint(offset) bytes``; control
  plaintext is a run of ``varint(length) message``; mixed plaintext is a run
  of parts ``kind varint(length) plaintext``, each the plaintext a data or
  control frame of that kind would carry, so that acknowledgements and small
  messages of several lanes share one frame's header and tag.
"""

from __future__ import annotations

from typing import Any

from protocol import messages, varint
from protocol.crc32c import crc32c
from protocol.errors import RemoteProtocolError
from protocol.messages import Message, MessageSpec

KIND_HANDSHAKE = 0x01
KIND_REFUSE = 0x02
KIND_DATA = 0x10  #: low four bits: the lane
KIND_CONTROL = 0x20
KIND_MIXED = 0x30
PN_BITS = 16
HEADER_SIZE = 3
TAG_SIZE = 16
MAX_LANES = 16

# Handshake payloads and control messages (type numbers 20-39).
HELLO = messages.register(
    MessageSpec(
        20,
        "hello",
        {1: ("versions", list), 2: ("max_frame", int), 3: ("window", int), 4: ("lanes", int)},
        {5: ("stream", bool), 6: ("resume", bytes)},
    )
)
WELCOME = messages.register(
    MessageSpec(
        21,
        "welcome",
        {1: ("version", int), 2: ("max_frame", int), 3: ("window", int), 4: ("lanes", int)},
        {5: ("secret", bytes)},
    )
)
ACK = messages.register(
    MessageSpec(22, "ack", {1: ("largest", int), 2: ("delay_ms", int), 3: ("lanes", list)})
)
RESUME = messages.register(
    MessageSpec(23, "resume", {1: ("token", bytes), 2: ("positions", list)})
)
RESUMED = messages.register(MessageSpec(24, "resumed", {1: ("positions", list)}))


def with_crc(body: bytes) -> bytes:
    return body + crc32c(body).to_bytes(4, "little")


def strip_crc(frame: bytes) -> bytes | None:
    """The frame without its CRC, or ``None`` if the CRC is wrong."""
    if len(frame) < 5:
        return None
    body, tail = frame[:-4], frame[-4:]
    return body if crc32c(body).to_bytes(4, "little") == tail else None


def header(kind: int, pn: int) -> bytes:
    return bytes((kind,)) + (pn & 0xFFFF).to_bytes(2, "big")


def pack_control(msgs: list[Message]) -> bytes:
    out = bytearray()
    for msg in msgs:
        body = messages.encode(msg)
        out += varint.encode(len(body)) + body
    return bytes(out)


def unpack_control(plaintext: bytes) -> list[Message]:
    """Every message in a control frame; unknown types are returned too."""
    out = []
    pos = 0
    while pos < len(plaintext):
        size, pos = varint.decode(plaintext, pos)
        if size > len(plaintext) - pos:
            raise RemoteProtocolError("control message overruns its frame", "truncated")
        out.append(messages.decode(plaintext[pos : pos + size]))
        pos += size
    return out


def is_part_kind(kind: int) -> bool:
    """A data or control kind: what a frame, or a part of a mixed frame, may be."""
    return kind == KIND_CONTROL or kind & 0xF0 == KIND_DATA


def pack_parts(parts: list[tuple[int, bytes]]) -> bytes:
    """The plaintext of a mixed frame holding ``(kind, plaintext)`` parts."""
    return b"".join(bytes((kind,)) + varint.encode(len(body)) + body for kind, body in parts)


def frame_parts(kind: int, plaintext: bytes, lanes: int) -> list[tuple[int, bytes]]:
    """The ``(kind, plaintext)`` parts of a data, control or mixed frame, checked as a
    whole before any is used: structure, and lanes below ``lanes``."""
    parts = unpack_parts(plaintext) if kind == KIND_MIXED else [(kind, plaintext)]
    for part, _ in parts:
        if part != KIND_CONTROL and part & 0x0F >= lanes:
            raise RemoteProtocolError(f"data on lane {part & 0x0F}, which does not exist",
                                      "protocol")
    return parts


def unpack_parts(plaintext: bytes) -> list[tuple[int, bytes]]:
    """The ``(kind, plaintext)`` parts of a mixed frame, all or none."""
    out = []
    pos = 0
    while pos < len(plaintext):
        kind = plaintext[pos]
        if not is_part_kind(kind):
            raise RemoteProtocolError(f"part of kind {kind:#x} in a mixed frame", "protocol")
        size, pos = varint.decode(plaintext, pos + 1)
        if size > len(plaintext) - pos:
            raise RemoteProtocolError("part overruns its mixed frame", "truncated")
        out.append((kind, plaintext[pos : pos + size]))
        pos += size
    if len(out) < 2:
        raise RemoteProtocolError("a mixed frame holds two parts or more", "protocol")
    return out


def encode_ack_lanes(states: list[tuple[int, int, list[tuple[int, int]]]]) -> list[Any]:
    """``[[lane, cum, start, end, start, end...], ...]``"""
    return [[lane, cum] + [x for r in ranges for x in r] for lane, cum, ranges in states]


def decode_ack_lanes(value: list[Any]) -> list[tuple[int, int, list[tuple[int, int]]]]:
    out = []
    for entry in value:
        if (
            not isinstance(entry, list)
            or len(entry) < 2
            or len(entry) % 2
            or not all(type(x) is int and x >= 0 for x in entry)
        ):
            raise RemoteProtocolError("malformed ack lane entry", "bad-ack")
        lane, cum, flat = entry[0], entry[1], entry[2:]
        ranges = [(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]
        if lane >= MAX_LANES or any(not cum < s < e for s, e in ranges):
            raise RemoteProtocolError("ack ranges out of order", "bad-ack")
        out.append((lane, cum, ranges))
    return out


def positions(value: list[Any], lanes: int) -> list[int]:
    if len(value) != lanes or not all(type(x) is int and x >= 0 for x in value):
        raise RemoteProtocolError("resume positions malformed", "bad-resume")
    return list(value)
