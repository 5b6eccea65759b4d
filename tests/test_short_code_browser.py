"""The short patient code on the page, in Debian's Chromium at 800x480.

A new patient is given a code, shown large with a QR the kiosk drew itself; the
QR, read back from a screenshot of the page, is the code. The code, tapped on
the start screen's keyboard (dash included) or typed by a scanner, checks the
same patient in on the next visit, the year typed a claim; a code with one
character changed is refused by its check character, in the patient's language.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zxingcpp
from PIL import Image

from device.store.keys import read_key
from protocol.crdt import short_code
from protocol.crdt.ids import code_patient_id

from .test_ui_browser import (
    BOUND,
    STRINGS,
    browser,
    keys,
    kiosk_records,
    open_page,
    page,
    post_api,
    shot,
)
from .test_ui_helpers import free_port, make_kiosk, run_kiosk

__all__ = ["browser", "page"]  # fixtures: the module's Chromium, a page in it

CODE = re.compile(r"[0-9A-HJKMNP-TV-Z]{4}-[0-9A-HJKMNP-TV-Z]{4}")


@pytest.fixture(scope="module")
def kiosk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    _, kiosk_dir = make_kiosk(tmp_path_factory.mktemp("code"))  # the hub numbered it: 1
    proc, url = run_kiosk(kiosk_dir, f"tcp://127.0.0.1:{free_port()}", idle=300)
    try:
        yield url, kiosk_dir
    finally:
        proc.stop()


def new_patient(page: Any, name: str, year: str) -> str:
    page.tap("#no-docs")
    page.wait_for_selector("#s-name:not([hidden])", timeout=BOUND)
    keys(page, name, "name-keys")
    page.tap("#name-next")
    page.wait_for_selector("#s-year:not([hidden])", timeout=BOUND)
    keys(page, year)
    page.tap("#year-next")
    page.tap("#consent-yes")
    page.tap("#reasons button[data-reason='sick']")
    page.wait_for_selector("#s-ticket:not([hidden])", timeout=BOUND)
    return str(page.text_content("#new-id"))


def subject_of(kiosk_dir: Path, queue_number: str) -> tuple[str, str]:
    [checkin] = [r for r in kiosk_records(kiosk_dir) if r["type"] == "checkin"
                 and r["fields"]["queueNumber"] == queue_number]
    return checkin["fields"]["subject"], checkin["fields"]["identity"]


def test_a_new_patient_gets_a_code_and_a_qr_that_brings_them_back(
        kiosk: tuple[str, Path], page: Any) -> None:
    url, kiosk_dir = kiosk
    fleet_key = read_key(kiosk_dir / "fleet.key", "fleet key", None)
    open_page(page, url)
    code = new_patient(page, "AMINA CODE", "1990")
    assert CODE.fullmatch(code) and short_code.split(code)[0] == 1
    assert page.is_visible("#code-qr svg")
    shot(page, "ticket-code-en")
    box = page.locator("#code-qr").screenshot()
    [found] = zxingcpp.read_barcodes(Image.open(io.BytesIO(box)))
    assert (found.text, found.format) == (code, zxingcpp.BarcodeFormat.QRCode)
    assert code not in page.evaluate("location.href + document.referrer")  # in no URL
    first_number = str(page.text_content("#queue-number"))
    pid = str(code_patient_id(fleet_key, code))
    assert subject_of(kiosk_dir, first_number) == (pid, "new")

    # Next visit, on the keyboard: the code, its dash, the year, a reason. No name asked.
    page.tap("#ticket-done")
    page.wait_for_selector("#s-start:not([hidden])", timeout=BOUND)
    keys(page, code, "passport-keys")
    page.tap("#passport-next")
    page.wait_for_selector("#s-year:not([hidden])", timeout=BOUND)
    keys(page, "1990")
    page.tap("#year-next")
    page.wait_for_selector("#s-reason:not([hidden])", timeout=BOUND)
    page.tap("#reasons button[data-reason='results']")
    page.wait_for_selector("#s-ticket:not([hidden])", timeout=BOUND)
    assert page.is_hidden("#new-id-block")  # a code only for a new patient
    assert subject_of(kiosk_dir, str(page.text_content("#queue-number"))) == (pid, "match")

    # And as a scanner types the QR's text: lower case makes no difference.
    page.tap("#ticket-done")
    page.focus("#passport")
    page.keyboard.type(code.lower(), delay=0)
    page.keyboard.press("Enter")
    page.wait_for_selector("#s-year:not([hidden])", timeout=BOUND)
    assert page.evaluate("flow.code") == code and page.evaluate("flow.passport") is None


def test_a_code_with_one_character_changed_is_refused_in_the_patients_language(
        kiosk: tuple[str, Path], page: Any) -> None:
    url, _ = kiosk
    code = short_code.display(short_code.encode(1, 1))
    wrong = code[:6] + ("A" if code[6] != "A" else "B") + code[7:]
    open_page(page, url)
    page.tap("#langs button[data-lang='sw']")
    page.focus("#passport")
    page.keyboard.type(wrong, delay=0)
    page.keyboard.press("Enter")
    msg = page.locator("#start-msg")
    msg.wait_for(state="visible", timeout=BOUND)
    assert msg.text_content() == STRINGS["sw"]["err_code_check"]
    assert page.evaluate("flow.screen") == "s-start"
    assert page.input_value("#passport") == wrong  # kept, to be corrected
    # Without its dash the same characters are a passport number: on to the year.
    page.fill("#passport", wrong.replace("-", ""))
    page.keyboard.press("Enter")
    page.wait_for_selector("#s-year:not([hidden])", timeout=BOUND)
    assert page.evaluate("flow.passport") == wrong.replace("-", "")


def test_the_api_refuses_bad_codes_with_their_reason(kiosk: tuple[str, Path]) -> None:
    url, _ = kiosk
    code = short_code.display(short_code.encode(1, 1))
    wrong = code[:6] + ("A" if code[6] != "A" else "B") + code[7:]
    cases: list[tuple[dict[str, Any], str | None]] = [
        ({"code": wrong}, "code-check"), ({"code": "ABCD-EFGU"}, "code-char"),
        ({"code": 12345678}, None), ({"code": "x" * 100}, None),
        ({"code": code.replace("-", "")}, None)]  # no dash: not a code
    for body, detail in cases:
        for path, extra in [("/api/verify", {}), ("/api/checkin", {"year": "1990",
                                                                   "reason": "sick"})]:
            status, answer = post_api(url, path, {**body, **extra})
            assert (status, answer.get("error"), answer.get("detail")) == (
                400, "bad-code", detail), (path, body)
    status, answer = post_api(url, "/api/checkin", {"code": code, "passport": "AB123456",
                                                    "year": "1990", "reason": "sick"})
    assert (status, answer.get("error")) == (400, "bad-code")  # one or the other
    status, answer = post_api(url, "/api/checkin", {"code": code, "year": "1990",
                                                    "reason": "sick"})
    assert status == 200 and "code" not in answer  # returning: no consent asked, no new code
