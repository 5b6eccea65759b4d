"""The page in headless Chromium: counts take CLDR's plural forms, spoken prompts load.

Chromium picks a plural form with its own CLDR data (``Intl.PluralRules``); Babel's
CLDR data says which form is right. The spoken prompts are the page's own files,
served by the kiosk's page server like the rest of the page.
"""

from __future__ import annotations

import io
import json
import urllib.error
import urllib.request
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from babel import Locale

from device.ui.app import LANGUAGES
from device.ui.prompts import CLINIC_DIR, PROMPTS, SHIPPED, TEXTS, byte_range
from tools.make_prompts import screen_text

from .test_ui_browser import ARGS, BOUND, CHROMIUM, STRINGS, open_page, sync_api
from .test_ui_helpers import free_port, make_kiosk, run_kiosk

COUNTS = range(121)
#: Languages whose prompts ship (README "Spoken prompts"), with the shipped files' budget.
VOICED = ["en", "fr", "ar", "sw", "prs"]
SHIPPED_BUDGET = 600 * 1024


@pytest.fixture(scope="module")
def kiosk_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_kiosk(tmp_path_factory.mktemp("speech"))[1]


@pytest.fixture(scope="module")
def kiosk(kiosk_dir: Path) -> Iterator[str]:
    proc, url = run_kiosk(kiosk_dir, f"tcp://127.0.0.1:{free_port()}", idle=3600)
    try:
        yield url
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory, kiosk: str) -> Iterator[Any]:
    profile = tmp_path_factory.mktemp("profile")
    with sync_api.sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            str(profile), executable_path=str(CHROMIUM), headless=True,
            args=[*ARGS, "--autoplay-policy=no-user-gesture-required"],
            viewport={"width": 800, "height": 480}, has_touch=True)
        try:
            pg = ctx.new_page()
            open_page(pg, kiosk)
            yield pg
        finally:
            ctx.close()


def test_the_page_picks_cldr_plural_forms(page: Any) -> None:
    counted = [k for k, v in STRINGS["en"].items() if isinstance(v, dict)]
    assert "err_slow_down" in counted
    for lang in LANGUAGES:
        rule = Locale.parse(STRINGS["_meta"]["html_lang"][lang].replace("-", "_")).plural_form
        shown = page.evaluate("""([lang, keys, counts]) => { setLang(lang);
            return keys.map((k) => counts.map((n) => t(k, n))); }""",
                              [lang, counted, list(COUNTS)])
        for key, texts in zip(counted, shown, strict=True):
            forms = STRINGS[lang][key]
            want = [forms[rule(n)].replace("{n}", str(n)) for n in COUNTS]
            assert texts == want, (lang, key)
    page.evaluate("setLang('en')")
    assert page.evaluate("t('err_slow_down', 1)") == "Too many tries. Please wait 1 second."
    assert page.evaluate("t('err_slow_down', 5)") == "Too many tries. Please wait 5 seconds."


def get(url: str, **headers: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                    timeout=10) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, "", b""


def test_every_shipped_prompt_has_its_file_and_they_are_small() -> None:
    files = sorted(p.relative_to(SHIPPED).as_posix() for p in SHIPPED.rglob("*") if p.is_file())
    assert files == sorted([TEXTS, *(f"{lang}/{prompt}.ogg" for lang in VOICED
                                      for prompt in PROMPTS)])
    for path in SHIPPED.rglob("*.ogg"):
        assert path.read_bytes()[:4] == b"OggS" and b"OpusHead" in path.read_bytes()[:64], path
    assert sum(p.stat().st_size for p in SHIPPED.rglob("*.ogg")) < SHIPPED_BUDGET


def test_shipped_prompts_say_what_the_page_says() -> None:
    """Each default was made from the page's words as they are now: a changed string
    needs ./tools/make_prompts (and, for Arabic and Dari, its voweled text there)."""
    texts = json.loads((SHIPPED / TEXTS).read_text("utf-8"))
    assert sorted(texts) == sorted(VOICED)
    for lang in VOICED:
        assert sorted(texts[lang]) == sorted(PROMPTS)
        stale = [p for p in PROMPTS if texts[lang][p]["page"] != screen_text(lang, p, STRINGS)]
        assert stale == [], f"{lang}: run ./tools/make_prompts {lang}"


def test_each_screen_plays_its_prompt_in_every_voiced_language(page: Any) -> None:
    """The speaker button plays the screen's prompt; the audio loads and has a duration."""
    screens = page.evaluate("PROMPTS")
    assert sorted(screens.values()) == sorted(PROMPTS)
    for lang in VOICED:
        page.evaluate("(lang) => setLang(lang)", lang)
        for screen, prompt in screens.items():
            page.evaluate("""(screen) => { show(screen); const v = $('voice');
                v.removeAttribute('src'); v.load(); window.__played = null;
                v.onplaying = () => { window.__played = v.currentSrc; }; }""", screen)
            page.tap("#speak")
            page.wait_for_function("""() => { const v = $('voice');
                return v.readyState >= HTMLMediaElement.HAVE_METADATA
                    && isFinite(v.duration) && v.duration > 0 && window.__played; }""",
                                   timeout=BOUND)
            played = page.evaluate("window.__played")
            assert played.endswith(f"/audio/{lang}/{prompt}"), (lang, screen, played)
        page.evaluate("show('s-staff-pin')")  # staff screens have no prompt
        assert page.locator("#speak").is_hidden()


def test_no_button_where_a_language_has_no_prompt(page: Any) -> None:
    page.evaluate("setLang('en'); show('s-start')")
    assert page.locator("#speak").is_visible()
    page.evaluate("config.prompts.en = ['year']; show('s-start')")
    assert page.locator("#speak").is_hidden()
    page.evaluate("show('s-year')")
    assert page.locator("#speak").is_visible()
    page.evaluate("delete config.prompts.en; show('s-year')")
    assert page.locator("#speak").is_hidden()


def tiny_wav() -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(b"\0\0" * 800)
    return out.getvalue()


def test_the_server_serves_prompts_a_clinic_recording_first(kiosk: str, kiosk_dir: Path) -> None:
    status, ctype, body = get(kiosk.rstrip("/") + "/audio/sw/reason")
    assert (status, ctype) == (200, "audio/ogg")
    assert body == (SHIPPED / "sw" / "reason.ogg").read_bytes()
    # Byte ranges, which Chromium needs to learn an Ogg file's duration before the end.
    whole = (SHIPPED / "sw" / "reason.ogg").read_bytes()
    assert get(kiosk.rstrip("/") + "/audio/sw/reason", Range="bytes=4-13") == (
        206, "audio/ogg", whole[4:14])
    assert get(kiosk.rstrip("/") + "/audio/sw/reason", Range="bytes=-5")[2] == whole[-5:]
    assert get(kiosk.rstrip("/") + "/audio/sw/reason", Range=f"bytes={len(whole)}-")[0] == 416
    own = kiosk_dir / CLINIC_DIR / "sw" / "reason.wav"
    own.parent.mkdir(parents=True)
    own.write_bytes(tiny_wav())
    try:
        assert get(kiosk.rstrip("/") + "/audio/sw/reason") == (200, "audio/wav",
                                                               own.read_bytes())
    finally:
        own.unlink()  # the module's other tests play the defaults
    assert get(kiosk.rstrip("/") + "/audio/sw/reason")[1] == "audio/ogg"
    (kiosk_dir / "outside.wav").write_bytes(tiny_wav())
    for bad in ["audio/sw/../../outside", "audio/sw/..%2F..%2Foutside", "audio/../i18n.json",
                "audio/sw/reason.wav", "audio/xx/reason", "audio/sw/", "audio/sw/reason/x",
                "audio/%2e%2e/sw/reason", "audio/sw/%2e%2e%2foutside"]:
        assert get(kiosk.rstrip("/") + "/" + bad)[0] == 404, bad


@pytest.mark.parametrize(("header", "want"), [
    (None, None), ("bytes=0-", (0, 100)), ("bytes=10-19", (10, 20)), ("bytes=90-500", (90, 100)),
    ("bytes=-30", (70, 100)), ("bytes=-500", (0, 100)), ("bytes=0-1,5-9", None),
    ("items=0-5", None), ("bytes=a-b", None), ("bytes=-", None), ("bytes=5", None),
    ("bytes=100-", ValueError), ("bytes=20-10", ValueError)])
def test_byte_range(header: str | None, want: object) -> None:
    if want is ValueError:
        with pytest.raises(ValueError):
            byte_range(header, 100)
    else:
        assert byte_range(header, 100) == want
