"""The hub's TCP connections: one per kiosk key.

A kiosk whose NAT dropped its connection without a word connects again; the
hub still holds the old, half-open one. When the new session authenticates
with the same static key, the hub closes the old connection. Another key's
connection changes nothing. Real TCP on 127.0.0.1, a real hub directory.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from host.hub.hub import Hub, init_hub
from host.hub.serve import Server
from protocol.driver.link import open_link
from protocol.driver.session_driver import DriverEvent, LinkClosed, SessionDriver, session_config

pytestmark = pytest.mark.usefixtures("hub_backend")

DEADLINE = 20.0


def kiosk(url: str, key: X25519PrivateKey, hub_key: bytes) -> SessionDriver:
    return SessionDriver(initiator=True, config=session_config(stream=True, keepalive=1.0),
                         static_key=key, remote_static=hub_key, link=open_link(url))


def run(drivers: list[SessionDriver], seconds: float) -> list[list[DriverEvent]]:
    got: list[list[DriverEvent]] = [[] for _ in drivers]
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for d, events in zip(drivers, got, strict=True):
            if d.link is not None:
                events += d.poll(0.01)
    return got


def test_a_kiosk_that_connects_again_replaces_its_half_open_connection(tmp_path: Path) -> None:
    init_hub(tmp_path / "hub")
    hub = Hub(tmp_path / "hub")
    server = Server(hub, 60_000)
    try:
        host, port = server.listen("tcp://127.0.0.1:0")
        url = f"tcp://{host}:{port}"
        key, other = X25519PrivateKey.generate(), X25519PrivateKey.generate()
        old = kiosk(url, key, hub.x_public)
        stranger = kiosk(url, other, hub.x_public)
        run([old, stranger], 1.0)
        assert old.connected and stranger.connected
        # The old connection goes quiet, as behind a NAT that forgot it; the kiosk
        # comes back on a new one with the same key.
        new = kiosk(url, key, hub.x_public)
        end = time.monotonic() + DEADLINE
        got_old: list[DriverEvent] = []
        while not any(isinstance(e, LinkClosed) for e in got_old):
            assert time.monotonic() < end, "the hub kept the old connection"
            got_old += run([old, new, stranger], 0.1)[0]
        assert new.connected
        # The stranger's connection, another key, is untouched and still answered.
        run([new, stranger], 2.5)  # more than two keepalives: each needs the hub's answer
        assert new.connected and stranger.connected and stranger.link is not None
        # This key never made an accepted hello: its connections are a stranger's, and
        # replacing them is not logged (a kiosk's is: test_hub_hostile).
        assert not any("connected again" in str(e) for e in hub.store.events())
    finally:
        server.shutdown()
        hub.close()



def test_serve_refuses_what_it_cannot_open_with_one_line(tmp_path: Path) -> None:
    """A port that is not there, a port number out of range or an address this
    machine does not have: one line and status 2 at once, not a traceback or a
    hub that waits for ever on nothing."""
    import subprocess
    import sys

    init_hub(tmp_path / "hub")
    for how in (["--serial", str(tmp_path / "no-such-tty")],
                ["--listen", "tcp://127.0.0.1:99999"],
                ["--listen", "tcp://192.0.2.1:7000"],
                []):
        run = subprocess.run([sys.executable, "-m", "host.cli", "hub", "serve", "--data",
                              str(tmp_path / "hub"), *how],
                             capture_output=True, text=True, timeout=30)
        assert run.returncode == 2, (how, run.stderr)
        assert len(run.stderr.strip().splitlines()) == 1, (how, run.stderr)
        assert "Traceback" not in run.stderr
