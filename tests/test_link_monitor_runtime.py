"""The runtime's link monitor on real links: a serial modem (a pty behind a symlink, as in
/dev/serial/by-id/) that is unplugged and plugged in again, and a TCP route in network
namespaces of the test's own that goes away and comes back.

The runtime runs in-process with an injected clock for its circuit breaker. While the
link is down, each round is woken after an hour of breaker time, so the URL's breaker
opens for longer and longer, until the runtime itself says that its next try is half an
hour away or more. Then the link returns: a round must reach the hub within a bounded
wait far shorter than that, which only the link monitor can start.

``haven-kiosk sync``'s loop runs in-process with its waits and its clock simulated: the
modem is away for an hour, and the round after its return starts at the next look at the
link, not at the end of the wait the link returned in.
"""

from __future__ import annotations

import argparse
import json
import logging
import queue
import re
import sys
import time
import types
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from gpiozero.pins.mock import MockFactory

import device.sync.loop as sync_module
from device.cli import cmd_sync
from device.config import KioskConfig
from device.hardware import panel as hw
from device.runtime import Runtime
from device.store import Store
from host.hub.hub import Hub
from tests.netns import enter_netns, ip, namespace_pair
from tools.benchmarks._link import emulator

from .test_ui_helpers import Proc, make_kiosk, runtime_in_thread

BOUND = 60.0  #: the longest any one wait may take
FAR = 1800  #: seconds: the runtime's next try is at least this far when the link returns


class SkewedClock:
    """Monotonic time plus a skew the test moves forward."""

    def __init__(self) -> None:
        self.skew = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.skew


class LogLines(logging.Handler):
    """The runtime's log messages, in order, each read once."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.put(record.getMessage())

    def wait_for(self, pattern: str) -> re.Match[str]:
        """The next message matching ``pattern``, within ``BOUND`` seconds."""
        end = time.monotonic() + BOUND
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, end - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {pattern!r} in {self.seen}") from None
            self.seen.append(line)
            if m := re.search(pattern, line):
                return m


@pytest.fixture
def log_lines() -> Iterator[LogLines]:
    logger = logging.getLogger("haven.kiosk")
    handler, level = LogLines(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@dataclass
class Link:
    """A hub served over a link the test can cut and restore."""

    url: str
    cut: Callable[[], None]
    restore: Callable[[], None]
    enter: Callable[[], None] | None = None  #: run in the runtime's thread first


def hub_serve(hub_dir: Path, *how: str, prefix: tuple[str, ...] = ()) -> Proc:
    hub = Proc([*prefix, sys.executable, "-m", "host.cli", "hub", "serve", "--data",
                str(hub_dir), "--baud", "115200", *how])
    hub.wait_for("ready", BOUND)
    return hub


@contextmanager
def serial_modem(tmp: Path, hub_dir: Path) -> Iterator[Link]:
    """The hub on one pty of the link emulator; the kiosk's URL a symlink to the other,
    removed while the modem is unplugged."""
    modem = tmp / "modem"
    with emulator("serial", ["--rate", "11520", "--seed", "3"], tmp / "emu.json") as emu:
        modem.symlink_to(emu.endpoints["b"])
        hub = hub_serve(hub_dir, "--serial", emu.endpoints["a"])
        try:
            yield Link(str(modem), cut=modem.unlink,
                       restore=lambda: modem.symlink_to(emu.endpoints["b"]))
        finally:
            hub.stop()


@contextmanager
def tcp_route(tmp: Path, hub_dir: Path) -> Iterator[Link]:
    """The hub in one network namespace, the kiosk in another, joined by a veth pair;
    the kiosk's route to the hub's subnet is deleted and added again."""
    with namespace_pair("lm", "10.77.0") as pair:
        hub = hub_serve(hub_dir, "--listen", f"tcp://{pair.hub_addr}:7400",
                        prefix=("ip", "netns", "exec", pair.hub_ns))
        try:
            route = ("-n", pair.kiosk_ns, "route")
            yield Link(f"tcp://{pair.hub_addr}:7400",
                       cut=lambda: ip(*route, "del", "10.77.0.0/24", "dev", pair.veth),
                       restore=lambda: ip(*route, "add", "10.77.0.0/24", "dev", pair.veth),
                       enter=lambda: enter_netns(pair.kiosk_ns))
        finally:
            hub.stop()


LINKS: dict[str, Callable[[Path, Path], AbstractContextManager[Link]]] = {
    "serial": serial_modem, "tcp": tcp_route}


def push_breaker_to_its_cap(rt: Runtime, clock: SkewedClock, log: LogLines) -> int:
    """Wake rounds an hour of breaker time apart, each a failed probe that opens the
    breaker for twice as long, then one more: how many seconds the runtime says its
    next try is away."""
    for _ in range(20):
        clock.skew += 3600
        rt.sync_now()
        log.wait_for("no hub answered")
    next_try = 0
    for _ in range(10):
        rt.sync_now()
        m = log.wait_for(r"no hub answered(.*the next try in (\d+) s)?")
        next_try = int(m.group(2) or 0)
        if next_try >= FAR:
            break
    return next_try


@pytest.mark.parametrize("kind", sorted(LINKS))
def test_a_link_that_returns_starts_a_round_at_once(tmp_path: Path, kind: str,
                                                     log_lines: LogLines) -> None:
    hub_dir, kiosk_dir = make_kiosk(tmp_path)
    with Store(kiosk_dir) as store:
        ids = {store.checkin(name="Before Cut", passport="LM100001", reason="fever").record_id}
    clock = SkewedClock()
    with LINKS[kind](tmp_path, hub_dir) as link:
        url = re.escape(link.url)
        cfg = KioskConfig(data=kiosk_dir, hub=[link.url], ui="127.0.0.1:0", interval=3600,
                          retry_max=3600, baud=115200, link_interval=0.1,
                          hardware="simulated")
        rt = Runtime(cfg, hardware=hw.Hardware(pin_factory=MockFactory()), clock=clock)
        with runtime_in_thread(rt, before=link.enter, bound=BOUND):
            log_lines.wait_for(f"synced via {url}: 2 up")
            link.cut()
            log_lines.wait_for(f"link down: {url}$")
            assert rt.store is not None
            ids.add(rt.store.checkin(name="During Cut", passport="LM100002",
                                     reason="fever").record_id)
            assert push_breaker_to_its_cap(rt, clock, log_lines) >= FAR
            link.restore()
            log_lines.wait_for(f"link up: {url}$")
            # the check-in, and the telemetry records written during the cut's hours
            log_lines.wait_for(f"synced via {url}: [2-9] up")
    with Hub(hub_dir) as hub:
        records = json.loads(hub.dump())["records"]
    assert {r["id"] for r in records if r["type"] == "checkin"} == ids


@pytest.mark.parametrize("link_interval", [1.0, 0.0])
def test_the_sync_loop_ends_its_wait_when_the_modem_returns(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, link_interval: float) -> None:
    hub_dir, kiosk_dir = make_kiosk(tmp_path)
    with Store(kiosk_dir) as store:
        checkin = store.checkin(name="Away Hour", passport="LM200001", reason="fever").record_id
    simulated = 0.0
    back_at: float | None = None  # simulated time when the modem was plugged in again
    with serial_modem(tmp_path, hub_dir) as link:
        link.cut()

        def sleep(seconds: float) -> None:
            nonlocal simulated, back_at
            if simulated >= 3600 and back_at is None:
                link.restore()  # at the start of a wait
                back_at = simulated
            simulated += seconds

        monkeypatch.setattr(sync_module, "time", types.SimpleNamespace(
            monotonic=lambda: time.monotonic() + simulated, time_ns=time.time_ns,
            time=time.time, sleep=sleep))
        args = argparse.Namespace(data=kiosk_dir, hub=[link.url], once=True, baud=115200,
                                  timeout=7200.0, interval=10.0, json=True,
                                  link_interval=link_interval, keepalive=120.0)
        assert cmd_sync(args) == 0
    assert back_at is not None
    waited = simulated - back_at  # from the modem's return to the round that synced
    if link_interval:
        assert waited <= link_interval  # the next look at the link
    else:
        # The whole wait: the breaker's cool-down at its cap, half of it or more (less
        # the real time its round took).
        assert waited >= sync_module.BACKOFF_CAP / 2 - 1
    with Hub(hub_dir) as hub:
        assert checkin in {r["id"] for r in json.loads(hub.dump())["records"]}
