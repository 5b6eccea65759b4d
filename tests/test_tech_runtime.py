"""``haven tech`` against the real runtime (``console = URL``): the status comes from the
runtime's own views, and a restart stops ``Runtime.run`` gracefully once answered."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from device.store import Store
from device.tech.trusted_time import SYNC, TrustedClock
from host.hub import technician
from host.hub.hub import Hub
from host.tech.client import TechClient
from protocol.sync import credential as c

from .console_helpers import Cable, console_runtime, run_beside_technician
from .test_ui_helpers import make_kiosk

BOUND = 20.0


def test_status_and_restart_on_the_runtimes_console(tmp_path: Path) -> None:
    hub_dir, kiosk_dir = make_kiosk(tmp_path)
    with Store(kiosk_dir) as store:
        store.checkin(name="Console Person", passport="CP123456", birth_year=1980,
                      reason="fever")
    now = int(time.time() * 1000)
    TrustedClock(kiosk_dir).note(SYNC, now)  # as its last sync's welcome said
    with Hub(hub_dir) as hub:
        _, doc = technician.issue(hub, name="Amina", sites=["North"], now_ms=now)
    cred = c.load_file(doc)
    (kiosk_dir / "export" / "kiosk.log").parent.mkdir(exist_ok=True)
    (kiosk_dir / "export" / "kiosk.log").write_bytes(b"line\n" * 2000)
    cable = Cable()
    rt = console_runtime(kiosk_dir, cable)

    def technician_at_the_port() -> dict[str, Any]:
        with TechClient(cable.b, cred, timeout=5.0) as t:
            return {"status": t.call("status"), "pull": t.pull("kiosk.log", tmp_path / "out"),
                    "restart": t.call("restart")}

    try:
        got = run_beside_technician(rt, technician_at_the_port, BOUND)
    finally:
        cable.close()
    assert "failed" not in got, got
    status = got["status"]
    assert status["sync"]["state"] in ("pending", "offline", "error", "synced")
    assert sum(lane["entries"] for lane in status["outbox"].values()) >= 1
    assert status["health"]["storage"] and status["rss_kib"] > 0
    assert status["disk"]["free_kib"] > 0
    assert (tmp_path / "out" / "kiosk.log").read_bytes() == b"line\n" * 2000
    assert got["restart"] == {"restarting": True} and rt.restart_asked
    assert rt.console is not None and not rt.console.running
    with Store(kiosk_dir) as store:
        from device import audit

        whats = [(e["what"], e["result"]) for e in audit.entries(store)]
    assert whats == [("tech.auth", "ok"), ("tech.status", "ok"), ("tech.pull", "ok"),
                     ("tech.restart", "ok")]
