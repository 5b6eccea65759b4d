"""``haven hub serve``: many kiosk sessions at once, over TCP and serial links.

Theory of operation
-------------------
One thread accepts on each ``--listen`` address and starts one thread per
connection; one thread runs each ``--serial`` port. Each link runs its own
responder ``SessionDriver`` (``protocol.driver``: stream mode on TCP, paced
and retransmitted on serial) and a ``Connection``, which gives every
session that connects (every ``Connected``) a new ``HubPeer``; they share
the store, which serialises writes behind its lock. Whatever a peer sends,
the worst outcome is that its session closes: an exception in one
connection is logged and ends that connection only.

A serial line outlives its sessions: the driver answers the next handshake
with a fresh session once one ends, and a kiosk that starts over while the
hub's session is still open (its process died, or it gave up on a stalled
round) is taken over by the session itself once its new handshake proves the
same key (SPEC.md, "A new handshake on an open session").

A TCP connection carries one session at a time. A kiosk whose NAT dropped
its connection without a word connects again at once; when the new session
authenticates with the same static key, the hub closes the older connection
it still holds for that key (``Server.claim``). A kiosk keeps its session
open between rounds and resumes it on a new connection: the hub remembers
each key's last session and its ``HubPeer`` (``Server.keep``), so the
resumed session goes on where it was and its conversation with it.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from host.errors import UsageError
from host.hub.document_inbox import DOCUMENTS_DIR, DocumentInbox
from host.hub.hub import Hub
from host.hub.peer import HubPeer
from protocol.driver.errors import LinkError
from protocol.driver.link import Link, TcpLink, open_link
from protocol.driver.session_driver import (
    DriverEvent,
    LinkClosed,
    Restarted,
    SessionDriver,
    session_config,
)
from protocol.driver.wall_clock import wall_ms
from protocol.session.core import Session
from protocol.session.events import Closed, Connected, MessageReceived

#: (keepalive, dead timeout) in seconds. A serial line is the hub's own: pings are
#: free and a restarted kiosk is spotted soon. A TCP session is kept open by the kiosk
#: between rounds over a metered cellular link, so pings come minutes apart (a NAT
#: forgets a flow after a few minutes of silence) and a silent session lasts three.
SERIAL_LIVENESS = (5.0, 60.0)
TCP_LIVENESS = (120.0, 360.0)
POLL = 0.2  #: longest wait in one turn of a connection's loop (how soon it sees a stop)


class Connection:
    """One link's sessions, and the ``HubPeer`` of the one that is connected."""

    def __init__(self, server: Server, driver: SessionDriver, url: str,
                 exclusive: bool = False) -> None:
        self.server, self.driver, self.url = server, driver, url
        self.exclusive = exclusive  #: one connection per kiosk key (TCP)
        self.peer: HubPeer | None = None
        self.remote: bytes | None = None
        self.superseded = threading.Event()  #: a newer connection holds this kiosk's key

    def handle(self, events: list[DriverEvent]) -> None:
        for event in events:
            if isinstance(event, Connected):
                if self.peer is not None and not event.resumed:
                    self.server.log("takeover", f"{self.url}: the kiosk started over; "
                                    "its new session replaces the open one")
                self.remote = event.remote_static
                kept = self.server.resumed_peer(event) if event.resumed else None
                self.peer = kept or self.server.peer(event.remote_static)
                self.server.keep(event, self.driver.session, self.peer)
                if self.exclusive:
                    self.server.claim(self)
            elif isinstance(event, MessageReceived) and self.peer is not None:
                self._message(self.peer, event.data)
            elif isinstance(event, Closed | Restarted | LinkClosed):
                self.peer = None

    def _message(self, peer: HubPeer, data: bytes) -> None:
        try:
            replies = peer.on_message(data)
        except Exception as exc:  # noqa: BLE001 - one kiosk must not stop the hub
            self.server.log("internal", f"{type(exc).__name__}: {exc}")
            self.driver.close("internal", "the hub failed on this message")
            return
        for lane, reply in replies:
            self.driver.send(lane, reply)
        if peer.sync.close is not None:
            self.driver.close(*peer.sync.close)


class Server:
    def __init__(self, hub: Hub, max_ahead_ms: int) -> None:
        self.hub = hub
        self.max_ahead_ms = max_ahead_ms
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        self.sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._holders: dict[bytes, Connection] = {}  #: TCP: the connection holding each key
        #: Each kiosk key's last session and its peer, for a resume on a new connection.
        self._resumable: dict[bytes, tuple[bytes, Session, HubPeer]] = {}

    def peer(self, remote: bytes | None) -> HubPeer:
        inbox = DocumentInbox(self.hub.data / DOCUMENTS_DIR, self.hub.store, wall_ms)
        return HubPeer(self.hub.store, self.hub.ed_public, remote, wall_ms, self.max_ahead_ms,
                       documents=inbox)

    def log(self, kind: str, text: str) -> None:
        self.hub.store.log(None, kind, text, wall_ms())

    def keep(self, event: Connected, session: Session, peer: HubPeer) -> None:
        """Remember a kiosk's connected session, so it may resume on a new link."""
        if event.remote_static is not None:
            with self._lock:
                self._resumable[event.remote_static] = (event.session_id, session, peer)

    def _lookup(self, session_id: bytes) -> Session | None:
        with self._lock:
            for sid, session, _ in self._resumable.values():
                if sid == session_id:
                    return session
        return None

    def resumed_peer(self, event: Connected) -> HubPeer | None:
        """The peer of the session ``event`` resumed: the conversation goes on."""
        with self._lock:
            kept = self._resumable.get(event.remote_static or b"")
        return kept[2] if kept is not None and kept[0] == event.session_id else None

    def driver(self, link: Link, baud: int | None = None) -> SessionDriver:
        keepalive, dead = TCP_LIVENESS if link.stream else SERIAL_LIVENESS
        config = session_config(stream=link.stream, baud=baud, keepalive=keepalive,
                                dead_timeout=dead, max_message=1 << 20,
                                send_buffer=2 << 20)
        return SessionDriver(initiator=False, config=config, static_key=self.hub.x_key,
                             restart=not link.stream, link=link, resume_lookup=self._lookup)

    def _start(self, target: object, *args: object) -> None:
        t = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        t.start()
        self.threads.append(t)

    # TCP ----------------------------------------------------------------------------

    def listen(self, url: str) -> tuple[str, int]:
        """Accept kiosks on ``tcp://HOST:PORT``; returns the address bound."""
        parts = urlsplit(url)
        try:
            port = parts.port
        except ValueError:
            port = None
        if parts.scheme != "tcp" or not parts.hostname or port is None:
            raise UsageError(f"--listen wants tcp://HOST:PORT, not {url!r}")
        try:
            srv = socket.create_server((parts.hostname, port), reuse_port=False)
        except OSError as exc:
            raise UsageError(f"cannot listen on {url}: {exc.strerror or exc}") from None
        srv.settimeout(POLL)
        self.sockets.append(srv)
        self._start(self._accept, srv)
        host, bound = srv.getsockname()[:2]
        return str(host), int(bound)

    def _accept(self, srv: socket.socket) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._start(self._tcp, conn)

    def _tcp(self, sock: socket.socket) -> None:
        link = TcpLink(sock)
        conn = Connection(self, self.driver(link), link.url, exclusive=True)
        driver = conn.driver
        try:
            while not (self.stop.is_set() or conn.superseded.is_set()):
                events = driver.poll(POLL)
                conn.handle(events)
                if driver.closed:
                    out = driver.output(time.monotonic())  # the goodbye, if one is owed
                    if out:
                        link.write(out)
                    return
                if any(isinstance(e, LinkClosed) for e in events):
                    return
        except LinkError:
            return
        finally:
            self.release(conn)
            link.close()

    def claim(self, conn: Connection) -> None:
        """``conn`` holds its kiosk's key: an older connection holding it ends."""
        if conn.remote is None:
            return
        with self._lock:
            if conn.superseded.is_set():
                return
            older = self._holders.get(conn.remote)
            self._holders[conn.remote] = conn
        if older is not None and older is not conn:
            self.log("superseded", f"{older.url}: the kiosk connected again from {conn.url}")
            older.superseded.set()

    def release(self, conn: Connection) -> None:
        with self._lock:
            if conn.remote is not None and self._holders.get(conn.remote) is conn:
                del self._holders[conn.remote]

    # Serial -------------------------------------------------------------------------

    def serial(self, url: str, baud: int | None) -> None:
        """Serve kiosks on a serial port (any pyserial URL); it must open now."""
        try:
            link = open_link(url, baud)
        except LinkError as exc:
            raise UsageError(str(exc)) from None
        self._start(self._serial, link, url, baud)

    def _serial(self, link: Link, url: str, baud: int | None) -> None:
        """Serve the port; one that breaks (a modem unplugged) is opened again."""
        conn = Connection(self, self.driver(link, baud), url)
        try:
            while not self.stop.is_set():
                try:
                    conn.handle(conn.driver.poll(POLL))
                    continue
                except LinkError as exc:
                    self.log("serial", f"{url}: {exc}; opening it again")
                link.close()
                while not self.stop.wait(1.0):
                    with contextlib.suppress(LinkError):
                        link = open_link(url, baud)
                        conn.driver.attach(link)
                        break
        finally:
            link.close()

    def shutdown(self) -> None:
        self.stop.set()
        for s in self.sockets:
            with contextlib.suppress(OSError):
                s.close()
        for t in self.threads:
            t.join(timeout=1.0)


def serve(hub: Hub, *, listen: list[str], serial: list[str], baud: int | None = None,
          max_ahead_ms: int, ready: Callable[[str], None] = lambda line: None) -> None:
    """Serve kiosks until interrupted; ``ready`` hears each address as it opens."""
    if not listen and not serial:
        raise UsageError("give at least one --listen tcp://HOST:PORT or --serial URL")
    server = Server(hub, max_ahead_ms)
    try:
        for url in listen:
            host, port = server.listen(url)
            ready(f"listening on tcp://{host}:{port}")
        for url in serial:
            server.serial(url, baud)
            ready(f"serving serial {url}")
        ready(f"hub {hub.x_public.hex()} ready")
        server.stop.wait()
    finally:
        server.shutdown()
