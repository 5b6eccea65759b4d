"""``haven-kiosk hw``: the simulated button and LED of a running ``haven-kiosk run``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from gpiozero.pins.mock import MockFactory

from device.config import KioskConfig
from device.hardware import panel as hw
from device.hardware import remote as hw_remote
from device.runtime import Runtime
from device.store import init_store

from .test_hw import wait_until
from .test_sync_helpers import Kiosk, served_hub
from .test_ui_helpers import ROOT, run_kiosk, runtime_in_thread

BOUND = 20.0


def hw_cmd(data: Path, *action: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "device.cli", "hw", "--data", str(data),
                           *action], capture_output=True, text=True, timeout=BOUND, cwd=ROOT)


def rounds(log: list[str]) -> int:
    return sum("synced via" in line for line in log)


def test_long_press_starts_a_sync_round_and_led_reports_it(tmp_path: Path) -> None:
    with served_hub(tmp_path) as (hub, url):
        Kiosk(tmp_path, "k", hub, "B").close()
        data = tmp_path / "k"
        # rounds only when asked: an hour between them, even after a failure
        proc, _ = run_kiosk(data, url, idle=60, args=(
            "--interval", "3600", "--retry-max", "3600", "--hold-time", "0.3"))
        try:
            proc.wait_for(r"synced via")  # the round every start makes
            assert wait_until(lambda: hw_cmd(data, "led").stdout == "synced\n", BOUND)
            state = json.loads(hw_cmd(data, "state").stdout)
            assert state == {"led": "synced", "lit": True, "button": False,
                             "simulated": True, "hold_time": 0.3}
            assert rounds(proc.log) == 1

            pressed = hw_cmd(data, "press", "--hold", "0.6")
            assert pressed.returncode == 0, pressed.stderr
            assert pressed.stdout == "pressed 0.6 s: a long press, sync now; LED synced\n"
            proc.wait_for(r"synced via")  # the press, and nothing else, woke the sync
            assert rounds(proc.log) == 2
            assert hw_cmd(data, "led").stdout == "synced\n"
            short = hw_cmd(data, "press")
            assert short.stdout == "pressed 0.2 s: a short press (a long press is 0.3 s); " \
                                   "LED synced\n"
        finally:
            assert proc.stop() == 0, "".join(proc.log)
    assert not (data / hw_remote.RUNTIME_FILE).exists()  # withdrawn at shutdown
    gone = hw_cmd(data, "led")
    assert gone.returncode == 1
    assert gone.stderr == f"haven-kiosk hw: no kiosk runtime is running on {data} " \
                          f"(start one with: haven-kiosk run --data {data})\n"


def test_a_killed_runtime_is_not_running(tmp_path: Path) -> None:
    data = tmp_path / "k"
    init_store(data, "North", "B").close()
    proc, url = run_kiosk(data, "tcp://127.0.0.1:9", idle=60)
    assert json.loads((data / hw_remote.RUNTIME_FILE).read_text())["url"] == url
    proc.p.kill()
    proc.p.wait(BOUND)
    dead = hw_cmd(data, "press", "--hold", "1")
    assert dead.returncode == 1
    assert f"(pid {proc.p.pid}) is no longer running" in dead.stderr
    bad = hw_cmd(data, "press", "--hold", "31")
    assert (bad.returncode, bad.stderr.strip()) == (
        1, "haven-kiosk hw: a press lasts more than 0 and at most 30 seconds")


class RealPins(hw.Hardware):
    """What a Pi's GPIO looks like to the runtime: not simulated. (No Pi here; gpiozero's
    mock pins stand in for the pins themselves.)"""

    @property
    def simulated(self) -> bool:
        return False


def test_real_hardware_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "k"
    init_store(data, "North", "B").close()
    pins = RealPins(pin_factory=MockFactory())
    rt = Runtime(KioskConfig(data=data, ui="127.0.0.1:0", retry_max=3600), hardware=pins)
    with runtime_in_thread(rt):
        for action in (["led"], ["state"], ["press", "--hold", "5"]):
            r = hw_cmd(data, *action)
            assert r.returncode == 1, action
            assert "drives real hardware (or none): its button and LED can be driven from " \
                   "software only in simulation, with hardware = simulated" in r.stderr
        assert not pins.button.is_pressed and pins.factory.pin(hw.BUTTON_PIN).state


@pytest.mark.parametrize(("host", "url"), [
    ("127.0.0.1", "http://127.0.0.1:8080"), ("0.0.0.0", "http://127.0.0.1:8080"),
    ("::", "http://[::1]:8080"), ("::1", "http://[::1]:8080")])
def test_page_url_reaches_a_wildcard_on_loopback(host: str, url: str) -> None:
    assert hw_remote.page_url(host, 8080) == url
