"""Spoken prompts: one audio file per screen and language, a clinic's own before the defaults.

The page's speaker button plays ``/audio/<lang>/<prompt>``. The file is looked
up first in the clinic's folder (``DATA/prompts/<lang>/<prompt>.<ext>``), then
among the defaults shipped in ``static/audio/``. The language and the prompt
must each be one of a fixed list, so no part of a URL ever becomes a path.

Byte ranges are served (``byte_range``): without them Chromium cannot read an
Ogg file's last page before it has played it all, and knows no duration.
"""

from __future__ import annotations

from pathlib import Path

SHIPPED = Path(__file__).parent / "static" / "audio"
#: Prompts by name: the screen each is read on is the page's business (app.js PROMPTS).
PROMPTS = ("passport", "year", "name", "consent", "reason", "ticket")
#: What each prompt says: these page strings (i18n.json), one after the other.
WORDS = {"passport": ("passport_prompt",), "year": ("year_prompt", "year_hint"),
         "name": ("name_prompt",), "consent": ("consent_title", "consent_text"),
         "reason": ("reason_prompt",), "ticket": ("ticket_title", "ticket_hint")}
#: Beside the shipped files: for each, the page's words it was made from and the text spoken.
TEXTS = "texts.json"
CLINIC_DIR = "prompts"
#: Formats Chromium plays, in the order a folder's files are preferred.
AUDIO_TYPES = {".ogg": "audio/ogg", ".opus": "audio/ogg", ".mp3": "audio/mpeg",
               ".wav": "audio/wav"}


class Prompts:
    def __init__(self, languages: tuple[str, ...], clinic: Path | None) -> None:
        self.languages = languages
        self.folders = [f for f in (clinic, SHIPPED) if f is not None]

    def find(self, lang: str, prompt: str) -> Path | None:
        """The file to play, or None: the clinic's recording first, then the default."""
        if lang not in self.languages or prompt not in PROMPTS:
            return None
        for folder in self.folders:
            for ext in AUDIO_TYPES:
                path = folder / lang / f"{prompt}{ext}"
                if path.is_file():
                    return path
        return None

    def available(self) -> dict[str, list[str]]:
        """For the page: each language's prompts that have a file (no button otherwise)."""
        out = {}
        for lang in self.languages:
            have = [p for p in PROMPTS if self.find(lang, p) is not None]
            if have:
                out[lang] = have
        return out


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The bytes ``[start, end)`` a ``Range`` header asks for; None for the whole file
    (no header, or one this server does not serve, such as several ranges).
    Raises ValueError when the range lies past the end (416)."""
    if not header or not header.startswith("bytes=") or "," in header:
        return None
    first, sep, last = header[len("bytes="):].strip().partition("-")
    if not sep or not (first.isdigit() or last.isdigit()) or (first + last).strip("0123456789"):
        return None
    if not first:  # the last N bytes; the last 0 are none (RFC 9110 14.1.2: 416)
        if int(last) == 0 or size == 0:
            raise ValueError(f"bytes {header!r} of {size}")
        return max(size - int(last), 0), size
    start, end = int(first), min(int(last) + 1, size) if last else size
    if start >= size or end <= start:
        raise ValueError(f"bytes {header!r} of {size}")
    return start, end
