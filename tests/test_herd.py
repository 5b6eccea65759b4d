"""Surviving the herd: the hub serves a bounded number of sync rounds and tells the
others when to come back; kiosks obey with jitter.

Real hubs (in-process ``Server``) on 127.0.0.1, real enrolled kiosk keys and real
kiosks' sync loops; the hub's bounds are set short so the herd takes seconds.
"""

from __future__ import annotations

import random
import resource
import time
from pathlib import Path

import pytest

from device.sync.engine import SyncBusy, SyncFailed, closed_error
from device.sync.loop import BUSY_CAP, SyncLoop, busy_wait
from host.hub.hub import Hub, init_hub
from host.hub.limits import Limits
from host.hub.serve import Server
from host.hub.shedding import GO, HOLD, Shedder, default_max_rounds
from protocol.session.events import Closed
from tests.test_sync_helpers import Kiosk
from tools.benchmarks._herd import Herd, herd_kiosks, landed

HERD, CHECKINS, BOUND = 100, 3, 10


def raise_descriptor_limit() -> None:
    """A hundred kiosks and the hub's side of them in one process: soft up to hard."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def test_a_hundred_kiosks_back_at_once_are_shed_and_each_check_in_lands_once(
        tmp_path: Path) -> None:
    raise_descriptor_limit()
    init_hub(tmp_path / "hub")
    kiosks = herd_kiosks(tmp_path / "hub", HERD, CHECKINS)
    hub = Hub(tmp_path / "hub")
    limits = Limits(max_rounds=BOUND, round_quiet=0.5, round_guess=0.1, busy_retry_min=0.2,
                    busy_retry_max=3.0, watch_interval=0.05)
    server = Server(hub, 5 * 60 * 1000, limits)
    try:
        host, port = server.listen("tcp://127.0.0.1:0")
        herd = Herd(host, port, hub.x_public, kiosks, seed=5, keep_open=False,
                    attempt_limit=20.0)
        assert herd.run(limit=60.0), herd.figures()
        report = server.call(server.health)["rounds"]
    finally:
        server.shutdown()
    try:
        figures = herd.figures()
        assert figures["failed"] == {} and figures["quarantined"] == 0, figures
        # The hub shed some, and never served more rounds at once than its bound.
        assert figures["busy_answers"] > 0 and figures["busy_mid_round"] == 0
        assert report["busy"] == figures["busy_answers"]
        assert 0 < report["peak"] <= BOUND and report["held"] > 0
        # Every check-in of every kiosk is on the hub, each exactly once.
        assert landed(hub.store, kiosks) == {k.node: k.checkins for k in kiosks}
        # Each kiosk told busy came back after the wait it was given, not before...
        assert herd.early_returns() == []
        # ...and with jitter: the returns of kiosks told alike are spread out.
        busy = [(a, b) for k in kiosks for a, b in zip(k.attempts, k.attempts[1:],
                                                          strict=False) if a.outcome == "busy"]
        assert busy
        stretch = [(b.start - a.end) / (a.retry_ms / 1000) for a, b in busy if a.retry_ms]
        assert max(stretch) - min(stretch) > 0.1, stretch
        returns = sorted(b.start for _, b in busy)
        assert returns[-1] - returns[0] > 0.5
    finally:
        hub.close()


def test_a_kiosk_told_busy_waits_and_counts_no_failure(tmp_path: Path) -> None:
    """A real kiosk's sync loop: the hub's only round is taken, so its round is told
    busy; it waits 1 to 1.5 times what the hub asked, asks no other URL and counts
    no failure; a round asked for sooner (a check-in) does not reach the hub; once
    the round ahead is over, it syncs."""
    init_hub(tmp_path / "hub")
    hub = Hub(tmp_path / "hub")
    first, second = Kiosk(tmp_path, "a", hub, "A"), Kiosk(tmp_path, "b", hub, "B")
    server = Server(hub, 5 * 60 * 1000, Limits(max_rounds=1, round_quiet=60.0,
                                               busy_retry_min=2.0, watch_interval=0.05))
    skew = [0.0]

    def clock() -> float:
        return time.monotonic() + skew[0]

    loops: list[SyncLoop] = []
    try:
        host, port = server.listen("tcp://127.0.0.1:0")
        url = f"tcp://{host}:{port}"
        holder = SyncLoop(first.store, first.state, first.ident, [url])
        loops.append(holder)
        assert holder.round(lambda: 20.0).summary is not None  # its round holds the bound
        other = "tcp://127.0.0.1:9"  # nothing listens: tried, it would count a failure
        loop = SyncLoop(second.store, second.state, second.ident, [url, other],
                        clock=clock, rng=random.Random(1))
        loops.append(loop)
        second.store.put("checkin", values={"status": "arrived", "location": "North"})
        out = loop.round(lambda: 20.0)
        assert out.summary is None and out.failures == [] and out.busy is not None
        assert out.busy >= 2.0 and out.busy <= out.wait <= 1.5 * out.busy
        assert loop.attempt == 0
        assert loop.breakers[url].failures == loop.breakers[other].failures == 0
        assert server.call(lambda: server.shedder.busy) == 1
        again = loop.round(lambda: 20.0)  # a check-in wakes the loop early
        assert again.summary is None and 0 < again.wait <= out.wait
        assert server.call(lambda: server.shedder.busy) == 1  # the hub was not asked
        holder.close()  # the round ahead is over: its session is gone
        end = time.monotonic() + 10.0
        while server.call(lambda: server.shedder.in_progress):
            assert time.monotonic() < end, "the hub kept the ended round"
            time.sleep(0.05)
        skew[0] += out.wait
        done = loop.round(lambda: 20.0)
        assert done.summary is not None and done.summary.pushed >= 1
    finally:
        for lp in loops:
            lp.close()
        server.shutdown()
        first.close()
        second.close()
        hub.close()


def test_the_busy_answer_is_read_by_reason_and_wait() -> None:
    """A busy close with a wait is ``SyncBusy``; one without (a hub that predates the
    field, or a serial line's other peer) is a failed round as before."""
    url = "tcp://hub:7000"
    busy = closed_error(Closed("busy", "at the bound", by_peer=True, retry_ms=2500), url)
    assert isinstance(busy, SyncBusy) and busy.retry_after == 2.5
    old = closed_error(Closed("busy", "another peer", by_peer=True), url)
    assert isinstance(old, SyncFailed) and not isinstance(old, SyncBusy)
    rng = random.Random(0)
    waits = [busy_wait(4.0, rng) for _ in range(200)]
    assert min(waits) >= 4.0 and max(waits) <= 6.0 and max(waits) - min(waits) > 1.0
    assert busy_wait(1e9, rng) == BUSY_CAP


def test_rounds_are_bounded_and_the_wait_grows_with_the_queue() -> None:
    shed = Shedder(max_rounds=2, quiet=1.0, min_retry=0.5, max_retry=30.0, round_guess=1.0,
                   hold=0.0)
    assert shed.message("a", 0.0, "A") == GO and shed.message("b", 0.0, "B") == GO
    waits = [w for k in "cdef" if isinstance(w := shed.message(k, 0.0, k.upper()), int)]
    # One place of 2 frees a second (1 s a round, 1 s quiet): each later one waits a
    # second more.
    assert waits == [1000, 2000, 3000, 4000]
    assert shed.message("a", 0.5) == GO  # a round in progress is never refused
    assert shed.in_progress == 2 and shed.peak == 2 and shed.busy == 4
    # E comes back early: it keeps its place (two ahead), not the end of the queue.
    assert shed.message("e2", 0.6, "E") == 3000
    assert shed.message("g", 0.6, "G") == 5000  # a newcomer: behind the four
    shed.worked("a", 0.9)  # the hub's answer to a went out at 0.9: its quiet starts there
    shed.sweep(1.2, idle=lambda k: True, gone=lambda k: False)  # b quiet for 1 s: over
    assert not shed.in_round("b") and shed.in_round("a")
    shed.sweep(1.2, idle=lambda k: True, gone=lambda k: k == "a")  # a's session is gone
    assert shed.in_progress == 0
    assert shed.message("c2", 1.3, "C") == GO  # C's turn: its ticket goes
    assert shed.report()["waiting"] == 4
    shed.sweep(100.0, idle=lambda k: True, gone=lambda k: True)  # the others never came
    assert shed.report()["waiting"] == 0 and shed.retry_after() == 0.5
    assert Shedder(1, max_retry=3.0).retry_after() <= 3.0
    with pytest.raises(ValueError):
        Shedder(0)
    assert default_max_rounds(1) == default_max_rounds(4) == 64
    assert default_max_rounds(64) == 256


def test_a_round_whose_place_is_near_waits_for_it_instead_of_a_busy_answer() -> None:
    shed = Shedder(max_rounds=2, quiet=0.5, min_retry=1.0, round_guess=0.5, hold=2.0)
    assert shed.message("a", 0.0, "A") == GO and shed.message("z", 0.0, "Z") == GO
    assert shed.message("b", 0.0, "B") == HOLD  # a place within half a second: it waits
    assert shed.message("b", 0.1, "B") == HOLD  # its next message waits behind it
    assert shed.message("c", 0.0, "C") == HOLD
    assert isinstance(shed.message("d", 0.0, "D"), int)  # as many held as places: busy
    # a's session ends: the first held goes, first come first; the other waits on.
    go, told = shed.sweep(0.6, idle=lambda k: k == "a", gone=lambda k: k == "a")
    assert go == ["b"] and told == [] and shed.in_round("b") and shed.is_holding("c")
    # c waited its two seconds: told busy, first in the queue (the least wait).
    go, told = shed.sweep(2.0, idle=lambda k: False, gone=lambda k: False)
    assert go == [] and told == [("c", 1000)]
    assert shed.message("d2", 2.1, "D") == HOLD  # D, told busy before, is near now
    assert shed.report()["held"] == 3 and shed.report()["holding"] == 1
