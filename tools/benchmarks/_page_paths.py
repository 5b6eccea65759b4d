"""Taps and screens from the start screen to the ticket, for each way a patient checks in.

The page runs in Debian's Chromium (headless, 800x480) against a running kiosk, and
a patient is played as a sequence of taps: each key of the on-screen keyboards, each
button. A scanner (a passport's barcode, the ticket's QR) types into the field by
itself, so a scanned path counts only the buttons. A screen is counted each time a
different one is shown, the start screen included, the ticket last.

Paths: a returning patient with a passport (typed, and scanned); a new patient with no
documents (name, year, consent, reason), who is given a short code; and that patient
coming back with the code (typed, and scanned from the ticket's QR).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: Which screen is shown: the one ``.screen`` element not hidden.
VISIBLE = "() => [...document.querySelectorAll('.screen')].find((s) => !s.hidden)?.id || ''"


@dataclass
class PathFigures:
    path: str
    taps: int
    screens: int
    trail: list[str]


class Patient:
    """Taps on one page, counting them and the screens they lead through."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.taps = 0
        self.trail = [page.evaluate(VISIBLE)]

    def _seen(self) -> None:
        shown = self.page.evaluate(VISIBLE)
        if shown != self.trail[-1]:
            self.trail.append(shown)

    def tap(self, selector: str) -> None:
        self.page.click(selector, timeout=10_000)
        self.taps += 1
        self.page.wait_for_timeout(50)  # the page's own handlers (some await the server)
        self._seen()

    def type_keys(self, pad: str, text: str) -> None:
        """Each character a tap on the pad's key for it."""
        for ch in text:
            self.tap(f"#{pad} button[data-key='{'space' if ch == ' ' else ch}']")

    def scan(self, field: str, text: str) -> None:
        """A scanner types the text (and no tap)."""
        self.page.fill(f"#{field}", text)

    def wait_ticket(self) -> None:
        self.page.wait_for_function(
            "() => !document.getElementById('s-ticket').hidden", timeout=10_000)
        self._seen()

    def figures(self, path: str) -> PathFigures:
        return PathFigures(path, self.taps, len(self.trail), list(self.trail))


def returning(page: Any, identifier: str, year: str, scanned: bool) -> Patient:
    """A passport number, or a short code as printed (with its dash), typed on the start
    screen's keyboard or scanned; then the year and a reason, as every patient."""
    p = Patient(page)
    if scanned:
        p.scan("passport", identifier)
    else:
        p.type_keys("passport-keys", identifier)
    p.tap("#passport-next")
    p.type_keys("keypad", year)
    p.tap("#year-next")
    p.tap("#reasons button[data-reason='sick']")
    p.wait_ticket()
    return p


def new_patient(page: Any, name: str, year: str) -> Patient:
    p = Patient(page)
    p.tap("#no-docs")
    p.type_keys("name-keys", name.upper())
    p.tap("#name-next")
    p.type_keys("keypad", year)
    p.tap("#year-next")
    p.tap("#consent-yes")
    p.tap("#reasons button[data-reason='sick']")
    p.wait_ticket()
    return p


def done(page: Any) -> None:
    """The ticket's Done: back to the start screen for the next patient."""
    page.click("#ticket-done", timeout=10_000)
    page.wait_for_function("() => !document.getElementById('s-start').hidden", timeout=10_000)


def every_path(url: str, browser: Any, passport: str, year: str) -> list[PathFigures]:
    """Each path once, in the order a clinic sees them; the passport is a fresh one (its
    first check-in is a returning patient's path: the kiosk asks every passport alike)."""
    page = browser.new_page(viewport={"width": 800, "height": 480})
    try:
        page.goto(url, timeout=30_000)
        page.wait_for_function("() => document.body.dataset.ready === '1'", timeout=30_000)
        out = [returning(page, passport, year, scanned=False).figures(
            "passport, typed on the page")]
        done(page)
        out.append(returning(page, passport, year, scanned=True).figures(
            "passport, scanned"))
        done(page)
        new = new_patient(page, "Ada Lin", year)
        out.append(new.figures("new patient, no documents"))
        code = page.text_content("#new-id") or ""
        done(page)
        out.append(returning(page, code, year, scanned=False).figures(
            "short code, typed on the page"))
        done(page)
        out.append(returning(page, code, year, scanned=True).figures(
            "short code, scanned from the ticket's QR"))
        done(page)
        return out
    finally:
        page.close()
