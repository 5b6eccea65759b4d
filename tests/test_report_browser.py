"""``haven report --html`` in Debian's Chromium (headless, driven by Playwright): the plots
render with their data points, the summary is on top, and no request leaves the file.
The screenshot goes to bench-out/report/ as an artifact; the assertions are what count."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from device import enrol
from device.bundle.build import build
from device.store import init_store
from host.cli import main
from host.hub.hub import Hub, init_hub

from .bundle_helpers import T0, fill, leaks
from .test_ui_browser import ARGS, CHROMIUM  # skips this module too without Chromium
from .test_ui_helpers import ROOT

SHOTS = ROOT / "bench-out" / "report"
BOUND = 20_000  # ms


def test_the_report_opens_offline_with_its_plots_and_summary(tmp_path: Path) -> None:
    init_hub(tmp_path / "hub")
    with Hub(tmp_path / "hub") as hub:
        store = init_store(tmp_path / "kiosk", "North", "A")
        try:
            enrol.install(store, hub.enroll(enrol.write_request(store).read_bytes(),
                                            now_ms=T0))
            src = fill(store, tmp_path / "kiosk" / "logs", hours=5)
            with (tmp_path / "b.zip").open("w+b") as f:
                build(f, src, nonce="ab" * 16)
        finally:
            store.close()
    page_file = tmp_path / "report.html"
    assert main(["report", str(tmp_path / "b.zip"), "--hub", str(tmp_path / "hub"),
                 "--html", str(page_file)]) == 0
    assert leaks(page_file.read_bytes()) == []
    from playwright import sync_api

    requests: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 820, "height": 1200})
            page.on("request", lambda r: requests.append(r.url))
            page.goto(page_file.as_uri(), timeout=BOUND)
            summary = page.text_content("#summary", timeout=BOUND) or ""
            plots: list[dict[str, Any]] = page.eval_on_selector_all(
                "svg.plot", "els => els.map(e => ({kind: e.dataset.kind || 'empty', "
                "label: e.getAttribute('aria-label'), "
                "points: e.querySelectorAll('[data-v]').length, "
                "width: e.getBoundingClientRect().width}))")
            SHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SHOTS / "report.png"), full_page=True)
        finally:
            browser.close()
    assert requests == [page_file.as_uri()]  # the file itself, nothing else
    assert summary.index("Last synced 1 hour ago") < summary.index("warnings and errors")
    drawn = {p["label"]: p["points"] for p in plots if p["kind"] != "empty"}
    assert drawn["Sync rounds and their outcomes"] == 30
    assert drawn["Link: round trip time"] == 24
    assert drawn["Memory in use (RSS)"] == drawn["Free disk"] == 30
    assert drawn["Link: errors and resends"] == 60 and drawn["Check-ins per hour"] == 5
    assert drawn["Check-ins by language"] == 2 and drawn["Bytes per day (sent + received)"] == 1
    assert drawn["Where patients gave up (screen)"] == 2
    assert all(p["width"] > 600 for p in plots)
