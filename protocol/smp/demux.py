"""One console byte stream, told apart packet by packet (SPEC.md, "Console").

Three things share the technician's port:

* SMP lines: ``0x06 0x09`` or ``0x04 0x14``, base64, ``\\n`` (``console``);
* Haven frames: COBS runs ended by ``0x00`` (``protocol.framing``);
* text: a shell's or a log's lines, and whatever noise the cable adds.

``Demux.feed(data)`` returns events in stream order: ``SmpPacket`` (a whole,
CRC-checked SMP packet), ``HavenFrame`` (the wire bytes of one COBS run with its
delimiter, ready for a session's decoder) and ``Text`` (bytes that were neither).

How a run is judged. The demux keeps the bytes since the last boundary (a ``0x00``,
an SMP line's end, or text already handed out), and the starts of the lines inside
it. At a ``\\n``, the line just ended is an SMP line if, after its last marker, it is
pure base64; what preceded the marker is text. (Base64 holds neither marker byte, so
text glued before an SMP line does not hide it.) At a ``0x00``, the run is a Haven
frame if it is valid COBS and its payload passes ``frame_check``; if not, the run
is tried again from each line start (text followed by a frame with no ``0x00``
between), at most ``MAX_FRAME_STARTS`` times; what is left is text.

Bounds: a run longer than ``max_run`` cannot be a frame: its complete lines go out
as text, and a single line that long is dropped to its next ``\\n`` or ``0x00`` and
counted. An SMP packet is at most ``max_packet`` bytes (``console.SmpLines``). No
other state grows, so garbage at line rate costs nothing but counters.

A COBS run may by chance hold ``0x06 0x09``, base64 and a ``\\n``; that piece is
then read as an SMP line and the frame is lost. The session's selective repeat
sends it again; a technician's tool never interleaves the two itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from protocol import MICROPYTHON, cobs
from protocol.errors import RemoteProtocolError
from protocol.smp.console import (
    CONTINUE,
    DEFAULT_MAX_PACKET,
    MARKER_SIZE,
    START,
    LineStats,
    SmpLines,
    in_alphabet,
)

if TYPE_CHECKING:
    from collections.abc import Callable

DEFAULT_MAX_RUN = 8192  #: the longest line or COBS run kept, in bytes
MAX_FRAME_STARTS = 16  #: line starts tried as a frame's start at each 0x00
MAX_TEXT = 512  #: text goes out in pieces of at most this many bytes


@dataclass(frozen=True)
class SmpPacket:
    """A whole SMP packet (header + CBOR body) whose CRC matched."""

    __match_args__ = ("data",)
    data: bytes


@dataclass(frozen=True)
class HavenFrame:
    """One COBS frame as it was on the wire, its 0x00 delimiter included."""

    __match_args__ = ("wire",)
    wire: bytes

    def payload(self) -> bytes:
        return cobs.decode(self.wire[:-1])


@dataclass(frozen=True)
class Text:
    """Bytes that were neither an SMP line nor a frame (a shell's lines, noise)."""

    __match_args__ = ("data",)
    data: bytes


if TYPE_CHECKING or not MICROPYTHON:  # MicroPython has no runtime union of types
    Event = SmpPacket | HavenFrame | Text


@dataclass
class DemuxStats:
    __match_args__ = ("smp_lines", "haven_frames", "text_bytes", "oversized", "oversized_bytes",
                      "padding")
    smp_lines: int = 0
    haven_frames: int = 0
    text_bytes: int = 0
    oversized: int = 0  #: lines (or runs) longer than ``max_run``, dropped
    oversized_bytes: int = 0
    padding: int = 0  #: empty runs (0x00 after a boundary)


def _any_payload(payload: bytes) -> bool:
    return len(payload) > 0


class Demux:
    """Bytes in, events out; never raises on bad bytes, never grows past its bounds.

    >>> from protocol.framing import encode_frame
    >>> from protocol.smp.console import encode
    >>> d = Demux()
    >>> evs = d.feed(b"boot ok\\n" + encode(bytes(8)) + encode_frame(b"hi") + b"\\x00")
    >>> [type(e).__name__ for e in evs]
    ['Text', 'SmpPacket', 'HavenFrame']
    """

    def __init__(self, *, max_run: int = DEFAULT_MAX_RUN, max_packet: int = DEFAULT_MAX_PACKET,
                 frame_check: Callable[[bytes], bool] = _any_payload) -> None:
        self.max_run = max_run
        self.frame_check = frame_check
        self.lines = SmpLines(max_packet=max_packet)
        self.stats = DemuxStats()
        self._run = bytearray()
        self._starts: list[int] = []  #: offsets in _run where a line begins (after a \n)
        self._discarding = False

    @property
    def line_stats(self) -> LineStats:
        return self.lines.stats

    def feed(self, data: bytes) -> list[Event]:
        out: list[Event] = []
        i, n = 0, len(data)
        next_nl = data.find(b"\n")
        next_zero = data.find(b"\x00")
        while i < n:
            if 0 <= next_nl < i:
                next_nl = data.find(b"\n", i)
            if 0 <= next_zero < i:
                next_zero = data.find(b"\x00", i)
            ends = [j for j in (next_nl, next_zero) if j >= 0]
            if not ends:
                self._take(data[i:], out)
                break
            j = min(ends)
            self._take(data[i:j], out)
            if self._discarding:
                self._discarding = False
                self._clear()
            elif data[j] == 0:
                self._end_run(out)
            else:
                self._end_line(out)
            i = j + 1
        return out

    def flush(self) -> list[Event]:
        """Hand out the complete lines held (call when the line has gone quiet)."""
        out: list[Event] = []
        if self._starts:
            cut = self._starts[-1]
            self._text(bytes(self._run[:cut]), out)
            self._run = self._run[cut:]
            self._starts = []
        return out

    # -- the pieces --------------------------------------------------------------

    def _clear(self) -> None:
        self._run = bytearray()
        self._starts = []

    def _take(self, chunk: bytes, out: list[Event]) -> None:
        if not chunk:
            return
        if self._discarding:
            self.stats.oversized_bytes += len(chunk)
            return
        if len(self._run) + len(chunk) <= self.max_run:
            self._run += chunk
            return
        # Too long to be a frame: complete lines go out as text, a too-long line is dropped.
        out.extend(self.flush())
        if len(self._run) + len(chunk) <= self.max_run:
            self._run += chunk
            return
        self.stats.oversized += 1
        self.stats.oversized_bytes += len(self._run) + len(chunk)
        self._clear()
        self._discarding = True

    def _text(self, data: bytes, out: list[Event]) -> None:
        self.stats.text_bytes += len(data)
        for k in range(0, len(data), MAX_TEXT):
            out.append(Text(data[k : k + MAX_TEXT]))

    def _end_line(self, out: list[Event]) -> None:
        start = self._starts[-1] if self._starts else 0
        line = bytes(self._run[start:])
        at = max(line.rfind(START), line.rfind(CONTINUE))
        if at >= 0:
            text = line[at + MARKER_SIZE :]
            if text.endswith(b"\r"):
                text = text[:-1]
            if text and in_alphabet(text):
                self.stats.smp_lines += 1
                self._text(bytes(self._run[: start + at]), out)
                self._clear()
                packet = self.lines.line(line[at : at + MARKER_SIZE] == START, text)
                if packet is not None:
                    out.append(SmpPacket(packet))
                return
        self._run += b"\n"
        self._starts.append(len(self._run))
        if len(self._starts) > MAX_FRAME_STARTS:
            del self._starts[0]

    def _end_run(self, out: list[Event]) -> None:
        run = bytes(self._run)
        starts = [0] + self._starts
        self._clear()
        if not run:
            self.stats.padding += 1
            return
        for s in starts:
            if s >= len(run):
                break
            try:
                payload = cobs.decode(run[s:])
            except RemoteProtocolError:
                continue
            if self.frame_check(payload):
                self._text(run[:s], out)
                self.stats.haven_frames += 1
                out.append(HavenFrame(run[s:] + b"\x00"))
                return
        self._text(run, out)
