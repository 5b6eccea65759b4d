"""Many TCP clients of the hub from one process: kiosk sessions, short connections, attackers.

Theory of operation
-------------------
One ``selectors`` loop (epoll on Linux) drives every client socket without
blocking. A kiosk client runs the real initiator ``SessionDriver`` through
its sans-I/O steps (``feed``, ``output``, ``next_deadline``, ``events``):
the Noise handshake with its enrolled key, then the kiosk's ``sync-hello``
(its certificate) and the hub's ``sync-welcome``. It then stays open and
idle, answering whatever the session asks (acks, pongs, its keepalives).

Client sockets are bound to source addresses spread over 127.0.0.0/8, so a
cap per source address on the hub (meant for strangers, not for kiosks
behind one NAT) does not shape the figures, and 100,000 connections do
not run out of ephemeral ports. Short and hostile connections end with a
reset (``SO_LINGER`` 0), so neither end keeps them in TIME_WAIT.

``attack`` (``python -m tools.benchmarks._swarm attack ...``) is a hostile
client in its own process, one core: it connects as fast as it can and
rotates four behaviours: garbage bytes; half a handshake (the first
message, the hub's answer, then gone); a full handshake with an unknown key;
and handshake refreshes (a new first message each time the hub answers, on
one connection, for a few seconds). It stops at a line on its standard input
(or after ``--seconds``) and prints its counts as JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import select
import selectors
import socket
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from protocol import messages
from protocol.driver.session_driver import LinkClosed, SessionDriver, session_config
from protocol.session.events import Closed, Connected, MessageReceived
from protocol.sync import batches

LINGER_RST = struct.pack("ii", 1, 0)
READ = 65536


def source_address(i: int) -> str:
    """The ``i``-th client source address: 127.0.x.y, y in 2..250."""
    return f"127.0.{(i // 249) % 250 + 1}.{i % 249 + 2}"


def connect(host: str, port: int, source: str | None) -> socket.socket:
    """A non-blocking socket connecting to ``host:port`` (from ``source``, if given)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if source is not None:
        sock.setsockopt(socket.IPPROTO_IP, getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24), 1)
        sock.bind((source, 0))
    err = sock.connect_ex((host, port))
    if err not in (0, errno.EINPROGRESS):
        sock.close()
        raise OSError(err, os.strerror(err))
    return sock


def reset(sock: socket.socket) -> None:
    """Close with a reset: nothing kept in TIME_WAIT."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
    sock.close()


def hello(cert: bytes, now_ms: int) -> bytes:
    """A new kiosk's ``sync-hello`` (empty chain, nothing pulled yet)."""
    return messages.encode(messages.make("sync-hello", cert=cert, vv={}, cursor=0, seq=0,
                                         hash=batches.GENESIS, time=now_ms))


@dataclass
class Client:
    """One socket of the swarm; ``on_*`` callbacks decide what it does."""

    sock: socket.socket
    driver: SessionDriver | None = None
    connected: bool = False  #: the TCP connection is up
    out: bytes = b""  #: written when the socket takes it
    state: str = "connecting"
    started: float = 0.0
    until: float = float("inf")  #: when the swarm gives up on it
    data: dict[str, Any] = field(default_factory=dict)


class Swarm:
    """Drives many ``Client``s in one selectors loop."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.sel = selectors.DefaultSelector()
        self.clock = clock
        self.clients: dict[int, Client] = {}
        self.on_event: Callable[[Client, Any], None] = lambda c, e: None
        self.on_connect: Callable[[Client], None] = lambda c: None
        self.on_raw: Callable[[Client, bytes], None] = lambda c, d: None
        self.on_end: Callable[[Client, str], None] = lambda c, why: None
        #: bytes arrived for a client with a session (after they were fed to it)
        self.on_data: Callable[[Client], None] = lambda c: None
        self._last_sweep = 0.0

    def add(self, client: Client) -> Client:
        client.started = self.clock()
        self.clients[client.sock.fileno()] = client
        self.sel.register(client.sock, selectors.EVENT_WRITE, client)
        return client

    def end(self, client: Client, why: str, rst: bool = True) -> None:
        fd = client.sock.fileno()
        if fd < 0 or self.clients.get(fd) is not client:
            return
        del self.clients[fd]
        self.sel.unregister(client.sock)
        if rst:
            reset(client.sock)
        else:
            client.sock.close()
        client.state = "ended"
        self.on_end(client, why)

    def write(self, client: Client, data: bytes) -> None:
        client.out += data
        if client.connected:
            self._flush(client)

    def pump(self, client: Client) -> None:
        """Write what the client's session owes now and hand its events on."""
        d = client.driver
        if d is None:
            return
        now = self.clock()
        out = d.output(now)
        if out:
            self.write(client, out)
        for event in d.events():
            self.on_event(client, event)
            if client.state == "ended":
                return

    def _flush(self, client: Client) -> None:
        if client.out:
            try:
                n = client.sock.send(client.out)
            except BlockingIOError:
                n = 0
            except OSError:
                self.end(client, "send failed")
                return
            client.out = client.out[n:]
        mask = selectors.EVENT_READ | (selectors.EVENT_WRITE if client.out else 0)
        self.sel.modify(client.sock, mask, client)

    def step(self, wait: float) -> None:
        for key, mask in self.sel.select(wait):
            client: Client = key.data
            if client.state == "ended":
                continue
            if not client.connected:
                err = client.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    self.end(client, f"connect: {os.strerror(err)}")
                    continue
                client.connected = True
                self.on_connect(client)
                if client.state == "ended":
                    continue
                self.pump(client)
                if client.state != "ended":
                    self._flush(client)
                continue
            if mask & selectors.EVENT_READ:
                try:
                    data: bytes | None = client.sock.recv(READ) or None
                except BlockingIOError:
                    continue
                except OSError:
                    data = None
                if client.driver is not None:
                    client.driver.feed(data, self.clock())
                    self.pump(client)
                    if data is not None and client.state != "ended":
                        self.on_data(client)
                else:
                    self.on_raw(client, data or b"")
                if data is None and client.state != "ended":
                    self.end(client, "closed by the hub", rst=False)
                    continue
            if mask & selectors.EVENT_WRITE and client.state != "ended":
                self._flush(client)
        self.sweep()

    def sweep(self, every: float = 0.2) -> None:
        """Run the sessions' timers and drop clients past their ``until``."""
        now = self.clock()
        if now - self._last_sweep < every:
            return
        self._last_sweep = now
        for client in list(self.clients.values()):
            if now >= client.until:
                self.end(client, "timeout")
            elif client.driver is not None and client.connected:
                deadline = client.driver.next_deadline()
                if deadline is not None and deadline <= now:
                    self.pump(client)

    def run(self, done: Callable[[], bool], limit: float, wait: float = 0.05) -> bool:
        end = self.clock() + limit
        while not done():
            if self.clock() > end:
                return False
            self.step(wait)
        return True


def kiosk_config(keepalive: float) -> Any:
    """The session settings of a kiosk's kept-open TCP session (``device.sync.engine``)."""
    return session_config(stream=True, keepalive=keepalive, dead_timeout=3 * keepalive,
                          max_message=1 << 20, send_buffer=2 << 20)


class KioskSessions:
    """Enrolled kiosks that connect, say hello, are welcomed and stay open."""

    def __init__(self, swarm: Swarm, host: str, port: int, hub_key: bytes,
                 keepalive: float = 240.0) -> None:
        self.swarm, self.host, self.port, self.hub_key = swarm, host, port, hub_key
        self.config = kiosk_config(keepalive)
        self.welcomed = 0
        self.failed: dict[str, int] = {}
        self.closed_after_welcome: dict[str, int] = {}
        swarm.on_event = self._event
        swarm.on_end = self._end

    def open(self, i: int, x_key: X25519PrivateKey, cert: bytes, limit: float = 60.0) -> Client:
        sock = connect(self.host, self.port, source_address(i))
        driver = SessionDriver(initiator=True, config=self.config, static_key=x_key,
                               remote_static=self.hub_key, clock=self.swarm.clock)
        c = Client(sock, driver, data={"cert": cert})
        c.until = self.swarm.clock() + limit
        return self.swarm.add(c)

    @property
    def pending(self) -> int:
        return sum(1 for c in self.swarm.clients.values() if c.state != "welcomed")

    def _event(self, c: Client, event: Any) -> None:
        if isinstance(event, Connected):
            assert c.driver is not None
            c.state = "hello"
            c.driver.send(0, hello(c.data["cert"], int(time.time() * 1000)))
        elif isinstance(event, MessageReceived):
            msg = messages.decode(event.data)
            if msg.type == batches.WELCOME.number and c.state == "hello":
                c.state = "welcomed"
                c.until = float("inf")
                c.data["welcomed_at"] = self.swarm.clock()
                self.welcomed += 1
        elif isinstance(event, Closed | LinkClosed):
            why = f"closed: {getattr(event, 'reason', 'link')}"
            self.swarm.end(c, why)

    def _end(self, c: Client, why: str) -> None:
        if "welcomed_at" in c.data:
            self.welcomed -= 1
            self.closed_after_welcome[why] = self.closed_after_welcome.get(why, 0) + 1
        else:
            self.failed[why] = self.failed.get(why, 0) + 1


# Short connections -----------------------------------------------------------------------


class ShortConnections:
    """Connections that each end at once, in three kinds taken in turn: connect and
    reset; a few garbage bytes and reset; a first handshake message, the hub's
    answer (or ``wait`` seconds), reset."""

    def __init__(self, swarm: Swarm, host: str, port: int, hub_key: bytes,
                 wait: float = 0.3) -> None:
        self.swarm, self.host, self.port, self.hub_key, self.wait = (swarm, host, port,
                                                                     hub_key, wait)
        self.started = self.ended = self.answered = 0
        self.errors: dict[str, int] = {}
        self.key = X25519PrivateKey.generate()
        self.config = kiosk_config(240.0)
        swarm.on_connect = self._connected
        swarm.on_data = self._data
        swarm.on_end = self._end

    def start(self) -> None:
        i = self.started
        try:
            sock = connect(self.host, self.port, source_address(i))
        except OSError as exc:
            self.errors[str(exc)] = self.errors.get(str(exc), 0) + 1
            self.started += 1
            self.ended += 1
            return
        kind = i % 3
        driver = None
        if kind == 2:
            driver = SessionDriver(initiator=True, config=self.config, static_key=self.key,
                                   remote_static=self.hub_key, clock=self.swarm.clock)
        c = Client(sock, driver, data={"kind": kind})
        c.until = self.swarm.clock() + 10.0
        self.swarm.add(c)
        self.started += 1

    def _connected(self, c: Client) -> None:
        kind = c.data["kind"]
        if kind == 0:
            self.swarm.end(c, "done")
        elif kind == 1:
            with contextlib.suppress(OSError):
                c.sock.send(os.urandom(64))
            self.swarm.end(c, "done")
        else:
            c.until = self.swarm.clock() + self.wait

    def _data(self, c: Client) -> None:
        self.answered += 1
        self.swarm.end(c, "done")

    def _end(self, c: Client, why: str) -> None:
        self.ended += 1
        if why == "timeout" and c.driver is not None:
            return
        if why not in ("done", "closed by the hub"):
            self.errors[why] = self.errors.get(why, 0) + 1

    def run(self, count: int, concurrency: int = 64, limit: float = 3600.0) -> bool:
        """Run until ``count`` connections more have ended."""
        target = self.started + count

        def done() -> bool:
            while self.started < target and self.started - self.ended < concurrency:
                self.start()
            return self.ended >= target

        return self.swarm.run(done, limit, wait=0.01)


# The hostile client ----------------------------------------------------------------------


class Attack:
    """Churns connections as fast as one process can; see the module docstring."""

    KINDS = ("garbage", "half", "full", "refresh")

    def __init__(self, swarm: Swarm, host: str, port: int, hub_key: bytes,
                 sources: int = 1) -> None:
        self.swarm, self.host, self.port, self.hub_key = swarm, host, port, hub_key
        self.sources = sources  #: source addresses the attack comes from, from 127.0.0.2
        self.n = 0
        self.counts = {"connections": 0, "connect_errors": 0, "answers": 0,
                       "handshakes": 0, "refreshes": 0, "closed_by_hub": 0,
                       **{k: 0 for k in self.KINDS}}
        self.keys = [X25519PrivateKey.generate() for _ in range(64)]
        self.config = kiosk_config(240.0)
        swarm.on_connect = self._connected
        swarm.on_event = self._event
        swarm.on_data = self._data
        swarm.on_end = self._end

    def start(self) -> None:
        i = self.n
        self.n += 1
        kind = self.KINDS[i % 4]
        try:
            sock = connect(self.host, self.port, source_address(i % self.sources))
        except OSError:
            self.counts["connect_errors"] += 1
            return
        driver = None
        if kind != "garbage":
            driver = SessionDriver(initiator=True, config=self.config,
                                   static_key=self.keys[i % len(self.keys)],
                                   remote_static=self.hub_key, clock=self.swarm.clock)
        c = Client(sock, driver, data={"kind": kind})
        c.until = self.swarm.clock() + (2.0 if kind == "refresh" else 0.5)
        self.swarm.add(c)

    def _connected(self, c: Client) -> None:
        self.counts["connections"] += 1
        self.counts[c.data["kind"]] += 1
        if c.data["kind"] == "garbage":
            with contextlib.suppress(OSError):
                c.sock.send(os.urandom(256))
            self.swarm.end(c, "done")

    def _event(self, c: Client, event: Any) -> None:
        kind = c.data["kind"]
        if isinstance(event, Connected):
            self.counts["handshakes"] += 1
            if kind == "full":
                self.swarm.end(c, "done")
            elif kind == "refresh":
                assert c.driver is not None
                self.counts["refreshes"] += 1
                c.driver.new_session(self.swarm.clock())
                self.swarm.pump(c)
        elif isinstance(event, Closed | LinkClosed):
            self.swarm.end(c, "closed by the hub")

    def _data(self, c: Client) -> None:
        """The hub answered a first handshake message (it did its key exchange)."""
        if c.data.get("answered"):
            return
        c.data["answered"] = True
        self.counts["answers"] += 1
        if c.data["kind"] == "half":
            self.swarm.end(c, "done")

    def _end(self, c: Client, why: str) -> None:
        if why == "closed by the hub":
            self.counts["closed_by_hub"] += 1

    def run(self, seconds: float, concurrency: int,
            stop: Callable[[], bool] = lambda: False) -> dict[str, Any]:
        """Attack for ``seconds`` at most, or until ``stop()`` (asked twice a second)."""
        t0 = self.swarm.clock()
        cpu0 = time.process_time()
        end = t0 + seconds
        asked = t0
        while self.swarm.clock() < end:
            while len(self.swarm.clients) < concurrency:
                self.start()
            self.swarm.step(0.005)
            if self.swarm.clock() - asked > 0.5:
                asked = self.swarm.clock()
                if stop():
                    break
        for c in list(self.swarm.clients.values()):
            self.swarm.end(c, "done")
        return {**self.counts, "seconds": self.swarm.clock() - t0,
                "cpu_seconds": time.process_time() - cpu0}


def _attack_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="_swarm attack")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--hub-key", required=True)
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--concurrency", type=int, default=500)
    p.add_argument("--sources", type=int, default=1)
    a = p.parse_args(argv)
    attack = Attack(Swarm(), a.host, a.port, bytes.fromhex(a.hub_key), a.sources)

    def stop() -> bool:  # a line (or the end) on standard input
        return bool(select.select([sys.stdin], [], [], 0)[0])

    print("ready", flush=True)
    print(json.dumps(attack.run(a.seconds, a.concurrency, stop)), flush=True)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["attack"]:
        sys.exit(_attack_main(sys.argv[2:]))
    sys.exit("usage: python -m tools.benchmarks._swarm attack --port P --hub-key HEX "
             "--seconds S")
