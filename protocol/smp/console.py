"""Zephyr's "SMP over console" framing (SPEC.md, "Console"), both directions.

A packet (SMP header + CBOR body) travels as ``u16be(len(packet) + 2) || packet ||
u16be(crc16_xmodem(packet))``, base64-encoded and cut into lines. The first line
starts 0x06 0x09, each continuation 0x04 0x14; every line ends with ``\\n``. Each
line holds a whole number of base64 quanta (a multiple of 4 characters), so each
decodes alone. Clients send lines of 128 bytes or less (smpclient, mcumgr); we
accept longer ones up to the decoder's ``max_line``.

``SmpLines`` reassembles a packet from its lines. Everything wrong (bad base64, a
length outside the bounds, more bytes than the length said, a bad CRC, a
continuation with no start, a start while a packet was half read) drops the packet
and is counted, never raised: a console line is noisy weather, like a frame.
"""

from __future__ import annotations

import binascii
from dataclasses import dataclass

from protocol import MICROPYTHON

START = b"\x06\x09"
CONTINUE = b"\x04\x14"
END = b"\n"
MARKER_SIZE = 2
LINE_LENGTH = 128  #: smpclient's and mcumgr's convention, markers and newline included
#: The largest packet we take (header + body); the MCUmgr params advertise it (+ 4).
DEFAULT_MAX_PACKET = 4096
B64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="
_B64_BYTES = frozenset(B64_ALPHABET)


def _crc16_table() -> list[int]:
    table = []
    for i in range(256):
        crc = i << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
        table.append(crc & 0xFFFF)
    return table


_CRC16 = _crc16_table()


def crc16_xmodem(data: bytes, crc: int = 0) -> int:
    """CRC-16/XMODEM (poly 0x1021, init 0, no reflection, no xor out)."""
    table = _CRC16
    for b in data:
        crc = ((crc << 8) & 0xFFFF) ^ table[(crc >> 8) ^ b]
    return crc


def encode(packet: bytes, *, line_length: int = LINE_LENGTH) -> bytes:
    """The console lines of one SMP packet, each at most ``line_length`` bytes."""
    if len(packet) + 2 > 0xFFFF:
        raise ValueError(f"an SMP packet of {len(packet)} bytes does not fit a u16 length")
    per_line = ((line_length - MARKER_SIZE - len(END)) // 4) * 4
    if per_line < 4:
        raise ValueError(f"line_length {line_length} cannot carry base64")
    n = len(packet) + 2
    raw = bytes(((n >> 8) & 0xFF, n & 0xFF)) + packet
    crc = crc16_xmodem(packet)
    raw += bytes(((crc >> 8) & 0xFF, crc & 0xFF))
    text = binascii.b2a_base64(raw)[:-1]  # without its newline
    out = bytearray()
    for i in range(0, len(text), per_line):
        out += START if i == 0 else CONTINUE
        out += text[i : i + per_line]
        out += END
    return bytes(out)


def in_alphabet(text: bytes) -> bool:
    """Whether ``text`` holds only base64's characters (what an SMP line carries)."""
    if MICROPYTHON:  # its bytes have no translate()
        return all(c in _B64_BYTES for c in text)
    return not text.translate(None, B64_ALPHABET)


def is_base64(text: bytes) -> bool:
    """Whether ``text`` is whole base64 quanta: the alphabet, a multiple of 4 long, and
    at most two ``=``, only at the end."""
    body = text.rstrip(b"=")
    return (len(text) % 4 == 0 and len(text) - len(body) <= 2 and b"=" not in body
            and in_alphabet(body))


@dataclass
class LineStats:
    __match_args__ = ("packets", "bad_base64", "bad_length", "bad_crc", "orphans", "abandoned")
    packets: int = 0  #: good packets handed out
    bad_base64: int = 0  #: lines whose text was not base64
    bad_length: int = 0  #: a length too small, too large, or exceeded by the data
    bad_crc: int = 0  #: whole packets whose CRC did not match
    orphans: int = 0  #: continuation lines with no packet started
    abandoned: int = 0  #: packets left half read when a new one started

    @property
    def dropped(self) -> int:
        return (self.bad_base64 + self.bad_length + self.bad_crc + self.orphans
                + self.abandoned)


class SmpLines:
    """Reassembles SMP packets from console lines; never raises on bad lines.

    >>> r = SmpLines()
    >>> lines = encode(bytes(8)).split(b"\\n")[:-1]
    >>> r.line(lines[0][:2] == START, lines[0][2:])
    b'\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00'
    """

    def __init__(self, *, max_packet: int = DEFAULT_MAX_PACKET) -> None:
        self.max_packet = max_packet
        self._buf = bytearray()
        self._want = 0  #: length + CRC bytes the packet under way needs; 0: none
        self.stats = LineStats()

    @property
    def busy(self) -> bool:
        """A packet is half read."""
        return self._want != 0

    def reset(self) -> None:
        self._buf = bytearray()
        self._want = 0

    def line(self, first: bool, text: bytes) -> bytes | None:
        """Take one line's base64 (markers and newline stripped); a whole packet, or None."""
        if first and self._want:
            self.stats.abandoned += 1
            self.reset()
        if not first and not self._want:
            self.stats.orphans += 1
            return None
        if not is_base64(text):
            self.stats.bad_base64 += 1
            self.reset()
            return None
        try:
            raw = binascii.a2b_base64(text)
        except ValueError:  # binascii.Error is one (MicroPython has no binascii.Error)
            self.stats.bad_base64 += 1
            self.reset()
            return None
        if first:
            if len(raw) < 2:
                self.stats.bad_length += 1
                return None
            want = (raw[0] << 8) | raw[1]
            # At least an 8-byte header and the CRC; at most the largest packet and the CRC.
            if want < 8 + 2 or want > self.max_packet + 2:
                self.stats.bad_length += 1
                return None
            self._want = want
            raw = raw[2:]
        self._buf += raw
        if len(self._buf) < self._want:
            return None
        buf, want = self._buf, self._want
        self.reset()
        if len(buf) > want:
            self.stats.bad_length += 1
            return None
        packet = bytes(buf[:-2])
        if crc16_xmodem(packet) != (buf[-2] << 8) | buf[-1]:
            self.stats.bad_crc += 1
            return None
        self.stats.packets += 1
        return packet
