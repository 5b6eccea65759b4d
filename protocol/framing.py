"""Frames for byte streams: COBS, an optional CRC-32C, and 0x00 delimiters.

Theory of operation
-------------------
A frame on the wire is ``COBS(payload || crc32c(payload) as 4 bytes LE) 0x00``
(SPEC.md, "Frames"). COBS leaves no zero inside a frame, so a receiver that
joins mid-stream, or loses bytes to noise, is back in step at the next 0x00.
A frame whose COBS or CRC is bad is dropped and counted, never raised: on a
noisy line that is normal weather, not an error. Sessions whose frames carry
an AEAD tag build their decoder with ``crc=False``; the tag detects damage.

The decoder holds at most one frame's worth of bytes. A run of bytes longer
than the largest legal frame is discarded up to the next delimiter and
counted as oversized, so garbage cannot grow memory.

Empty frames (two delimiters in a row) are legal padding: a sender starts
each burst with a 0x00 to flush whatever noise preceded it.
"""

from __future__ import annotations

from dataclasses import dataclass

from protocol import cobs
from protocol.crc32c import crc32c
from protocol.errors import LocalProtocolError, RemoteProtocolError

DELIMITER = b"\x00"
CRC_SIZE = 4
DEFAULT_MAX_PAYLOAD = 4096


def encode_frame(payload: bytes, *, crc: bool = True) -> bytes:
    """Return the wire bytes of one frame, delimiter included."""
    if crc:
        payload = payload + crc32c(payload).to_bytes(CRC_SIZE, "little")
    return cobs.encode(payload) + DELIMITER


def wire_size(payload_size: int, *, crc: bool = True) -> int:
    """The most bytes a frame with ``payload_size`` bytes takes on the wire."""
    return cobs.max_encoded_size(payload_size + (CRC_SIZE if crc else 0)) + 1


@dataclass
class FrameStats:
    """What a ``FrameDecoder`` has seen. Every dropped run is in one count."""

    __match_args__ = ("frames", "bad_crc", "bad_cobs", "runts", "oversized")
    frames: int = 0  #: good frames handed to the caller
    bad_crc: int = 0  #: frames whose CRC did not match
    bad_cobs: int = 0  #: runs that were not valid COBS
    runts: int = 0  #: runs too short to hold a CRC
    oversized: int = 0  #: runs longer than the largest legal frame

    @property
    def dropped(self) -> int:
        """Frames (or runs of garbage) dropped for any reason."""
        return self.bad_crc + self.bad_cobs + self.runts + self.oversized


class FrameDecoder:
    """Turns a byte stream into frame payloads. Never raises on bad bytes.

    >>> d = FrameDecoder()
    >>> d.feed(encode_frame(b"hi") + b"junk" + encode_frame(b"there"))
    [b'hi', b'there']
    >>> d.stats.dropped
    0
    """

    def __init__(self, *, max_payload: int = DEFAULT_MAX_PAYLOAD, crc: bool = True) -> None:
        if max_payload < 1:
            raise LocalProtocolError("max_payload must be at least 1")
        self.crc = crc
        self.max_payload = max_payload
        self._max_run = cobs.max_encoded_size(max_payload + (CRC_SIZE if crc else 0))
        self._buf = bytearray()
        self._discarding = False
        self.stats = FrameStats()

    @property
    def buffered(self) -> int:
        """Bytes held while waiting for a delimiter (never above one frame)."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        """Take bytes from the line; return the payloads of complete good frames.

        ``data=b""`` is allowed and returns nothing.
        """
        out: list[bytes] = []
        start = 0
        n = len(data)
        while start < n:
            end = data.find(b"\x00", start)
            if end < 0:
                self._hold(data[start:])
                break
            self._hold(data[start:end])
            if self._discarding:
                self._discarding = False
            elif self._buf:
                payload = self._decode(bytes(self._buf))
                if payload is not None:
                    out.append(payload)
            self._buf = bytearray()
            start = end + 1
        return out

    def _hold(self, chunk: bytes) -> None:
        if self._discarding:
            return
        if len(self._buf) + len(chunk) > self._max_run:
            self.stats.oversized += 1
            self._buf = bytearray()
            self._discarding = True
            return
        self._buf += chunk

    def _decode(self, run: bytes) -> bytes | None:
        try:
            raw = cobs.decode(run)
        except RemoteProtocolError:
            self.stats.bad_cobs += 1
            return None
        if self.crc:
            if len(raw) < CRC_SIZE:
                self.stats.runts += 1
                return None
            payload, tail = raw[:-CRC_SIZE], raw[-CRC_SIZE:]
            if crc32c(payload).to_bytes(CRC_SIZE, "little") != tail:
                self.stats.bad_crc += 1
                return None
        else:
            payload = raw
        if len(payload) > self.max_payload:
            self.stats.oversized += 1
            return None
        self.stats.frames += 1
        return payload
