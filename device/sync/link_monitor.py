"""The link monitor: a sync starts as soon as a hub's link returns.

Theory of operation
-------------------
Each hub URL has a cheap "link up" signal, looked at every ``interval``
seconds, that sends nothing on the link:

* a serial device path: the device node exists (an unplugged USB modem takes
  its node away). For a modem that drives carrier detect, and only when the
  configuration says so (``link_carrier``), the CD line too (``TIOCMGET`` on
  the port opened without blocking and without touching its settings; a
  port that cannot report it counts as up). Opening the port raises DTR
  while it is open, which is why this is not the default.
* ``tcp://``, ``socket://`` and ``rfc2217://``: the system has a route to
  the host: ``connect()`` on a UDP socket asks the kernel's routing tables
  (ENETUNREACH without a route) and sends no packet. A host name counts as
  down until it resolves once; its addresses are kept.
* ``loop://`` and other pyserial URLs: not watched.

``poll`` looks at every signal once. On a down-to-up transition it logs
"link up: URL" and calls ``when_up(url)``: the runtime lets that URL's
breaker probe at once and wakes its loop, so the kiosk syncs within an
interval of the link's return instead of after its backoff. The first look
only learns the state. A link that flaps acts at most once per ``min_gap``
seconds per URL; a return within the gap is acted on when it ends, if the
link is still up. A link that goes down calls ``when_down(url)`` at once
(the first look included): the runtime shows ``offline`` within an interval
instead of when a round or a keepalive fails.

``watch`` polls until an event is set (the runtime's thread); ``pause``
sleeps in slices of the interval and ends early when a link returns
(``haven-kiosk sync``). Signals and clock are injected for the tests.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import math
import os
import socket
import struct
import termios
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger("haven.kiosk.link")

Signal = Callable[[], bool]
INTERVAL = 1.0  #: seconds between two looks at the links
MIN_GAP = 5.0  #: seconds between two link-ups acted on, per URL
ROUTED_SCHEMES = ("tcp", "socket", "rfc2217")


def carrier_detect(path: str) -> bool:
    """True if the serial port at ``path`` has carrier, or cannot report its modem lines.

    Raises ``OSError`` if the port cannot be opened (its node is gone)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
    try:
        try:
            lines = fcntl.ioctl(fd, termios.TIOCMGET, bytes(4))
        except OSError:  # no modem lines here
            return True
        return bool(struct.unpack("i", lines)[0] & termios.TIOCM_CAR)
    finally:
        os.close(fd)


def has_route(family: int, address: Any) -> bool:
    """True if the kernel would route a datagram to ``address`` (nothing is sent)."""
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        try:
            s.connect(address)
        except OSError:
            return False
    return True


class RouteTo:
    """The signal of a host reached over IP: the system has a route to it."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.addresses: list[tuple[int, Any]] = []

    def __call__(self) -> bool:
        if not self.addresses:
            try:
                found = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_DGRAM)
            except (OSError, UnicodeError):
                return False
            self.addresses = [(family, address) for family, _, _, _, address in found]
        return any(has_route(family, address) for family, address in self.addresses)


def device_signal(path: str, carrier: bool = False) -> Signal:
    """The signal of a serial device path: its node exists (and has carrier)."""
    if carrier:
        return lambda: os.path.exists(path) and carrier_detect(path)
    return lambda: os.path.exists(path)


def signal_for(url: str, carrier: bool = False) -> Signal | None:
    """The link-up signal of hub ``url``; None for a URL that has none (``loop://``)."""
    parts = urlsplit(url)
    if parts.scheme in ROUTED_SCHEMES and parts.hostname:
        try:
            port = parts.port or 9
        except ValueError:  # a bad port: the round says so
            return None
        return RouteTo(parts.hostname, port)
    if not parts.scheme and url.startswith("/"):
        return device_signal(url, carrier)
    return None


class LinkMonitor:
    """Watches each URL's link-up signal; see the module docstring."""

    def __init__(self, signals: Mapping[str, Signal], *,
                 when_up: Callable[[str], None] | None = None,
                 when_down: Callable[[str], None] | None = None, interval: float = INTERVAL,
                 min_gap: float = MIN_GAP, clock: Callable[[], float] = time.monotonic) -> None:
        if interval <= 0 or min_gap < 0:
            raise ValueError("a link monitor needs interval > 0 and min_gap >= 0")
        self.signals = dict(signals)
        self.when_up, self.when_down = when_up, when_down
        self.interval, self.min_gap, self.clock = interval, min_gap, clock
        self.is_up: dict[str, bool | None] = dict.fromkeys(self.signals)  #: None: not looked
        self.acted: dict[str, float] = {}  #: when each URL's last return was acted on
        self.returned: set[str] = set()  #: came back, not acted on yet (within the gap)

    def poll(self) -> list[str]:
        """Look at every link once; the URLs whose link just returned, each acted on."""
        now = self.clock()
        back, lost = [], []
        for url, signal in self.signals.items():
            was, up = self.is_up[url], self._look(signal)
            self.is_up[url] = up
            if not up:
                self.returned.discard(url)
                if was is not False:
                    log.info("link down: %s", url)
                    lost.append(url)
            elif was is False:
                self.returned.add(url)
            if url in self.returned and now >= self.acted.get(url, -math.inf) + self.min_gap:
                self.returned.discard(url)
                self.acted[url] = now
                log.info("link up: %s", url)
                back.append(url)
        for url in lost:
            if self.when_down is not None:
                self.when_down(url)
        for url in back:
            if self.when_up is not None:
                self.when_up(url)
        return back

    def watch(self, stop: threading.Event) -> None:
        """Poll every interval until ``stop`` is set."""
        while True:
            try:
                self.poll()
            except Exception:  # a broken signal must not end the watch
                log.exception("link monitor")
            if stop.wait(self.interval):
                return

    def pause(self, seconds: float, sleep: Callable[[float], None] = time.sleep) -> list[str]:
        """Sleep ``seconds``, looking at the links every interval; ends early with the
        URLs whose link returned."""
        end = self.clock() + seconds
        while (left := end - self.clock()) > 0:
            sleep(min(left, self.interval))
            if back := self.poll():
                return back
        return []

    @staticmethod
    def _look(signal: Signal) -> bool:
        with contextlib.suppress(OSError):
            return bool(signal())
        return False


def link_monitor_for(urls: Iterable[str], interval: float, *, carrier: Iterable[str] = (),
                     when_up: Callable[[str], None] | None = None,
                     when_down: Callable[[str], None] | None = None,
                     clock: Callable[[], float] = time.monotonic,
                     signals: Mapping[str, Signal] | None = None) -> LinkMonitor | None:
    """A monitor of the hub ``urls`` that have a signal; None if ``interval`` is 0 (off)
    or no URL has one. ``carrier``: the serial URLs whose modem drives carrier detect;
    ``signals``: a URL's signal given instead of its own (tests)."""
    with_carrier, given = set(carrier), dict(signals or {})
    found = {url: given.get(url) or signal_for(url, url in with_carrier) for url in urls}
    watched = {url: s for url, s in found.items() if s is not None}
    if interval <= 0 or not watched:
        return None
    return LinkMonitor(watched, when_up=when_up, when_down=when_down, interval=interval,
                       clock=clock)
