"""Synthesises the page's default spoken prompts offline: espeak-ng, then Opus in Ogg.

    ./tools/make_prompts            every language that has a usable voice
    ./tools/make_prompts ar sw      only these

Writes device/ui/static/audio/<lang>/<prompt>.ogg (mono, 16 kbit/s Opus, which
Chromium plays), and audio/texts.json: the page's words each file was made
from (a test checks they are still the page's) and the text spoken. Only
needed to regenerate the shipped defaults; the kiosk itself never
synthesises. A clinic's own recordings go in the kiosk's data folder instead
(README "Spoken prompts"), and win over these.

en, fr and sw speak the page's own strings (device/ui/static/i18n.json).
Arabic and Dari are written without short vowels, which espeak-ng guesses
badly, so they speak the texts in SPOKEN below, with the vowels written out
(Arabic tashkeel; the Persian ezafe as a kasra): keep them in step with
i18n.json. A few Arabic words are put otherwise where espeak-ng reads a
waw after a vowel as a long u ("ID card" for "identity", "those working at
the clinic" for "the clinic's staff"). Dari is spoken by espeak-ng's Persian
(Iranian) voice: there is no Dari one.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from device.ui.prompts import PROMPTS, SHIPPED, TEXTS, WORDS

STRINGS = Path(__file__).resolve().parent.parent / "device" / "ui" / "static" / "i18n.json"
#: espeak-ng's voice for each language that ships defaults.
VOICES = {"en": "en", "fr": "fr", "sw": "sw", "ar": "ar", "prs": "fa"}
SPOKEN = {
    "ar": {
        "passport": "اِمْسَحْ أَوِ اكْتُبْ رَقْمَ جَوَازِ السَّفَرِ أَوِ الْبِطَاقَةِ الشَّخْصِيَّةِ،"
                    " أَوْ رَمْزَكَ كَمَرِيضْ.",
        "year": "أَدْخِلْ سَنَةَ مِيلَادِكْ. مَثَلًا: أَلْفٌ وَتِسْعُمِئَةٍ وَخَمْسَةٌ وَثَمَانُونْ.",
        "name": "اِسْمُكَ الْكَامِلْ.",
        "consent": "مَعْلُومَاتُكْ. يَحْفَظُ هَذَا الْجِهَازُ اسْمَكَ وَسَنَةَ مِيلَادِكَ وَسَبَبَ"
                   " زِيَارَتِكَ، لِكَيْ تَتَمَكَّنَ الْعِيَادَةُ مِنْ رِعَايَتِكْ. وَلَا يَطَّلِعُ"
                   " عَلَيْهَا إِلَّا الْعَامِلُونَ فِي الْعِيَادَةِ.",
        "reason": "مَا سَبَبُ زِيَارَتِكَ الْيَوْمْ؟",
        "ticket": "رَقْمُكْ. انْتَظِرْ حَتَّى يُنَادَى رَقْمُكْ.",
    },
    "prs": {
        "passport": "نَمبَرِ پاسپورت یا تذکره، یا کُدِ مریضِ خود را اسکن یا تایپ کنید.",
        "year": "سالِ تولدِ خود را وارد کنید. مثلاً ۱۹۸۵.",
        "name": "نامِ کاملِ شما.",
        "consent": "معلوماتِ شما. این دستگاه نام، سالِ تولد و دلیلِ مراجعهٔ شما را نگه"
                   " می‌دارد، تا کلینیک بتواند از شما مراقبت کند. تنها کارمندانِ کلینیک"
                   " آن را می‌بینند.",
        "reason": "امروز چرا آمده‌اید؟",
        "ticket": "نَمبَرِ شما. لطفاً منتظر بمانید تا صدا زده شوید.",
    },
}
SPEED = 140  # words a minute: espeak-ng's 175 is quick for a first hearing
BITRATE = 16  # kbit/s: a synthetic voice loses nothing audible at this rate


def espeak_order(text: str) -> str:
    """Arabic marks as espeak-ng reads them: a shadda before its vowel. Unicode's canonical
    order (and so this file, NFC) puts the vowel first, and espeak-ng then drops the vowel
    ("as-sfari" for as-safari)."""
    return re.sub("([\u064b-\u0650])\u0651", "\u0651\\1", text)


def screen_text(lang: str, prompt: str, strings: dict[str, dict[str, str]]) -> str:
    """The page's words for a prompt, as a clinic would record them."""
    return " ".join(s if s.rstrip()[-1:] in ".?!؟" else s + "." for s in
                    (strings[lang][key] for key in WORDS[prompt]))


def spoken_text(lang: str, prompt: str, strings: dict[str, dict[str, str]]) -> str:
    if lang in SPOKEN:
        return espeak_order(SPOKEN[lang][prompt])
    return screen_text(lang, prompt, strings)


def make(lang: str, prompt: str, text: str, out: Path, tmp: Path) -> None:
    wav = tmp / f"{lang}-{prompt}.wav"
    subprocess.run(["espeak-ng", "-v", VOICES[lang], "-s", str(SPEED), "-w", str(wav), text],
                   check=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    # A fixed stream serial: the same text makes the same file, so a rerun changes nothing.
    subprocess.run(["opusenc", "--quiet", "--bitrate", str(BITRATE), "--downmix-mono",
                    "--serial", "1", str(wav), str(out)], check=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("langs", nargs="*", default=list(VOICES), help="languages (default: all)")
    args = ap.parse_args(argv)
    for tool in ("espeak-ng", "opusenc"):
        if shutil.which(tool) is None:
            print(f"make_prompts: {tool} is not installed (apt-get install espeak-ng opus-tools)",
                  file=sys.stderr)
            return 1
    unknown = set(args.langs) - set(VOICES)
    if unknown:
        print(f"make_prompts: no usable voice for {', '.join(sorted(unknown))}", file=sys.stderr)
        return 1
    strings = json.loads(STRINGS.read_text("utf-8"))
    texts_file = SHIPPED / TEXTS
    texts = json.loads(texts_file.read_text("utf-8")) if texts_file.exists() else {}
    with tempfile.TemporaryDirectory() as tmp:
        for lang in args.langs:
            texts[lang] = {}
            for prompt in PROMPTS:
                out = SHIPPED / lang / f"{prompt}.ogg"
                spoken = spoken_text(lang, prompt, strings)
                make(lang, prompt, spoken, out, Path(tmp))
                texts[lang][prompt] = {"page": screen_text(lang, prompt, strings),
                                       "spoken": spoken}
                print(f"{out.relative_to(SHIPPED.parent.parent.parent.parent)}"
                      f"  {out.stat().st_size} bytes")
    texts_file.write_text(json.dumps(texts, ensure_ascii=False, indent=1) + "\n", "utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
