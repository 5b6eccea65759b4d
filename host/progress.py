"""A one-line progress bar on stderr when it is a terminal; silence otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO

REDRAW = 0.1  #: seconds between redraws


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


class Progress:
    """``update`` redraws the bar in place (at most every ``REDRAW`` s); ``note``
    prints a line above it; ``end`` finishes the line."""

    def __init__(self, stream: TextIO | None = None, enabled: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self._last = 0.0
        self._drawn = False
        self._start: tuple[float, int] | None = None
        self._label = ""

    def update(self, label: str, done: int, total: int, *, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if label != self._label or self._start is None:
            self._label, self._start = label, (now, done)
        if not force and now - self._last < REDRAW:
            return
        self._last = now
        t0, d0 = self._start
        rate = (done - d0) / (now - t0) if now - t0 > 0.5 else 0.0
        frac = done / total if total else 1.0
        width = 24
        bar = "#" * int(frac * width)
        line = (f"{label[:30]:30} [{bar:{width}}] {frac * 100:5.1f}%  {human(done)} of "
                f"{human(total)}" + (f"  {human(rate)}/s" if rate else ""))
        self.stream.write("\r\033[K" + line)
        self.stream.flush()
        self._drawn = True

    def note(self, text: str) -> None:
        if not self.enabled:
            return
        self.stream.write(("\r\033[K" if self._drawn else "") + text + "\n")
        self.stream.flush()
        self._drawn = False
        self._last = 0.0

    def end(self) -> None:
        if self.enabled and self._drawn:
            self.stream.write("\n")
            self.stream.flush()
        self._drawn = False
