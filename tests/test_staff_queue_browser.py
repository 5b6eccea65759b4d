"""The staff queue in Debian's Chromium at 800x480: staff call a patient, mark one seen and
one a no-show; the page shows it, the queue fits the screen, the hub follows.

``haven-kiosk run`` with simulated hardware, syncing to a hub served in-process on
127.0.0.1; the page is driven by Playwright (``test_ui_browser``'s browser).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright import sync_api

from host.hub.hub import Hub
from host.hub.serve import Server

from .test_runtime import call
from .test_ui_browser import BOUND, STRINGS, browser, keys, open_page, page, shot
from .test_ui_helpers import make_kiosk, run_kiosk

__all__ = ["browser", "page"]  # fixtures: the module's Chromium, a page in it

#: What does not fit in the queue: a row or a button outside the screen once its column
#: is scrolled to it, a label cut off, a button smaller than a fingertip (48 px).
QUEUE_FITS = """() => {
    const W = innerWidth, H = innerHeight, out = [];
    for (const row of document.querySelectorAll('#staff-queue .queue-row')) {
        row.scrollIntoView({block: 'nearest'});
        for (const el of [row, ...row.querySelectorAll('*')]) {
            const r = el.getBoundingClientRect();
            if (r.left < -1 || r.top < -1 || r.right > W + 1 || r.bottom > H + 1)
                out.push([row.dataset.checkin, el.tagName, Math.round(r.right),
                          Math.round(r.bottom)]);
            if (el.scrollWidth > el.clientWidth + 1 && el.clientWidth > 0)
                out.push([el.tagName + ':' + el.textContent.slice(0, 20), 'text']);
            if (el.tagName === 'BUTTON' && (r.width < 48 || r.height < 48))
                out.push(['button ' + el.dataset.action, Math.round(r.width),
                          Math.round(r.height)]);
        }
    }
    return out; }"""
#: The staff screen itself never scrolls (the queue's column does), and nothing outside
#: the queue sticks out of it.
SCREEN_FITS = """() => {
    const W = innerWidth, H = innerHeight, d = document.documentElement, out = [];
    if (d.scrollWidth > W || d.scrollHeight > H) out.push(['page', d.scrollWidth, d.scrollHeight]);
    const s = document.getElementById('s-staff');
    if (s.scrollHeight > s.clientHeight + 1 || s.scrollWidth > s.clientWidth + 1)
        out.push(['s-staff', s.scrollWidth, s.scrollHeight]);
    for (const el of document.querySelectorAll('#s-staff h2, #staff-close')) {
        const r = el.getBoundingClientRect();
        if (r.left < -1 || r.top < -1 || r.right > W + 1 || r.bottom > H + 1)
            out.push([el.id || el.tagName, Math.round(r.right), Math.round(r.bottom)]);
    }
    return out; }"""


@pytest.fixture
def desk(tmp_path: Path) -> Iterator[tuple[Hub, str]]:
    """A kiosk syncing to a hub served here; yields the hub and the kiosk's page URL."""
    hub_dir, kiosk_dir = make_kiosk(tmp_path)
    hub = Hub(hub_dir)
    server = Server(hub, 5 * 60 * 1000)
    host, port = server.listen("tcp://127.0.0.1:0")
    kiosk, url = run_kiosk(kiosk_dir, f"tcp://{host}:{port}", idle=300)
    try:
        yield hub, url
    finally:
        assert kiosk.stop() == 0, "".join(kiosk.log)
        server.shutdown()
        hub.close()


def hub_statuses(hub: Hub) -> dict[str, Any]:
    """queue number -> the check-in's status, as the hub holds it."""
    return {r["fields"]["queueNumber"]: r["fields"].get("status")
            for r in json.loads(hub.dump())["records"] if r["type"] == "checkin"}


def row(page: Any, number: str) -> Any:
    return page.locator("#staff-queue .queue-row", has_text=number)


def test_call_seen_and_no_show_at_the_desk(desk: tuple[Hub, str], page: Any) -> None:
    hub, url = desk
    reasons = ["sick", "injury", "child", "pregnancy", "medicine", "results", "other"]
    for i, reason in enumerate(reasons):
        status, _, answer = call(url, "/api/checkin", {"passport": f"DQ{i:06d}",
                                                        "year": str(1960 + i), "reason": reason})
        assert status == 200 and answer["queue_number"] == f"B-{i + 1:03d}", answer
    open_page(page, url)
    page.tap("#staff-open")
    keys(page, "246810", "pin-keys")
    page.tap("#pin-next")
    rows = page.locator("#staff-queue .queue-row")
    sync_api.expect(rows).to_have_count(len(reasons), timeout=BOUND)
    assert row(page, "B-001").locator(".queue-status").inner_text() == STRINGS["en"][
        "staff_waiting"]

    # Call B-001 (twice: the patient did not hear), then seen; B-002 a no-show.
    for action, now, words in (("call", "in-progress", "staff_called"),
                               ("call", "in-progress", "staff_called"),
                               ("seen", "finished", "staff_seen")):
        row(page, "B-001").locator(f"button[data-action='{action}']").tap()
        sync_api.expect(row(page, "B-001")).to_have_attribute("data-status", now,
                                                              timeout=BOUND)
        assert row(page, "B-001").locator(".queue-status").inner_text() == STRINGS["en"][words]
    row(page, "B-002").locator("button[data-action='call']").tap()
    sync_api.expect(row(page, "B-002")).to_have_attribute("data-status", "in-progress",
                                                          timeout=BOUND)
    row(page, "B-002").locator("button[data-action='no-show']").tap()
    sync_api.expect(row(page, "B-002")).to_have_attribute("data-status", "cancelled",
                                                          timeout=BOUND)
    # Those waiting first; the two done with after them, with an undo and nothing else.
    numbers = [n.split()[0] for n in rows.locator(".queue-line > span:first-child")
               .all_inner_texts()]
    assert numbers == ["B-003", "B-004", "B-005", "B-006", "B-007", "B-001", "B-002"]
    for done in ("B-001", "B-002"):
        assert row(page, done).locator("button").evaluate_all(
            "bs => bs.map(b => b.dataset.action)") == ["undo"]
    shot(page, "staff-queue-en")
    assert page.evaluate(QUEUE_FITS) == []
    assert page.evaluate(SCREEN_FITS) == []

    # Bad actions are refused, with a code, and change nothing.
    token = page.evaluate("staffToken")
    ids = dict(zip(rows.locator(".queue-line > span:first-child").all_inner_texts(),
                   rows.evaluate_all("rs => rs.map(r => r.dataset.checkin)"), strict=True))
    cid = {n.split()[0]: i for n, i in ids.items()}
    for body, status, code in (
            ({"checkin": cid["B-002"], "action": "seen"}, 409, "bad-transition"),
            ({"checkin": cid["B-003"], "action": "undo"}, 409, "bad-transition"),
            ({"checkin": cid["B-003"], "action": "delete"}, 400, "bad-action"),
            ({"checkin": ["B-003"], "action": "call"}, 400, "bad-action"),
            ({"checkin": "01a24000-0000-7000-8000-000000000000", "action": "call"}, 400,
             "no-checkin"),
            ({"checkin": "B-003", "action": "call"}, 400, "bad-id")):
        got, _, answer = call(url, "/api/staff/queue", {"token": token, **body})
        assert (got, answer) == (status, {"error": code}), body
    got, _, answer = call(url, "/api/staff/queue", {"token": "nope", "checkin": cid["B-003"],
                                                    "action": "call"})
    assert (got, answer) == (403, {"error": "staff-login"})

    # The hub follows, and its history has each move by this kiosk.
    want = {"B-001": "finished", "B-002": "cancelled", "B-003": "arrived"}
    end = time.monotonic() + BOUND / 1000
    while {n: hub_statuses(hub).get(n) for n in want} != want and time.monotonic() < end:
        time.sleep(0.1)
    assert {n: hub_statuses(hub).get(n) for n in want} == want
    moves = [w["fields"]["status"] for w in hub.history(cid["B-001"])]
    assert moves == ["arrived", "in-progress", "in-progress", "finished"]

    # The no-show came back: undo puts B-002 back among those waiting, in Arabic too.
    page.click("#langs button[data-lang='ar']")  # the lists are drawn again in Arabic
    sync_api.expect(row(page, "B-001").locator(".queue-status")).to_have_text(
        STRINGS["ar"]["staff_seen"], timeout=BOUND)
    row(page, "B-002").locator("button[data-action='undo']").tap()
    sync_api.expect(row(page, "B-002")).to_have_attribute("data-status", "arrived",
                                                          timeout=BOUND)
    assert row(page, "B-002").locator(".queue-status").inner_text() == STRINGS["ar"][
        "staff_waiting"]
    shot(page, "staff-queue-ar")
    assert page.evaluate(QUEUE_FITS) == [] and page.evaluate(SCREEN_FITS) == []
    end = time.monotonic() + BOUND / 1000
    while hub_statuses(hub).get("B-002") != "arrived" and time.monotonic() < end:
        time.sleep(0.1)
    assert hub_statuses(hub).get("B-002") == "arrived"
