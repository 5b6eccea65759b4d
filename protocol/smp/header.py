"""The 8-byte SMP header (SPEC.md, "Console"; Zephyr's ``smp_hdr``).

    byte 0   res:3 | version:2 | op:3   (op 0 read, 1 read response, 2 write, 3 write response)
    byte 1   flags
    2..3     length of the CBOR body, big-endian
    4..5     group, big-endian
    6        sequence number (a response echoes its request's)
    7        command id

Version 1 is SMP version 2 (the ``err`` map for group errors); 0 is the original.
"""

from __future__ import annotations

from dataclasses import dataclass

from protocol.errors import RemoteProtocolError

SIZE = 8

OP_READ = 0
OP_READ_RSP = 1
OP_WRITE = 2
OP_WRITE_RSP = 3

VERSION_1 = 0
VERSION_2 = 1


@dataclass(frozen=True)
class Header:
    __match_args__ = ("op", "version", "flags", "length", "group", "seq", "command")
    op: int
    version: int
    flags: int
    length: int
    group: int
    seq: int
    command: int

    def encode(self) -> bytes:
        return bytes((
            ((self.version & 0x3) << 3) | (self.op & 0x7),
            self.flags & 0xFF,
            (self.length >> 8) & 0xFF, self.length & 0xFF,
            (self.group >> 8) & 0xFF, self.group & 0xFF,
            self.seq & 0xFF,
            self.command & 0xFF,
        ))

    @property
    def is_request(self) -> bool:
        return self.op in (OP_READ, OP_WRITE)

    def response(self, length: int) -> Header:
        """The header of this request's response: op + 1, same version, group, seq, command."""
        return Header(self.op + 1, self.version, 0, length, self.group, self.seq, self.command)


def decode(data: bytes) -> Header:
    """The header at the start of ``data``; ``RemoteProtocolError`` if it is too short."""
    if len(data) < SIZE:
        raise RemoteProtocolError(f"SMP header needs {SIZE} bytes, got {len(data)}", "smp-short")
    b0 = data[0]
    return Header(op=b0 & 0x7, version=(b0 >> 3) & 0x3, flags=data[1],
                  length=(data[2] << 8) | data[3], group=(data[4] << 8) | data[5],
                  seq=data[6], command=data[7])


def split(packet: bytes) -> tuple[Header, bytes]:
    """A packet's header and CBOR body; ``RemoteProtocolError`` if its length lies."""
    head = decode(packet)
    body = packet[SIZE:]
    if head.length != len(body):
        raise RemoteProtocolError(
            f"SMP header says {head.length} body bytes, the packet holds {len(body)}",
            "smp-length")
    return head, body


def pack(head: Header, body: bytes) -> bytes:
    """A packet: ``head`` with its length set to ``body``'s, then ``body``."""
    return Header(head.op, head.version, head.flags, len(body), head.group, head.seq,
                  head.command).encode() + body
