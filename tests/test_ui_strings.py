"""The page's strings: every key in every language, no copies of the English, fonts cover all.

No browser here: the strings file, the page and its script are read from the package.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import pytest
from babel import Locale

from device.status import PENDING, STATUSES
from device.ui.app import LANGUAGES, STATIC
from device.ui.checkin import REASONS

STRINGS = json.loads((STATIC / "i18n.json").read_text("utf-8"))
EN = STRINGS["en"]
#: Keys whose text may equal the English: names of languages (each in its own tongue).
SAME_OK = {"lang_name"} | set(STRINGS["_meta"]["same_ok"])

SCRIPTS = sorted(p.name for p in STATIC.glob("*.js"))


def forms(text: str | dict[str, str]) -> list[str]:
    """A string's texts: itself, or each plural form of a string with a count."""
    return list(text.values()) if isinstance(text, dict) else [text]


def cldr_categories(lang: str) -> set[str]:
    """The plural categories CLDR has for a language (Babel's data), "other" included."""
    code = STRINGS["_meta"]["html_lang"][lang].replace("-", "_")
    return set(Locale.parse(code).plural_form.tags) | {"other"}


def page_scripts() -> str:
    """Every script of the page, as one text: they share one global scope."""
    return "\n".join((STATIC / name).read_text("utf-8") for name in SCRIPTS)


def cmap(path: Path) -> set[int]:
    """Code points a TrueType font maps to a glyph (cmap formats 4 and 12; glyph 0 is none)."""
    data = path.read_bytes()
    num = struct.unpack_from(">H", data, 4)[0]
    tables = {data[12 + 16 * i:16 + 16 * i]: struct.unpack_from(">II", data, 20 + 16 * i)
              for i in range(num)}
    base = tables[b"cmap"][0]
    out: set[int] = set()
    for i in range(struct.unpack_from(">H", data, base + 2)[0]):
        _, _, off = struct.unpack_from(">HHI", data, base + 4 + 8 * i)
        sub = base + off
        fmt = struct.unpack_from(">H", data, sub)[0]
        if fmt == 4:
            seg = struct.unpack_from(">H", data, sub + 6)[0] // 2
            ends = struct.unpack_from(f">{seg}H", data, sub + 14)
            starts = struct.unpack_from(f">{seg}H", data, sub + 16 + 2 * seg)
            deltas = struct.unpack_from(f">{seg}H", data, sub + 16 + 4 * seg)
            ranges = sub + 16 + 6 * seg  # idRangeOffset[], then glyphIdArray[]
            for k, (s, e) in enumerate(zip(starts, ends, strict=True)):
                offset = struct.unpack_from(">H", data, ranges + 2 * k)[0]
                for c in range(s, e + 1):
                    glyph = c if offset == 0 else struct.unpack_from(
                        ">H", data, ranges + 2 * k + offset + 2 * (c - s))[0]
                    if offset == 0 or glyph:
                        glyph = (glyph + deltas[k]) & 0xFFFF
                    if glyph:
                        out.add(c)
        elif fmt == 12:
            n = struct.unpack_from(">I", data, sub + 12)[0]
            for j in range(n):
                s, e, first = struct.unpack_from(">III", data, sub + 16 + 12 * j)
                out.update(range(s + (first == 0), e + 1))
    return out


def test_every_language_has_every_string() -> None:
    assert set(LANGUAGES) <= set(STRINGS)
    for lang in LANGUAGES:
        table = STRINGS[lang]
        assert set(table) == set(EN), f"{lang}: {set(EN) ^ set(table)}"
        for key, text in table.items():
            assert isinstance(text, dict) == isinstance(EN[key], dict), (lang, key)
            want = set(re.findall(r"\{\w+\}", forms(EN[key])[-1]))
            for form in forms(text):
                assert form.strip(), f"{lang}.{key} is empty"
                # a form may spell its number out (Arabic's dual: "two seconds" in one word)
                assert set(re.findall(r"\{\w+\}", form)) <= want, (lang, key, form)
            if isinstance(text, dict):
                assert set(re.findall(r"\{\w+\}", text["other"])) == want, (lang, key)


def test_every_count_follows_cldr_plural_rules() -> None:
    """A string with a count ({n}) has exactly the plural forms CLDR has for each language:
    English one/other, French one/many/other, Arabic zero/one/two/few/many/other..."""
    counted = {k for k, v in EN.items() if any("{n}" in f for f in forms(v))}
    assert counted, "no string with a count"
    for lang in LANGUAGES:
        for key in counted:
            text = STRINGS[lang][key]
            assert isinstance(text, dict), f"{lang}.{key} has a count but no plural forms"
            assert set(text) == cldr_categories(lang), (lang, key, sorted(text))


@pytest.mark.parametrize("lang", [x for x in LANGUAGES if x != "en"])
def test_no_string_is_a_copy_of_the_english(lang: str) -> None:
    copies = [k for k, v in STRINGS[lang].items() if k not in SAME_OK
              and set(forms(v)) & set(forms(EN[k]))]
    assert copies == []


def test_language_names_differ() -> None:
    names = [STRINGS[lang]["lang_name"] for lang in LANGUAGES]
    assert len(set(names)) == len(names)


def test_right_to_left_languages() -> None:
    assert set(STRINGS["_meta"]["rtl"]) == {"ar", "prs"}


def test_page_and_script_use_only_known_keys() -> None:
    html = (STATIC / "index.html").read_text("utf-8")
    js = page_scripts()
    used = set(re.findall(r'data-i18n="(\w+)"', html))
    used |= set(re.findall(r'\bt\("(\w+)"[,)]', js))
    used |= set(re.findall(r'say\("[\w-]+", "(\w+)"', js))
    words = re.search(r"const WORDS = \{([^}]*)\}", js)  # the keyboards' labelled keys
    assert words
    used |= set(re.findall(r':\s*"(\w+)"', words.group(1)))
    used |= {f"reason_{r}" for r in REASONS}
    used |= {f"sync_{s}" for s in STATUSES}
    assert used, "no keys found"
    assert used - set(EN) == set()


def test_every_status_has_words_and_a_colour_on_the_page() -> None:
    """The page shows each of device.status's names, the same the LED shows."""
    for lang in LANGUAGES:
        assert {f"sync_{s}" for s in STATUSES} <= set(STRINGS[lang]), lang
    css = (STATIC / "app.css").read_text("utf-8")
    styled = set(re.findall(r'#sync\[data-state="([\w-]+)"\]', css))
    assert styled == set(STATUSES) - {PENDING}  # pending is the dot's default colour
    page = (STATIC / "index.html").read_text("utf-8")
    script = page_scripts()
    assert 'id="sync" data-state="pending"' in page and 'state: "pending"' in script


def test_every_field_refuses_autofill() -> None:
    html = (STATIC / "index.html").read_text("utf-8")
    inputs = re.findall(r"<input\b[^>]*>", html, re.S)
    assert inputs
    assert all('autocomplete="off"' in tag for tag in inputs)
    assert all('autocomplete="off"' in tag for tag in re.findall(r"<form\b[^>]*>", html))


def test_no_external_assets() -> None:
    for name in ("index.html", "app.css", *SCRIPTS):
        text = (STATIC / name).read_text("utf-8")
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", text, re.I), name


@pytest.mark.parametrize("font", ["DejaVuSans.ttf", "DejaVuSans-Bold.ttf"])
def test_fonts_cover_every_string(font: str) -> None:
    covered = cmap(STATIC / "fonts" / font)
    js = page_scripts()
    text = "".join(f for lang in LANGUAGES for v in STRINGS[lang].values() for f in forms(v))
    text += "".join(c for c in js if c.isprintable())  # the keyboards' letters and symbols
    text += "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-"
    missing = {f"U+{ord(c):04X}" for c in set(text)
               if ord(c) not in covered and c not in "\u200c\u200d"}
    assert missing == set()
    assert (STATIC / "fonts" / "LICENSE-DejaVu.txt").exists()
