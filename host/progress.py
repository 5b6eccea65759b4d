"""Progress on stderr: a bar redrawn in place on a terminal, plain lines otherwise.

On a terminal, ``update`` redraws one line at most every ``REDRAW`` seconds.
Anywhere else (a log file, a pipe, systemd's journal) it prints a whole line
when a file starts or ends (``force``) and at most one every ``every`` seconds
between, so a log shows the transfer moving without a line per chunk.
``note`` prints a line either way; ``enabled=False`` silences everything.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

REDRAW = 0.1  #: seconds between redraws on a terminal
EVERY = 3.0  #: seconds between plain lines elsewhere


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


class Progress:
    """``update`` shows how far a file is; ``note`` prints a line; ``end`` finishes a bar."""

    def __init__(self, stream: TextIO | None = None, enabled: bool = True,
                 tty: bool | None = None, every: float = EVERY) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = self.stream.isatty() if tty is None else tty
        self.every = every
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
            force = True
        if not force and now - self._last < (REDRAW if self.tty else self.every):
            return
        self._last = now
        t0, d0 = self._start
        rate = (done - d0) / (now - t0) if now - t0 > 0.5 else 0.0
        frac = done / total if total else 1.0
        tail = (f"{frac * 100:5.1f}%  {human(done)} of {human(total)}"
                + (f"  {human(rate)}/s" if rate else ""))
        if not self.tty:
            self.stream.write(f"{label}: {tail}\n")
            self.stream.flush()
            return
        width = 24
        bar = "#" * int(frac * width)
        self.stream.write("\r\033[K" + f"{label[:30]:30} [{bar:{width}}] {tail}")
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
