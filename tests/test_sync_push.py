"""A kiosk on a kept-open TCP session that does not poll: the hub pushes, an idle hour costs
only keepalives, a revocation ends its syncing for good, and the page says how long ago the
hub was last heard. Real hub (its server on 127.0.0.1), real runtime, real sockets.

The idle hour runs on a simulated clock: the kiosk's session and ``HubConnection.idle`` take
the clock and the blocking wait as arguments, and the test's wait lets real input through
(the hub's answers to the keepalives) and jumps the clock to the deadline when none comes.
"""

from __future__ import annotations

import math
import os
import select
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from gpiozero.pins.mock import MockFactory

from device.config import KioskConfig
from device.hardware import panel as hw
from device.runtime import Runtime
from device.status import REVOKED, SYNCED
from device.sync.connection import HubConnection
from device.sync.state import SyncState
from device.sync.wake import Wake
from host.hub.hub import Hub
from protocol import messages

from .test_sync_helpers import Kiosk, served_hub
from .test_sync_kept_open import Relay
from .test_ui_helpers import runtime_in_thread

pytestmark = pytest.mark.usefixtures("hub_backend")

BOUND = 10.0


def wait_until(cond: Callable[[], object], bound: float = BOUND, what: str = "") -> None:
    end = time.monotonic() + bound
    while not cond():
        assert time.monotonic() < end, f"not within {bound} s: {what}"
        time.sleep(0.02)


class SkewedClock:
    """Monotonic time plus a skew the test moves forward."""

    def __init__(self) -> None:
        self.skew = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.skew


@contextmanager
def kiosk_runtime(tmp: Path, url: str, hub: Hub, clock: Callable[[], float] = time.monotonic,
                  name: str = "a", letter: str = "A",
                  **options: object) -> Iterator[tuple[Runtime, Kiosk]]:
    """A runtime on an enrolled kiosk's data (polling off: the default on TCP)."""
    kiosk = Kiosk(tmp, name, hub, letter)
    kiosk.close()
    cfg = KioskConfig(data=kiosk.store.data, hub=[url], ui="127.0.0.1:0", retry_max=0.5,
                      hardware="simulated", **options)  # type: ignore[arg-type]
    rt = Runtime(cfg, hardware=hw.Hardware(pin_factory=MockFactory()), clock=clock)
    with runtime_in_thread(rt):
        yield rt, kiosk


def has_record(rt: Runtime, rid: str) -> bool:
    assert rt.store is not None
    return rt.store.view(rid) is not None


def test_a_change_pushed_to_a_kiosk_that_does_not_poll_is_merged(tmp_path: Path) -> None:
    clock = SkewedClock()
    with served_hub(tmp_path) as (hub, url), kiosk_runtime(tmp_path, url, hub, clock) as (rt, _):
        assert rt.cfg.poll_interval == 0  # no polling on TCP by default
        wait_until(lambda: rt.live.snapshot()["state"] == SYNCED, what="the first round")
        other = Kiosk(tmp_path, "b", hub, "B")
        try:
            rid = other.store.checkin(name="Pushed Patient", passport="PU000001").record_id
            start = time.monotonic()
            assert other.sync(url).pushed == 2
            wait_until(lambda: has_record(rt, rid), 5.0, "the pushed change merged")
            took = time.monotonic() - start
        finally:
            other.close()
        assert took < 5.0
        # The page's header: no "last contact" while the hub was heard within the
        # keepalive interval; once it was not, how many minutes ago.
        assert rt.live.snapshot()["contact_min"] is None
        clock.skew += 10 * 60 + 30
        assert rt.live.snapshot()["contact_min"] == 10


class SimulatedWait:
    """``HubConnection``'s blocking wait on a simulated clock: real input goes through at
    once; when none comes within ``real`` seconds, the clock jumps to the deadline."""

    def __init__(self, real: float = 0.05) -> None:
        self.real = real
        self.skew = 0.0
        self.calls = 0

    def clock(self) -> float:
        return time.monotonic() + self.skew

    def __call__(self, fds: list[int], timeout: float) -> list[int]:
        self.calls += 1
        began = time.monotonic()
        ready, _, _ = select.select(fds, [], [], min(timeout, self.real))
        if not ready and math.isfinite(timeout):
            self.skew += max(0.0, timeout - (time.monotonic() - began))
        return ready


def test_an_idle_hour_on_a_kept_open_session_costs_only_keepalives(tmp_path: Path) -> None:
    sim = SimulatedWait()
    with served_hub(tmp_path) as (hub, url):
        relay = Relay(url)
        kiosk = Kiosk(tmp_path, "a", hub, "A")
        conn = HubConnection(relay.url, kiosk.ident, clock=sim.clock, wait=sim)
        wake = Wake()
        try:
            kiosk.store.checkin(name="Before The Hour")
            assert conn.round(kiosk.store, kiosk.state, limit=BOUND).pushed == 2
            assert conn.keepalive == 240.0
            driver = conn.driver
            assert driver is not None
            before, up_before, wakeups = driver.stats(), relay.up[0], conn.wakeups
            began = sim.clock()
            assert conn.idle(3600.0, wake) is False  # the hour ran out: nothing called
            assert sim.clock() - began >= 3600.0
            after = driver.stats()
            sent = after.frames_sent - before.frames_sent
            heard = after.frames_received - before.frames_received
            payload = (after.bytes_sent - before.bytes_sent
                       + after.bytes_received - before.bytes_received)
            # A ping per keepalive interval, each answered (and at most one delayed
            # acknowledgement of the round's last message); no round, no handshake.
            assert heard == 3600 // 240 and sent <= heard + 1, (sent, heard)
            assert relay.up[0] - up_before == after.bytes_sent - before.bytes_sent
            assert (relay.connections, conn.handshakes, conn.resumes) == (1, 1, 0)
            assert payload < 2_000, payload
            # Each wait lasts until the next deadline: a few per keepalive, not 20 a second.
            assert conn.wakeups - wakeups <= 3 * sent, conn.wakeups - wakeups
            print(f"idle hour: {sent} pings, {heard} answers, {payload} B of TCP payload, "
                  f"{conn.wakeups - wakeups} waits")
        finally:
            wake.close()
            conn.close()
            kiosk.close()
            relay.close()


def test_a_revoked_kiosk_says_so_stops_syncing_and_stays_revoked(tmp_path: Path) -> None:
    with served_hub(tmp_path) as (hub, url):
        relay = Relay(url)
        try:
            with kiosk_runtime(tmp_path, relay.url, hub) as (rt, kiosk):
                wait_until(lambda: rt.live.snapshot()["state"] == SYNCED, what="first round")
                hub.revoke(kiosk.device)
                wait_until(lambda: rt.live.snapshot()["state"] == REVOKED, BOUND,
                           "the kiosk shows revoked")
                assert rt.hardware.led.pattern == REVOKED
                connections = relay.connections
                rt.sync_now()  # a check-in or the button: no round any more
                assert rt.store is not None
                rt.store.checkin(name="After Revocation")
                rt.sync_now()
                time.sleep(1.0)  # the runtime's retry_max is 0.5 s
                assert relay.connections == connections
            state = SyncState(kiosk.store.data)
            try:
                assert state.revoked(kiosk.ident.cert.raw) is not None
            finally:
                state.close()
            # A restart does not try again.
            before = relay.connections
            cfg = KioskConfig(data=kiosk.store.data, hub=[relay.url], ui="127.0.0.1:0",
                              retry_max=0.5, hardware="simulated")
            rt2 = Runtime(cfg, hardware=hw.Hardware(pin_factory=MockFactory()))
            with runtime_in_thread(rt2):
                wait_until(lambda: rt2.live.snapshot()["state"] == REVOKED, what="restart")
                assert rt2.hardware.led.pattern == REVOKED
                time.sleep(1.0)
            assert relay.connections == before
        finally:
            relay.close()


def test_a_notify_pulls_at_once_after_the_rounds_pull_and_again_after_one_under_way() -> None:
    """The kiosk's role on a ``sync-notify`` (pure, in memory): nothing when it holds the
    changes already; a pull when its round's pull is done; and when a pull is under way
    whose answer stops short of the notified cursor, one more pull after it."""
    from .test_sync_roles import NOW, Fleet, converse  # helpers of the roles' own tests

    def notify(cursor: int) -> bytes:
        return messages.encode(messages.make("sync-notify", cursor=cursor))

    def deliver(role: object, hub: object, to_hub: list[bytes]) -> list[str]:
        sent = []
        while to_hub:
            data = to_hub.pop(0)
            sent.append(messages.decode(data).name)
            for _, reply in hub.receive_data(data, NOW):  # type: ignore[attr-defined]
                to_hub += [d for _, d in role.receive_data(reply, NOW)]  # type: ignore[attr-defined]
        return sent

    fleet = Fleet()
    k, other = fleet.enrol(1), fleet.enrol(2)
    hub = fleet.hub_role(k)
    role = k.role()
    converse(role, hub)
    assert role.done and role.receive_data(notify(k.storage.cursor_), NOW) == []

    fleet.hub.add_local(other.storage.replica.put(os.urandom(16), "note", NOW))
    replies = role.receive_data(notify(len(fleet.hub.ops)), NOW)
    assert [messages.decode(d).name for _, d in replies] == ["sync-pull"] and not role.done
    deliver(role, hub, [d for _, d in replies])
    assert role.done and len(k.storage.merged) == 1

    # A pull under way, answered before the hub had the next write; the notify for that
    # write comes before the answer.
    role = k.role()
    (_, pull), = role.again()
    (_, stale), = hub.receive_data(pull, NOW)
    fleet.hub.add_local(other.storage.replica.put(os.urandom(16), "note", NOW))
    assert role.receive_data(notify(len(fleet.hub.ops)), NOW) == []
    again = [d for _, d in role.receive_data(stale, NOW)]
    assert [messages.decode(d).name for d in again] == ["sync-pull"] and not role.done
    deliver(role, hub, again)
    assert role.done and len(k.storage.merged) == 2
