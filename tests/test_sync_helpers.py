"""Helpers (no tests): a hub served on 127.0.0.1 in-process, and enrolled kiosks."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from device import enrol
from device.store import init_store
from device.sync.engine import Summary, run_round
from device.sync.state import SyncState
from host.hub.hub import Hub, init_hub
from host.hub.serve import Server


class Kiosk:
    def __init__(self, tmp: Path, name: str, hub: Hub, letter: str, site: str = "North",
                 role: str | None = None) -> None:
        self.store = init_store(tmp / name, site, letter)
        req = enrol.write_request(self.store).read_bytes()
        self.cert = hub.enroll(req, role=role)
        enrol.install(self.store, self.cert)
        self.state = SyncState(self.store.data)
        self.ident = enrol.load(self.store.data)

    @property
    def device(self) -> str:
        return f"{self.store.node:08x}"

    def sync(self, url: str, limit: float = 20.0) -> Summary:
        return run_round(self.store, self.state, self.ident, url, limit=limit)

    def close(self) -> None:
        self.state.close()
        self.store.close()


@contextmanager
def served_hub(tmp: Path) -> Iterator[tuple[Hub, str]]:
    init_hub(tmp / "hub")
    hub = Hub(tmp / "hub")
    server = Server(hub, 5 * 60 * 1000)
    host, port = server.listen("tcp://127.0.0.1:0")
    try:
        yield hub, f"tcp://{host}:{port}"
    finally:
        server.shutdown()
        hub.close()


def held_prescription(a: Kiosk, b: Kiosk, url: str) -> str:
    """A prescription ``a`` wrote and both then changed apart, synced (a, b, a): held on
    the hub for review. Its record id."""
    rx = a.store.put("prescription", values={"medication": "amoxicillin", "status": "active"})
    a.sync(url)
    b.sync(url)
    a.store.put("prescription", rx, {"dosageInstruction": "500 mg twice daily"})
    b.store.put("prescription", rx, {"dosageInstruction": "250 mg three times daily"})
    for k in (a, b, a):
        k.sync(url)
    return rx
