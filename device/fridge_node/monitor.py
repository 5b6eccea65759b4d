"""Excursions and sensor faults that last too long become alarms.

Theory of operation
-------------------
Two trackers watch the readings. The temperature tracker sees only
temperatures: each is ``high`` (above the range), ``low`` (below) or in
range; a fault reading leaves it as it was (a sensor that fails for a minute
during an excursion does not end the excursion). The sensor tracker sees
faults (``sensor``) and answers (in range). A condition that has lasted
``alarm_after`` seconds, from its first reading to the latest, raises its
alarm; the first reading without it clears the alarm. An excursion that turns
from high to low clears one and starts the other.

An alarm here is ``(kind, state, since, minutes, extreme)``: ``since`` the
time of the condition's first reading (the node's monotonic seconds),
``extreme`` the furthest temperature seen (``None`` for a sensor alarm).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    Alarm = tuple[str, str, float, int, int | None]


class Tracker:
    """One condition at a time: when it began, its extreme, whether it raised an alarm."""

    def __init__(self) -> None:
        self.kind: str | None = None
        self.since = 0.0
        self.extreme: int | None = None
        self.raised = False

    def update(self, kind: str | None, now: float, value: int | None,
               alarm_after: float) -> list[Alarm]:
        alarms: list[Alarm] = []
        if kind != self.kind:
            if self.raised:
                alarms.append(self._alarm("cleared", now))
            self.kind, self.since, self.extreme, self.raised = kind, now, value, False
        elif value is not None and self.extreme is not None:
            self.extreme = max(self.extreme, value) if kind == "high" else min(self.extreme, value)
        if kind is not None and not self.raised and now - self.since >= alarm_after:
            self.raised = True
            alarms.append(self._alarm("raised", now))
        return alarms

    def _alarm(self, state: str, now: float) -> Alarm:
        assert self.kind is not None
        return (self.kind, state, self.since, int(now - self.since) // 60, self.extreme)


class Monitor:
    """The range (hundredths of °C, inclusive) and the two trackers."""

    def __init__(self, low: int = 200, high: int = 800, alarm_after: float = 1800.0) -> None:
        self.low, self.high, self.alarm_after = low, high, alarm_after
        self.temperature = Tracker()
        self.sensor = Tracker()

    def reading(self, now: float, value: int | str) -> list[Alarm]:
        """The alarms raised or cleared by one reading (a temperature or a fault code)."""
        if isinstance(value, str):
            return self.sensor.update("sensor", now, None, self.alarm_after)
        alarms = self.sensor.update(None, now, None, self.alarm_after)
        kind = "high" if value > self.high else "low" if value < self.low else None
        return alarms + self.temperature.update(kind, now, value, self.alarm_after)
