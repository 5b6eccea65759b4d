"""The ticket printer: the exact bytes of a ticket, its layout on paper, the status a
serial printer answers, and the errors of a device file, each turned into a state.

Tickets are rendered by a small ESC/POS interpreter (``escpos_render``); the QR code
on the rendered paper is read back with zxing-cpp. Serial printers are simulated on a
pty pair (``printer_sim``), device files are regular files, FIFOs and /dev/full.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from pathlib import Path

import pytest
import segno
import zxingcpp

from device.exc import PrinterAnswerError, TicketError
from device.hardware import escpos
from device.hardware.escpos import Ticket
from device.hardware.printer import Printer

from .escpos_render import Block, render
from .printer_sim import SerialPrinter, StalledFifo

PLAIN = Ticket("B-007", "2026-12-05 09:41", "North")
NEW = Ticket("B-008", "2026-12-05 09:42", "North", code="7K3M-9QX2")
HEAD = b"\x1b@\x1bR\x00\x1bt\x00\x1ba\x01"  # reset, USA, PC437, centred
TAIL = b"\x1bd\x04\x1dV\x42\x00"  # feed 4 lines, partial cut


def qr_packed(text: str, scale: int) -> tuple[int, list[bytes]]:
    """The QR's raster rows as the test computes them: bytes per row, rows."""
    matrix = segno.make(text, error="m", micro=False).matrix
    dots = len(matrix) * scale
    row_bytes = (dots + 7) // 8
    left = (row_bytes * 8 - dots) // 2
    rows = []
    for row in matrix:
        bits = [0] * left + [v for v in row for _ in range(scale)]
        bits += [0] * (row_bytes * 8 - len(bits))
        packed = bytes(sum(bits[8 * k + j] << (7 - j) for j in range(8))
                       for k in range(row_bytes))
        rows += [packed] * scale
    return row_bytes, rows


def print_now(printer: Printer, ticket: Ticket) -> bool:
    return asyncio.run(printer.print_ticket(ticket))


# The bytes -----------------------------------------------------------------------------

def test_a_ticket_without_code_is_exactly_these_bytes(tmp_path: Path) -> None:
    want = (HEAD + b"\x1bE\x01North\n\x1bE\x00" + b"2026-12-05 09:41\n\n"
            + b"\x1d!\x33B-007\n\x1d!\x00" + TAIL)  # the number 4 times as large
    assert escpos.ticket_bytes(PLAIN, 384) == want
    device = tmp_path / "lp0"
    device.touch()
    printer = Printer(str(device), width=384, timeout=2)
    assert print_now(printer, PLAIN) is True
    assert device.read_bytes() == want
    assert printer.snapshot()["state"] == "ok"


def test_a_ticket_with_code_is_exactly_these_bytes(tmp_path: Path) -> None:
    row_bytes, rows = qr_packed("7K3M-9QX2", 6)  # 21 modules, 6 dots each: 126 dots
    assert (row_bytes, len(rows)) == (16, 126)
    qr = (b"\x1bJ\x18" + b"\x1dv0\x00\x10\x00\x7e\x00" + b"".join(rows) + b"\x1bJ\x18")
    want = (HEAD + b"\x1bE\x01North\n\x1bE\x00" + b"2026-12-05 09:42\n\n"
            + b"\x1d!\x33B-008\n\x1d!\x00" + b"\n\x1d!\x117K3M-9QX2\n\x1d!\x00" + qr + TAIL)
    assert escpos.ticket_bytes(NEW, 384) == want
    # through a FIFO, as a printer's device node: a reader takes it as it comes
    fifo = tmp_path / "lp0"
    os.mkfifo(fifo)
    got = bytearray()
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)

    def drain() -> None:
        for _ in range(400):  # bounded: 4 s at most
            try:
                chunk = os.read(reader, 65536)
            except BlockingIOError:
                chunk = b""
            got.extend(chunk)
            if got.endswith(TAIL):
                return
            time.sleep(0.01)

    thread = threading.Thread(target=drain)
    thread.start()
    try:
        assert print_now(Printer(str(fifo), width=384, timeout=2), NEW) is True
        thread.join(5)
    finally:
        os.close(reader)
    assert bytes(got) == want


@pytest.mark.parametrize("width", [384, 576])
def test_the_ticket_laid_out_on_paper(width: int) -> None:
    long = Ticket("B12-1234", "2026-12-05 09:42", "Centre de Santé Saint-Étienne du Grand Nord",
                  code="7K3M-9QX2")
    paper = render(escpos.ticket_bytes(long, width), width)
    texts = [b for b in paper.blocks if b.kind == "text"]
    (qr,) = [b for b in paper.blocks if b.kind == "image"]
    assert all(b.x >= 0 and b.x + b.w <= width for b in paper.blocks), paper.blocks
    # clinic (bold, transliterated, wrapped at a space), date, number, code, QR: in order
    clinic = [b for b in texts if b.bold]
    assert " ".join(b.text for b in clinic) == "Centre de Sante Saint-Etienne du Grand Nord"
    number = max(texts, key=lambda b: b.size)
    assert number.text == "B12-1234" and number.size == 4
    order = [b.text for b in texts if not b.bold]
    assert order == ["2026-12-05 09:42", "B12-1234", "7K3M-9QX2"]
    assert clinic[-1].y < texts[len(clinic)].y < number.y < qr.y
    assert centred(number, width) and centred(qr, width)
    # the QR is a third of the paper or so, and reads back as the code
    assert width // 4 <= qr.w <= width // 2
    (found,) = zxingcpp.read_barcodes(paper.image())
    assert found.text == "7K3M-9QX2" and found.format == zxingcpp.BarcodeFormat.QRCode
    assert paper.cuts == [paper.height]


def centred(b: Block, width: int) -> bool:
    return abs(b.x + b.w / 2 - width / 2) <= 8


def test_a_long_queue_number_gets_smaller_type_and_still_fits() -> None:
    for number, size in (("A-001", 4), ("A12-001", 4), ("A12-10000", 3)):
        paper = render(escpos.ticket_bytes(Ticket(number, "2026-12-05", "X"), 384), 384)
        (block,) = [b for b in paper.blocks if b.text == number]
        assert block.size == size and block.w <= 384


def test_printed_text_is_ascii() -> None:
    assert escpos.printable("Santé  Ørsted\tStraße") == "Sante Orsted Strasse"
    assert escpos.printable("مستوصف النور") == "?????? ?????"  # no spelling in ASCII
    assert escpos.printable("Łódź\x00") == "Lodz?"
    data = escpos.ticket_bytes(Ticket("A-001", "2026-12-05", "Clinique \u202eÉvry"), 576)
    assert all(b < 0x80 for b in data[:40])
    render(data, 576)  # every text byte printable ASCII


@pytest.mark.parametrize("ticket", [
    Ticket("", "2026-12-05", "X"), Ticket("A-001\n", "2026-12-05", "X"),
    Ticket("A-001", "2026-12-05", "X", code="7K3M-9QX\u00e9"), Ticket("A-001", "\x1b@", "X")])
def test_a_field_of_ours_that_is_not_ascii_is_refused(ticket: Ticket) -> None:
    with pytest.raises(TicketError):
        escpos.ticket_bytes(ticket, 384)


def test_a_width_that_is_not_a_printers_is_refused() -> None:
    for width in (100, 385, 1024):
        with pytest.raises(TicketError):
            escpos.ticket_bytes(PLAIN, width)
        with pytest.raises(TicketError):
            Printer("/dev/null", width=width)


# Status ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("answers", "state"), [
    (b"\x12\x12\x12\x12", "ok"), (b"\x16\x12\x12\x12", "ok"),  # drawer pin: no matter
    (b"\x12\x12\x12\x1e", "paper-low"), (b"\x1a\x32\x12\x72", "paper-out"),
    (b"\x12\x12\x12\x72", "paper-out"), (b"\x1a\x16\x12\x12", "cover-open"),
    (b"\x1a\x52\x1a\x12", "error"), (b"\x12\x12\x32\x12", "error"),
    (b"\x1a\x12\x12\x12", "error")])  # offline, no cause given
def test_status_bytes(answers: bytes, state: str) -> None:
    status = escpos.decode_status(answers)
    assert status.state == state
    assert status.can_print == (state in ("ok", "paper-low"))


@pytest.mark.parametrize("answers", [b"", b"\x12\x12\x12", b"\x12\x12\x12\x12\x12",
                                     b"\xff\x12\x12\x12", b"\x12\x12\x12\x00", b"OK\r\n",
                                     b"\x12\x13\x12\x12", b"\x92\x12\x12\x12"])
def test_anything_but_four_status_bytes_is_garbage(answers: bytes) -> None:
    with pytest.raises(PrinterAnswerError) as info:
        escpos.decode_status(answers)
    assert info.value.state == "failed"


# A serial printer on a pty -----------------------------------------------------------------

@pytest.mark.parametrize(("mode", "printed", "state"), [
    ("ok", True, "ok"), ("paper-low", True, "paper-low"), ("paper-out", False, "paper-out"),
    ("cover-open", False, "cover-open"), ("jammed", False, "error"),
    ("garbage", False, "failed"), ("silence", False, "failed")])
def test_a_serial_printer_prints_only_when_its_status_says_it_can(
        mode: str, printed: bool, state: str) -> None:
    sim = SerialPrinter(mode)
    try:
        printer = Printer(sim.path, width=384, timeout=1.5)
        assert print_now(printer, NEW) is printed
        assert printer.snapshot()["state"] == state
        assert sim.queries[:1] == [1]  # asked before anything is sent
        assert sim.wait_received(TAIL, 5.0 if printed else 0.05) == (
            escpos.ticket_bytes(NEW, 384) if printed else b"")
    finally:
        sim.close()


def test_a_serial_printer_that_stops_taking_bytes_fails_at_the_deadline() -> None:
    sim = SerialPrinter("ok")
    try:
        sim.stall()
        printer = Printer(sim.path, timeout=0.3)
        assert print_now(printer, NEW) is False
        assert printer.snapshot()["state"] == "failed"
        assert "not taken" in printer.snapshot()["detail"]
    finally:
        sim.close()


def test_after_a_job_stuck_past_its_deadline_tickets_fail_at_once() -> None:
    """A network printer whose host takes no connection: pyserial's connect waits 5 s of
    its own. The listener's queue is full, so the kernel drops the kiosk's SYNs."""
    with socket.socket() as server, socket.socket() as filler:
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        filler.connect(server.getsockname())  # the one place in the queue, never accepted
        host, port = server.getsockname()
        printer = Printer(f"socket://{host}:{port}", timeout=0.3)
        assert print_now(printer, PLAIN) is False  # waited for its timeout
        assert "no result" in printer.snapshot()["detail"]
        assert print_now(printer, PLAIN) is False  # the connect still hangs: no waiting
        assert printer.snapshot() == {
            "state": "failed", "detail": "the printer's last job has not ended by its deadline"}


def test_staff_see_a_serial_printer_refilled(tmp_path: Path) -> None:
    sim = SerialPrinter("paper-out")
    printer = Printer(sim.path, timeout=1.0)
    try:
        for mode, state in (("paper-out", "paper-out"), ("ok", "ok")):
            sim.mode = mode
            printer.refresh(0)  # in the background: the snapshot follows
            assert wait_state(printer, state)
        assert sim.received == b""  # a look prints nothing
    finally:
        printer.close()
        sim.close()


def wait_state(printer: Printer, state: str) -> bool:
    for _ in range(300):  # bounded: 3 s
        if printer.snapshot()["state"] == state:
            return True
        time.sleep(0.01)
    return False


# A device file ----------------------------------------------------------------------------

def test_device_file_errors_are_states(tmp_path: Path) -> None:
    fifo = tmp_path / "unread"
    os.mkfifo(fifo)
    cases = [(str(tmp_path / "missing"), "absent"),  # unplugged: no node
             (str(fifo), "absent"),  # a FIFO nobody reads: ENXIO, as a node without device
             ("/dev/full", "paper-out"),  # ENOSPC, which usblp gives at paper end
             (str(tmp_path), "failed")]  # EISDIR: anything else fails
    for target, state in cases:
        printer = Printer(target, timeout=1.0)
        assert print_now(printer, PLAIN) is False, target
        assert printer.snapshot()["state"] == state, target


def test_a_device_that_stops_taking_bytes_fails_at_the_deadline(tmp_path: Path) -> None:
    fifo = StalledFifo(tmp_path / "lp0")
    try:
        printer = Printer(str(fifo.path), timeout=0.3)
        assert print_now(printer, NEW) is False
        assert printer.snapshot()["state"] == "failed"
        assert "not taken" in printer.snapshot()["detail"]
    finally:
        fifo.close()


def test_a_device_file_back_after_unplugging_is_unknown_until_a_ticket(tmp_path: Path) -> None:
    device = tmp_path / "lp0"
    printer = Printer(str(device), timeout=1.0)
    printer.refresh(0)
    assert wait_state(printer, "absent")
    device.touch()
    printer.refresh(0)
    assert wait_state(printer, "unknown")
    assert print_now(printer, PLAIN) is True and printer.snapshot()["state"] == "ok"
    printer.close()
