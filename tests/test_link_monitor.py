"""The link monitor on injected signals and an injected clock; the signals themselves on
a real pty (a device node that goes and comes back) and on loopback's route."""

from __future__ import annotations

import logging
import os
import random
import re
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from device import config as kconfig
from device.sync.circuit import CLOSED, HALF_OPEN, OPEN, Breaker
from device.sync.link_monitor import (
    LinkMonitor,
    RouteTo,
    carrier_detect,
    device_signal,
    has_route,
    link_monitor_for,
    signal_for,
)
from tests.conftest import require


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.now += seconds


class Links:
    """Fake link-up signals, one per URL, switched by the test."""

    def __init__(self, *urls: str) -> None:
        self.up = dict.fromkeys(urls, False)

    def signal(self, url: str) -> Callable[[], bool]:
        return lambda: self.up[url]

    def monitor(self, clock: Clock, interval: float = 1.0,
                min_gap: float = 5.0) -> tuple[LinkMonitor, list[str]]:
        came: list[str] = []
        mon = LinkMonitor({u: self.signal(u) for u in self.up}, when_up=came.append,
                          interval=interval, min_gap=min_gap, clock=clock)
        return mon, came


def test_a_link_that_returns_is_acted_on_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "haven.kiosk.link")
    links, clock = Links("/dev/ttyUSB0", "tcp://hub:7400"), Clock()
    links.up["tcp://hub:7400"] = True
    mon, came = links.monitor(clock)
    assert mon.poll() == [] and came == []  # the first look only learns the state
    assert [r.getMessage() for r in caplog.records] == ["link down: /dev/ttyUSB0"]
    clock.now += 1
    assert mon.poll() == []
    links.up["/dev/ttyUSB0"] = True
    clock.now += 1
    assert mon.poll() == ["/dev/ttyUSB0"] and came == ["/dev/ttyUSB0"]
    assert caplog.records[-1].getMessage() == "link up: /dev/ttyUSB0"
    for _ in range(10):  # staying up is no news
        clock.now += 1
        assert mon.poll() == []
    links.up["tcp://hub:7400"] = False
    clock.now += 1
    assert mon.poll() == []
    links.up["tcp://hub:7400"] = True
    clock.now += 1
    assert mon.poll() == ["tcp://hub:7400"]
    assert came == ["/dev/ttyUSB0", "tcp://hub:7400"]
    assert mon.is_up == {"/dev/ttyUSB0": True, "tcp://hub:7400": True}


def test_a_flapping_link_is_acted_on_at_most_once_per_gap() -> None:
    url = "/dev/ttyUSB0"
    links, clock = Links(url), Clock()
    mon, came = links.monitor(clock, min_gap=5.0)

    def look(up: bool, after: float = 1.0) -> list[str]:
        links.up[url] = up
        clock.now += after
        return mon.poll()

    assert look(False) == []
    assert look(True) == [url]
    assert look(False) == []
    assert look(True) == []  # back within the gap: it waits
    assert look(True, 2.9) == []
    assert look(True, 0.1) == [url]  # the gap is over and the link still up: acted on now
    assert look(False) == []
    assert look(True) == []
    assert look(False) == []  # down again before the gap ended: nothing to do
    assert look(False, 10) == []
    assert came == [url, url]


def test_a_signal_that_raises_oserror_is_down() -> None:
    clock = Clock()
    state = {"fail": True}

    def flaky() -> bool:
        if state["fail"]:
            raise FileNotFoundError("no such device")
        return True

    mon = LinkMonitor({"/dev/ttyACM0": flaky}, clock=clock)
    assert mon.poll() == [] and mon.is_up == {"/dev/ttyACM0": False}
    state["fail"] = False
    assert mon.poll() == ["/dev/ttyACM0"]


def test_pause_ends_when_a_link_returns_and_not_before() -> None:
    links, clock = Links("/dev/ttyUSB0"), Clock()
    mon, _ = links.monitor(clock, interval=1.0)
    mon.poll()
    start = clock.now
    assert mon.pause(30.0, clock.sleep) == []
    assert clock.now == start + 30.0  # the whole wait, in looks of a second
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        clock.sleep(seconds)
        if len(sleeps) == 4:
            links.up["/dev/ttyUSB0"] = True

    assert mon.pause(30.0, sleep) == ["/dev/ttyUSB0"]
    assert sleeps == [1.0] * 4  # ended at the first look after the return


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        LinkMonitor({}, interval=0)
    with pytest.raises(ValueError):
        LinkMonitor({}, min_gap=-1)


@pytest.mark.parametrize(("url", "kind"), [
    ("tcp://127.0.0.1:7400", RouteTo), ("socket://hub.lan:7000", RouteTo),
    ("rfc2217://[::1]:2217", RouteTo), ("/dev/ttyUSB0", "device"),
    ("/dev/serial/by-id/usb-FTDI-if00-port0", "device"), ("loop://", None),
    ("spy://loop://", None), ("tcp://host:notaport", None), ("COM3", None)])
def test_each_kind_of_url_gets_its_signal(url: str, kind: object) -> None:
    signal = signal_for(url)
    if kind is None:
        assert signal is None
    elif kind == "device":
        assert signal is not None and not isinstance(signal, RouteTo)
    else:
        assert isinstance(signal, kind)  # type: ignore[arg-type]


def test_link_monitor_for_watches_only_urls_with_a_signal() -> None:
    assert link_monitor_for(["/dev/ttyUSB0"], 0.0) is None  # off
    assert link_monitor_for(["loop://"], 1.0) is None  # nothing to watch
    mon = link_monitor_for(["loop://", "/dev/ttyUSB0", "tcp://10.1.2.3:7400"], 0.5)
    assert mon is not None and mon.interval == 0.5
    assert list(mon.signals) == ["/dev/ttyUSB0", "tcp://10.1.2.3:7400"]


@pytest.fixture
def pty_link(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A symlink in ``tmp_path`` to a pty's slave, as /dev/serial/by-id/... links are."""
    master, slave = os.openpty()
    link = tmp_path / "modem"
    target = os.ttyname(slave)
    link.symlink_to(target)
    try:
        yield link, target
    finally:
        os.close(master)
        os.close(slave)


def test_a_device_node_that_goes_and_comes_back(pty_link: tuple[Path, str]) -> None:
    link, target = pty_link
    clock = Clock()
    mon = LinkMonitor({str(link): device_signal(str(link))}, clock=clock)
    assert mon.poll() == [] and mon.is_up[str(link)]
    link.unlink()  # unplugged
    assert mon.poll() == [] and not mon.is_up[str(link)]
    link.symlink_to(link.parent / "nothing")  # a link left dangling is no device either
    assert mon.poll() == []
    link.unlink()
    link.symlink_to(target)  # plugged in again
    assert mon.poll() == [str(link)]


def test_carrier_detect_counts_a_port_without_modem_lines_as_up(
        pty_link: tuple[Path, str]) -> None:
    link, _ = pty_link
    assert carrier_detect(str(link))  # a pty has no modem lines to report
    signal = device_signal(str(link), carrier=True)
    assert signal()
    link.unlink()
    assert not signal()
    with pytest.raises(FileNotFoundError):
        carrier_detect(str(link))


def test_a_route_to_loopback_and_a_name_resolved_once() -> None:
    assert RouteTo("127.0.0.1", 7400)()
    by_name = RouteTo("localhost", 7400)
    assert by_name() and by_name.addresses  # resolved, then kept
    kept = list(by_name.addresses)
    assert by_name() and by_name.addresses == kept
    with socket.socket() as s:  # nothing listens: a route is not a connection
        s.bind(("127.0.0.1", 0))
        assert RouteTo("127.0.0.1", s.getsockname()[1])()


def test_no_route_is_down_without_namespaces() -> None:
    """The kernel's own answer, with no privilege: loopback carries no link-local IPv6
    route, so a datagram to fe80::1 on ``lo`` has nowhere to go (ENETUNREACH)."""
    require(socket.has_ipv6, "ipv6", "the no-route case uses an IPv6 link-local address")
    assert not has_route(socket.AF_INET6, ("fe80::1", 7400, 0, socket.if_nametoindex("lo")))
    assert not RouteTo("fe80::1%lo", 7400)()
    assert RouteTo("::1", 7400)()  # the same check on a routed address says up


def test_a_destination_that_goes_and_comes_back(tmp_path: Path) -> None:
    """The route check's decision on a real destination that goes away and returns,
    without namespaces: a datagram socket bound to a path (the kernel refuses a
    datagram to it once it is closed), watched by the monitor like a hub's route."""
    path = str(tmp_path / "hub.sock")
    clock = Clock()
    mon = LinkMonitor({path: lambda: has_route(socket.AF_UNIX, path)},
                      clock=clock, min_gap=0.0)
    assert mon.poll() == [] and mon.is_up == {path: False}  # nothing there yet
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as hub:
        hub.bind(path)
        assert mon.poll() == [path]
    assert mon.poll() == [] and mon.is_up == {path: False}  # closed: gone
    os.unlink(path)
    assert mon.poll() == [] and mon.is_up == {path: False}
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as hub:
        hub.bind(path)
        assert mon.poll() == [path]  # back: acted on


def test_allow_probe_half_opens_an_open_breaker_now() -> None:
    clock = Clock()
    b = Breaker(threshold=1, cool_down=10.0, max_cool_down=60.0, clock=clock,
                rng=random.Random(3))
    b.allow_probe()
    assert b.state == CLOSED  # nothing to do on a closed one
    b.failure()
    assert b.state == OPEN and b.probe_in() > 0
    b.allow_probe()
    assert b.state == HALF_OPEN and b.is_allowed and b.probe_in() == 0.0
    b.failure()  # the probe failed: open for twice as long, as after any probe
    assert b.state == OPEN and b.cool_down == 20.0 and 10.0 <= b.probe_in() <= 20.0
    b.allow_probe()
    b.success()
    assert b.state == CLOSED and b.cool_down == 10.0


def test_config_link_options(tmp_path: Path) -> None:
    f = tmp_path / "kiosk.toml"
    f.write_text('data = "/srv/k"\nhub = ["/dev/ttyUSB0", "tcp://a:1"]\n'
                 'link_interval = 2\nlink_carrier = ["/dev/ttyUSB0"]\n')
    cfg = kconfig.load(f, {"link_interval": None, "link_carrier": None})
    assert (cfg.link_interval, cfg.link_carrier) == (2, ["/dev/ttyUSB0"])
    assert kconfig.load(f, {"link_interval": 0.0}).link_interval == 0.0  # off
    assert kconfig.KioskConfig().link_interval == 1.0  # on by default
    for text, error in (("link_interval = -1\n", "link_interval must be 0 (off) or more"),
                        ('link_interval = "1"\n', "link_interval has the wrong type"),
                        ("link_carrier = [1]\n", "link_carrier must be a list of URLs"),
                        ('link_carrier = ["/dev/ttyS0"]\n', "'/dev/ttyS0' is not one of")):
        f.write_text('data = "/srv/k"\nhub = ["/dev/ttyUSB0"]\n' + text)
        with pytest.raises(kconfig.ConfigError, match=re.escape(error)):
            kconfig.load(f, {})
