"""A printer that fails never blocks a check-in: the real runtime's page server over
127.0.0.1, with a serial printer on a pty that answers ok, paper low, paper out, cover
open, a jam, garbage or nothing, and with device files present and absent. Every
check-in is answered with its queue number; ``printed`` says whether the ticket came
out, the staff screen shows the printer's state, and the page tells the patient to
remember the number when printing failed (in Chromium)."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import zxingcpp
from gpiozero.pins.mock import MockFactory

from device.config import KioskConfig
from device.hardware import escpos
from device.hardware import panel as hw
from device.hardware.printer import Printer
from device.runtime import Runtime
from device.store import Store
from device.ui.app import STATIC, KioskApp
from device.ui.live import LiveStatus

from .escpos_render import render
from .printer_sim import SerialPrinter
from .test_runtime import call
from .test_ui_helpers import free_port, make_kiosk, runtime_in_thread

STRINGS = json.loads((STATIC / "i18n.json").read_text("utf-8"))
PIN = "246810"
TAIL = escpos.CUT


@contextmanager
def kiosk(tmp: Path, printer: str | None, timeout: float = 1.0) -> Iterator[str]:
    """``haven-kiosk run``'s runtime with ``printer``, its hub away; yields the page's URL."""
    _, kiosk_dir = make_kiosk(tmp)
    cfg = KioskConfig(data=kiosk_dir, hub=[f"tcp://127.0.0.1:{free_port()}"],
                      ui="127.0.0.1:0", printer=printer, printer_timeout=timeout,
                      staff_pin=PIN, retry_max=0.5, interval=0.5, hardware="simulated")
    rt = Runtime(cfg, hardware=hw.Hardware(pin_factory=MockFactory()))
    with runtime_in_thread(rt):
        assert rt.address is not None
        host, port = rt.address
        yield f"http://{host}:{port}"


def check_in(url: str, passport: str | None = "AB123456") -> dict[str, Any]:
    body = ({"passport": passport, "year": "1980", "reason": "sick", "name": None,
             "consent": False} if passport else
            {"passport": None, "year": "1990", "reason": "child", "name": "Amina Juma",
             "consent": True})
    status, _, answer = call(url, "/api/checkin", body)
    assert status == 200, answer
    assert answer["queue_number"].startswith("B-")
    return dict(answer)


def printer_state(url: str) -> str:
    _, _, login = call(url, "/api/staff/login", {"pin": PIN})
    _, _, overview = call(url, "/api/staff/overview", headers={"X-Staff-Token": login["token"]})
    return str(overview["printer"]["state"])


@pytest.fixture(scope="module")
def serial_kiosk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, SerialPrinter]]:
    sim = SerialPrinter("ok")
    try:
        with kiosk(tmp_path_factory.mktemp("serial"), sim.path) as url:
            yield url, sim
    finally:
        sim.close()


@pytest.mark.parametrize(("mode", "printed", "state"), [
    ("ok", True, "ok"), ("paper-low", True, "paper-low"), ("paper-out", False, "paper-out"),
    ("cover-open", False, "cover-open"), ("jammed", False, "error"),
    ("garbage", False, "failed"), ("silence", False, "failed")])
def test_a_serial_printer_in_every_state_never_blocks_a_check_in(
        serial_kiosk: tuple[str, SerialPrinter], mode: str, printed: bool, state: str) -> None:
    url, sim = serial_kiosk
    sim.mode = mode
    sim.received.clear()
    answer = check_in(url)
    assert answer["printed"] is printed
    assert printer_state(url) == state
    if printed:
        clinic, when, number = render(sim.wait_received(TAIL), 384).text()
        assert (clinic, number) == ("North", answer["queue_number"])
        assert re.fullmatch(r"20\d\d-\d\d-\d\d \d\d:\d\d", when)
    else:
        assert sim.received == b""


def test_a_new_patients_ticket_carries_the_code_and_its_qr(
        serial_kiosk: tuple[str, SerialPrinter]) -> None:
    url, sim = serial_kiosk
    sim.mode = "ok"
    sim.received.clear()
    answer = check_in(url, passport=None)
    assert answer["printed"] is True
    paper = render(sim.wait_received(TAIL), 384)
    code = answer.get("code")
    if code is None:  # a kiosk without a number gives no code: the ticket has the number
        assert paper.text()[-1] == answer["queue_number"]
        return
    assert paper.text()[-2:] == [answer["queue_number"], code]
    (found,) = zxingcpp.read_barcodes(paper.image())
    assert found.text == code


def test_a_silent_printer_does_not_hold_up_check_ins_made_together(
        serial_kiosk: tuple[str, SerialPrinter]) -> None:
    url, sim = serial_kiosk
    sim.mode = "silence"
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda p: check_in(url, p), [f"CC{i:06d}" for i in range(4)]))
    assert [a["printed"] for a in answers] == [False] * 4
    assert len({a["queue_number"] for a in answers}) == 4


def test_device_files_present_absent_and_stalled(tmp_path: Path) -> None:
    device = tmp_path / "lp0"
    device.touch()
    with kiosk(tmp_path / "present", str(device)) as url:
        answer = check_in(url)
        assert answer["printed"] is True and printer_state(url) == "ok"
        assert render(device.read_bytes(), 384).text()[-1] == answer["queue_number"]
    with kiosk(tmp_path / "absent", str(tmp_path / "unplugged")) as url:
        assert check_in(url)["printed"] is False
        assert printer_state(url) == "absent"
    with kiosk(tmp_path / "full", "/dev/full") as url:
        assert check_in(url)["printed"] is False
        assert printer_state(url) == "paper-out"


def test_no_printer_no_word_of_printing(tmp_path: Path) -> None:
    with kiosk(tmp_path, None) as url:
        assert "printed" not in check_in(url)
        _, _, login = call(url, "/api/staff/login", {"pin": PIN})
        _, _, overview = call(url, "/api/staff/overview",
                              headers={"X-Staff-Token": login["token"]})
        assert overview["printer"] is None


def test_the_page_says_to_remember_the_number_and_staff_see_why(tmp_path: Path) -> None:
    from playwright import sync_api

    from device.ui.qr import code_svg

    from .test_ui_browser import ARGS, BOUND, CHROMIUM, OVERFLOWS, check_in_new, keys, open_page

    sim = SerialPrinter("ok")
    try:
        with kiosk(tmp_path, sim.path) as url, sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
            page = browser.new_page(viewport={"width": 800, "height": 480}, has_touch=True)
            open_page(page, url)
            msg = page.locator("#ticket-print")
            ticket_only = OVERFLOWS.replace("'header *, #' + id", "'#' + id")  # not the header
            assert ticket_only != OVERFLOWS
            for mode, lang, key in (("ok", "en", "ticket_printed"),
                                    ("paper-out", "fr", "ticket_not_printed"),
                                    ("garbage", "ar", "ticket_not_printed")):
                sim.mode = mode
                number = check_in_new(page, lang, "EF123456", "1975")
                assert msg.text_content() == STRINGS[lang][key]
                assert msg.is_visible() and page.locator("#queue-number").text_content() == number
                box = msg.bounding_box()
                assert box is not None and box["y"] + box["height"] <= 480
                page.click("#ticket-done")
                page.wait_for_selector("#s-start:not([hidden])", timeout=BOUND)
                assert msg.text_content() == ""  # the next patient starts clean
            # staff see the printer's state in words, beside the sync state (garbage: failed)
            page.click("#langs button[data-lang='en']")
            page.tap("#staff-open")
            keys(page, PIN, "pin-keys")
            page.tap("#pin-next")
            page.wait_for_selector("#s-staff:not([hidden])", timeout=BOUND)
            words = f"{STRINGS['en']['staff_printer']}: {STRINGS['en']['printer_failed']}"
            page.wait_for_function("(w) => document.getElementById('staff-sync')"
                                   ".textContent.includes(w)", arg=words, timeout=BOUND)
            page.evaluate("reset()")
            # the longest case: a new patient's code and QR beside the message, in each language
            for lang in STRINGS["_meta"]["html_lang"]:
                page.click(f"#langs button[data-lang='{lang}']")
                page.evaluate("""(qr) => { config.idle_seconds = 3600;
                    document.getElementById('queue-number').textContent = 'B-999';
                    document.getElementById('new-id').textContent = 'ZZZZ-ZZZ7';
                    document.getElementById('code-qr').innerHTML = qr;
                    document.getElementById('new-id-block').hidden = false;
                    say('ticket-print', 'ticket_not_printed'); flow.ticket = 1;
                    show('s-ticket'); renderLive(); }""", code_svg("ZZZZ-ZZZ7"))
                assert page.evaluate(ticket_only, "s-ticket") == [], lang
            browser.close()
    finally:
        sim.close()


@pytest.mark.parametrize("lang", ["en", "fr", "ar", "sw", "prs"])
def test_every_printer_state_has_words_on_the_staff_screen(lang: str) -> None:
    assert {f"printer_{s}" for s in escpos.STATES} <= set(STRINGS[lang])


def test_the_ticket_is_dated_by_the_stores_clock(tmp_path: Path) -> None:
    """The hub's sense of time, which numbers the queue by day, not the Pi's own clock."""
    _, kiosk_dir = make_kiosk(tmp_path)
    when = 1924225440.0  # 2030-12-22 07:04 UTC, far from this machine's clock
    device = tmp_path / "lp0"
    device.touch()

    async def one() -> dict[str, Any]:
        live = LiveStatus()
        live.bind(asyncio.get_running_loop())
        with Store(kiosk_dir, clock=lambda: int(when * 1000)) as store:
            app = KioskApp(store, live, printer=Printer(str(device), timeout=2))
            return await app.checkin({"passport": "AB123456", "year": "1980",
                                      "reason": "sick"})

    assert asyncio.run(one())["printed"] is True
    stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(when))
    assert render(device.read_bytes(), 384).text()[1] == stamp

