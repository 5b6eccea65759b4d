"""Physical presence: the service button held for ``hold`` seconds within a window.

The kiosk reads its own button (``device.hardware.panel.ServiceButton``), so
nothing on the cable can assert presence. ``await_hold`` opens a window of
``window`` seconds when provisioning asks for presence and polls the button:
presence is a press that *begins* inside the window and lasts ``hold`` seconds
before the window closes. A button already down when the window opens (held
since earlier, or stuck) counts only once it has been released and pressed
again, so a press made before the request, or a weight left on the button,
proves nothing about this request. Bounded: it returns by the window's end.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

WINDOW = 60.0  #: seconds the window stays open (config ``provision_window``)
HOLD = 3.0  #: seconds the button must be held (config ``provision_hold``)
POLL = 0.02

HELD, NO_PRESS, TOO_SHORT, NO_BUTTON = "held", "no-press", "too-short", "no-button"


@dataclass(frozen=True)
class Presence:
    result: str  #: ``HELD`` or why not: ``NO_PRESS``, ``TOO_SHORT``, ``NO_BUTTON``
    held: float = 0.0  #: the longest press seen in the window, seconds

    @property
    def ok(self) -> bool:
        return self.result == HELD

    def describe(self) -> str:
        return {HELD: "the service button was held",
                NO_PRESS: "the service button was not pressed within the window",
                TOO_SHORT: f"the service button was released too soon ({self.held:.1f} s)",
                NO_BUTTON: "this kiosk has no service button to prove presence"}[self.result]


def await_hold(pressed: Callable[[], bool] | None, *, window: float = WINDOW,
               hold: float = HOLD, clock: Callable[[], float] = time.monotonic,
               stop: threading.Event | None = None, poll: float = POLL) -> Presence:
    """Wait for presence (see the module docstring); ``pressed``: the button's state now
    (None: no button). ``stop`` ends the wait early (the session went away)."""
    if pressed is None:
        return Presence(NO_BUTTON)
    wait = (stop or threading.Event()).wait
    opened = clock()
    armed = not pressed()  # a button down at the start must be released first
    since: float | None = None
    longest = 0.0
    while (now := clock()) - opened <= window:
        if stop is not None and stop.is_set():
            break
        down = pressed()
        if not down:
            if since is not None:
                longest = max(longest, now - since)
            since, armed = None, True
        elif armed and since is None:
            since = now
        if since is not None and now - since >= hold:
            return Presence(HELD, now - since)
        wait(poll)
    if since is not None:
        longest = max(longest, clock() - since)
    return Presence(TOO_SHORT if longest > 0 else NO_PRESS, longest)
