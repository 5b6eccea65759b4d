"""The hub server under hostile load: descriptors run out and come back, more than
1,024 connections, 20,000 short connections leave nothing behind, handshakes that
restart for ever, a peer that never reads, the per-address and key-exchange caps,
revocation of an open session, and changes pushed to a kept-open session.

Real TCP on 127.0.0.1, a real hub directory, the real ``haven hub serve`` where
the process's descriptor limit matters; deadlines and caps are set short.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from host.cli import main as haven_main
from host.hub import listener as listener_module
from host.hub.admission import HandshakeBudget, KnownAddresses
from host.hub.health import read_health
from host.hub.hub import Hub, init_hub
from host.hub.limits import Limits
from host.hub.serve import Server, ServerFailed
from host.hub.storage import Op
from protocol import messages
from protocol.driver.link import TcpLink, open_link
from protocol.driver.session_driver import DriverEvent, LinkClosed, SessionDriver, session_config
from protocol.session.events import Closed, MessageReceived
from protocol.sync.batches import NOTIFY
from tests.conftest import require
from tests.test_sync_helpers import Kiosk

pytestmark = pytest.mark.usefixtures("hub_backend")

ROOT = Path(__file__).resolve().parent.parent
BOUND = 20.0


def wait_for(what: Callable[[], Any], limit: float = BOUND, step: float = 0.02) -> Any:
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if got := what():
            return got
        time.sleep(step)
    raise AssertionError(f"not within {limit} s")


# -- a hub in a process of its own, with its own descriptor limit ------------------


class HubProcess:
    def __init__(self, tmp: Path, *flags: str, nofile: int | None = None) -> None:
        self.dir = tmp / "hub"
        init_hub(self.dir)
        with Hub(self.dir) as hub:
            self.kiosk = Kiosk(tmp, "k", hub, "A")

        def limit() -> None:
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "host.cli", "hub", "serve", "--data", str(self.dir),
             "--listen", "tcp://127.0.0.1:0", *flags],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=limit)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        assert line.startswith("listening on tcp://"), (line, self.proc.stderr)
        self.url = line.split()[-1]
        host, port = self.url.removeprefix("tcp://").rsplit(":", 1)
        self.address = (host, int(port))
        wait_for(lambda: read_health(self.dir))

    def health(self) -> dict[str, Any]:
        report = wait_for(lambda: read_health(self.dir))
        assert isinstance(report, dict)
        return report

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def close(self) -> None:
        self.kiosk.close()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def hub_process(tmp_path: Path) -> Iterator[Callable[..., HubProcess]]:
    made: list[HubProcess] = []

    def make(*flags: str, nofile: int | None = None) -> HubProcess:
        made.append(HubProcess(tmp_path, *flags, nofile=nofile))
        return made[-1]

    yield make
    for h in made:
        h.close()


@contextlib.contextmanager
def open_sockets(address: tuple[str, int], n: int) -> Iterator[list[socket.socket]]:
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.settimeout(5.0)
            s.connect(address)
            socks.append(s)
        yield socks
    finally:
        for s in socks:
            s.close()


@contextlib.contextmanager
def descriptor_limit(n: int) -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    room = hard
    if hard != resource.RLIM_INFINITY and hard < n:
        with contextlib.suppress(ValueError, OSError):  # root may raise the hard limit
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, n))
            room = n
        require(room >= n, "descriptors", f"the hard descriptor limit is {hard}, below {n}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, n), room))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_descriptor_exhaustion_is_survived_and_seen(hub_process: Callable[..., HubProcess]
                                                   ) -> None:
    hub = hub_process("--fd-reserve", "0", "--max-unauthenticated-per-address", "1000",
                      "--log-interval", "0.1", nofile=128)
    with open_sockets(hub.address, 200):
        time.sleep(0.5)  # the hub takes what its descriptors allow, then backs off
        assert hub.proc.poll() is None
    # Descriptors come back: the hub accepts again and a kiosk syncs.
    hub.kiosk.store.checkin(name="Ada", passport="P1234567")
    summary = hub.kiosk.sync(hub.url)
    assert summary.pushed >= 1
    report = hub.health()
    assert report["refusals"].get("descriptors", 0) >= 1, report
    assert report["descriptors"]["limit"] == 128
    with Hub(hub.dir) as h:
        codes = [e["code"] for e in h.store.events(200)]
    assert "descriptors" in codes  # the burst was logged (once, and once more at its end)
    assert codes.count("descriptors") <= 4


def test_more_than_1024_descriptors(hub_process: Callable[..., HubProcess]) -> None:
    with descriptor_limit(2400):
        hub = hub_process("--max-unauthenticated-per-address", "2000",
                          "--handshake-deadline", "60", nofile=2400)
        with open_sockets(hub.address, 1100):
            wait_for(lambda: hub.health()["connections"]["total"] >= 1100)
            hub.kiosk.store.checkin(name="Ada", passport="P1234567")
            assert hub.kiosk.sync(hub.url).pushed >= 1
            report = hub.health()
            assert report["descriptors"]["in_use"] > 1100
    wait_for(lambda: hub.health()["connections"]["total"] == 0)


def test_short_connections_leave_nothing_behind(hub_process: Callable[..., HubProcess]
                                               ) -> None:
    hub = hub_process()
    rss: list[int] = []
    batch, total = 500, 20_000
    for done in range(batch, total + 1, batch):
        for _ in range(batch):
            s = socket.socket()
            s.connect(hub.address)
            s.close()
        # The listen backlog holds 1,024: keep within it so no connect waits on a SYN
        # retransmission.
        wait_for(lambda d=done: hub.health()["connections"]["accepted"] >= d - 200, 10, 0.005)  # type: ignore[misc]
        if done in (2_000, total):
            wait_for(lambda: hub.health()["connections"]["total"] == 0)
            rss.append(hub.rss_kib())
    report = hub.health()
    assert report["connections"]["accepted"] == total
    assert report["connections"]["total"] == 0 and report["connections"]["resumable"] == 0
    assert report["connections"]["unauthenticated_addresses"] == 0
    assert rss[1] - rss[0] < 4096, rss  # KiB


# -- an in-process hub, with its limits set short ------------------------------------


class Served:
    def __init__(self, tmp: Path, limits: Limits) -> None:
        init_hub(tmp / "hub")
        self.hub = Hub(tmp / "hub")
        self.server = Server(self.hub, 5 * 60 * 1000, limits)
        host, port = self.server.listen("tcp://127.0.0.1:0")
        self.url = f"tcp://{host}:{port}"
        self.address = (host, port)

    def health(self) -> dict[str, Any]:
        report = read_health(self.hub.data)
        assert report is not None
        return report

    def close(self) -> None:
        self.server.shutdown()
        self.hub.close()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Callable[..., Served]]:
    made: list[Served] = []

    def make(**limits: Any) -> Served:
        made.append(Served(tmp_path, Limits(**limits)))
        return made[-1]

    yield make
    for s in made:
        s.close()


def initiator(key: X25519PrivateKey | None = None, link: Any = None) -> SessionDriver:
    return SessionDriver(initiator=True, config=session_config(stream=True, keepalive=30.0),
                         static_key=key or X25519PrivateKey.generate(), link=link)


def pump(drivers: list[SessionDriver], until: Callable[[], bool], limit: float
         ) -> list[list[DriverEvent]]:
    got: list[list[DriverEvent]] = [[] for _ in drivers]
    end = time.monotonic() + limit
    while time.monotonic() < end and not until():
        for d, events in zip(drivers, got, strict=True):
            if d.link is not None:
                with contextlib.suppress(Exception):
                    events += d.poll(0.005)
    return got


def test_a_restarted_handshake_does_not_buy_time(served: Callable[..., Served]) -> None:
    hub = served(handshake_deadline=1.5)
    sock = socket.create_connection(hub.address)
    sock.settimeout(0.05)
    start = time.monotonic()
    closed_at = None
    try:
        while time.monotonic() - start < 6.0:
            fresh = initiator()  # a new ephemeral key: the hub must start over
            with contextlib.suppress(OSError):
                sock.sendall(fresh.output(time.monotonic()))
            end = time.monotonic() + 0.5
            while time.monotonic() < end:
                try:
                    if sock.recv(65536) == b"":
                        closed_at = time.monotonic()
                        break
                except TimeoutError:
                    continue
                except OSError:
                    closed_at = time.monotonic()
                    break
            if closed_at is not None:
                break
    finally:
        sock.close()
    assert closed_at is not None, "the hub kept a peer that never authenticated"
    assert 1.3 < closed_at - start < 3.0
    assert hub.health()["refusals"].get("handshake-deadline") == 1


def hello(kiosk: Kiosk) -> bytes:
    return messages.encode(messages.make("sync-hello", cert=kiosk.cert, vv={}, cursor=0, seq=0,
                                         hash=b"\x00" * 32, time=int(time.time() * 1000)))


def open_kiosk(url: str, kiosk: Kiosk) -> tuple[SessionDriver, list[DriverEvent]]:
    """A kiosk's session, welcomed; returns its driver and the events so far."""
    d = initiator(kiosk.ident.x_key, open_link(url))
    got = pump([d], lambda: d.connected, 5.0)[0]
    assert d.connected
    d.send(0, hello(kiosk))
    end = time.monotonic() + 5.0
    while not any(isinstance(e, MessageReceived) for e in got):  # the welcome
        assert time.monotonic() < end, got
        got += d.poll(0.005)
    return d, got


def test_a_peer_that_never_reads_is_dropped(served: Callable[..., Served],
                                            tmp_path: Path) -> None:
    hub = served(output_cap=128 * 1024)
    kiosk = Kiosk(tmp_path, "k", hub.hub, "A")
    for i in range(100):  # 1.2 MB of another node's deltas to pull
        hub.hub.store.add_local(Op(os.urandom(16), i + 1, 7, os.urandom(12_000)))
    d, _ = open_kiosk(hub.url, kiosk)
    assert isinstance(d.link, TcpLink)
    d.link.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    # From now on the kiosk reads nothing and asks for everything, again and again.
    for _ in range(8):
        d.send(0, messages.encode(messages.make("sync-pull", cursor=0)))
    with contextlib.suppress(OSError):
        d.link.sock.setblocking(True)
        d.link.sock.sendall(d.output(time.monotonic()))
    wait_for(lambda: hub.health()["refusals"].get("output-cap", 0) >= 1, 10)
    wait_for(lambda: hub.health()["connections"]["total"] == 0, 5)
    d.link.close()
    kiosk.close()


def test_unauthenticated_connections_are_capped_per_address(served: Callable[..., Served]
                                                            ) -> None:
    hub = served(max_unauthenticated_per_address=3)
    # Authenticated sessions from the same address do not count.
    kiosks: list[SessionDriver] = []
    for _ in range(4):
        kiosks.append(initiator(link=open_link(hub.url)))
        pump(kiosks, lambda: all(k.connected for k in kiosks), 5.0)
    pump(kiosks, lambda: False, 0.3)  # an XX initiator's last message leaves on its next turn
    assert all(k.connected for k in kiosks)
    with open_sockets(hub.address, 5):
        wait_for(lambda: hub.health()["refusals"].get("address-cap") == 2, 5)
        conns = hub.health()["connections"]["tcp"]
        assert conns["handshaking"] == 3 and conns["authenticated"] == 4
    wait_for(lambda: hub.health()["connections"]["tcp"]["handshaking"] == 0, 5)
    # Room again for a new one.
    late = initiator(link=open_link(hub.url))
    pump([late, *kiosks], lambda: late.connected, 5.0)
    assert late.connected and all(k.connected for k in kiosks)
    for k in [late, *kiosks]:
        assert k.link is not None
        k.link.close()


def test_key_exchanges_are_rationed(served: Callable[..., Served]) -> None:
    hub = served(handshake_rate=3.0, handshake_burst=2)
    kiosks = [initiator(link=open_link(hub.url)) for _ in range(6)]
    pump(kiosks, lambda: False, 0.4)
    assert sum(k.connected for k in kiosks) <= 3
    pump(kiosks, lambda: all(k.connected for k in kiosks), 12.0)
    assert all(k.connected for k in kiosks)  # the dropped ones retried and got in
    assert hub.health()["refusals"].get("handshake-rate", 0) >= 3
    # Logged once for the interval (60 s), however many were dropped.
    rows = wait_for(lambda: [e for e in hub.hub.store.events(100) if e["code"] == "refused"
                             and e["detail"].startswith("handshake-rate")], 5)
    time.sleep(0.2)
    assert len(rows) == 1, rows
    for k in kiosks:
        assert k.link is not None
        k.link.close()


# -- a fair key-exchange budget --------------------------------------------------------


def from_address(url: str, source: str) -> TcpLink:
    """A TCP link to the hub from the source address ``source`` (127.0.0.0/8)."""
    host, port = url.removeprefix("tcp://").rsplit(":", 1)
    return TcpLink(socket.create_connection((host, int(port)), 5.0, (source, 0)), url)


def answered(address: tuple[str, int], source: str, wait: float = 0.4) -> bool:
    """A stranger's first handshake message from ``source``: did the hub answer it?"""
    with socket.create_connection(address, 5.0, (source, 0)) as sock:
        sock.settimeout(wait)
        sock.sendall(initiator().output(time.monotonic()))
        got = b""
        with contextlib.suppress(TimeoutError):
            while not got.strip(b"\0") and (more := sock.recv(65536)):
                got += more  # a lone delimiter is no answer
        return bool(got.strip(b"\0"))


def drain_general(hub: Served, first: int = 2) -> None:
    """Strangers, each from an address of its own, empty the general bucket."""
    refused = hub.health()["refusals"].get("handshake-rate", 0)
    for i in range(first, first + 40):
        if not answered(hub.address, f"127.0.3.{i}"):
            break
    assert hub.health()["refusals"].get("handshake-rate", 0) == refused + 1


def connect_time(d: SessionDriver, limit: float) -> float:
    start = time.monotonic()
    pump([d], lambda: d.connected, limit)
    return time.monotonic() - start


# The budgets never refill within a test: what is spent stays spent.
SCARCE = {"handshake_rate": 1e-4, "handshake_burst": 3, "handshake_reserved_rate": 1e-4,
          "handshake_reserved_burst": 3}


def test_strangers_cannot_starve_a_kiosk_seen_before(served: Callable[..., Served],
                                                     tmp_path: Path) -> None:
    hub = served(**SCARCE)
    kiosk = Kiosk(tmp_path, "k", hub.hub, "A")
    d, _ = open_kiosk(hub.url, kiosk)  # from 127.0.0.1: its hello is accepted
    assert d.link is not None
    d.link.close()
    drain_general(hub)  # strangers from many addresses take what the general bucket has
    assert hub.health()["handshakes"]["general_tokens"] < 1
    # The kiosk comes back (a new connection, a new key exchange): in at once.
    again = initiator(kiosk.ident.x_key, open_link(hub.url))
    took = connect_time(again, 3.0)
    assert again.connected and took < 0.5, took
    report = hub.health()
    assert report["refusals"].get("handshake-rate") == 1, report["refusals"]
    assert report["handshakes"]["admitted_reserved"] == 1
    # Strangers are still turned away, from a new address too.
    assert not answered(hub.address, "127.0.4.1")
    assert again.link is not None
    again.link.close()
    kiosk.close()


def test_a_stranger_cannot_make_its_address_known(served: Callable[..., Served],
                                                  tmp_path: Path) -> None:
    hub = served(**SCARCE)
    kiosk = Kiosk(tmp_path, "k", hub.hub, "A")
    revoked = Kiosk(tmp_path, "r", hub.hub, "B")
    hub.hub.revoke(revoked.device)
    # A stranger authenticates with a key of its own and shows a real kiosk's certificate;
    # a revoked kiosk shows its own; another stranger authenticates and says nothing.
    tries = [("127.0.5.1", X25519PrivateKey.generate(), kiosk),
             ("127.0.5.2", revoked.ident.x_key, revoked), ("127.0.5.3", None, None)]
    for source, key, shown in tries:
        d = initiator(key, from_address(hub.url, source))
        pump([d], lambda d=d: d.connected, 5.0)  # type: ignore[misc]
        assert d.connected
        if shown is not None:
            d.send(0, hello(shown))
            got = pump([d], lambda d=d: d.closed or d.link is None, 5.0)[0]  # type: ignore[misc]
            assert [e.reason for e in got if isinstance(e, Closed)] in (
                ["wrong-certificate"], ["revoked"]), got
        else:
            pump([d], lambda: False, 0.3)
        if d.link is not None:
            d.link.close()
    wait_for(lambda: hub.health()["connections"]["total"] == 0, 5)
    assert hub.health()["handshakes"]["known_addresses"] == 0
    # The general bucket is empty now: none of them gets the reserved one.
    drain_general(hub)
    for source, _, _ in tries:
        assert not answered(hub.address, source)
    assert hub.health()["handshakes"]["admitted_reserved"] == 0
    kiosk.close()
    revoked.close()


def test_known_addresses_stay_bounded(served: Callable[..., Served], tmp_path: Path) -> None:
    hub = served(known_addresses=2, **SCARCE)
    kiosks = [Kiosk(tmp_path, f"k{i}", hub.hub, "ABC"[i]) for i in range(3)]
    for i, kiosk in enumerate(kiosks):  # each from an address of its own
        d = initiator(kiosk.ident.x_key, from_address(hub.url, f"127.0.6.{i + 1}"))
        pump([d], lambda d=d: d.connected, 5.0)  # type: ignore[misc]
        d.send(0, hello(kiosk))
        got = pump([d], lambda: False, 0.3)[0]
        assert any(isinstance(e, MessageReceived) for e in got), got  # welcomed
        assert d.link is not None
        d.link.close()
    wait_for(lambda: hub.health()["connections"]["total"] == 0, 5)
    assert hub.health()["handshakes"]["known_addresses"] == 2
    drain_general(hub)
    # The first kiosk's address was forgotten (least recently seen): a stranger's now.
    assert not answered(hub.address, "127.0.6.1")
    assert answered(hub.address, "127.0.6.3")
    for kiosk in kiosks:
        kiosk.close()


def test_a_stranger_cycling_its_key_writes_nothing(served: Callable[..., Served],
                                                   tmp_path: Path) -> None:
    """A key that never made an accepted hello, used on connection after connection (and
    handshake after handshake on one), leaves no row in the log; a kiosk's does."""
    hub = served(log_interval=60.0)
    key = X25519PrivateKey.generate()
    held: list[SessionDriver] = []
    for _ in range(4):
        d = initiator(key, open_link(hub.url))
        pump([d, *held], lambda d=d: d.connected, 5.0)  # type: ignore[misc]
        assert d.connected
        held.append(d)
        d.new_session(time.monotonic())  # and a fresh handshake on the same connection
        pump([d], lambda d=d: d.connected, 5.0)  # type: ignore[misc]
        assert d.connected
    pump(held, lambda: False, 0.3)  # what the hub would log is written by now
    assert not [e for e in hub.hub.store.events(100) if e["code"] in ("superseded", "takeover")]
    kiosk = Kiosk(tmp_path, "k", hub.hub, "A")
    first, _ = open_kiosk(hub.url, kiosk)
    second, _ = open_kiosk(hub.url, kiosk)  # the first is superseded
    codes = wait_for(lambda: [e["code"] for e in hub.hub.store.events(100)
                              if e["code"] in ("superseded", "takeover")], 5)
    time.sleep(0.2)
    assert codes == ["superseded"], codes
    for d in [*held, first, second]:
        if d.link is not None:
            d.link.close()
    kiosk.close()


def test_the_budget_shares_and_forgets() -> None:
    """One address cannot take the whole general bucket, a known one (a NAT that an
    attacker shares with kiosks) not the whole reserved one; addresses are forgotten
    by age, and per-address shares once whole again."""
    budget = HandshakeBudget(rate=1.0, burst=10, reserved_rate=1.0, reserved_burst=10,
                             address_rate=1.0, address_burst=3, known_size=4,
                             known_age=100.0, now=0.0)
    assert [budget.admit("10.0.0.1", 0.0) for _ in range(4)] == [None] * 3 + [
        "handshake-address"]
    assert budget.admit("10.0.0.2", 0.0) is None  # another address: its own share
    budget.kiosk_seen("10.0.0.9", 0.0)
    assert [budget.admit("10.0.0.9", 0.0) for _ in range(4)] == [None] * 3 + [
        "handshake-address"]
    assert budget.admitted == {"reserved": 3, "general": 4}
    assert budget.reserved.tokens == 7
    # IPv6 addresses count by their /64, IPv4-mapped ones as IPv4.
    for i in range(3):
        assert budget.admit(f"2001:db8::{i + 1}", 0.0) is None
    assert budget.admit("2001:db8::ffff:1", 0.0) == "handshake-address"
    assert budget.admit("::ffff:10.0.0.1", 0.0) == "handshake-address"
    assert budget.known.known("10.0.0.9", 99.0)
    assert not budget.known.known("10.0.0.9", 100.0)
    assert len(budget.shares) == 4
    assert budget.admit("10.0.0.3", 3.0) is None
    assert list(budget.shares) == ["10.0.0.3"]  # the others are whole again: forgotten
    known = KnownAddresses(3, 10.0)
    for i in range(1000):
        known.add(f"10.1.{i // 250}.{i % 250}", i * 0.001)
    assert len(known) == 3 and known.known("10.1.3.249", 1.0)


def test_revocation_ends_an_open_session_within_a_second(served: Callable[..., Served],
                                                         tmp_path: Path) -> None:
    hub = served()
    kiosk = Kiosk(tmp_path, "k", hub.hub, "A")
    d, _ = open_kiosk(hub.url, kiosk)
    other = Hub(hub.hub.data)  # as `haven hub revoke` would: another connection
    try:
        other.revoke(kiosk.device)
        revoked_at = time.monotonic()
    finally:
        other.close()
    got = pump([d], lambda: d.closed or d.link is None, 3.0)[0]
    ended = time.monotonic() - revoked_at
    closes = [e for e in got if isinstance(e, Closed)]
    assert closes and closes[0].reason == "revoked", got
    assert ended <= 1.0, ended
    assert hub.health()["refusals"].get("revoked") == 1
    if d.link is not None:
        d.link.close()
    # The next session is refused at its hello.
    again = initiator(kiosk.ident.x_key, open_link(hub.url))
    pump([again], lambda: again.connected, 5.0)
    again.send(0, hello(kiosk))
    got = pump([again], lambda: again.closed or again.link is None, 5.0)[0]
    assert [e.reason for e in got if isinstance(e, Closed)] == ["revoked"]
    if again.link is not None:
        again.link.close()
    kiosk.close()


def test_a_kept_open_session_is_told_of_changes(served: Callable[..., Served],
                                                tmp_path: Path) -> None:
    hub = served(watch_interval=0.05)
    a = Kiosk(tmp_path, "a", hub.hub, "A")
    b = Kiosk(tmp_path, "b", hub.hub, "B")
    d, _ = open_kiosk(hub.url, a)
    got = pump([d], lambda: False, 0.5)[0]
    notify = NOTIFY.number
    assert not [e for e in got if isinstance(e, MessageReceived)
                and messages.decode(e.data).type == notify]
    b.store.checkin(name="Bob", passport="P2345678")
    assert b.sync(hub.url).pushed >= 1
    heard: list[DriverEvent] = []
    end = time.monotonic() + 3.0
    while not any(isinstance(e, MessageReceived) and messages.decode(e.data).type == notify
                  for e in heard) and time.monotonic() < end:
        heard += d.poll(0.005)
    notes = [messages.decode(e.data) for e in heard if isinstance(e, MessageReceived)
             and messages.decode(e.data).type == notify]
    assert len(notes) == 1 and notes[0].get("cursor") == hub.hub.store.head()
    assert not any(isinstance(e, LinkClosed | Closed) for e in heard)
    # One unanswered notify at most: another change does not send another.
    b.store.checkin(name="Bo", passport="P3456789")
    assert b.sync(hub.url).pushed >= 1
    more = pump([d], lambda: False, 0.5)[0]
    assert not [e for e in more if isinstance(e, MessageReceived)
                and messages.decode(e.data).type == notify]
    assert d.link is not None
    d.link.close()
    a.close()
    b.close()


def test_status_shows_the_running_server(served: Callable[..., Served],
                                         capsys: pytest.CaptureFixture[str]) -> None:
    hub = served()
    with open_sockets(hub.address, 2):
        wait_for(lambda: hub.health()["connections"]["tcp"]["handshaking"] == 2, 5)
        capsys.readouterr()
        assert haven_main(["hub", "status", "--data", str(hub.hub.data), "--json"]) == 0
        server = json.loads(capsys.readouterr().out)["server"]
        assert server["connections"]["tcp"]["handshaking"] == 2
        assert server["descriptors"]["in_use"] > 2 and server["workers"]["size"] == 4
        assert haven_main(["hub", "status", "--data", str(hub.hub.data)]) == 0
        assert "server: 2 connections" in capsys.readouterr().out
    hub.server.shutdown()
    assert haven_main(["hub", "status", "--data", str(hub.hub.data), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["server"] is None and "no haven hub serve" in status["server_note"]


def test_a_silent_session_ends_at_the_idle_limit(served: Callable[..., Served]) -> None:
    hub = served(idle_limit=0.6)
    quiet = initiator(link=open_link(hub.url))  # its keepalive is 30 s: silent here
    pump([quiet], lambda: quiet.connected, 5.0)
    pump([quiet], lambda: False, 0.1)
    start = time.monotonic()
    got = pump([quiet], lambda: quiet.link is None or quiet.closed, 5.0)[0]
    assert quiet.link is None or quiet.closed, got
    assert 0.3 < time.monotonic() - start < 2.0
    wait_for(lambda: hub.health()["refusals"].get("idle") == 1, 2)
    if quiet.link is not None:
        quiet.link.close()


def test_a_broken_listener_is_opened_again(served: Callable[..., Served]) -> None:
    hub = served()
    listener = hub.server.listeners[0]
    assert listener.sock is not None
    old = listener.sock
    old.shutdown(socket.SHUT_RDWR)  # accept now fails with EINVAL: the socket is broken
    wait_for(lambda: listener.sock is not old and listener.sock is not None, 5)
    k = initiator(link=open_link(hub.url))  # the same address serves again
    pump([k], lambda: k.connected, 5.0)
    assert k.connected and hub.server.failure is None
    assert any(e["code"] == "listener" for e in hub.hub.store.events(20))
    assert k.link is not None
    k.link.close()


def test_a_listener_that_will_not_open_again_stops_the_server(
        served: Callable[..., Served], monkeypatch: pytest.MonkeyPatch) -> None:
    """The process then exits non-zero (``ServerFailed``), for systemd to restart it."""
    hub = served(listener_retries=2)

    def no_address(host: str, port: int, reuse_port: bool = False) -> socket.socket:
        raise OSError(errno.EADDRNOTAVAIL, "the address went away")

    monkeypatch.setattr(listener_module, "bind", no_address)
    listener = hub.server.listeners[0]
    assert listener.sock is not None
    listener.sock.shutdown(socket.SHUT_RDWR)
    assert hub.server.stopped.wait(60), "the server went on without its listener"
    with pytest.raises(ServerFailed, match="cannot listen on"):
        hub.server.wait()
