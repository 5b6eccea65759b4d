"""The kiosk's hardware through gpiozero: status LED, service button, buzzer.

Theory of operation
-------------------
``choose_pin_factory`` gives simulated pins (a ``MockFactory``: a laptop, the
tests, demos) only when the configuration asks for them (``hardware =
"simulated"``). Otherwise it takes gpiozero's own choice, from
``GPIOZERO_PIN_FACTORY`` (``lgpio`` on a Pi: ``deploy/``), and when that
finds no real GPIO, or is told ``mock``, it raises ``HardwareError`` with one
line that says what to do: a kiosk never runs on simulated pins by accident
(gpiozero itself would fall back to them with a mere warning).

``StatusLed`` shows one of the statuses of ``device.status`` as a blink
pattern, each a (on, off) period: ``synced`` steady on, ``pending`` slow
blink, ``offline`` a short blip, ``error`` fast blink; the two that need a
technician differ from all of these: ``revoked`` mostly lit with a short dark
wink, ``suspected-clone`` a brisk even blink, between pending and error;
``fridge-alarm`` (not a sync status: a fridge node's alarm is raised) a short
flash every 0.8 s.
``ServiceButton`` calls ``when_sync_now`` after a long press (``hold_time``) and exposes
``is_held`` and ``wait_for_press`` for provisioning's physical-presence
check. ``Chime`` beeps the buzzer once per check-in. ``Hardware`` bundles the
three with one ``close``. Every class takes a keyword-only ``pin_factory=None``.
"""

from __future__ import annotations

import contextlib
import os
import threading
import warnings
from collections.abc import Callable, Mapping
from typing import Any

from gpiozero import LED, Button, Buzzer, Device
from gpiozero.pins.mock import MockFactory

from device.exc import HardwareError, UnknownPattern

# Re-exported: callers may name the statuses through the module that shows them.
from device.status import ERROR as ERROR
from device.status import FRIDGE_ALARM as FRIDGE_ALARM
from device.status import OFFLINE as OFFLINE
from device.status import PENDING as PENDING
from device.status import REVOKED as REVOKED
from device.status import SUSPECTED_CLONE as SUSPECTED_CLONE
from device.status import SYNCED as SYNCED

#: status (``device.status``) -> (seconds on, seconds off); ``None`` means steady on.
PATTERNS: dict[str, tuple[float, float] | None] = {
    SYNCED: None,
    PENDING: (1.0, 1.0),
    OFFLINE: (0.1, 2.9),
    ERROR: (0.1, 0.1),
    REVOKED: (1.5, 0.25),
    SUSPECTED_CLONE: (0.4, 0.4),
    FRIDGE_ALARM: (0.2, 0.6),
}
LED_PIN, BUTTON_PIN, BUZZER_PIN = 17, 27, 22
HOLD_TIME = 3.0


#: The configuration's ``hardware`` values (``device.config``).
GPIO, SIMULATED = "gpio", "simulated"


def choose_pin_factory(simulated: bool, env: Mapping[str, str] | None = None) -> Any:
    """Simulated pins when ``simulated``; else the real GPIO that gpiozero finds (the
    factory ``GPIOZERO_PIN_FACTORY`` names), or ``HardwareError`` in one line."""
    if simulated:
        return MockFactory()
    environ = os.environ if env is None else env
    name = (environ.get("GPIOZERO_PIN_FACTORY") or "").strip().lower()
    advice = (f"on a Raspberry Pi install lgpio (pip install 'haven-kiosk[pi]'; "
              f'tools/setup.sh does it); to run on simulated pins, set hardware = '
              f'"{SIMULATED}" in the configuration (--hardware {SIMULATED})')
    if name == "mock":
        raise HardwareError(f"GPIOZERO_PIN_FACTORY=mock gives simulated pins, and the "
                            f"configuration asks for real ones (hardware = \"{GPIO}\"); "
                            f"{advice}")
    try:
        with warnings.catch_warnings():  # gpiozero warns at each backend it passes over
            warnings.simplefilter("ignore")
            factory = Device._default_pin_factory()
    except Exception as exc:
        raise HardwareError(f"no GPIO pins ({name or 'gpiozero'}: {exc}); {advice}") from None
    if is_mock(factory):
        raise HardwareError(f"gpiozero gave simulated pins; {advice}")
    return factory


def is_mock(factory: Any) -> bool:
    return isinstance(factory, MockFactory)


class StatusLed:
    """One LED showing the sync state as a blink pattern."""

    def __init__(self, pin: int = LED_PIN, *, pin_factory: Any = None) -> None:
        self.led = LED(pin, pin_factory=pin_factory)
        self._pattern: str | None = None
        self._lock = threading.Lock()

    @property
    def pattern(self) -> str | None:
        return self._pattern

    @property
    def is_lit(self) -> bool:
        return bool(self.led.is_lit)

    def show(self, pattern: str) -> None:
        """Switch to ``pattern`` (no-op when it is already showing)."""
        if pattern not in PATTERNS:
            raise UnknownPattern(f"no LED pattern {pattern!r}; one of {', '.join(PATTERNS)}")
        with self._lock:
            if pattern == self._pattern:
                return
            self._pattern = pattern
            period = PATTERNS[pattern]
            if period is None:
                self.led.on()
            else:
                self.led.blink(on_time=period[0], off_time=period[1], background=True)

    def close(self) -> None:
        self.led.close()


class ServiceButton:
    """The service button: a long press asks for a sync now."""

    def __init__(self, pin: int = BUTTON_PIN, *, hold_time: float = HOLD_TIME,
                 pin_factory: Any = None) -> None:
        self.button = Button(pin, hold_time=hold_time, pin_factory=pin_factory)
        self.when_sync_now: Callable[[], None] | None = None
        self.button.when_held = self._held

    def _held(self) -> None:
        callback = self.when_sync_now
        if callback is not None:
            callback()

    @property
    def is_pressed(self) -> bool:
        return bool(self.button.is_pressed)

    @property
    def is_held(self) -> bool:
        return bool(self.button.is_held)

    def wait_for_press(self, timeout: float | None = None) -> bool:
        """Block until pressed (``True``) or ``timeout`` seconds pass (``False``)."""
        return bool(self.button.wait_for_press(timeout))

    def close(self) -> None:
        self.button.close()


class Chime:
    """The buzzer: one short beep per check-in."""

    def __init__(self, pin: int = BUZZER_PIN, *, pin_factory: Any = None) -> None:
        self.buzzer = Buzzer(pin, pin_factory=pin_factory)
        # Check-ins chime from several threads; gpiozero's beep() stops the previous
        # beep's thread unlocked and raises if that thread has not started yet.
        self._lock = threading.Lock()

    def checkin(self) -> None:
        with self._lock:
            self.buzzer.beep(on_time=0.08, off_time=0.05, n=1, background=True)

    def close(self) -> None:
        self.buzzer.close()


class Hardware:
    """LED, button and buzzer on one pin factory: ``pin_factory`` if given, else the
    real GPIO, or simulated pins when ``simulated``."""

    def __init__(self, *, led_pin: int = LED_PIN, button_pin: int = BUTTON_PIN,
                 buzzer_pin: int = BUZZER_PIN, hold_time: float = HOLD_TIME,
                 pin_factory: Any = None, simulated: bool = False) -> None:
        self.factory = pin_factory if pin_factory is not None else choose_pin_factory(simulated)
        self.led = StatusLed(led_pin, pin_factory=self.factory)
        self.button = ServiceButton(button_pin, hold_time=hold_time, pin_factory=self.factory)
        self.chime = Chime(buzzer_pin, pin_factory=self.factory)

    @property
    def simulated(self) -> bool:
        return is_mock(self.factory)

    def press(self, seconds: float) -> None:
        """Simulation only: press the button for ``seconds`` (blocks)."""
        if not self.simulated:
            raise HardwareError("the button can be pressed from software only in simulation")
        pin = self.button.button.pin
        pin.drive_low()
        try:
            threading.Event().wait(seconds)
        finally:
            pin.drive_high()

    def state(self) -> dict[str, Any]:
        return {"led": self.led.pattern, "lit": self.led.is_lit,
                "button": self.button.is_pressed, "simulated": self.simulated,
                "hold_time": float(self.button.button.hold_time)}

    def close(self) -> None:
        for part in (self.chime, self.button, self.led):
            with contextlib.suppress(Exception):
                part.close()
