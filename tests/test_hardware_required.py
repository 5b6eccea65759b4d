"""The runtime runs on the Pi's pins, or on simulated ones only when its configuration
asks for them (``hardware = "simulated"``): never on simulated pins by accident.

This machine is no Raspberry Pi, so gpiozero finds no GPIO here: the runtime started
without ``hardware = "simulated"`` is refused in one line, and nothing is opened.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
from gpiozero.pins.mock import MockFactory

from device.config import ConfigError, KioskConfig, load
from device.exc import HardwareError
from device.hardware import panel as hw
from device.runtime import Runtime
from device.store import init_store

from .test_ui_helpers import ROOT, Proc

BOUND = 20.0


def kiosk_run(data: Path, *args: str, env: dict[str, str] | None = None,
              ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "device.cli", "run", "--data", str(data),
                           "--ui", "127.0.0.1:0", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=BOUND, env=env)


@pytest.mark.parametrize("factory", [None, "mock", "lgpio"])
def test_run_without_asking_for_simulation_is_refused_in_one_line(
        tmp_path: Path, factory: str | None) -> None:
    data = tmp_path / "k"
    init_store(data, "North", "B").close()
    env = {k: v for k, v in os.environ.items() if k != "GPIOZERO_PIN_FACTORY"}
    if factory is not None:
        env["GPIOZERO_PIN_FACTORY"] = factory
    r = kiosk_run(data, env=env)
    assert r.returncode == 1, r.stderr
    assert r.stdout == ""
    line, rest = r.stderr.split("\n", 1)
    assert rest == "", r.stderr  # one line: no warning, no traceback, no log before it
    assert line.startswith("haven-kiosk run: ")
    assert 'set hardware = "simulated" in the configuration (--hardware simulated)' in line
    if factory == "mock":
        assert "GPIOZERO_PIN_FACTORY=mock gives simulated pins" in line
    else:
        assert "no GPIO pins (" in line
    assert not (data / "runtime.json").exists()  # the page was never served


def test_the_configuration_file_asks_for_simulated_pins(tmp_path: Path) -> None:
    data = tmp_path / "k"
    init_store(data, "North", "B").close()
    conf = tmp_path / "kiosk.toml"
    conf.write_text(f'data = "{data}"\nui = "127.0.0.1:0"\nhardware = "simulated"\n')
    proc = Proc([sys.executable, "-m", "device.cli", "run", "--config", str(conf)])
    try:
        proc.wait_for(r"page at http://")
    finally:
        assert proc.stop() == 0


def test_hardware_takes_gpio_or_simulated_only(tmp_path: Path) -> None:
    conf = tmp_path / "kiosk.toml"
    conf.write_text('data = "/srv/k"\nhardware = "mock"\n')
    with pytest.raises(ConfigError, match="line 2: hardware must be gpio or simulated, not "
                                          "'mock'"):
        load(conf, {})
    conf.write_text('data = "/srv/k"\n')
    assert load(conf, {}).hardware == "gpio"  # the Pi's pins unless asked otherwise
    assert load(conf, {"hardware": "simulated"}).hardware == "simulated"


def test_a_runtime_handed_simulated_pins_needs_the_configuration_to_ask(
        tmp_path: Path) -> None:
    data = tmp_path / "k"
    init_store(data, "North", "B").close()
    pins = hw.Hardware(pin_factory=MockFactory())
    try:
        rt = Runtime(KioskConfig(data=data, ui="127.0.0.1:0"), hardware=pins)
        with pytest.raises(HardwareError, match='set hardware = "simulated"'):
            asyncio.run(rt.start())
        assert rt.store is None  # refused before the store was opened
    finally:
        pins.close()
