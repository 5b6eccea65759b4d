"""The kiosk's hardware on gpiozero's MockFactory: LED patterns, button, buzzer."""

from __future__ import annotations

import asyncio
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from gpiozero.pins.mock import MockFactory

from device import status
from device.hardware import panel as hw
from device.store import init_store
from device.ui.app import KioskApp
from device.ui.live import LiveStatus

BOUND = 5.0  # every wait here ends by this many seconds


def wait_until(cond: Callable[[], bool], bound: float = BOUND) -> bool:
    end = time.monotonic() + bound
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.005)
    return cond()


def transitions(pin: object) -> list[bool]:
    """The pin's recorded levels with repeats collapsed."""
    out: list[bool] = []
    for s in pin.states:  # type: ignore[attr-defined]
        if not out or out[-1] != bool(s.state):
            out.append(bool(s.state))
    return out


def lit_spans(pin: object) -> list[float]:
    """How long each completed lit phase of the pin lasted, in seconds (a mock
    pin's state records how long the state before it lasted)."""
    states = pin.states  # type: ignore[attr-defined]
    return [cur.timestamp for prev, cur in zip(states, states[1:], strict=False)
            if prev.state and not cur.state]


@pytest.fixture
def factory() -> Iterator[MockFactory]:
    f = MockFactory()
    yield f
    f.reset()


@pytest.fixture
def kit(factory: MockFactory) -> Iterator[hw.Hardware]:
    h = hw.Hardware(pin_factory=factory, hold_time=0.05)
    yield h
    h.close()


def test_simulated_pins_only_when_asked() -> None:
    assert isinstance(hw.choose_pin_factory(True), MockFactory)
    with pytest.raises(hw.HardwareError) as caught:
        hw.choose_pin_factory(False, {"GPIOZERO_PIN_FACTORY": "mock"})
    assert 'set hardware = "simulated"' in str(caught.value)
    assert "\n" not in str(caught.value)


def test_no_gpio_is_an_error_not_a_fallback_to_simulated_pins() -> None:
    # This machine is no Raspberry Pi: gpiozero finds no backend (it would fall back).
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and nothing is merely warned
        with pytest.raises(hw.HardwareError) as caught:
            hw.Hardware()
    text = str(caught.value)
    assert text.startswith("no GPIO pins (") and "\n" not in text
    assert 'set hardware = "simulated" in the configuration (--hardware simulated)' in text
    simulated = hw.Hardware(simulated=True)
    assert simulated.simulated
    simulated.close()


def test_synced_is_steady_on(kit: hw.Hardware, factory: MockFactory) -> None:
    kit.led.show(hw.SYNCED)
    pin = factory.pin(hw.LED_PIN)
    assert kit.led.pattern == hw.SYNCED and kit.led.is_lit and pin.state
    pin.clear_states()
    kit.led.show(hw.SYNCED)  # the same pattern again changes nothing
    assert transitions(pin) == [True]


@pytest.mark.parametrize("pattern", [hw.PENDING, hw.OFFLINE, hw.ERROR, hw.REVOKED,
                                     hw.SUSPECTED_CLONE, hw.FRIDGE_ALARM])
def test_blinking_patterns_toggle_the_pin(kit: hw.Hardware, factory: MockFactory,
                                          pattern: str) -> None:
    pin = factory.pin(hw.LED_PIN)
    period = hw.PATTERNS[pattern]
    assert period is not None
    on_time, off_time = period
    pin.clear_states()
    kit.led.show(pattern)
    assert kit.led.pattern == pattern
    if pattern == hw.ERROR:  # fast enough to watch several periods
        assert wait_until(lambda: transitions(pin)[-4:] == [True, False, True, False])
    else:  # starts lit, then goes dark after its on-time: a steady LED never does
        assert wait_until(lambda: transitions(pin)[-2:] == [True, False], on_time + BOUND)
    seq = transitions(pin)
    assert all(a != b for a, b in zip(seq, seq[1:], strict=False))
    # Each lit span lasts this pattern's on-time (the patterns differ by it).
    spans = lit_spans(pin)
    assert spans and all(0.5 * on_time <= t <= on_time + 0.4 for t in spans), spans


def test_the_led_has_a_pattern_for_every_status_and_a_fridge_alarm() -> None:
    assert set(hw.PATTERNS) == {*status.STATUSES, status.FRIDGE_ALARM}
    assert hw.SYNCED is status.SYNCED and LiveStatus().state in status.STATUSES


def test_pattern_periods_are_distinct() -> None:
    periods = [p for p in hw.PATTERNS.values() if p is not None]
    assert len(set(periods)) == len(periods) == len(hw.PATTERNS) - 1
    assert hw.PATTERNS[hw.SYNCED] is None
    on, off = hw.PATTERNS[hw.OFFLINE]  # type: ignore[misc]
    assert on < off  # a blip, mostly dark


def test_unknown_pattern(kit: hw.Hardware) -> None:
    with pytest.raises(ValueError):
        kit.led.show("disco")
    with pytest.raises(hw.HardwareError):
        kit.led.show("disco")


def test_long_press_asks_for_sync(kit: hw.Hardware, factory: MockFactory) -> None:
    asked = threading.Event()
    kit.button.when_sync_now = asked.set
    pin = factory.pin(hw.BUTTON_PIN)
    pin.drive_low()
    assert kit.button.is_pressed
    assert asked.wait(BOUND)
    assert wait_until(lambda: kit.button.is_held)
    pin.drive_high()
    assert not kit.button.is_pressed and not kit.button.is_held


def test_short_press_does_not_sync(factory: MockFactory) -> None:
    h = hw.Hardware(pin_factory=factory, hold_time=60.0)
    try:
        asked = threading.Event()
        h.button.when_sync_now = asked.set
        pin = factory.pin(hw.BUTTON_PIN)
        pin.drive_low()
        pin.drive_high()
        assert not asked.is_set()
        assert not h.button.is_held
    finally:
        h.close()


def test_wait_for_press(kit: hw.Hardware, factory: MockFactory) -> None:
    pin = factory.pin(hw.BUTTON_PIN)
    assert kit.button.wait_for_press(0.01) is False
    threading.Thread(target=pin.drive_low, daemon=True).start()
    assert kit.button.wait_for_press(BOUND) is True
    pin.drive_high()


def test_simulated_press_drives_the_pin(kit: hw.Hardware) -> None:
    asked = threading.Event()
    kit.button.when_sync_now = asked.set
    assert kit.simulated
    t = threading.Thread(target=kit.press, args=(0.5,), daemon=True)
    t.start()
    assert asked.wait(BOUND)
    t.join(BOUND)
    assert not kit.button.is_pressed
    assert kit.state()["button"] is False


def test_chime_beeps_once(kit: hw.Hardware, factory: MockFactory) -> None:
    pin = factory.pin(hw.BUZZER_PIN)
    pin.clear_states()
    kit.chime.checkin()
    assert wait_until(lambda: transitions(pin) == [False, True, False])


def test_chime_from_many_threads_at_once(kit: hw.Hardware) -> None:
    """Check-ins at the same moment chime from several threads (was a RuntimeError)."""
    errors: list[BaseException] = []

    def chime() -> None:
        for _ in range(200):
            try:
                kit.chime.checkin()
            except Exception as exc:  # noqa: BLE001 - collected and asserted below
                errors.append(exc)

    threads = [threading.Thread(target=chime) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(BOUND)
    assert not any(t.is_alive() for t in threads) and errors == []


def test_a_failing_chime_does_not_hide_a_saved_check_in(tmp_path: Path) -> None:
    class Broken:
        def checkin(self) -> None:
            raise RuntimeError("buzzer wire loose")

    store = init_store(tmp_path / "k", "North", "B")
    try:
        app = KioskApp(store, LiveStatus(), hardware=SimpleNamespace(chime=Broken()))
        body = {"name": "Chime Test", "year": "1980", "reason": "sick", "consent": True}
        got = asyncio.run(app.checkin(body))
        assert got["queue_number"] == "B-001"
        assert '"B-001"' in store.dump().decode()
    finally:
        store.close()
