"""ESC/POS for the check-in ticket: the dozen commands it needs, as bytes, and the status.

Theory of operation
-------------------
Pure: nothing here opens a device or reads a clock. ``ticket_bytes`` lays a
``Ticket`` out for a paper ``width`` in dots (384 on 58 mm paper, 576 on
80 mm, at the 203 dpi of nearly every thermal receipt printer) and returns
the bytes; ``printer`` writes them. The commands are those of Epson's
ESC/POS that cheap clones implement too:

====================  ==========================================================
``ESC @``             reset (also drops what a previous, broken ticket left)
``ESC R 0``           international character set USA
``ESC t 0``           code page PC437
``ESC a 1``           centre each line (the raster image too)
``ESC E n``           bold on/off (the clinic)
``GS ! n``            character size, width and height 1..8 times (the number)
``LF``, ``ESC d n``   print the line; print and feed ``n`` lines
``ESC J n``           print and feed ``n`` dots (the QR's quiet zone)
``GS v 0``            a raster bit image (the QR code), in bands of ``BAND_ROWS``
``GS V 66 0``         feed to the cutter and cut, leaving a hinge (partial cut)
``DLE EOT n``         real-time status, one byte each for n = 1..4
====================  ==========================================================

The QR code is drawn here, from segno's module matrix, as a raster image,
so a printer without a native QR command (``GS ( k``, which many clones
lack) prints it too. Each module is ``scale`` dots square, about a third of
the paper's width in all; the quiet zone is blank paper: the image is
centred on rows of its own, with ``ESC J`` feeds above and below.

Text is printable ASCII only (0x20-0x7E), sent after ``ESC R 0`` and
``ESC t 0``: those bytes print the same in every code page a receipt
printer offers, so what is printed is what was meant, whichever code page a
printer's switches chose. The ticket carries no words in a language, only
the clinic's name, digits and the patient code, so it reads the same to a
patient of every language. The clinic's name (the kiosk's ``site``) is
transliterated (``printable``): accents dropped, a few letters spelled out
(ß as ss, Ø as O); a character with no ASCII spelling, as in a name in
Arabic script, prints as ``?``; it is wrapped at spaces to the paper's
width. The queue number and the code are ours and ASCII already; anything
else there is refused (``TicketError``).

Status (``decode_status``): each answer to ``DLE EOT n`` is one byte whose
bits 0 and 7 are 0 and bits 1 and 4 are 1; a byte that breaks that rule is
no status (``PrinterAnswerError``: garbage on the line, or a device that is
not an ESC/POS printer). The bits read here:

- n = 1 (printer): bit 3 offline;
- n = 2 (offline cause): bit 2 cover open, bit 5 stopped at paper end,
  bit 6 an error;
- n = 3 (error cause): bit 2 recoverable error, bit 3 autocutter (a jam),
  bit 5 unrecoverable, bit 6 auto-recoverable (a hot head);
- n = 4 (roll paper sensor): bits 2-3 near end, bits 5-6 paper end.
"""

from __future__ import annotations

import textwrap
import unicodedata
from dataclasses import dataclass

import segno

from device.exc import PrinterAnswerError, TicketError

ESC, GS, DLE, EOT, LF = b"\x1b", b"\x1d", b"\x10", b"\x04", b"\n"
INIT = ESC + b"@"
CHARSET_USA = ESC + b"R\x00"
CODE_PAGE_437 = ESC + b"t\x00"
CENTRE = ESC + b"a\x01"
BOLD_ON, BOLD_OFF = ESC + b"E\x01", ESC + b"E\x00"
NORMAL_SIZE = GS + b"!\x00"
CUT = GS + b"V\x42\x00"
#: Font A, the default: a character cell in dots.
CELL_W, CELL_H = 12, 24
MAX_SIZE = 4  #: the queue number's largest magnification (48 x 96 dots a character)
CODE_SIZE = 2  #: the patient code's
BAND_ROWS = 256  #: rows per GS v 0 command: small enough for a clone's buffer
TAIL_LINES = 4  #: fed before the cut, so a tear-off printer's bar clears the QR
WIDTHS = range(256, 833, 8)  #: print widths in dots this writer lays out for

#: Letters that decomposition does not take to ASCII.
SPELLED = {"ß": "ss", "Æ": "AE", "æ": "ae", "Œ": "OE", "œ": "oe", "Ø": "O", "ø": "o",
           "Đ": "D", "đ": "d", "Ł": "L", "ł": "l", "Þ": "Th", "þ": "th", "Ð": "D", "ð": "d",
           "ı": "i", "‘": "'", "’": "'", "“": '"', "”": '"', "–": "-", "—": "-"}

# A printer's states: what its status says (ok to error), then what ``printer`` finds when
# it does not answer (failed: a write error, a timeout, garbage; absent: no such device),
# or before it has been asked (unknown).
OK, PAPER_LOW, PAPER_OUT, COVER_OPEN, ERROR = "ok", "paper-low", "paper-out", "cover-open", "error"
FAILED, ABSENT, UNKNOWN = "failed", "absent", "unknown"
STATES = (OK, PAPER_LOW, PAPER_OUT, COVER_OPEN, ERROR, FAILED, ABSENT, UNKNOWN)
#: What ``DLE EOT n`` is asked, in order: ``decode_status`` reads one answer to each.
STATUS_QUERIES = (1, 2, 3, 4)


@dataclass(frozen=True)
class Ticket:
    queue_number: str
    #: The date (and time) as printed, e.g. ``2026-12-05 09:41``: digits and separators.
    when: str
    clinic: str
    #: A new patient's short code: printed, and as a QR code.
    code: str | None = None


def printable(text: str) -> str:
    """``text`` in printable ASCII: accents dropped, a few letters spelled out, every
    other character ``?``; white space collapsed."""
    out = []
    for c in unicodedata.normalize("NFKD", " ".join(text.split())):
        if " " <= c <= "~":
            out.append(c)
        elif c in SPELLED:
            out.append(SPELLED[c])
        elif unicodedata.category(c) != "Mn":  # a combining mark goes with its letter
            out.append("?")
    return "".join(out)


def _ours(text: str, what: str) -> bytes:
    """A field the kiosk made (number, code, date): printable ASCII, or a TicketError."""
    if not text or not all(" " <= c <= "~" for c in text):
        raise TicketError(f"the ticket's {what} {text!r} is not printable ASCII")
    return text.encode("ascii")


def size(times: int) -> bytes:
    """``GS !``: characters ``times`` as wide and as high (1..8)."""
    if not 1 <= times <= 8:
        raise TicketError(f"character size {times} is not 1 to 8")
    return GS + b"!" + bytes([(times - 1) << 4 | (times - 1)])


def feed_lines(n: int) -> bytes:
    return ESC + b"d" + bytes([n])


def feed_dots(n: int) -> bytes:
    return ESC + b"J" + bytes([n])


def status_query(n: int) -> bytes:
    return DLE + EOT + bytes([n])


def fitting_size(text: bytes, width: int, largest: int) -> int:
    """The largest magnification (up to ``largest``) at which ``text`` fits one line."""
    return max(1, min(largest, width // (CELL_W * max(1, len(text)))))


def qr_matrix(text: str) -> list[bytearray]:
    """The QR code of ``text`` as rows of modules (1 dark), no quiet zone. Never a Micro
    QR (segno picks one for short texts), which phones and many scanners do not read."""
    return [bytearray(row) for row in segno.make(text, error="m", micro=False).matrix]


def qr_scale(modules: int, width: int) -> int:
    """Dots per module: the code about a third of the paper's width, 3 to 8 dots."""
    return max(3, min(8, width // 3 // modules))


def raster(rows: list[bytearray], width: int) -> bytes:
    """``GS v 0`` commands for an image of 0/1 ``rows``, centred in whole bytes."""
    dots = len(rows[0]) if rows else 0
    if not rows or dots > width or any(len(r) != dots for r in rows):
        raise TicketError(f"an image of {dots} dots does not fit {width} dots")
    row_bytes = (dots + 7) // 8
    pad = (row_bytes * 8 - dots) // 2
    shift = row_bytes * 8 - dots - pad
    packed = []
    for row in rows:
        bits = int("".join("1" if v else "0" for v in row), 2) << shift
        packed.append(bits.to_bytes(row_bytes, "big"))
    out = bytearray()
    for start in range(0, len(packed), BAND_ROWS):
        band = packed[start:start + BAND_ROWS]
        out += GS + b"v0\x00" + row_bytes.to_bytes(2, "little") + len(band).to_bytes(2, "little")
        out += b"".join(band)
    return bytes(out)


def qr_image(text: str, width: int) -> bytes:
    """``text``'s QR code as a centred raster image with a quiet zone of paper."""
    matrix = qr_matrix(text)
    scale = qr_scale(len(matrix), width)
    rows: list[bytearray] = []
    for row in matrix:
        line = bytearray(v for v in row for _ in range(scale))
        rows.extend(bytearray(line) for _ in range(scale))
    quiet = feed_dots(4 * scale)
    return quiet + raster(rows, width) + quiet


def ticket_bytes(ticket: Ticket, width: int = 384) -> bytes:
    """The whole ticket: clinic, date, queue number large, and a new patient's code
    with its QR code; then the cut."""
    if width not in WIDTHS:
        raise TicketError(f"a print width of {width} dots is not 256 to 832 in steps of 8")
    number = _ours(ticket.queue_number, "queue number")
    out = bytearray(INIT + CHARSET_USA + CODE_PAGE_437 + CENTRE)
    clinic = textwrap.wrap(printable(ticket.clinic), width // CELL_W)  # at spaces
    if clinic:
        out += BOLD_ON + b"".join(line.encode("ascii") + LF for line in clinic) + BOLD_OFF
    out += _ours(ticket.when, "date") + LF + LF
    out += size(fitting_size(number, width, MAX_SIZE)) + number + LF + NORMAL_SIZE
    if ticket.code is not None:
        code = _ours(ticket.code, "patient code")
        out += LF + size(fitting_size(code, width, CODE_SIZE)) + code + LF + NORMAL_SIZE
        out += qr_image(ticket.code, width)
    out += feed_lines(TAIL_LINES) + CUT
    return bytes(out)


# Status ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PrinterStatus:
    """What the answers to ``DLE EOT 1..4`` say."""

    offline: bool
    cover_open: bool
    paper_out: bool
    paper_low: bool
    error: bool  #: a jam at the cutter, a hot head, a fault

    @property
    def state(self) -> str:
        if self.paper_out:
            return PAPER_OUT
        if self.cover_open:
            return COVER_OPEN
        if self.error or self.offline:
            return ERROR
        return PAPER_LOW if self.paper_low else OK

    @property
    def can_print(self) -> bool:
        return self.state in (OK, PAPER_LOW)


def is_status_byte(b: int) -> bool:
    return b & 0x93 == 0x12


def decode_status(answers: bytes) -> PrinterStatus:
    """The status from the answers to ``STATUS_QUERIES``, one byte each, in order."""
    if len(answers) != len(STATUS_QUERIES):
        raise PrinterAnswerError(f"{len(answers)} status bytes, not {len(STATUS_QUERIES)}",
                                 FAILED)
    for n, b in zip(STATUS_QUERIES, answers, strict=True):
        if not is_status_byte(b):
            raise PrinterAnswerError(f"the answer {b:#04x} to DLE EOT {n} is not a status",
                                     FAILED)
    printer, offline, error, paper = answers
    return PrinterStatus(offline=bool(printer & 0x08), cover_open=bool(offline & 0x04),
                         paper_out=bool(offline & 0x20 or paper & 0x60),
                         paper_low=bool(paper & 0x0C),
                         error=bool(offline & 0x40 or error & 0x6C))
