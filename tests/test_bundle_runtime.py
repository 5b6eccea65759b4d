"""``haven tech bundle`` against the real runtime: the bundle holds the runtime's own
Journal, metrics, status and audit chain, and none of a checked-in patient's values."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from device.store import Store
from device.tech.trusted_time import SYNC, TrustedClock
from host.hub import technician
from host.hub.hub import Hub
from host.tech.client import TechClient
from protocol import debug_bundle as fmt
from protocol.sync import credential as c

from .bundle_helpers import NAME, NOTE, PASSPORT, YEAR, leaks
from .console_helpers import Cable, console_runtime, run_beside_technician
from .test_ui_helpers import make_kiosk

BOUND = 20.0


def test_a_bundle_of_the_running_kiosk(tmp_path: Path) -> None:
    hub_dir, kiosk_dir = make_kiosk(tmp_path)
    with Store(kiosk_dir) as store:
        store.checkin(name=NAME, passport=PASSPORT, birth_year=YEAR, reason=NOTE)
    now = int(time.time() * 1000)
    TrustedClock(kiosk_dir).note(SYNC, now)
    with Hub(hub_dir) as hub:
        _, doc = technician.issue(hub, name="Amina", sites=["North"], now_ms=now)
        hub_key = hub.ed_key.public_key().public_bytes_raw()
    cred = c.load_file(doc)
    cable = Cable()
    rt = console_runtime(kiosk_dir, cable)

    def technician_at_the_port() -> dict[str, Any]:
        with TechClient(cable.b, cred, timeout=5.0) as t:
            got = t.fetch("bundle", {"nonce": "ab" * 16, "seal_to": None}, tmp_path / "out")
            t.call("restart")
            return got

    try:
        got = run_beside_technician(rt, technician_at_the_port, BOUND)
    finally:
        cable.close()
    assert "failed" not in got, got
    data = Path(got["path"]).read_bytes()
    assert leaks(data) == []
    bundle = fmt.read_bundle(data, hub_ed25519=hub_key, nonce="ab" * 16)
    m = bundle.manifest
    assert m["missing"] == [] and m["logs"]["entries"] >= 1 and m["metric_hours"] >= 1
    assert m["clock"]["source"] == SYNC and m["boot_ids"]
    status = bundle.section("status.json")
    assert status["store"]["records"] >= 1 and status["sync"]["state"]
    assert [e["what"] for e in bundle.section("audit.json")["entries"]] == ["tech.auth"]
    assert {e["mod"] for e in bundle.log_entries()} and "sections" in m
