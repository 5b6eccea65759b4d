"""A reading that crosses thresholds: levels with hysteresis, and callbacks once per crossing.

Theory of operation
-------------------
A watched quantity (the runtime's memory, the disk's free space) has limits,
mildest first; its level is how many of them the reading is past. It rises
as soon as a reading passes a limit, but falls only once the reading is
back by ``SLACK`` (a fraction of the limit) on the safe side: a reading that
hovers at a limit does not flap. The callbacks of a level run once each
time the level rises to it or past it, never again while it stays there.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

#: How far (a fraction of the limit) a reading must come back before its level falls.
SLACK = 0.1
log = logging.getLogger("haven.kiosk")


def past(value: float, limits: Sequence[float], *, high_is_bad: bool) -> tuple[int, int]:
    """How many of ``limits`` (mildest first; 0 turns one off) ``value`` is past: against
    the limits as they are, and against the limits moved by ``SLACK`` toward the safe side
    (the two arguments of ``LevelWatch.observe``)."""
    out = []
    for slack in (0.0, SLACK):
        level = 0
        for i, limit in enumerate(limits, 1):
            if limit > 0 and ((value >= limit * (1 - slack)) if high_is_bad
                              else (value < limit * (1 + slack))):
                level = i
        out.append(level)
    return out[0], out[1]


class LevelWatch:
    """The level of one quantity, and what to run when it rises."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = tuple(names)
        self.level = 0
        self._callbacks: dict[int, list[Callable[[], None]]] = {}

    @property
    def name(self) -> str:
        return self.names[self.level]

    def add_callback(self, level: int, fn: Callable[[], None]) -> None:
        if not 0 < level < len(self.names):
            raise ValueError(f"no level {level}; 1 to {len(self.names) - 1}")
        self._callbacks.setdefault(level, []).append(fn)

    def observe(self, raw: int, relaxed: int) -> tuple[int, int]:
        """Move to the new level: ``raw`` from the plain limits, ``relaxed`` from the
        limits moved by ``SLACK``. Runs the callbacks of each level risen to.

        Returns (old level, new level)."""
        old = self.level
        new = raw if raw > old else min(old, relaxed)
        self.level = new
        for level in range(old + 1, new + 1):
            for fn in self._callbacks.get(level, ()):
                try:
                    fn()
                except Exception as exc:  # one failing clean-up never stops the others
                    log.error("%s clean-up %s failed: %s", self.names[level],
                              getattr(fn, "__name__", fn), exc)
        return old, new
