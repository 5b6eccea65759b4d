"""Circuit breakers for hub URLs: skip a link that keeps failing, probe it again soon.

Theory of operation
-------------------
Each hub URL has a ``Breaker`` (the pattern of Nygard's *Release It!*). It
starts **closed**: rounds go to the URL. ``threshold`` failures in a row
**open** it: the URL is skipped, so a dead modem costs a round nothing (no
connect timeout, no silent serial line) while the next URL is tried. Once
the cool-down has passed it is **half-open**: the next round probes the URL
once. A success closes it; a failed probe opens it again for twice as long,
up to ``max_cool_down``. When the link monitor sees the URL's link come
back, ``allow_probe`` makes an open breaker half-open at once. Each opening
lasts between half and all of its cool-down, at random, so kiosks that lost
the hub at the same moment do not all probe it at the same moment.
``Breakers.next_probe`` tells the loop of rounds how soon an open URL may be
probed, so that it waits no longer than that.

The clock and the jitter (``rng``) are injected, so tests never sleep.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"
TRANSITIONS: dict[str, dict[str, str]] = {
    CLOSED: {"success": CLOSED, "failure": CLOSED, "trip": OPEN, "link-up": CLOSED},
    OPEN: {"cooled": HALF_OPEN, "link-up": HALF_OPEN},
    HALF_OPEN: {"success": CLOSED, "failure": OPEN, "link-up": HALF_OPEN},
}
THRESHOLD = 3  #: failures in a row that open a closed breaker
COOL_DOWN, MAX_COOL_DOWN = 10.0, 60.0  #: seconds


class Breaker:
    """The circuit breaker of one hub URL. See the module docstring."""

    def __init__(self, *, threshold: int = THRESHOLD, cool_down: float = COOL_DOWN,
                 max_cool_down: float = MAX_COOL_DOWN,
                 clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None) -> None:
        if threshold < 1 or not 0 < cool_down <= max_cool_down:
            raise ValueError("a breaker needs threshold >= 1 and 0 < cool_down <= max_cool_down")
        self.threshold, self.base, self.most = threshold, cool_down, max_cool_down
        self.clock = clock
        self.rng = rng or random.Random()
        self._state = CLOSED
        self.failures = 0  #: in a row, while closed
        self.cool_down = cool_down  #: of the current (or next) opening, before jitter
        self.open_until = 0.0

    @property
    def state(self) -> str:
        """The state now: an open breaker whose cool-down is over is half-open."""
        if self._state == OPEN and self.clock() >= self.open_until:
            self._go("cooled")
        return self._state

    @property
    def is_allowed(self) -> bool:
        """True if a round may use this URL now (closed, or half-open for a probe)."""
        return self.state != OPEN

    def probe_in(self) -> float:
        """Seconds until this breaker lets a round through; 0 unless it is open."""
        if self.state != OPEN:
            return 0.0
        return self.open_until - self.clock()

    def allow_probe(self) -> None:
        """The URL's link came back: an open breaker lets the next round probe it now."""
        self._go("link-up", self.state)
        self.open_until = min(self.open_until, self.clock())

    def success(self) -> None:
        """A round over this URL succeeded (only a URL that was allowed is tried)."""
        self._go("success", self.state)
        self.failures = 0
        self.cool_down = self.base

    def failure(self) -> None:
        """A round over this URL failed."""
        state = self.state
        if state == HALF_OPEN:  # the probe failed: open again, for longer
            self.cool_down = min(self.most, self.cool_down * 2)
        elif state == CLOSED and self.failures + 1 < self.threshold:
            self.failures += 1
            self._go("failure", state)
            return
        self._go("trip" if state == CLOSED else "failure", state)
        self.failures = 0
        self.open_until = self.clock() + self.cool_down * (0.5 + 0.5 * self.rng.random())

    def _go(self, trigger: str, state: str | None = None) -> None:
        new = TRANSITIONS[state or self._state].get(trigger)
        if new is None:  # a round over an open URL: the caller skipped the check
            raise RuntimeError(f"breaker: no {trigger!r} from {self._state}")
        self._state = new


class Breakers:
    """One ``Breaker`` per hub URL, in the order the URLs were given."""

    def __init__(self, urls: Iterable[str], *, threshold: int = THRESHOLD,
                 cool_down: float = COOL_DOWN, max_cool_down: float = MAX_COOL_DOWN,
                 clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None) -> None:
        rng = rng or random.Random()
        self.by_url = {url: Breaker(threshold=threshold, cool_down=cool_down,
                                    max_cool_down=max_cool_down, clock=clock, rng=rng)
                       for url in urls}

    def __getitem__(self, url: str) -> Breaker:
        return self.by_url[url]

    def allowed(self) -> list[str]:
        """The URLs a round may try now, in order."""
        return [url for url, b in self.by_url.items() if b.is_allowed]

    def next_probe(self) -> float | None:
        """Seconds until an open URL may be probed; None if none is open."""
        waits = [b.probe_in() for b in self.by_url.values() if b.state == OPEN]
        return max(0.0, min(waits)) if waits else None

    def status(self) -> dict[str, str]:
        return {url: b.state for url, b in self.by_url.items()}


def hub_breakers(urls: Iterable[str], cap: float, *, clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None) -> Breakers:
    """Breakers for a loop whose backoff waits at most ``cap`` seconds: no URL rests
    longer than that either."""
    return Breakers(urls, cool_down=min(COOL_DOWN, cap), max_cool_down=cap, clock=clock,
                    rng=rng)
