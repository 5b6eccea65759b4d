"""LED and status transitions: the status LED, the page's header and ``haven-kiosk status``
say the same thing, and follow each change at once.

A real runtime (gpiozero's ``MockFactory`` pins) syncs with a real hub over TCP on
127.0.0.1 through a line the test controls: it forwards, holds (the hub's
acknowledgement waits in the kernel's buffers) or is cut (nothing arrives, nothing is
closed, and its route goes: the link monitor's signal for this URL is the line's).
The page's header is read from its event stream (``/api/events``: what ``app.js``
shows as ``sync_<state>``), ``haven-kiosk status`` is run as the command's ``main``.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import io
import json
import re
import selectors
import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from gpiozero.pins.mock import MockFactory

from device import cli
from device.config import KioskConfig
from device.hardware import panel as hw
from device.runtime import Runtime
from device.status import OFFLINE, PENDING, SYNCED
from device.sync.link_monitor import LinkMonitor
from device.sync.state import last_sync_of

from .test_sync_helpers import Kiosk, served_hub
from .test_ui_helpers import runtime_in_thread

pytestmark = pytest.mark.usefixtures("hub_backend")

BOUND = 10.0
WITHIN = 2.0  #: the page's header follows a change of the link within this
PIN = "246810"


class Line:
    """A TCP line from the kiosk to ``target``: ``up`` forwards, ``held`` leaves every
    byte in the sockets' buffers, ``cut`` swallows every byte and closes nothing (and
    takes the route away), ``reset`` closes the connections it carries and swallows
    what new ones send (a middlebox that dropped the flow; the route stays)."""

    def __init__(self, target: str) -> None:
        host, _, port = target.removeprefix("tcp://").rpartition(":")
        self.target = (host, int(port))
        self.srv = socket.create_server(("127.0.0.1", 0))
        self.url = f"tcp://127.0.0.1:{self.srv.getsockname()[1]}"
        self.mode = "up"
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def route(self) -> bool:
        """The link-up signal of this line (a cut takes its route away)."""
        return self.mode != "cut"

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.srv, selectors.EVENT_READ, None)
        socks: list[socket.socket] = [self.srv]
        swallowed: list[socket.socket] = []
        while not self.stop.is_set():
            if self.mode == "held":
                time.sleep(0.01)
                continue
            if self.mode == "reset":  # what it carried ends; what comes now is swallowed
                for s in socks[1:]:
                    with contextlib.suppress(KeyError, ValueError):
                        sel.unregister(s)
                    s.close()
                del socks[1:]
            for key, _ in sel.select(0.02):
                if key.data is None:
                    down, _ = self.srv.accept()
                    if self.mode == "reset":
                        swallowed.append(down)
                        sel.register(down, selectors.EVENT_READ, down)
                        continue
                    up = socket.create_connection(self.target)
                    socks += [down, up]
                    sel.register(down, selectors.EVENT_READ, up)
                    sel.register(up, selectors.EVENT_READ, down)
                    continue
                src, other = key.fileobj, key.data
                assert isinstance(src, socket.socket)
                try:
                    data = src.recv(65536)
                except OSError:
                    data = b""
                if src is other:  # swallowed
                    continue
                if not data:
                    for s in (src, other):
                        with contextlib.suppress(KeyError, ValueError):
                            sel.unregister(s)
                        s.close()
                elif self.mode == "up":
                    with contextlib.suppress(OSError):
                        other.sendall(data)
        sel.close()
        for s in socks + swallowed:
            s.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(BOUND)


class Header:
    """The page's live state, read from its event stream as the page reads it."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.sock = socket.create_connection(address, timeout=BOUND)
        self.sock.sendall(b"GET /api/events HTTP/1.1\r\nHost: %s:%d\r\n\r\n" % (
            address[0].encode(), address[1]))
        self.last: dict[str, Any] = {}
        self.changed = threading.Condition()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        with contextlib.suppress(OSError, ValueError), self.sock.makefile("rb") as stream:
            for line in stream:  # chunk sizes between the events' lines: not "data: "
                if line.startswith(b"data: "):
                    with self.changed:
                        self.last = json.loads(line[6:])
                        self.changed.notify_all()

    def wait_for(self, state: str, bound: float = BOUND) -> float:
        """Seconds until the header shows ``state``; fails after ``bound``."""
        start = time.monotonic()
        with self.changed:
            ok = self.changed.wait_for(lambda: self.last.get("state") == state, bound)
        assert ok, f"the header shows {self.last.get('state')!r}, not {state!r}"
        return time.monotonic() - start

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.thread.join(BOUND)
        self.sock.close()


def kiosk_status(data: Path) -> tuple[str, str]:
    """``haven-kiosk status``: the status it prints, and its last sync."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(["status", "--data", str(data)]) == 0
    text = out.getvalue()
    state = re.search(r"^status: (\S+)", text, re.M)
    last = re.search(r"last sync (\S+)", text)
    assert state and last, text
    # printed in UTC with a Z; the staff screen's and sync.db's read +00:00
    return state.group(1), datetime.datetime.fromisoformat(last.group(1)).isoformat()


def wait_until(cond: Callable[[], object], bound: float, what: str) -> float:
    start = time.monotonic()
    while not cond():
        assert time.monotonic() - start < bound, f"not within {bound} s: {what}"
        time.sleep(0.01)
    return time.monotonic() - start


def call(url: str, path: str, body: Any = None, **headers: str) -> dict[str, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data=data, headers={
        "Content-Type": "application/json", "Origin": url, **headers})
    with urllib.request.urlopen(req, timeout=BOUND) as resp:
        return dict(json.loads(resp.read()))


def post_checkin(url: str, passport: str) -> dict[str, Any]:
    return call(url, "/api/checkin", {"passport": passport, "year": 1984, "reason": "sick",
                                      "name": "Amina Status", "consent": True})


def staff_last_sync(url: str) -> str | None:
    """The last sync the staff screen's overview gives."""
    token = call(url, "/api/staff/login", {"pin": PIN})["token"]
    view = call(url, "/api/staff/overview", **{"X-Staff-Token": token})
    last = view["last_sync"]
    return None if last is None else str(last)


@contextlib.contextmanager
def kiosk_on_a_line(tmp: Path) -> Iterator[tuple[Runtime, Line, Header, str]]:
    with served_hub(tmp) as (hub, hub_url):
        kiosk = Kiosk(tmp, "k", hub, "A")
        kiosk.close()
        line = Line(hub_url)
        # The session is kept open with no keepalive within the test: only the link
        # monitor can see the cut, as with a cable pulled between two keepalives.
        cfg = KioskConfig(data=kiosk.store.data, hub=[line.url], ui="127.0.0.1:0",
                          retry_max=0.5, link_interval=0.2, keepalive=120.0,
                          reply_timeout=4.0, staff_pin=PIN, hardware="simulated")
        rt = Runtime(cfg, hardware=hw.Hardware(pin_factory=MockFactory()),
                     link_signals={line.url: line.route})
        try:
            with runtime_in_thread(rt):
                assert rt.address is not None
                url = "http://{}:{}".format(*rt.address)
                header = Header(rt.address)
                try:
                    yield rt, line, header, url
                finally:
                    header.close()
                    line.close()  # first: a round waiting on the line ends, refused
        finally:
            line.close()


def led(rt: Runtime) -> str | None:
    assert rt.hardware is not None
    return str(rt.hardware.led.pattern)


def test_led_header_and_status_follow_each_transition(tmp_path: Path) -> None:
    with kiosk_on_a_line(tmp_path) as (rt, line, header, url):
        data = rt.data
        header.wait_for(SYNCED)
        assert led(rt) == SYNCED
        assert kiosk_status(data)[0] == SYNCED

        # A check-in is pending from the moment it is saved until the hub acknowledges it.
        line.mode = "held"
        post_checkin(url, "PS000001")
        assert led(rt) == PENDING  # at once: before the page has even answered
        header.wait_for(PENDING, 0.5)
        assert kiosk_status(data)[0] == PENDING
        assert led(rt) == PENDING
        line.mode = "up"
        header.wait_for(SYNCED)
        assert led(rt) == SYNCED
        state, first = kiosk_status(data)
        assert state == SYNCED

        # "Last sync" moves on every round that worked, one that moved nothing too,
        # without writing it to the card (sync.db keeps an idle round's time hourly).
        wait_until(lambda: time.time() >= _epoch(first) + 1, 2.0, "the next second")
        seen = rt.live.snapshot()["last_sync"]
        rt.sync_now()
        wait_until(lambda: rt.live.snapshot()["last_sync"] != seen, BOUND, "an idle round")
        state, second = kiosk_status(data)
        assert (state, second > first) == (SYNCED, True), (first, second)
        assert (last_sync_of(data) or "") < second
        assert staff_last_sync(url) == second  # the staff screen's too

        # The line is cut: offline on the LED, the header and status within 2 s.
        line.mode = "cut"
        took = wait_until(lambda: led(rt) == OFFLINE, WITHIN, "the LED offline")
        assert header.wait_for(OFFLINE, WITHIN - took) < WITHIN
        assert kiosk_status(data)[0] == OFFLINE

        # It comes back: a round at once, and everything is synced again.
        wait_until(lambda: time.time() >= _epoch(second) + 1, 2.0, "the next second")
        line.mode = "up"
        header.wait_for(SYNCED, WITHIN)
        assert led(rt) == SYNCED
        state, third = kiosk_status(data)
        assert (state, third > second) == (SYNCED, True), (second, third)

        # Last, the kept-open session loses its link while idle, and a new connection
        # gets no answer (the route stays: only the session knows): offline within 2 s,
        # not once the round that reconnects has given up (a stall of 10 s).
        line.mode = "reset"
        took = wait_until(lambda: led(rt) == OFFLINE, WITHIN, "the LED offline")
        assert header.wait_for(OFFLINE, WITHIN - took) < WITHIN
        assert kiosk_status(data)[0] == OFFLINE


def _epoch(iso: str) -> float:
    import datetime

    return datetime.datetime.fromisoformat(iso).timestamp()


def test_link_monitor_says_when_a_link_goes_down() -> None:
    up = {"a": True, "b": False}
    down: list[str] = []
    back: list[str] = []
    mon = LinkMonitor({u: functools.partial(up.__getitem__, u) for u in up},
                      when_up=back.append, when_down=down.append, min_gap=0.0)
    mon.poll()
    assert (down, back) == (["b"], [])  # the first look: b was never up
    up["a"] = False
    mon.poll()
    mon.poll()
    assert down == ["b", "a"]  # once per fall
    up["a"] = True
    mon.poll()
    assert (down, back) == (["b", "a"], ["a"])
