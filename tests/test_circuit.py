"""Circuit breakers per hub URL, on an injected clock: closed, open, half-open; a dead URL
is skipped while the next one syncs, and probed again once it has cooled down."""

from __future__ import annotations

import random
import socket
from pathlib import Path

import pytest

from device.sync.circuit import CLOSED, HALF_OPEN, OPEN, Breaker, Breakers, hub_breakers
from device.sync.engine import Summary, run_round
from device.sync.loop import retry_wait, sync_first
from host.hub.serve import Server

from .test_sync_helpers import Kiosk, served_hub


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_failures_open_it_and_a_probe_after_the_cool_down_closes_it() -> None:
    clock = Clock()
    b = Breaker(threshold=3, cool_down=10.0, max_cool_down=60.0, clock=clock,
                rng=random.Random(1))
    b.failure()
    b.failure()
    assert b.state == CLOSED and b.is_allowed
    b.success()  # a success in between starts the count again
    for _ in range(2):
        b.failure()
    assert b.state == CLOSED
    b.failure()
    assert b.state == OPEN and not b.is_allowed
    assert 5.0 <= b.probe_in() <= 10.0  # half to all of the cool-down, at random
    clock.now += b.probe_in() - 0.001
    assert b.state == OPEN
    clock.now += 0.001
    assert b.state == HALF_OPEN and b.is_allowed and b.probe_in() == 0.0
    b.success()
    assert b.state == CLOSED and b.failures == 0


def test_a_failed_probe_opens_it_for_twice_as_long_up_to_the_most() -> None:
    clock = Clock()
    b = Breaker(threshold=1, cool_down=10.0, max_cool_down=35.0, clock=clock,
                rng=random.Random(2))
    b.failure()
    openings = []
    for _ in range(4):
        openings.append(b.probe_in())
        clock.now += b.probe_in()
        assert b.state == HALF_OPEN
        b.failure()  # the probe failed
        assert b.state == OPEN
    openings.append(b.probe_in())
    for got, cool in zip(openings, [10.0, 20.0, 35.0, 35.0, 35.0], strict=True):
        assert cool / 2 <= got <= cool
    clock.now += b.probe_in()
    b.success()
    b.failure()
    assert b.probe_in() <= 10.0  # a success brought the cool-down back to its start


def test_an_open_url_is_never_reported_on_and_bad_settings_are_refused() -> None:
    clock = Clock()
    b = Breaker(threshold=1, clock=clock)
    b.failure()
    for report in (b.success, b.failure):
        with pytest.raises(RuntimeError, match="no .* from open"):
            report()
    for bad in ({"threshold": 0}, {"cool_down": 0.0}, {"cool_down": 70.0, "max_cool_down": 60.0}):
        with pytest.raises(ValueError):
            Breaker(**bad)  # type: ignore[arg-type]


def test_a_url_rests_no_longer_than_the_loop_may_back_off() -> None:
    clock = Clock()
    b = hub_breakers(["a"], 4.0, clock=clock, rng=random.Random(5))["a"]
    for _ in range(b.threshold):
        b.failure()
    for _ in range(6):
        assert 0 < b.probe_in() <= 4.0
        clock.now += b.probe_in()
        b.failure()


def test_breakers_keep_the_order_and_say_when_the_next_probe_is() -> None:
    clock = Clock()
    rng = random.Random(3)
    bs = Breakers(["a", "b", "c"], threshold=1, cool_down=10.0, clock=clock, rng=rng)
    assert bs.allowed() == ["a", "b", "c"] and bs.next_probe() is None
    bs["a"].failure()
    clock.now += 3.0
    bs["c"].failure()
    assert bs.allowed() == ["b"]
    assert bs.next_probe() == min(bs["a"].probe_in(), bs["c"].probe_in())
    assert bs.status() == {"a": OPEN, "b": CLOSED, "c": OPEN}
    # Every URL open: the loop waits until the first probe, whatever the backoff says.
    bs["b"].failure()
    first = bs.next_probe()
    assert first is not None and retry_wait(20, bs, rng, cap=60.0) == first
    # One still closed: the backoff, but never past the first probe.
    clock.now += first
    assert retry_wait(1, bs, rng, cap=60.0) <= 1.0
    assert retry_wait(20, bs, rng, cap=60.0) <= (bs.next_probe() or 60.0)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_dead_url_is_skipped_while_the_next_syncs_and_used_again_when_it_returns(
        tmp_path: Path) -> None:
    clock = Clock()
    port = _closed_port()
    dead = f"tcp://127.0.0.1:{port}"
    with served_hub(tmp_path) as (hub, url):
        k = Kiosk(tmp_path, "k", hub, "A")
        bs = Breakers([dead, url], threshold=2, cool_down=30.0, clock=clock,
                      rng=random.Random(4))

        def sync() -> tuple[Summary | None, list[str]]:
            k.store.checkin(name="X")
            return sync_first(bs, lambda url, left: run_round(k.store, k.state, k.ident, url,
                                                              limit=left),
                              limit=lambda: 20.0)

        for _ in range(2):  # the first URL fails each time; the second one syncs
            summary, failures = sync()
            assert summary is not None and [f.split(": ")[0] for f in failures] == [dead]
        assert bs.status() == {dead: OPEN, url: CLOSED}
        summary, failures = sync()  # open: skipped, not even dialled
        assert summary is not None and failures == []
        clock.now += bs[dead].probe_in()
        summary, failures = sync()  # half-open: one probe, which fails
        assert len(failures) == 1 and bs[dead].state == OPEN
        assert bs[dead].probe_in() > 15.0  # twice the cool-down, at least half of it
        # The link returns: the next probe finds it and it is first again.
        server = Server(hub, 5 * 60 * 1000)
        server.listen(dead)
        try:
            clock.now += bs[dead].probe_in()
            summary, failures = sync()
            assert summary is not None and failures == [] and summary.url == dead
            assert bs.status() == {dead: CLOSED, url: CLOSED}
        finally:
            server.shutdown()
        assert len(k.store.outbox_batch()) == 0
        k.close()
