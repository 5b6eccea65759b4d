"""Cases found by trying the kiosk as a patient or a stranger would, each a defect fixed.

- A tap on a language or on the speaker took the focus from the screen's field, so
  what a keyboard-wedge scanner typed next was lost (and its Enter replayed the prompt).
- ``0000-0000`` (or ``OOOO-OOOO``) passed as a patient code: all zeros pass any Luhn
  check, and no kiosk ever gives counter 0, so every patient who typed it was one.
- ``Range: bytes=-0`` got a 206 with the impossible ``Content-Range: bytes 100-99/100``.
- A double tap on Seen at the desk marked two patients seen: the first tap's row moved
  to the end of the queue, and the second landed on the row that took its place.
- A double tap on the ticket's Done landed on the start screen's Next, whose error for
  an empty field then greeted the next patient.
- The first staff PIN set on a running kiosk never showed the Staff button on a page
  that was up: the page read whether there is a PIN only when it loaded.
- The staff screen asked for its overview (a scan of every record) four times every
  5 s rather than once: each 250 ms tick in the second divisible by 5 asked.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from playwright import sync_api

from device.ui import checkin as ci
from device.ui.prompts import byte_range
from protocol.crdt import short_code

from .test_ui_browser import ARGS, BOUND, CHROMIUM, STRINGS, open_page
from .test_ui_helpers import ROOT, Proc, free_port, make_kiosk, run_kiosk


@pytest.mark.parametrize("typed", ["0000-0000", "OOOO-OOOO", "oooo 0000"])
def test_a_code_of_counter_zero_is_refused(typed: str) -> None:
    with pytest.raises(short_code.ShortCodeError) as err:
        short_code.parse(typed)
    assert err.value.code == "code-range"
    with pytest.raises(ci.CheckinInputError) as bad:
        ci.clean_code("0000-0000")
    assert (bad.value.code, bad.value.detail) == ("bad-code", "code-range")
    assert ci.clean_code(short_code.display(short_code.encode(1, 1)).lower()) == "0010-001W"


def test_a_suffix_range_of_no_bytes_is_not_satisfiable() -> None:
    with pytest.raises(ValueError):
        byte_range("bytes=-0", 100)
    with pytest.raises(ValueError):
        byte_range("bytes=-5", 0)
    assert byte_range("bytes=-1", 100) == (99, 100)


@pytest.fixture(scope="module")
def kiosk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    kiosk_dir = make_kiosk(tmp_path_factory.mktemp("edges"))[1]
    proc, url = run_kiosk(kiosk_dir, f"tcp://127.0.0.1:{free_port()}", idle=3600)
    try:
        yield url
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory, kiosk: str) -> Iterator[Any]:
    with sync_api.sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("profile")), executable_path=str(CHROMIUM),
            headless=True, args=ARGS, viewport={"width": 800, "height": 480}, has_touch=True)
        try:
            pg = ctx.new_page()
            open_page(pg, kiosk)
            yield pg
        finally:
            ctx.close()


def test_a_scanner_types_into_the_field_after_a_language_or_speaker_tap(page: Any) -> None:
    page.tap("#langs button[data-lang='prs']")
    page.tap("#speak")  # the shipped prompts: the button is there in every language
    assert page.evaluate("document.activeElement.id") == "passport"
    page.keyboard.type("0000-0000", delay=0)  # a code no kiosk gives, then Enter
    page.keyboard.press("Enter")
    page.wait_for_selector("#start-msg:not(:empty)", timeout=BOUND)
    assert page.text_content("#start-msg") == STRINGS["prs"]["err_code_check"]
    page.fill("#passport", "")
    page.tap("#langs button[data-lang='ar']")
    page.keyboard.type("AB123456", delay=0)
    page.keyboard.press("Enter")
    page.wait_for_selector("#s-year:not([hidden])", timeout=BOUND)
    assert page.input_value("#passport") == "AB123456"


def test_a_double_tap_at_the_desk_moves_one_patient_only(kiosk: str, page: Any) -> None:
    for passport in ("CD123456", "EF123456"):
        req = urllib.request.Request(kiosk.rstrip("/") + "/api/checkin", json.dumps(
            {"passport": passport, "year": "1990", "reason": "sick"}).encode(),
            {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 200
    page.evaluate("reset()")
    page.tap("#staff-open")
    page.wait_for_selector("#s-staff-pin:not([hidden])", timeout=BOUND)
    page.keyboard.type("246810", delay=0)
    page.keyboard.press("Enter")
    page.wait_for_selector(".queue-row:nth-child(2)", timeout=BOUND)
    page.evaluate("deskSettleMs = 60000")  # however slow this machine, the tap is a double's
    first = page.get_attribute(".queue-row", "data-checkin")
    x, y = page.evaluate(  # in one go: the screen's refresh redraws the rows now and then
        """() => { const b = document.querySelector(".queue-row button[data-action='seen']")
                     .getBoundingClientRect(); return [b.x + b.width / 2, b.y + b.height / 2]; }""")
    page.mouse.click(x, y)
    page.wait_for_function("(first) => document.querySelector('.queue-row').dataset.checkin"
                           " !== first", arg=first, timeout=BOUND)  # the next took its place
    page.evaluate("refreshStaff()")  # the screen's own refresh, within the moment
    page.wait_for_timeout(300)
    page.mouse.click(x, y)
    page.wait_for_timeout(300)  # time for a write that must not come
    statuses = page.evaluate(
        "api('/api/staff/overview').then((r) => r.data.queue.map((q) => q.status))")
    assert sorted(statuses) == ["arrived", "finished"]


def test_a_double_tap_on_done_leaves_the_next_patient_no_error(page: Any) -> None:
    page.evaluate("reset()")
    page.keyboard.type("GH123456", delay=0)
    page.keyboard.press("Enter")
    page.wait_for_selector("#s-year:not([hidden])", timeout=BOUND)
    page.keyboard.type("1990", delay=0)
    page.keyboard.press("Enter")
    page.wait_for_selector("#s-reason:not([hidden])", timeout=BOUND)
    page.tap("#reasons button[data-reason='sick']")
    page.wait_for_selector("#s-ticket:not([hidden])", timeout=BOUND)
    box = page.locator("#ticket-done").bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.click(x, y)
    page.wait_for_selector("#s-start:not([hidden])", timeout=BOUND)
    assert page.evaluate("([x, y]) => document.elementFromPoint(x, y).id",
                         [x, y]) == "passport-next"  # what the second tap lands on
    page.mouse.click(x, y)
    page.wait_for_timeout(100)
    assert page.text_content("#start-msg") == ""
    assert page.is_visible("#s-start")


def test_a_pin_set_while_the_page_is_up_brings_the_staff_button(
        tmp_path_factory: pytest.TempPathFactory, page: Any) -> None:
    kiosk_dir = make_kiosk(tmp_path_factory.mktemp("no-pin"))[1]
    proc = Proc([sys.executable, "-m", "device.cli", "run", "--data", str(kiosk_dir),
                 "--hub", f"tcp://127.0.0.1:{free_port()}", "--ui", "127.0.0.1:0",
                 "--hardware", "simulated"])  # no --staff-pin: none is set
    other = page.context.new_page()
    try:
        open_page(other, proc.wait_for(r"page at (http://\S+)").group(1))
        assert other.is_hidden("#staff-open")
        subprocess.run([sys.executable, "-m", "device.cli", "staff-pin", "set", "--data",
                        str(kiosk_dir)], input="246810\n", text=True, check=True, cwd=ROOT,
                       capture_output=True, timeout=30)
        other.evaluate("staffPinAsked = 0")  # an untouched start screen, 15 s on
        other.wait_for_selector("#staff-open:not([hidden])", timeout=BOUND)
        (kiosk_dir / "staff-pin").unlink()  # no PIN again
        other.evaluate("reset()")  # what the next patient's Done, or the idle reset, does
        other.wait_for_selector("#staff-open", state="hidden", timeout=BOUND)
    finally:
        other.close()
        proc.stop()


def test_the_staff_screen_asks_its_overview_once_every_5_s(kiosk: str, page: Any) -> None:
    other = page.context.new_page()
    asked: list[str] = []
    other.on("request", lambda r: asked.append(r.url) if "overview" in r.url else None)
    try:
        other.clock.install()  # the page's timers and Date, moved by the test
        open_page(other, kiosk)
        other.tap("#staff-open")
        other.wait_for_selector("#s-staff-pin:not([hidden])", timeout=BOUND)
        other.keyboard.type("246810", delay=0)
        other.keyboard.press("Enter")
        other.wait_for_selector("#s-staff:not([hidden])", timeout=BOUND)
        other.clock.run_for(1000)
        other.wait_for_timeout(200)
        asked.clear()
        for _ in range(4):  # 20 s of the page's time, a second at a time
            for _ in range(5):
                other.clock.run_for(1000)
            other.wait_for_timeout(50)
        assert 3 <= len(asked) <= 5, asked
    finally:
        other.close()
