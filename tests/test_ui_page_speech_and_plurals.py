"""The page in headless Chromium: counts take CLDR's plural forms, spoken prompts load.

Chromium picks a plural form with its own CLDR data (``Intl.PluralRules``); Babel's
CLDR data says which form is right. The spoken prompts are the page's own files,
served by the kiosk's page server like the rest of the page.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from babel import Locale

from device.ui.app import LANGUAGES

from .test_ui_browser import ARGS, CHROMIUM, STRINGS, open_page, sync_api
from .test_ui_helpers import free_port, make_kiosk, run_kiosk

COUNTS = range(121)


@pytest.fixture(scope="module")
def kiosk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    _, kiosk_dir = make_kiosk(tmp_path_factory.mktemp("speech"))
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
