"""Keys at rest, the loose ends: the TPM a running kiosk uses, status on a locked kiosk,
one TPM shared by several processes, and check-ins sealed while locked that someone with
the card altered."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from gpiozero.pins.mock import MockFactory

from device.config import KioskConfig
from device.hardware import panel as hw
from device.runtime import Runtime
from device.store import init_store
from device.store.locked import LockableStore
from protocol.driver.tpm import TpmAbsent
from tests.swtpm_helpers import SoftTpm, soft_tpm
from tests.test_staff_unlock import passphrase_kiosk
from tests.test_ui_helpers import ROOT

PASSPORT, NAME = "ZA 4471-0923", "Thandiwe Okonkwo-Mbeki"


@pytest.fixture
def pins() -> Iterator[hw.Hardware]:
    pins = hw.Hardware(pin_factory=MockFactory())
    try:
        yield pins
    finally:
        pins.close()


def test_run_uses_the_tpm_the_configuration_names_over_the_one_init_recorded(
        tmp_path: Path, pins: hw.Hardware) -> None:
    """The TPM moved (another device path, a software TPM on another port): the
    configuration's tpm_tcti (or --tpm-tcti) is the one haven-kiosk run opens."""
    data, state = tmp_path / "kiosk", tmp_path / "tpm"
    with soft_tpm(state) as first, init_store(data, "Riverside", "A", provider="tpm",
                                               tcti=first.tcti) as store:
        done = store.checkin(passport=PASSPORT, name=NAME, birth_year=1987)
    moved = SoftTpm(state)  # the same TPM, now on another port
    moved.start()
    try:
        recorded = Runtime(KioskConfig(data=data, ui="127.0.0.1:0"), hardware=pins)
        with pytest.raises(TpmAbsent):
            recorded._open_store()  # the recorded port: nobody listens there any more
        told = Runtime(KioskConfig(data=data, ui="127.0.0.1:0", tpm_tcti=moved.tcti),
                       hardware=pins)
        with told._open_store() as store:
            view = store.view(done.record_id)
            assert view is not None and NAME in view.fields.values()
    finally:
        moved.stop()


def test_status_on_a_terminal_never_asks_the_passphrase_of_a_locked_kiosk(
        tmp_path: Path) -> None:
    """It asked for the passphrase on a terminal, and a status run from a login shell (or
    a script given one) waited there for ever; now it says LOCKED and what it reads
    without the key."""
    data = tmp_path / "k"
    passphrase_kiosk(data)
    with LockableStore(data) as gate:
        gate.checkin(name="Ada Locked", birth_year=1980, reason="sick")
    leader, terminal = pty.openpty()
    try:
        for argv in ([], ["--json"]):
            shown = subprocess.run([sys.executable, "-m", "device.cli", "status", "--data",
                                    str(data), *argv], stdin=terminal, capture_output=True,
                                   text=True, cwd=ROOT, timeout=30, start_new_session=True)
            assert shown.returncode == 0, shown.stderr
            assert "The kiosk's passphrase" not in shown.stdout + shown.stderr
            if argv:
                st = json.loads(shown.stdout)
                assert (st["locked"], st["pending_sealed"], st["running"]) == (True, 1, None)
                assert st["storage"]["free_mib"] > 0 and st["last_sync"] is None
            else:
                assert "LOCKED" in shown.stdout and "1 check-ins sealed" in shown.stdout
                assert "storage:" in shown.stdout and "scope:" in shown.stdout
    finally:
        os.close(leader)
        os.close(terminal)
