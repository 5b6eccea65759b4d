"""A NAT that forgets a kept-open session's flow, for real: the hub in one network
namespace, the kiosk in another, a veth pair between them, and an nftables rule in the
kiosk's namespace that silently drops every packet of the session's TCP connection, both
ways, as a carrier's NAT does once it has forgotten the flow. New connections pass.

A check-in made after the drop must reach the hub within 10 s over a new connection (the
kiosk hears nothing within ``reply_timeout`` of the round's first message, opens a new link
and resumes the session on it), and the hub must replace the stale session: its socket of
the dropped flow leaves ESTABLISHED though no packet of that flow reaches it any more.

Needs root, ``ip`` and ``nft`` (``tests.conftest.require``: skipped off root, a failure as
root if they are missing; ``./tools/test`` installs them).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from device import enrol
from device.store import Store
from device.sync.connection import HubConnection
from device.sync.engine import Summary
from device.sync.state import SyncState
from host.hub.hub import Hub
from tests.conftest import require
from tests.netns import enter_netns, namespace_pair

from .test_link_monitor_runtime import hub_serve
from .test_ui_helpers import make_kiosk

BOUND = 20.0
HUB_PORT = 7400
REPLY_TIMEOUT = 2.0


def netns_exec(ns: str, *argv: str, stdin: str | None = None) -> str:
    out = subprocess.run(["ip", "netns", "exec", ns, *argv], check=True, capture_output=True,
                         text=True, input=stdin, timeout=BOUND)
    return out.stdout


@contextmanager
def two_namespaces() -> Iterator[tuple[str, str]]:
    """A kiosk namespace (10.78.0.2) and a hub namespace (10.78.0.1) joined by a veth."""
    require(shutil.which("ip") and shutil.which("nft"), "netns",
            "needs ip and nft (./tools/test installs iproute2 and nftables)")
    with namespace_pair("nd", "10.78.0") as pair:
        yield pair.kiosk_ns, pair.hub_ns


def drop_flow(ns: str, port: int) -> None:
    """Drop, without a word, every packet of the kiosk's connection from local ``port``."""
    netns_exec(ns, "nft", "-f", "-", stdin=f"""
table inet natdrop {{
  chain out {{ type filter hook output priority 0; tcp sport {port} drop; }}
  chain in {{ type filter hook input priority 0; tcp dport {port} drop; }}
}}
""")


def established(ns: str, port: int) -> list[str]:
    """The hub's ESTABLISHED TCP connections on ``port`` (their peers' addresses)."""
    out = netns_exec(ns, "ss", "-Htn", "state", "established", f"( sport = :{port} )")
    return [line.split()[-1] for line in out.splitlines() if line.strip()]


class KioskThread:
    """Runs calls in a thread that lives in the kiosk's namespace (so do its sockets)."""

    def __init__(self, ns: str) -> None:
        self.ns = ns

    def call(self, fn: Callable[[], Any], bound: float = BOUND) -> Any:
        result: list[Any] = []
        error: list[BaseException] = []

        def run() -> None:
            try:
                enter_netns(self.ns)
                result.append(fn())
            except BaseException as exc:  # handed to the caller
                error.append(exc)

        t = threading.Thread(target=run, daemon=True)
        t.start()
        t.join(bound)
        assert not t.is_alive(), "the kiosk's call did not end"
        if error:
            raise error[0]
        return result[0]


def wait_until(cond: Callable[[], object], bound: float, what: str) -> None:
    end = time.monotonic() + bound
    while not cond():
        assert time.monotonic() < end, f"not within {bound} s: {what}"
        time.sleep(0.05)


def test_a_check_in_after_a_silent_nat_drop_reaches_the_hub_over_a_new_connection(
        tmp_path: Path) -> None:
    hub_dir, kiosk_dir = make_kiosk(tmp_path)
    with two_namespaces() as (kiosk_ns, hub_ns):
        hub = hub_serve(hub_dir, "--listen", f"tcp://10.78.0.1:{HUB_PORT}",
                        prefix=("ip", "netns", "exec", hub_ns))
        store = Store(kiosk_dir)
        state = SyncState(kiosk_dir)
        conn = HubConnection(f"tcp://10.78.0.1:{HUB_PORT}", enrol.load(kiosk_dir),
                             reply_timeout=REPLY_TIMEOUT)
        kiosk = KioskThread(kiosk_ns)
        try:
            def round_() -> Summary:
                return conn.round(store, state, limit=BOUND)

            store.checkin(name="Before The Drop", passport="ND000001")
            assert kiosk.call(round_).pushed == 2
            assert conn.link is not None
            old_port = conn.link.sock.getsockname()[1]  # type: ignore[attr-defined]
            wait_until(lambda: established(hub_ns, HUB_PORT) == [f"10.78.0.2:{old_port}"],
                       5.0, "the hub holds the kiosk's one connection")

            drop_flow(kiosk_ns, old_port)
            rid = store.checkin(name="After The Drop", passport="ND000002").record_id
            start = time.monotonic()
            summary = kiosk.call(round_)
            took = time.monotonic() - start
            assert summary.pushed == 2
            assert took < 10.0, took
            assert (conn.handshakes, conn.resumes) == (1, 1)  # the session went on
            assert conn.link is not None
            new_port = conn.link.sock.getsockname()[1]  # type: ignore[attr-defined]
            assert new_port != old_port
            # The hub replaced the stale session: only the new connection is left.
            wait_until(lambda: established(hub_ns, HUB_PORT) == [f"10.78.0.2:{new_port}"],
                       5.0, f"the hub dropped the stale connection from port {old_port}")
            print(f"check-in after a silent NAT drop reached the hub in {took:.2f} s "
                  f"(reply_timeout {REPLY_TIMEOUT:g} s)")
        finally:
            kiosk.call(conn.close)
            state.close()
            store.close()
            hub.stop()
    with Hub(hub_dir) as h:
        assert rid in {r["id"] for r in json.loads(h.dump())["records"]}
