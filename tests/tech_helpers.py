"""``haven tech`` tests' kiosk: an enrolled store, a console server with a ``TechService``
on end ``a`` of a pty cable, a hub that issues credentials, MockFactory pins."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpiozero.pins.mock import MockFactory

from device import enrol
from device.console.env import ConsoleEnv
from device.console.server import ConsoleServer
from device.hardware import panel as hw
from device.store import Store, init_store
from device.tech import access
from device.tech.service import TechEnv, TechService
from device.tech.trusted_time import SYNC
from host.hub import technician
from host.hub.hub import Hub, init_hub
from protocol.sync import credential as c

from .console_helpers import Cable, fake_stats

T0 = 1_767_225_600_000  #: the hub's time in these tests (2026-01-01)


@dataclass
class TechKiosk:
    cable: Cable
    server: ConsoleServer
    service: TechService
    env: TechEnv
    store: Store
    hub: Hub
    techs: access.Technicians
    hardware: hw.Hardware
    resets: list[int] = field(default_factory=list)
    clock_set: list[float] = field(default_factory=list)

    @property
    def port(self) -> str:
        return self.cable.b

    def credential(self, **kw: Any) -> c.CredentialFile:
        kw.setdefault("name", "Amina")
        kw.setdefault("sites", ["North"])
        kw.setdefault("now_ms", T0)
        _, doc = technician.issue(self.hub, **kw)
        return c.load_file(doc)


@contextlib.contextmanager
def tech_kiosk(tmp: Path, *, trusted: bool = True) -> Iterator[TechKiosk]:
    init_hub(tmp / "hub")
    cable = Cable()
    resets: list[int] = []
    clock_set: list[float] = []
    export = tmp / "kiosk" / "export"
    hardware = hw.Hardware(pin_factory=MockFactory(), hold_time=0.2)
    with Hub(tmp / "hub") as hub:
        store = init_store(tmp / "kiosk", "North", "A")
        try:
            enrol.install(store, hub.enroll(enrol.write_request(store).read_bytes(),
                                            now_ms=T0))
            techs = access.for_kiosk(store, presence=lambda: hardware.button.is_held)
            if trusted:
                techs.clock.note(SYNC, T0 + 60_000)  # as its last sync's welcome said
            export.mkdir()
            console = ConsoleEnv(export_dir=export, import_dir=tmp / "kiosk" / "import",
                                 stats=fake_stats, restart=lambda: resets.append(1),
                                 version="0.1.0", set_wall=clock_set.append,
                                 wall=lambda: T0 / 1000 - 86400 * 365,
                                 technicians=lambda: techs)
            env = TechEnv(console=console, status=lambda: {"sync": {"state": "synced"}},
                          config_file=tmp / "kiosk.toml", hardware=lambda: hardware,
                          kiosk_certificate=lambda: (store.data / enrol.CERT).read_bytes())
            service = TechService(env, static_key=enrol.load(store.data).x_key)
            server = ConsoleServer(cable.a, console, haven=service)
            server.start()
            try:
                yield TechKiosk(cable, server, service, env, store, hub, techs, hardware,
                                resets, clock_set)
            finally:
                server.stop()
                service.stop()
                cable.close()
                hardware.close()
        finally:
            store.close()
