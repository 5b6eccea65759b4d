"""The console in the real runtime (``console = URL``): smpclient reads the runtime's own
counters over a pty, a reset without a credential is refused, and with the port bound a
reset stops ``Runtime.run`` gracefully (the service manager starts it again)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from gpiozero.pins.mock import MockFactory
from smpclient import SMPClient
from smpclient.generics import error, success
from smpclient.requests import os_management as osm
from smpclient.requests import shell_management as shell
from smpclient.requests import statistics_management as stat
from smpclient.transport.serial import SMPSerialTransport

from device.config import KioskConfig
from device.hardware import panel as hw
from device.runtime import Runtime
from device.store import Store

from .console_helpers import Cable, run_beside_technician
from .test_console_clients import Everyone
from .test_ui_helpers import free_port, make_kiosk

BOUND = 20.0


def test_runtime_console_counters_refusal_and_graceful_reset(tmp_path: Path) -> None:
    _, kiosk_dir = make_kiosk(tmp_path)
    with Store(kiosk_dir) as store:
        store.checkin(name="Console Person", passport="CP123456", birth_year=1980,
                      reason="fever")
    cable = Cable()
    cfg = KioskConfig(data=kiosk_dir, hub=[f"tcp://127.0.0.1:{free_port()}"],
                      ui="127.0.0.1:0", retry_max=0.5, interval=0.5, hardware="simulated",
                      console=cable.a)
    rt = Runtime(cfg, hardware=hw.Hardware(pin_factory=MockFactory()))

    def technician() -> dict[str, Any]:
        got: dict[str, Any] = {}

        async def run() -> None:
            client = SMPClient(SMPSerialTransport(), cable.b, timeout_s=3.0)
            await client.connect()
            try:
                got["store"] = await client.request(stat.GroupData(name="store"))
                got["health"] = await client.request(stat.GroupData(name="health"))
                got["console"] = await client.request(stat.GroupData(name="console"))
                got["refused"] = await client.request(osm.ResetWrite())
                assert rt.console is not None
                rt.console.port.access = Everyone()
                got["status"] = await client.request(shell.Execute(argv=["status"]))
                got["reset"] = await client.request(osm.ResetWrite())
            finally:
                await client.disconnect()

        asyncio.run(run())
        return got

    try:
        got = run_beside_technician(rt, technician, BOUND)
    finally:
        cable.close()
    assert "failed" not in got, got
    assert success(got["store"]) and got["store"].fields["outbox"] >= 1
    assert success(got["health"]) and got["health"].fields["free_kib"] > 0
    assert success(got["console"]) and got["console"].fields["smp_requests"] >= 3
    assert error(got["refused"]) and got["refused"].rc == 11
    assert success(got["status"]) and "sync state=" in got["status"].o
    assert success(got["reset"]) and rt.restart_asked
    assert rt.console is not None and not rt.console.running  # stopped with the runtime
    assert (kiosk_dir / "export").is_dir() and (kiosk_dir / "import").is_dir()
