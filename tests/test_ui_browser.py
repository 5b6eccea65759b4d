"""The check-in page in Debian's Chromium (headless, driven by Playwright).

The kiosk runs as ``haven-kiosk run`` with simulated hardware; its hub URL
points at a port where nothing listens until the test starts the real
``haven hub serve`` there. Screenshots go to bench-out/ui/ as artifacts;
the assertions are what count.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from device.store import init_store
from device.store.keys import read_key
from device.ui.app import LANGUAGES, STATIC
from device.ui.qr import code_svg
from protocol.crdt.ids import code_patient_id, patient_id
from tests.conftest import require

from .test_ui_helpers import ROOT, Proc, free_port, make_kiosk, run_kiosk
from .test_ui_strings import forms

CHROMIUM = Path("/usr/bin/chromium")
require(CHROMIUM.exists(), "chromium",
        "/usr/bin/chromium does not exist (apt-get install -y chromium)", allow_module_level=True)
try:
    from playwright import sync_api
except ImportError:
    require(False, "playwright", "playwright is not installed (pip install -e '.[dev]')",
            allow_module_level=True)

SHOTS = ROOT / "bench-out" / "ui"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
STRINGS = json.loads((STATIC / "i18n.json").read_text("utf-8"))
BOUND = 20_000  # ms: every wait on the page ends by then
SCREENS = ["s-start", "s-year", "s-name", "s-consent", "s-reason", "s-ticket", "s-staff-pin"]


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    profile = tmp_path_factory.mktemp("profile")  # fresh and empty
    with sync_api.sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            str(profile), executable_path=str(CHROMIUM), args=ARGS, headless=True,
            viewport={"width": 800, "height": 480}, has_touch=True)  # the kiosk's touch screen
        try:
            yield ctx
        finally:
            ctx.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    pg = browser.new_page()
    yield pg
    pg.close()


def open_page(page: Any, url: str) -> None:
    page.goto(url)
    page.wait_for_selector("body[data-ready='1']", timeout=BOUND)


def shot(page: Any, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"))


def keys(page: Any, text: str, pad: str = "keypad") -> None:
    """Taps ``text`` on an on-screen keyboard: Latin letters by their capital keys."""
    for c in text:
        page.tap(f'#{pad} button[data-key="{"space" if c == " " else c.upper()}"]')


def check_in_new(page: Any, lang: str, passport: str, year: str) -> str:
    """A patient with a passport, start to ticket (passport, year, reason: the same for
    every passport, known or not); returns the queue number."""
    page.click(f"#langs button[data-lang='{lang}']")
    page.focus("#passport")
    page.keyboard.type(passport, delay=0)  # a keyboard-wedge scanner: fast, then Enter
    page.keyboard.press("Enter")
    page.wait_for_selector("#s-year:not([hidden])", timeout=BOUND)
    keys(page, year)
    page.click("#year-next")
    page.wait_for_selector("#s-reason:not([hidden])", timeout=BOUND)
    page.click("#reasons button[data-reason='sick']")
    page.wait_for_selector("#s-ticket:not([hidden])", timeout=BOUND)
    return str(page.text_content("#queue-number"))


def check_in_without_documents(page: Any, name: str, year: str) -> str:
    """A new patient, start to ticket (name, year, consent, reason); the queue number."""
    page.click("#no-docs")
    page.fill("#name", name)
    page.press("#name", "Enter")
    page.wait_for_selector("#s-year:not([hidden])", timeout=BOUND)
    keys(page, year)
    page.click("#year-next")
    page.click("#consent-yes")
    page.click("#reasons button[data-reason='child']")
    page.wait_for_selector("#s-ticket:not([hidden])", timeout=BOUND)
    return str(page.text_content("#queue-number"))


def test_checkin_offline_in_two_languages_then_sent(tmp_path: Path, page: Any) -> None:
    hub_dir, kiosk_dir = make_kiosk(tmp_path)
    port = free_port()
    kiosk, url = run_kiosk(kiosk_dir, f"tcp://127.0.0.1:{port}", idle=300)
    hub = None
    try:
        open_page(page, url)
        page.wait_for_selector("#sync[data-state='offline']", timeout=BOUND)
        assert check_in_new(page, "en", "AB123456", "1985") == "B-001"
        status = page.locator("#ticket-status")
        assert status.get_attribute("data-state") == "saved"
        assert status.text_content() == "Saved on this kiosk"
        shot(page, "ticket-en-saved")
        page.click("#ticket-done")
        page.wait_for_selector("#s-start:not([hidden])", timeout=BOUND)

        assert check_in_new(page, "ar", "CD7654321", "1990") == "B-002"
        assert page.evaluate("document.documentElement.dir") == "rtl"
        assert page.evaluate("document.documentElement.lang") == "ar"
        assert status.text_content() == STRINGS["ar"]["status_saved"]
        shot(page, "ticket-ar-saved")
        page.evaluate("window.__sameDocument = 1")

        hub = Proc([sys.executable, "-m", "host.cli", "hub", "serve", "--data", str(hub_dir),
                    "--listen", f"tcp://127.0.0.1:{port}"])
        page.wait_for_selector("#ticket-status[data-state='sent']", timeout=BOUND)
        assert status.text_content() == STRINGS["ar"]["status_sent"]
        assert page.evaluate("window.__sameDocument") == 1  # no reload
        page.wait_for_selector("#sync[data-state='synced']", timeout=BOUND)
        shot(page, "ticket-ar-sent")
    finally:
        if hub is not None:
            hub.stop()
        assert kiosk.stop() == 0, "".join(kiosk.log)
    dump = subprocess.run([sys.executable, "-m", "host.cli", "hub", "dump", "--data",
                           str(hub_dir)], capture_output=True, text=True, timeout=60)
    assert dump.returncode == 0, dump.stderr
    numbers = {r["fields"].get("queueNumber") for r in json.loads(dump.stdout)
               if isinstance(r, dict) and "fields" in r} if dump.stdout.startswith("[") else set()
    assert "B-001" in dump.stdout and "B-002" in dump.stdout, numbers


@pytest.fixture(scope="module")
def quick_kiosk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A kiosk with a 2 s idle reset and no hub, holding one known patient."""
    tmp = tmp_path_factory.mktemp("quick")
    _, kiosk_dir = make_kiosk(tmp)
    with init_store(kiosk_dir, "North", "B") as store:
        store.put("patient", str(patient_id(store.fleet_key, "ZZ998877")),
                  {"name": "Zainab Secretname", "birthDate": "1977"})
    kiosk, url = run_kiosk(kiosk_dir, f"tcp://127.0.0.1:{free_port()}", idle=2)
    try:
        yield url, kiosk_dir
    finally:
        kiosk.stop()


#: What sticks out of the page or of a screen, text cut off, and keys smaller than 48 px
#: (9 mm on the 7-inch screen).
OVERFLOWS = """(id) => {
    const W = innerWidth, H = innerHeight, out = [];
    const d = document.documentElement;
    if (d.scrollWidth > W || d.scrollHeight > H)
        out.push(['page', d.scrollWidth, d.scrollHeight]);
    const scr = document.getElementById(id);
    if (scr.scrollHeight > scr.clientHeight + 1 || scr.scrollWidth > scr.clientWidth + 1)
        out.push([id, scr.scrollWidth, scr.scrollHeight]);
    for (const el of document.querySelectorAll('header *, #' + id + ' *')) {
        if (!el.getClientRects().length) continue;
        const r = el.getBoundingClientRect();
        if (r.left < -1 || r.top < -1 || r.right > W + 1 || r.bottom > H + 1)
            out.push([el.id || el.tagName, Math.round(r.right), Math.round(r.bottom)]);
        if (['BUTTON', 'H1', 'P', 'SPAN'].includes(el.tagName) &&
            el.scrollWidth > el.clientWidth + 1 && el.clientWidth > 0)
            out.push([el.id || el.tagName + ':' + el.textContent.slice(0, 20), 'text']);
        if (el.matches('.kbd button') && (r.width < 48 || r.height < 48))
            out.push(['key ' + el.dataset.key, Math.round(r.width), Math.round(r.height)]);
    }
    return out; }"""


@pytest.mark.parametrize("lang", LANGUAGES)
def test_nothing_overflows_at_800x480(quick_kiosk: tuple[str, Path], page: Any,
                                      lang: str) -> None:
    open_page(page, quick_kiosk[0])
    page.click(f"#langs button[data-lang='{lang}']")
    page.evaluate("""(qr) => { config.idle_seconds = 3600;  // no reset half way
        document.getElementById('queue-number').textContent = 'B-999';
        document.getElementById('new-id').textContent = 'ZZZZ-ZZZ7';  // the widest code
        document.getElementById('code-qr').innerHTML = qr;
        document.getElementById('new-id-block').hidden = false;
        flow.ticket = 1; renderLive(); }""", code_svg("ZZZZ-ZZZ7"))
    for screen in SCREENS:
        page.evaluate(f"show('{screen}')")
        bad = page.evaluate(OVERFLOWS, screen)
        if screen in ("s-start", "s-reason", "s-ticket"):
            shot(page, f"{screen}-{lang}")
        assert bad == [], f"{lang} {screen}: {bad}"
    assert page.evaluate("document.documentElement.dir") == (
        "rtl" if lang in ("ar", "prs") else "ltr")

    # The keyboards' screens with the longest error in its place,
    # and the name's keyboard in Latin letters too where the language writes another script.
    err = max((k for k in STRINGS[lang] if k.startswith("err_")),
              key=lambda k: max(map(len, forms(STRINGS[lang][k]))))
    scripts = ["own", "latin"] if lang in ("ar", "prs") else ["own"]
    for screen, msg, script in [("s-start", "start-msg", "own"), ("s-name", None, "own"),
                                *[("s-name", "name-msg", s) for s in scripts],
                                ("s-year", "year-msg", "own")]:
        page.evaluate(f"show('{screen}')")
        page.evaluate("([msg, err]) => { for (const m of ['start-msg', 'name-msg', 'year-msg'])"
                      " say(m, null);"
                      " if (msg) say(msg, err, 300); }", [msg, err])
        if script == "latin":
            page.tap("#name-keys button[data-key='script']")
            assert page.get_attribute("#name-keys", "dir") == "ltr"
        bad = page.evaluate(OVERFLOWS, screen)
        shot(page, f"{screen}-{lang}-{script}{'-' + err if msg else ''}")
        assert bad == [], f"{lang} {screen} {script} {err if msg else ''}: {bad}"


def screens_to_ticket(page: Any, url: str, passport: str, year: str) -> list[Any]:
    """passport -> year -> reason -> ticket by taps, what each step showed: the screen,
    its visible text (the queue number masked) and the API's status codes."""
    statuses: list[tuple[str, int]] = []
    page.on("response", lambda r: statuses.append((r.url.split("/api/")[1], r.status))
            if "/api/" in r.url and "events" not in r.url and "config" not in r.url else None)
    open_page(page, url)
    seen = []

    def look() -> None:
        screen = page.evaluate("flow.screen")
        text = page.locator(f"#{screen}").inner_text()
        number = page.text_content("#queue-number") or ""
        seen.append((screen, text.replace(number, "#") if number else text))

    look()
    keys(page, passport, "passport-keys")
    page.tap("#passport-next")
    page.wait_for_selector("#s-year:not([hidden])", timeout=BOUND)
    look()
    keys(page, year)
    page.tap("#year-next")
    page.wait_for_selector("#s-reason:not([hidden])", timeout=BOUND)
    look()
    page.tap("#reasons button[data-reason='sick']")
    page.wait_for_selector("#s-ticket:not([hidden])", timeout=BOUND)
    sync_api.expect(page.locator("#ticket-status")).not_to_have_text("", timeout=BOUND)
    look()
    return [seen, statuses, page.content().count("mismatch")]


def test_no_oracle_wrong_right_and_unknown_look_alike(quick_kiosk: tuple[str, Path],
                                                      browser: Any) -> None:
    """A known passport with a wrong year, with its right year, and an unknown passport:
    the same screens, texts and HTTP statuses; nothing of the record reaches the page."""
    flows = []
    for passport, year in (("ZZ998877", "1990"), ("ZZ998877", "1977"), ("QQ554433", "1977")):
        page = browser.new_page()
        bodies: list[str] = []
        page.on("response", lambda r, b=bodies: b.append(r.text()) if "/api/" in r.url
                and "events" not in r.url else None)
        try:
            flows.append(screens_to_ticket(page, quick_kiosk[0], passport, year))
            html = page.content()
        finally:
            page.close()
        for secret in ("Secretname", "Zainab"):
            assert secret not in html and all(secret not in b for b in bodies)
    assert flows[0] == flows[1] == flows[2], flows
    seen, statuses, _ = flows[0]
    assert [s for s, _ in seen] == ["s-start", "s-year", "s-reason", "s-ticket"]
    assert statuses == [("verify", 200), ("checkin", 200)]


def test_no_lockout_in_the_browser(quick_kiosk: tuple[str, Path], page: Any) -> None:
    """A burst of wrong years for one passport, then its right year: a ticket at once."""
    url = quick_kiosk[0]
    for year in range(1990, 2010):
        assert call_api(url, "/api/checkin", {"passport": "ZZ998877", "year": str(year),
                                               "reason": "other"}) == 200
    seen, statuses, _ = screens_to_ticket(page, url, "ZZ998877", "1977")
    assert seen[-1][0] == "s-ticket" and statuses == [("verify", 200), ("checkin", 200)]


def test_staff_see_the_claim_and_confirm_it(quick_kiosk: tuple[str, Path], page: Any) -> None:
    url = quick_kiosk[0]
    for year in ("1966", "1967"):
        assert call_api(url, "/api/checkin", {"passport": "ZZ998877", "year": year,
                                               "reason": "other"}) == 200
    open_page(page, url)
    page.tap("#staff-open")
    keys(page, "246810", "pin-keys")
    page.tap("#pin-next")
    page.wait_for_selector("#staff-identity .identity", timeout=BOUND)
    rows = page.locator("#staff-identity .identity")
    row = rows.filter(has_text="1966")
    assert row.count() == 1
    text = row.inner_text()
    assert "Zainab Secretname" in text and STRINGS["en"]["staff_typed"] in text
    before = rows.count()
    row.locator("button[data-action='staff_confirm']").tap()
    sync_api.expect(rows).to_have_count(before - 1, timeout=BOUND)
    # Attach another to the right passport; what is typed survives the screen's refresh.
    row = rows.first
    field = row.locator("input.attach-passport")
    field.fill("RIGHT1234")
    page.evaluate("refreshStaff()")
    page.wait_for_timeout(300)
    assert rows.first.locator("input.attach-passport").input_value() == "RIGHT1234"
    rows.first.locator("button[data-action='staff_attach']").tap()
    sync_api.expect(rows).to_have_count(before - 2, timeout=BOUND)


def call_api(url: str, path: str, body: Any) -> int:
    import urllib.request
    req = urllib.request.Request(url.rstrip("/") + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=BOUND / 1000) as resp:
        return int(resp.status)


def test_idle_reset_leaves_no_patient_data(quick_kiosk: tuple[str, Path], page: Any) -> None:
    open_page(page, quick_kiosk[0])
    number = check_in_without_documents(page, "Omar Idletest", "2001")
    new_id = str(page.text_content("#new-id"))  # the short patient code
    assert re.fullmatch(r"B-\d{3}", number) and re.fullmatch(r"\w{4}-\w{4}", new_id)
    page.wait_for_selector("#s-start:not([hidden])", timeout=BOUND)  # idle reset, no input
    found = page.evaluate("""async (secrets) => {
        const html = document.documentElement.outerHTML;
        const values = [...document.querySelectorAll('input')].map(i => i.value).join('|');
        const dbs = indexedDB.databases ? await indexedDB.databases() : [];
        return { hits: secrets.filter(s => html.includes(s) || values.includes(s)),
                 local: localStorage.length, session: sessionStorage.length, idb: dbs.length,
                 flow: JSON.stringify(flow) };
    }""", ["Omar", "Idletest", "2001", number, new_id])
    assert found["hits"] == []
    assert (found["local"], found["session"], found["idb"]) == (0, 0, 0)
    assert "ticket" not in found["flow"] and "name" not in found["flow"]


@pytest.fixture(scope="module")
def touch_kiosk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A kiosk with no hub and the idle reset out of the way of slow taps."""
    _, kiosk_dir = make_kiosk(tmp_path_factory.mktemp("touch"))
    kiosk, url = run_kiosk(kiosk_dir, f"tcp://127.0.0.1:{free_port()}", idle=300)
    try:
        yield url, kiosk_dir
    finally:
        kiosk.stop()


def kiosk_records(kiosk_dir: Path) -> list[dict[str, Any]]:
    dump = subprocess.run([sys.executable, "-m", "device.cli", "dump", "--data", str(kiosk_dir)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert dump.returncode == 0, dump.stderr
    records: list[dict[str, Any]] = json.loads(dump.stdout)["records"]
    return records


def tap_to_ticket(page: Any) -> str:
    """From the consent to the ticket, by taps; returns the queue number."""
    page.wait_for_selector("#s-consent:not([hidden])", timeout=BOUND)
    page.tap("#consent-yes")
    page.tap("#reasons button[data-reason='sick']")
    page.wait_for_selector("#s-ticket:not([hidden])", timeout=BOUND)
    return str(page.text_content("#queue-number"))


def test_checkin_by_touch_alone_with_a_passport(touch_kiosk: tuple[str, Path],
                                                page: Any) -> None:
    url, kiosk_dir = touch_kiosk
    open_page(page, url)
    page.tap("#langs button[data-lang='fr']")
    keys(page, "FR123X", "passport-keys")
    page.tap("#passport-keys button[data-key='del']")
    keys(page, "4567", "passport-keys")
    assert page.input_value("#passport") == "FR1234567"
    page.tap("#passport-next")
    page.wait_for_selector("#s-year:not([hidden])", timeout=BOUND)
    keys(page, "1985")
    page.tap("#year-next")
    page.wait_for_selector("#s-reason:not([hidden])", timeout=BOUND)  # as for everyone
    page.tap("#reasons button[data-reason='sick']")
    page.wait_for_selector("#s-ticket:not([hidden])", timeout=BOUND)
    number = str(page.text_content("#queue-number"))
    shot(page, "touch-fr-ticket")

    records = kiosk_records(kiosk_dir)
    [checkin] = [r for r in records if r["type"] == "checkin"
                 and r["fields"]["queueNumber"] == number]
    assert (checkin["fields"]["claimBirthDate"], checkin["fields"]["identity"]) == (
        "1985", "unknown")  # a claim; the patient's record holds nothing typed
    assert [r["fields"] for r in records if r["id"] == checkin["fields"]["subject"]] == [{}]

    page.tap("#ticket-done")  # the name's keyboard in French: Latin letters only
    page.tap("#no-docs")
    page.wait_for_selector("#s-name:not([hidden])", timeout=BOUND)
    assert page.locator("#name-keys button[data-key='script']").count() == 0
    keys(page, "AMINA TESTER", "name-keys")  # a capital starts each word
    assert page.input_value("#name") == "Amina Tester"
    assert page.get_attribute("#name-keys", "class") == "kbd lower"


def test_no_documents_by_touch_alone_in_arabic(touch_kiosk: tuple[str, Path],
                                               page: Any) -> None:
    url, kiosk_dir = touch_kiosk
    name = "\u0644\u064a\u0644\u0649 \u062d\u0633\u0646"  # ليلى حسن
    open_page(page, url)
    page.tap("#langs button[data-lang='ar']")
    page.tap("#no-docs")
    page.wait_for_selector("#s-name:not([hidden])", timeout=BOUND)
    pad = page.locator("#name-keys")
    assert pad.get_attribute("dir") == "rtl"
    assert page.evaluate("""() => { const k = document.querySelectorAll('#name-keys button');
        return k[0].getBoundingClientRect().left > k[1].getBoundingClientRect().left; }""")
    keys(page, "\u0644\u064a\u0644\u0649", "name-keys")
    page.tap("#name-keys button[data-key='script']")  # Latin letters, and back
    assert pad.get_attribute("dir") == "ltr"
    assert page.locator("#name-keys button[data-key='A']").count() == 1
    page.tap("#name-keys button[data-key='script']")
    assert pad.get_attribute("dir") == "rtl"
    keys(page, " \u062d\u0633\u0646", "name-keys")
    assert page.input_value("#name") == name
    assert page.locator("#name").evaluate("el => el.matches(':dir(rtl)')")
    shot(page, "touch-ar-name")
    page.tap("#name-next")
    page.wait_for_selector("#s-year:not([hidden])", timeout=BOUND)
    keys(page, "1990")
    page.tap("#year-next")
    assert re.fullmatch(r"B-\d{3}", tap_to_ticket(page))
    code = str(page.text_content("#new-id"))
    new_id = str(code_patient_id(read_key(kiosk_dir / "fleet.key", "fleet key", None), code))

    patients = [r for r in kiosk_records(kiosk_dir) if r["id"] == new_id]
    assert [p["fields"] for p in patients] == [{"birthDate": "1990", "name": name}]
    page.tap("#ticket-done")
    page.wait_for_selector("#s-start:not([hidden])", timeout=BOUND)
    assert name not in page.content() and page.input_value("#name") == ""


def test_keys_leave_the_focus_to_the_scanner(touch_kiosk: tuple[str, Path], page: Any) -> None:
    open_page(page, touch_kiosk[0])
    keys(page, "ZY", "passport-keys")
    page.keyboard.type("123456", delay=0)  # a keyboard-wedge scanner, after two taps
    page.keyboard.press("Enter")
    page.wait_for_selector("#s-year:not([hidden])", timeout=BOUND)
    assert page.evaluate("flow.passport") == "ZY123456"


def test_staff_pin_by_touch_alone(touch_kiosk: tuple[str, Path], page: Any) -> None:
    open_page(page, touch_kiosk[0])
    page.tap("#staff-open")
    keys(page, "246810", "pin-keys")
    page.tap("#pin-next")
    page.wait_for_selector("#s-staff:not([hidden])", timeout=BOUND)
    page.tap("#staff-close")
    page.wait_for_selector("#s-start:not([hidden])", timeout=BOUND)


BACK_NAMES = {"en": "Back Tester", "ar": "\u0644\u064a\u0644\u0649 \u062d\u0633\u0646"}


@pytest.mark.parametrize("lang", ["en", "ar"])
def test_back_goes_one_step_and_keeps_what_was_typed(touch_kiosk: tuple[str, Path], page: Any,
                                                     lang: str) -> None:
    """Back from each screen lands on the one before, with the passport, year and name still
    typed; the reason screen's Back is below the tiles and looks unlike them."""
    open_page(page, touch_kiosk[0])
    page.tap(f"#langs button[data-lang='{lang}']")

    def at(screen: str) -> None:
        page.wait_for_selector(f"#{screen}:not([hidden])", timeout=BOUND)

    keys(page, "BK123456", "passport-keys")
    page.tap("#passport-next")
    at("s-year")
    keys(page, "1984")
    page.tap("#year-next")
    at("s-reason")
    assert page.locator("#reasons .back, #reasons [data-i18n='back']").count() == 0
    look = page.evaluate("""() => {
        const b = document.getElementById('reason-back'), tiles = [...document.querySelectorAll(
            '#reasons button')], sb = getComputedStyle(b), st = getComputedStyle(tiles[0]);
        const r = b.getBoundingClientRect();
        return { below: tiles.every(x => x.getBoundingClientRect().bottom <= r.top),
                 background: sb.backgroundColor !== st.backgroundColor,
                 border: sb.borderColor !== st.borderColor,
                 lower: r.height < tiles[0].getBoundingClientRect().height,
                 arrow: getComputedStyle(b, '::before').content }; }""")
    assert look == {"below": True, "background": True, "border": True, "lower": True,
                    "arrow": '"\u2192\u00a0"' if lang == "ar" else '"\u2190\u00a0"'}, look
    shot(page, f"reason-back-{lang}")
    page.tap("#reason-back")
    at("s-year")
    assert page.input_value("#year") == "1984"
    page.tap("#year-back")
    at("s-start")
    assert page.input_value("#passport") == "BK123456"
    assert page.text_content("#start-msg") == ""
    page.tap("#passport-next")  # forward again: the values carry on
    at("s-year")
    assert (page.evaluate("flow.passport"), page.input_value("#year")) == ("BK123456", "1984")
    page.tap("#year-back")
    at("s-start")

    page.tap("#no-docs")  # where a name is asked: name, year, consent, reason
    at("s-name")
    page.fill("#name", BACK_NAMES[lang])
    page.tap("#name-next")
    at("s-year")
    page.tap("#year-back")
    at("s-name")
    assert page.input_value("#name") == BACK_NAMES[lang]
    page.tap("#name-next")
    at("s-year")
    assert page.input_value("#year") == "1984"
    page.tap("#year-next")
    at("s-consent")
    page.tap("#consent-yes")
    at("s-reason")
    page.tap("#reason-back")
    at("s-consent")
    page.tap("#consent-yes")
    at("s-reason")
    assert page.evaluate("[flow.name, flow.year]") == [BACK_NAMES[lang], "1984"]


def test_start_keeps_its_instruction_beside_an_error(touch_kiosk: tuple[str, Path],
                                                     page: Any) -> None:
    open_page(page, touch_kiosk[0])
    for lang in ("en", "ar"):
        page.tap(f"#langs button[data-lang='{lang}']")
        keys(page, "AB", "passport-keys")  # too short
        page.tap("#passport-next")
        msg = page.locator("#start-msg")
        sync_api.expect(msg).to_have_text(STRINGS[lang]["err_bad_passport"], timeout=BOUND)
        title = page.locator("#s-start h1")
        assert title.is_visible() and msg.is_visible()
        assert title.text_content() == STRINGS[lang]["passport_prompt"]
        assert page.evaluate(OVERFLOWS, "s-start") == []
        shot(page, f"start-error-{lang}")
        page.tap("#passport-keys button[data-key='clear']")


def post_api(url: str, path: str, body: Any) -> tuple[int, dict[str, Any]]:
    """The API's status and JSON answer, errors included."""
    import urllib.error
    import urllib.request
    req = urllib.request.Request(url.rstrip("/") + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=BOUND / 1000) as resp:
            return int(resp.status), json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_each_year_mistake_has_its_message_and_the_year_stays(touch_kiosk: tuple[str, Path],
                                                              page: Any) -> None:
    this_year = time.gmtime().tm_year
    cases = [(str(this_year + 1), "year-future"), (str(this_year - 121), "year-old"),
             ("19a5", "year-letters"), ("198", "year-short")]
    url = touch_kiosk[0]
    for year, detail in cases:  # the server says the same, as a code the page translates
        assert post_api(url, "/api/verify", {"passport": "YR123456", "year": year}) == (
            400, {"error": "bad-year", "detail": detail}), year
    assert post_api(url, "/api/verify", {"passport": "YR123456", "year": str(this_year - 120)}
                    ) == (200, {"result": "ok"})
    open_page(page, url)
    for lang in ("en", "ar"):
        page.tap(f"#langs button[data-lang='{lang}']")
        page.tap("#passport-keys button[data-key='clear']")
        keys(page, "YR123456", "passport-keys")
        page.tap("#passport-next")
        page.wait_for_selector("#s-year:not([hidden])", timeout=BOUND)
        for year, detail in cases:
            page.fill("#year", "")
            page.focus("#year")
            page.keyboard.type(year, delay=0)  # letters come from a keyboard, not the keypad
            page.tap("#year-next")
            want = STRINGS[lang]["err_" + detail.replace("-", "_")]
            sync_api.expect(page.locator("#year-msg")).to_have_text(want, timeout=BOUND)
            assert page.input_value("#year") == year  # not cleared
            assert page.evaluate("flow.screen") == "s-year"
        shot(page, f"year-error-{lang}")
        page.tap("#year-back")
        page.wait_for_selector("#s-start:not([hidden])", timeout=BOUND)
    assert len({STRINGS[lang]["err_" + d.replace("-", "_")] for lang in ("en", "ar")
                for _, d in cases}) == 8  # each its own words


NAME_CASES = [("\u200c", "name-letters"), ("\u0301\u0308\u064b", "name-letters"),
              ("A" * 80, "name-long"), ("Ali \u202eHassan", "name-chars"),
              ("Ali \u2066Hassan\u2069", "name-chars"), ("Ali\x00", "name-chars"),
              ("Ali\x85Hassan", "name-chars"), ("Ali 3", "name-chars")]


@pytest.mark.parametrize(("name", "detail"), NAME_CASES)
def test_the_api_refuses_a_bad_name_with_its_reason(touch_kiosk: tuple[str, Path], name: str,
                                                    detail: str) -> None:
    body = {"year": "1980", "reason": "sick", "consent": True, "name": name}
    assert post_api(touch_kiosk[0], "/api/checkin", body) == (
        400, {"error": "bad-name", "detail": detail})


def test_the_api_takes_a_name_in_arabic_script_and_counts_after_nfc(
        touch_kiosk: tuple[str, Path]) -> None:
    base = {"year": "1980", "reason": "sick", "consent": True}
    for name in ("\u0644\u064a\u0644\u0649 \u062d\u0633\u0646",  # ليلى حسن
                 "\u0641\u0627\u0637\u0645\u0647\u200c\u06cc",  # a ZWNJ inside, as Dari writes
                 "e\u0301" * 60):  # 120 code points, 60 letters once composed
        status, answer = post_api(touch_kiosk[0], "/api/checkin", {**base, "name": name})
        assert status == 200 and answer["queue_number"], (name, answer)


def test_the_page_gives_each_name_mistake_its_message(touch_kiosk: tuple[str, Path],
                                                      page: Any) -> None:
    open_page(page, touch_kiosk[0])
    page.tap("#langs button[data-lang='ar']")
    page.tap("#no-docs")
    page.wait_for_selector("#s-name:not([hidden])", timeout=BOUND)
    for name, detail in NAME_CASES[:4]:
        page.fill("#name", name)
        page.tap("#name-next")
        want = STRINGS["ar"]["err_" + detail.replace("-", "_")]
        sync_api.expect(page.locator("#name-msg")).to_have_text(want, timeout=BOUND)
        assert page.evaluate("flow.screen") == "s-name"
    page.fill("#name", "\u0644\u064a\u0644\u0649")
    page.tap("#name-next")
    page.wait_for_selector("#s-year:not([hidden])", timeout=BOUND)


def test_a_locked_kiosk_checks_in_says_so_and_staff_unlock_it(tmp_path: Path,
                                                              page: Any) -> None:
    """A kiosk whose keys are under a passphrase: the banner, a new patient checked in
    (told staff give the code), a wrong passphrase said so, the right one typed on the
    on-screen keys, and the banner gone (tests/test_staff_unlock.py has the rest)."""
    from device.store import unlock

    data = tmp_path / "k"
    data.mkdir(mode=0o700)
    keys_ = unlock.init_keys(data, "open sesame 42")
    init_store(data, "North", "B", key_provider=keys_, fleet=keys_).close()
    kiosk, url = run_kiosk(data, f"tcp://127.0.0.1:{free_port()}", idle=300)
    try:
        open_page(page, url)
        page.wait_for_selector("#locked:not([hidden])", timeout=BOUND)
        assert page.text_content("#locked") == STRINGS["en"]["locked_note"]
        assert check_in_without_documents(page, "Omar Lockedtest", "2001") == "B-001"
        assert page.is_visible("#ticket-code-later") and not page.is_visible("#new-id-block")
        page.click("#ticket-done")
        page.tap("#staff-open")
        page.wait_for_selector("#s-unlock:not([hidden])", timeout=BOUND)
        page.fill("#unlock-pass", "not the passphrase")
        page.click("#unlock-next")
        page.wait_for_selector("#unlock-msg:has-text('Wrong passphrase')", timeout=BOUND)
        assert page.input_value("#unlock-pass") == ""
        for c in "open sesame 42":
            page.tap(f'#unlock-keys button[data-key="{"space" if c == " " else c}"]')
        shot(page, "unlock")
        page.click("#unlock-next")
        page.wait_for_selector("#s-start:not([hidden])", timeout=BOUND)
        page.wait_for_selector("#locked", state="hidden", timeout=BOUND)
    finally:
        assert kiosk.stop() == 0, "".join(kiosk.log)
