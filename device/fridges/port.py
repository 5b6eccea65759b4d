"""The fridge nodes' serial lines in the kiosk's runtime: one thread a line.

Theory of operation
-------------------
Each URL of ``fridges`` in the configuration (a serial device or a pyserial
URL) is one line to one node, at ``fridge_baud``. A thread opens it
(``protocol.driver.link.open_link``) and drives its ``FridgeLink`` by the
session's rules: write what it has to send, read until its next deadline
(at most ``TICK`` seconds), hand over what came. A line that fails to open
or breaks is opened again after ``RETRY_S``; the ``FridgeLink`` lives on
(the node's handshake then starts or takes over a session), and the store
holds everything already acknowledged. Which node is on which line does not
matter: its key says which it is.

The runtime shows a fridge alarm on the LED while any node's alarm is raised
(``alarm_raised``); ``on_change`` is called after each alarm is stored, ``on_stored``
after each commit of readings or an alarm (the runtime starts a sync round: an alarm
must not wait for the next one).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from device.fridges.link import COMMIT_EVERY, CONFIG, FridgeLink
from device.fridges.records import Enrolment, FridgeRecords
from protocol.crypto import X25519PrivateKey
from protocol.driver.errors import LinkError
from protocol.driver.link import Link, open_link

log = logging.getLogger("haven.fridges")
TICK = 0.5  #: the longest a line's thread waits without looking at its link
RETRY_S = 5.0  #: a line that failed is opened again after this long


class FridgePort:
    """One line's thread (see the module docstring)."""

    def __init__(self, url: str, baud: int, link: FridgeLink,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.url, self.baud, self.link, self.clock = url, baud, link, clock

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                line = open_link(self.url, self.baud)
            except LinkError as exc:
                log.warning("fridge line %s: %s; trying again in %.0f s", self.url, exc,
                            RETRY_S)
                stop.wait(RETRY_S)
                continue
            try:
                self._serve(line, stop)
            except LinkError as exc:
                log.warning("fridge line %s broke: %s", self.url, exc)
                stop.wait(RETRY_S)
            finally:
                line.close()

    def _serve(self, line: Link, stop: threading.Event) -> None:
        link = self.link
        while not stop.is_set():
            out = link.data_to_send(self.clock())
            if out:
                line.write(out)
            while link.next_event() is not None:
                pass
            deadline = link.next_deadline()
            wait = TICK if deadline is None else min(TICK, max(0.0, deadline - self.clock()))
            data = line.read(wait)
            if data is None:
                raise LinkError("the line closed")
            if data:
                link.receive_data(data, self.clock())


class Fridges:
    """Every configured line, and whether a fridge alarm is raised. ``store`` is the
    kiosk's store; ``wall()`` its Unix time in seconds; ``static_key`` its X25519 key."""

    def __init__(self, store: Any, static_key: X25519PrivateKey, urls: list[str],
                 baud: int, *, wall: Callable[[], float] = time.time,
                 on_change: Callable[[], None] | None = None,
                 on_stored: Callable[[], None] | None = None,
                 commit_every: float = COMMIT_EVERY) -> None:
        self.records = FridgeRecords(store, wall)
        self.commit_every = commit_every
        self.on_change = on_change
        self.on_stored = on_stored
        self.alarm_raised = bool(self.records.raised())
        self.static_key, self.wall = static_key, wall
        self.config = dataclasses.replace(CONFIG, rate=baud / 10)  # 8N1: ten bits a byte
        self.ports = [FridgePort(url, baud, self.link(time.monotonic())) for url in urls]
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def link(self, now: float) -> FridgeLink:
        """A line's end, its alarms shown by this service."""
        return FridgeLink(self.records, self.static_key, config=self.config, clock=self.wall,
                          on_alarm=self._alarm, on_stored=self.on_stored,
                          commit_every=self.commit_every, now=now)

    def start(self) -> None:
        for i, port in enumerate(self.ports):
            thread = threading.Thread(target=port.run, args=(self._stop,),
                                      name=f"fridge-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, bound: float = 5.0) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(bound)

    def _alarm(self, enrolment: Enrolment) -> None:
        self.alarm_raised = bool(self.records.raised())
        if self.on_change is not None:
            self.on_change()
