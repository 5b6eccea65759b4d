"""``haven hub serve``: many kiosk sessions at once, over TCP and serial links.

Theory of operation
-------------------
One thread accepts on each ``--listen`` address and starts one thread per
connection; one thread runs each ``--serial`` port. Every connection runs
its own responder ``Session`` (stream mode on TCP, paced and retransmitted
on serial) and its own ``HubPeer``; they share the store, which serialises
writes behind its lock. A connection's loop writes what the session wants
written, waits for input or the session's next deadline, and feeds what it
read. Whatever a peer sends, the worst outcome is that its session closes:
an exception in one connection is logged and ends that connection only.
"""

from __future__ import annotations

import argparse
import contextlib
import select
import socket
import sys
import threading
import time
from urllib.parse import urlsplit

from host.errors import HavenError, UsageError
from host.hub.document_inbox import DOCUMENTS_DIR, DocumentInbox
from host.hub.hub import Hub, wall_ms
from host.hub.peer import HubPeer
from protocol.framing import FrameDecoder, encode_frame
from protocol.session import frames as session_wire
from protocol.session.core import Session
from protocol.session.events import Closed, Connected, MessageReceived, SessionConfig

IDLE_LIMIT = 60.0  #: a TCP session silent this long is dropped


def session_config(*, stream: bool, rate: float | None = None) -> SessionConfig:
    return SessionConfig(stream=stream, rate=rate, keepalive=5.0, dead_timeout=IDLE_LIMIT,
                         max_message=1 << 20, send_buffer=2 << 20)


class HelloWatch:
    """Spots a kiosk that starts a new handshake while the hub's session is open.

    A kiosk whose sync process died (or gave up on a stalled round) starts
    over with a fresh handshake, which an established responder ignores until
    its dead timeout (a minute on a serial line). The hub looks at the bytes
    its session reads: a valid first handshake message other than the one the
    open session began with means the kiosk started over, and the hub answers
    it at once with a new session. A repeat of the same message changes nothing.
    """

    def __init__(self) -> None:
        self.decoder = FrameDecoder(crc=False, max_payload=1 << 16)
        self.last: bytes | None = None  #: the latest first message seen
        self.current: bytes | None = None  #: the one the open session began with
        self.fresh: bytes | None = None  #: a new first message, not yet handed over

    def feed(self, data: bytes) -> None:
        for frame in self.decoder.feed(data):
            if not frame or frame[0] != session_wire.KIND_HANDSHAKE:
                continue
            body = session_wire.strip_crc(frame)
            if body is None or len(body) < 2 or body[1] != 0:
                continue
            self.last = frame
            if self.current is not None and frame != self.current:
                self.fresh = frame

    def connected(self) -> None:
        self.current, self.fresh = self.last, None

    def take(self) -> bytes | None:
        """The new first message, as bytes for the line, once."""
        fresh, self.fresh, self.current = self.fresh, None, None
        return None if fresh is None else encode_frame(fresh, crc=False)


class Server:
    def __init__(self, hub: Hub, max_ahead_ms: int) -> None:
        self.hub = hub
        self.max_ahead_ms = max_ahead_ms
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        self.sockets: list[socket.socket] = []

    def peer(self, remote: bytes | None) -> HubPeer:
        inbox = DocumentInbox(self.hub.data / DOCUMENTS_DIR, self.hub.store, wall_ms)
        return HubPeer(self.hub.store, self.hub.ed_public, remote, wall_ms, self.max_ahead_ms,
                       documents=inbox)

    def _start(self, target: object, *args: object) -> None:
        t = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        t.start()
        self.threads.append(t)

    def listen(self, url: str) -> tuple[str, int]:
        parts = urlsplit(url)
        if parts.scheme != "tcp" or not parts.hostname or parts.port is None:
            raise UsageError(f"--listen wants tcp://HOST:PORT, not {url!r}")
        srv = socket.create_server((parts.hostname, parts.port), reuse_port=False)
        srv.settimeout(0.2)
        self.sockets.append(srv)
        self._start(self._accept, srv)
        host, port = srv.getsockname()[:2]
        return str(host), int(port)

    def _accept(self, srv: socket.socket) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._start(self._tcp, conn)

    def _tcp(self, conn: socket.socket) -> None:
        conn.setblocking(False)
        session = Session(initiator=False, config=session_config(stream=True),
                          static_key=self.hub.x_key, now=time.monotonic())
        peer: HubPeer | None = None
        try:
            while not self.stop.is_set():
                now = time.monotonic()
                out = session.data_to_send(now)
                if out:
                    conn.setblocking(True)
                    conn.sendall(out)
                    conn.setblocking(False)
                if session.state == "closed":
                    return
                deadline = session.next_deadline()
                wait = 0.2 if deadline is None else max(0.0, min(0.2, deadline - now))
                ready, _, _ = select.select([conn], [], [], wait)
                if ready:
                    data = conn.recv(65536)
                    if not data:
                        return
                    session.receive_data(data, time.monotonic())
                peer = self._events(session, peer)
        except OSError:
            return
        finally:
            with contextlib.suppress(OSError):
                conn.close()

    def _events(self, session: Session, peer: HubPeer | None) -> HubPeer | None:
        while (event := session.next_event()) is not None:
            if isinstance(event, Connected):
                peer = self.peer(event.remote_static)
            elif isinstance(event, MessageReceived) and peer is not None:
                try:
                    replies = peer.on_message(event.data)
                except Exception as exc:  # noqa: BLE001 - one kiosk must not stop the hub
                    self.hub.store.log(None, "internal", f"{type(exc).__name__}: {exc}",
                                       wall_ms())
                    session.close("internal", "the hub failed on this message")
                    return peer
                for lane, data in replies:
                    session.send_message(lane, data)
                if peer.close is not None:
                    session.close(*peer.close)
                    return peer
            elif isinstance(event, Closed):
                return peer
        return peer

    def serial(self, url: str, baud: int | None) -> None:
        self._start(self._serial, url, baud)

    def _serial(self, url: str, baud: int | None) -> None:
        from host.link import Link, LinkOptions, Reset, Runner

        link = Link(url, baud)
        opts = LinkOptions(baud=baud, key=self.hub.x_key, timeout=1e9, reset_after=IDLE_LIMIT)
        runner = Runner(link, opts, initiator=False)
        watch = HelloWatch()
        read = link.read

        def watched_read() -> bytes:
            data = read()
            watch.feed(data)
            return data

        link.read = watched_read  # type: ignore[method-assign]
        peer: HubPeer | None = None
        while not self.stop.is_set():
            try:
                events = runner.poll()
            except HavenError as exc:
                self.hub.store.log(None, "serial", f"{url}: {exc}", wall_ms())
                runner = Runner(link, opts, initiator=False)
                continue
            for event in events:
                if isinstance(event, Reset | Closed):
                    if isinstance(event, Closed):
                        runner._replace(time.monotonic())
                    peer = None
                elif isinstance(event, Connected):
                    watch.connected()
                    peer = self.peer(event.remote_static)
                elif isinstance(event, MessageReceived) and peer is not None:
                    self._serial_message(runner.session, peer, event.data)
            if watch.fresh is not None and peer is not None:
                hello = watch.take()
                self.hub.store.log(None, "serial", f"{url}: the kiosk started over; new session",
                                   wall_ms())
                now = time.monotonic()
                runner._replace(now)
                peer = None
                if hello is not None:
                    runner.session.receive_data(hello, now)

    def _serial_message(self, session: Session, peer: HubPeer, data: bytes) -> None:
        try:
            replies = peer.on_message(data)
        except Exception as exc:  # noqa: BLE001
            self.hub.store.log(None, "internal", f"{type(exc).__name__}: {exc}", wall_ms())
            session.close("internal", "the hub failed on this message")
            return
        for lane, reply in replies:
            session.send_message(lane, reply)
        if peer.close is not None:
            session.close(*peer.close)

    def shutdown(self) -> None:
        self.stop.set()
        for s in self.sockets:
            with contextlib.suppress(OSError):
                s.close()
        for t in self.threads:
            t.join(timeout=1.0)


def serve(args: argparse.Namespace) -> int:
    if not args.listen and not args.serial:
        raise UsageError("give at least one --listen tcp://HOST:PORT or --serial URL")
    with Hub(args.data) as hub:
        server = Server(hub, int(args.max_ahead * 1000))
        for url in args.listen:
            host, port = server.listen(url)
            print(f"listening on tcp://{host}:{port}", flush=True)
        for url in args.serial:
            server.serial(url, args.baud)
            print(f"serving serial {url}", flush=True)
        print(f"hub {hub.x_public.hex()} ready", flush=True)
        try:
            while True:
                time.sleep(0.5)
        except KeyboardInterrupt:
            print("stopping", file=sys.stderr)
        finally:
            server.shutdown()
    return 0
