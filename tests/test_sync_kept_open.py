"""A kiosk's hub session kept open between rounds, over real TCP on 127.0.0.1 and
over a serial line (pty pairs), against the hub's own server loops.

A relay between kiosk and hub counts the connections (each one a new link
and handshake) and the bytes going up, and can hold the hub's answers back
and cut the link, as a NAT or a modem that drops its connection does.
"""

from __future__ import annotations

import contextlib
import os
import random
import select
import selectors
import socket
import sqlite3
import threading
import time
import tty
from collections.abc import Iterator
from pathlib import Path

import pytest

from device.sync.connection import HubConnection
from device.sync.engine import Summary
from host.hub.hub import Hub, init_hub
from host.hub.serve import Server

from .test_sync_helpers import Kiosk, served_hub

pytestmark = pytest.mark.usefixtures("hub_backend")

BOUND = 20.0


class Relay:
    """Forwards 127.0.0.1 connections to ``target``; counts and cuts them."""

    def __init__(self, target: str) -> None:
        host, _, port = target.removeprefix("tcp://").rpartition(":")
        self.target = (host, int(port))
        self.srv = socket.create_server(("127.0.0.1", 0))
        self.url = f"tcp://127.0.0.1:{self.srv.getsockname()[1]}"
        self.connections = 0
        self.up: list[int] = []  #: bytes sent up, per connection
        self.hold = threading.Event()  #: drop what the hub sends down
        self.pairs: list[tuple[socket.socket, socket.socket]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.srv, selectors.EVENT_READ, None)
        while not self.stop.is_set():
            for key, _ in sel.select(0.02):
                if key.data is None:
                    down, _ = self.srv.accept()
                    up = socket.create_connection(self.target)
                    self.connections += 1
                    self.up.append(0)
                    n = len(self.up) - 1
                    self.pairs.append((down, up))
                    sel.register(down, selectors.EVENT_READ, (up, n, True))
                    sel.register(up, selectors.EVENT_READ, (down, n, False))
                    continue
                other, n, going_up = key.data
                src = key.fileobj
                assert isinstance(src, socket.socket)
                try:
                    data = src.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    for s in (src, other):
                        with contextlib.suppress(KeyError, ValueError):
                            sel.unregister(s)
                        s.close()
                    continue
                if going_up:
                    self.up[n] += len(data)
                elif self.hold.is_set():
                    continue
                with contextlib.suppress(OSError):
                    other.sendall(data)
        sel.close()

    def cut(self) -> None:
        """Close every connection (both sides), as a dropped link."""
        for a, b in list(self.pairs):  # not the new ones the cut brings
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(BOUND)
        self.srv.close()


@contextlib.contextmanager
def kiosk_via_relay(tmp: Path) -> Iterator[tuple[Kiosk, Relay, HubConnection, object]]:
    with served_hub(tmp) as (hub, url):
        relay = Relay(url)
        kiosk = Kiosk(tmp, "a", hub, "A")
        conn = HubConnection(relay.url, kiosk.ident, keepalive=120.0)
        try:
            yield kiosk, relay, conn, hub
        finally:
            conn.close()
            kiosk.close()
            relay.close()


def round_(kiosk: Kiosk, conn: HubConnection) -> Summary:
    return conn.round(kiosk.store, kiosk.state, limit=BOUND)


def test_kept_open_session_serves_check_ins_without_a_new_handshake(tmp_path: Path) -> None:
    with kiosk_via_relay(tmp_path) as (kiosk, relay, conn, hub):
        pushed = 0
        for i in range(4):
            kiosk.store.checkin(name=f"P{i}")
            pushed += round_(kiosk, conn).pushed
        assert pushed == 8  # a patient and a check-in each
        assert (relay.connections, conn.handshakes, conn.resumes) == (1, 1, 0)
        assert hub.status()["deltas"] == 8  # type: ignore[attr-defined]


def test_resumed_session_sends_nothing_already_acknowledged(tmp_path: Path) -> None:
    with kiosk_via_relay(tmp_path) as (kiosk, relay, conn, hub):
        round_(kiosk, conn)  # the session is open
        rng = random.Random(7)
        for i in range(60):  # names that do not compress: a batch of tens of KiB
            kiosk.store.checkin(name=rng.randbytes(300).hex(), passport=f"PA{i:06d}")
        relay.hold.set()  # the hub's answers (its ack of the batch) are lost
        result: list[object] = []
        worker = threading.Thread(target=lambda: result.append(round_(kiosk, conn)))
        worker.start()
        end = time.monotonic() + BOUND
        while hub.status()["deltas"] < 120:  # type: ignore[attr-defined]
            assert time.monotonic() < end, "the batch did not reach the hub"
            time.sleep(0.02)
        batch_up = relay.up[0]
        relay.cut()
        relay.hold.clear()
        worker.join(BOUND)
        summary = result[0]
        assert isinstance(summary, Summary) and summary.pushed == 120
        assert (relay.connections, conn.handshakes, conn.resumes) == (2, 1, 1)
        # The batch (tens of KiB) crossed once: the resumed link carried the handshake
        # and the resume, not the batch again.
        assert batch_up > 20_000
        assert relay.up[1] < 2_000, relay.up
        assert hub.status()["deltas"] == 120  # type: ignore[attr-defined]
        assert kiosk.store.status()["outbox"]["lanes"] == {}


class Watch:
    """``store.db`` and ``sync.db`` as another process sees them: ``PRAGMA
    data_version`` on connections of its own (it moves with every commit made by
    another connection), and each WAL file's size and mtime."""

    NAMES = ("store.db", "sync.db")

    def __init__(self, data: Path) -> None:
        self.data = data
        self.dbs = [sqlite3.connect(data / name) for name in self.NAMES]

    def look(self) -> list[tuple[int, int, int]]:
        out = []
        for name, db in zip(self.NAMES, self.dbs, strict=True):
            wal = (self.data / f"{name}-wal").stat()
            out.append((db.execute("PRAGMA data_version").fetchone()[0], wal.st_size,
                        wal.st_mtime_ns))
        return out

    def close(self) -> None:
        for db in self.dbs:
            db.close()


def test_idle_rounds_on_a_kept_open_session_write_nothing(tmp_path: Path) -> None:
    with kiosk_via_relay(tmp_path) as (kiosk, _relay, conn, _hub):
        kiosk.store.checkin(name="Someone")
        assert round_(kiosk, conn).pushed == 2
        kiosk.state.flush(force=True)  # what the round left waiting in memory
        kiosk.store.checkin(name="Someone else")  # takes the acknowledged entries out
        assert round_(kiosk, conn).pushed == 2
        kiosk.state.flush(force=True)
        kiosk.store.checkin(name="A third")
        assert round_(kiosk, conn).pushed == 2
        round_(kiosk, conn)  # the cursor passes our own last batch on the hub
        round_(kiosk, conn)  # the stable point the pull carries follows that cursor
        kiosk.state.flush(force=True)
        watch = Watch(kiosk.store.data)
        now = [0.0]
        kiosk.state.clock = lambda: now[0]  # what waits in memory is due at each round
        try:
            before = watch.look()
            time.sleep(0.01)  # an mtime written now would differ
            for _ in range(3):
                s = round_(kiosk, conn)
                assert (s.pushed, s.pulled) == (0, 0)
                now[0] += 61.0
                kiosk.state.flush()
            assert watch.look() == before
        finally:
            watch.close()


class PtyRelay:
    """Two pty pairs and a thread between their masters: the hub opens one slave, the
    kiosk a symlink to the other. ``cut`` closes the kiosk's pty (its reads fail, as when
    a USB modem is pulled) and puts a new one behind the symlink."""

    def __init__(self, tmp: Path) -> None:
        self.hub_master, self.hub_slave = os.openpty()  # the slave stays open here
        self.hub_path = os.ttyname(self.hub_slave)
        tty.setraw(self.hub_master)
        self.url = str(tmp / "modem")
        self.lock = threading.Lock()
        self.kiosk_master = self._new_kiosk_pty()
        self.up = [0]  #: bytes sent up, per pty the kiosk had
        self.hold = threading.Event()  #: drop what the hub sends down
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _new_kiosk_pty(self) -> int:
        master, slave = os.openpty()
        tty.setraw(master)
        tty.setraw(slave)
        path = Path(self.url)
        path.unlink(missing_ok=True)
        path.symlink_to(os.ttyname(slave))
        os.close(slave)
        return master

    def _run(self) -> None:
        while not self.stop.is_set():
            with self.lock:
                kiosk = self.kiosk_master
            try:
                ready, _, _ = select.select([self.hub_master, kiosk], [], [], 0.02)
            except (OSError, ValueError):
                continue
            for fd in ready:
                try:
                    data = os.read(fd, 65536)
                except OSError:
                    continue
                if fd == kiosk:
                    self.up[-1] += len(data)
                    os.write(self.hub_master, data)
                elif not self.hold.is_set():
                    with contextlib.suppress(OSError):
                        os.write(kiosk, data)

    def cut(self) -> None:
        with self.lock:
            os.close(self.kiosk_master)
            self.kiosk_master = self._new_kiosk_pty()
            self.up.append(0)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(BOUND)
        for fd in (self.kiosk_master, self.hub_master, self.hub_slave):
            with contextlib.suppress(OSError):
                os.close(fd)


def test_resumed_session_on_a_serial_line_sends_nothing_already_acknowledged(
        tmp_path: Path) -> None:
    init_hub(tmp_path / "hub")
    hub = Hub(tmp_path / "hub")
    server = Server(hub, 5 * 60 * 1000)
    relay = PtyRelay(tmp_path)
    server.serial(relay.hub_path, None)
    kiosk = Kiosk(tmp_path, "a", hub, "A")
    # A pty whose other end closed reads as silence: the round takes the line for dead
    # after a second of it (10 s by default).
    conn = HubConnection(relay.url, kiosk.ident, stall=1.0)
    try:
        round_(kiosk, conn)  # the session is open
        rng = random.Random(7)
        # A batch within what the session sends without hearing acknowledgements
        # (16 KiB in flight): all of it reaches the hub while its answers are lost.
        for i in range(25):
            kiosk.store.checkin(name=rng.randbytes(300).hex(), passport=f"PA{i:06d}")
        relay.hold.set()
        result: list[object] = []
        worker = threading.Thread(target=lambda: result.append(round_(kiosk, conn)))
        worker.start()
        end = time.monotonic() + BOUND
        while hub.status()["deltas"] < 50:
            assert time.monotonic() < end, "the batch did not reach the hub"
            time.sleep(0.02)
        batch_up = relay.up[-1]
        relay.cut()
        relay.hold.clear()
        worker.join(BOUND)
        summary = result[0]
        assert isinstance(summary, Summary) and summary.pushed == 50
        # One handshake for a new session; the line was opened again (the kiosk may
        # find the old pty once more while the new one is put in place) and resumed.
        assert conn.handshakes == 1 and conn.resumes >= 1
        assert batch_up > 8_000
        assert relay.up[-1] < 2_000, relay.up
        assert hub.status()["deltas"] == 50
        assert kiosk.store.status()["outbox"]["lanes"] == {}
    finally:
        conn.close()
        kiosk.close()
        server.shutdown()
        relay.close()
        hub.close()
