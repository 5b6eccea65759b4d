"""Keys at rest, the loose ends: the TPM a running kiosk uses, status on a locked kiosk,
one TPM shared by several processes, and check-ins sealed while locked that someone with
the card altered."""

from __future__ import annotations

import fcntl
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
from protocol.driver.tpm import Tpm, TpmAbsent, TpmBusy, lock_path
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


_UNSEAL_LOOP = """
import sys
from protocol.driver.tpm import Tpm
tpm = Tpm(sys.argv[1])
public, private = bytes.fromhex(sys.argv[2]), bytes.fromhex(sys.argv[3])
for _ in range(int(sys.argv[4])):
    assert tpm.unseal(public, private, "the test's secret") == b"shared"
    tpm.hmac(int(sys.argv[5]), b"patient")
"""


def test_two_processes_share_one_software_tpm_without_colliding(tmp_path: Path) -> None:
    """swtpm has no resource manager: one process's flush dropped the objects the other
    had just loaded (its unseal then failed as if the key were gone). Each operation
    holds a lock on the TCTI, across processes."""
    with soft_tpm(tmp_path / "tpm") as soft:
        tpm = Tpm(soft.tcti)
        public, private = tpm.seal(b"shared")
        handle = tpm.import_hmac(bytes(32))
        runs = [subprocess.Popen([sys.executable, "-c", _UNSEAL_LOOP, soft.tcti, public.hex(),
                                  private.hex(), "6", str(handle)], cwd=ROOT,
                                 stderr=subprocess.PIPE, text=True) for _ in range(2)]
        for run in runs:
            _, err = run.communicate(timeout=120)
            assert run.returncode == 0, err[-800:]
        # one that keeps the TPM: the wait is bounded, and says for what
        with open(lock_path(soft.tcti)) as held:
            fcntl.flock(held, fcntl.LOCK_EX)
            with pytest.raises(TpmBusy, match="stayed in use by another process for 0.2 s"):
                Tpm(soft.tcti, lock_wait=0.2).hmac(handle, b"patient")
        assert len(tpm.hmac(handle, b"patient")) == 32  # released: taken at once
