"""One link's state machine on the hub's event loop: a TCP connection or a serial port.

Theory of operation
-------------------
A ``Connection`` is an ``asyncio.Protocol``: the loop hands it what it reads
(``data_received``), it feeds the link's responder ``SessionDriver`` and
writes what the driver owes (``transport.write``). One loop timer per
connection (``call_at``, moved when the driver's next deadline moves) drives
retransmissions, keepalives and the session's silence limit; nothing waits
in a loop. Everything here runs on the loop thread, and only here is the
driver (and its ``Session``) touched.

States, for the health report: ``handshaking`` until the session first
connects, then ``authenticated``, ``closing`` once the hub said goodbye,
``closed``. A TCP connection has ``handshake_deadline`` seconds from connect
to authenticate, whatever it sends: a handshake started again does not buy
more time.

Each message the session delivers goes to the kiosk's conversation
(``PeerSlot``: its ``HubPeer``), whose messages run in the server's worker
pool, never on the loop: one job at a time, the next messages waiting in
order, and the connection stops reading while more than ``input_cap`` bytes
wait. What a batch leaves to do (the verifier pass, ``HubPeer.owed``) is a job
of its own, run once the batch's ack is handed to the session and before the
kiosk's next message: the ack does not wait for it, the kiosk's next pull
sees what it wrote. A message the session delivered was acknowledged, so it
is handled even if the link drops meanwhile; the replies go to the
conversation's session, which a kiosk may resume on a new connection. A
session that ended gets nothing.

A peer that does not keep up is dropped: once what the hub holds for it
(unacknowledged lane bytes plus what the socket has not taken) passes
``output_cap``, the connection is aborted and counted as ``output-cap``.

Once a job finds the kiosk's hello accepted (``peer.sync.device`` set, no
close), the server learns the connection's source address as a kiosk's
(``Server.kiosk_seen``): its key exchanges get the reserved budget.

A serial port (``persistent``) outlives its sessions: a session that ends
is replaced at once by a fresh one waiting for the next handshake.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from host.hub.peer import HubPeer
from protocol.driver.session_driver import LinkClosed, Restarted, SessionDriver
from protocol.errors import LocalProtocolError
from protocol.session.core import Session
from protocol.session.events import CLOSED as SESSION_CLOSED
from protocol.session.events import Closed, Connected, MessageReceived

if TYPE_CHECKING:
    from host.hub.serve import Server

HANDSHAKING, AUTHENTICATED, CLOSING, CLOSED = "handshaking", "authenticated", "closing", "closed"
SUPERSEDED = "superseded"  #: the close a session gets when a newer connection takes its key
LINGER = 2.0  #: seconds a closing connection has to take its goodbye
#: A session's close reason, as the refusal counted for it.
CLOSE_REFUSAL = {"timeout": "idle", "flood": "flood", "auth": "bad-handshake",
                 "unknown-key": "bad-handshake", "protocol": "bad-handshake"}


class Transport(Protocol):
    """What a ``Connection`` writes to: an asyncio transport, or a serial port."""

    def write(self, data: bytes) -> None: ...
    def close(self) -> None: ...
    def abort(self) -> None: ...
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def get_write_buffer_size(self) -> int: ...


class PeerSlot:
    """A kiosk's conversation: its ``HubPeer``, the messages waiting for it, and the
    session its replies go to.

    The queue belongs to the conversation, not to a link: what the session
    delivered (and so acknowledged) is handled even if the link drops, in
    order, and a session resumed on a new connection gets the replies (its
    lanes are the old session's). One job at a time is in the pool, and a kiosk's
    new conversation waits for what its previous one still has to handle
    (``before``): a kiosk that reconnects is answered from a store that holds
    all it sent before."""

    def __init__(self, server: Server, peer: HubPeer, before: PeerSlot | None = None) -> None:
        self.server, self.peer = server, peer
        self.before = before if before is not None and not before.idle else None
        self.after: PeerSlot | None = None
        if self.before is not None:
            self.before.after = self
        self.session: Session | None = None  #: where replies go
        self.conn: Connection | None = None  #: the connection that carries it now
        self._queue: deque[bytes] = deque()
        self.queued = 0
        self._busy = False

    @property
    def device(self) -> Any:
        return self.peer.sync.device

    @property
    def idle(self) -> bool:
        return not (self._busy or self._queue or self.peer.owed)

    @property
    def gone(self) -> bool:
        """Its session ended: no more of its messages will come."""
        return self.session is None or self.session.state == SESSION_CLOSED

    def attach(self, conn: Connection, session: Session) -> None:
        self.conn, self.session = conn, session

    def enqueue(self, data: bytes) -> None:
        self._queue.append(data)
        self.queued += len(data)
        self._next()

    def _next(self) -> None:
        if self._busy:
            return
        if self.peer.owed:  # what the last batch left (verifiers): after its ack went out
            self._busy = True
            try:
                fut = self.server.submit(self.peer.settle)
            except RuntimeError:  # the pool is shut down: the server is stopping
                self._queue.clear()
                return
            fut.add_done_callback(self._settled)
            return
        if not self._queue:
            return
        if self.before is not None:
            if not self.before.idle:
                return
            self.before = None
        data = self._queue.popleft()
        self.queued -= len(data)
        self._busy = True
        try:
            fut = self.server.submit(self.peer.on_message, data)
        except RuntimeError:  # the pool is shut down: the server is stopping
            self._queue.clear()
            return
        fut.add_done_callback(self._done)

    def _done(self, fut: asyncio.Future[Any]) -> None:
        self._busy = False
        if fut.cancelled():
            self._queue.clear()
            return
        conn, session = self.conn, self.session
        close: tuple[str, str] | None = None
        exc = fut.exception()
        if exc is not None:
            self.server.log("internal", f"{conn.url if conn else 'a kiosk'}: "
                            f"{type(exc).__name__}: {exc}")
            close = ("internal", "the hub failed on this message")
        elif session is not None and session.state != SESSION_CLOSED:
            try:
                for lane, reply in fut.result():
                    session.send_message(lane, reply)
            except LocalProtocolError:
                if conn is not None and conn.live and conn.driver.session is session:
                    conn.refuse("output-cap", f"{conn.url}: more queued for the peer than "
                                "its session holds", abort=True)
                session.close("output-cap", "more queued for the peer than the session holds")
                return
            close = self.peer.sync.close
            if conn is not None and conn.live and conn.driver.session is session:
                if close is not None:
                    conn.kiosk = False
                elif self.peer.sync.device is not None:
                    self.server.kiosk_seen(conn)  # an accepted hello: the address is known
        if close is not None and session is not None and session.state != SESSION_CLOSED:
            if conn is not None and conn.live and conn.driver.session is session:
                conn.driver.close(*close)
            else:
                session.close(*close)
        self._then()

    def _settled(self, fut: asyncio.Future[Any]) -> None:
        self._busy = False
        if fut.cancelled():
            self._queue.clear()
            return
        if (exc := fut.exception()) is not None:  # settle logs its own failures
            self.server.log("internal", f"after a batch: {type(exc).__name__}: {exc}")
        self._then()

    def _then(self) -> None:
        """A job is done: the next one, or the kiosk's next conversation once idle."""
        conn = self.conn
        self.server.shedder.worked(self, time.monotonic())  # its round's quiet starts
        self._next()
        if self.idle and (after := self.after) is not None:
            self.after = None
            after._next()
            if after.conn is not None:
                after.conn.drained()
        if conn is not None:
            conn.drained()


class Connection(asyncio.Protocol):
    def __init__(self, server: Server, driver: SessionDriver, url: str, *, kind: str,
                 address: str | None = None, deadline: float | None = None) -> None:
        self.server, self.driver, self.url, self.kind = server, driver, url, kind
        self.address = address  #: the source IP, while it counts as not authenticated
        self.host = address  #: the source IP (TCP)
        self.kiosk = False  #: a kiosk's hello was accepted here, and it was not refused since
        self.persistent = kind == "serial"
        self.transport: Transport | None = None
        self.state = HANDSHAKING
        self.slot: PeerSlot | None = None
        self.remote: bytes | None = None
        self.notified = False  #: a sync-notify went out and the kiosk has not spoken since
        self._deadline = deadline  #: when the handshake must be over (TCP)
        self._paused = False
        self._timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol ------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.step()

    def data_received(self, data: bytes) -> None:
        if self.live:
            self.driver.feed(data, time.monotonic())
            self.step()

    def eof_received(self) -> bool:
        if self.live:
            self.driver.feed(None, time.monotonic())
            self.step()
        return False

    @property
    def live(self) -> bool:
        return self.state in (HANDSHAKING, AUTHENTICATED)

    def connection_lost(self, exc: Exception | None) -> None:
        self._ended()

    # -- the loop's turn -------------------------------------------------------

    def step(self) -> None:
        """Handle the driver's events, write what it owes, set the timer."""
        if not self.live or self.transport is None:
            return
        now = time.monotonic()
        self._handle(self.driver.events())
        out = self.driver.output(now)
        self._handle(self.driver.events())
        if self.persistent and self.driver.closed:
            out += self.driver.output(now)
            self._fresh_session(now)  # a serial line serves the next kiosk
            out += self.driver.output(now)
        if out and self.transport is not None:
            self.transport.write(out)
        if not self.live:
            return
        if not self.persistent and self.driver.closed:
            self.finish()
            return
        if self.transport.get_write_buffer_size() + self.driver.session.queued_bytes \
                > self.server.limits.output_cap:
            self.refuse("output-cap", f"{self.url}: the peer does not take what it is sent",
                        abort=True)
            return
        self._arm(now)

    def _arm(self, now: float) -> None:
        deadline = self.driver.next_deadline()
        if self._deadline is not None:
            deadline = self._deadline if deadline is None else min(deadline, self._deadline)
        timer = self._timer
        if deadline is None:
            if timer is not None:
                timer.cancel()
                self._timer = None
            return
        deadline = max(deadline, now + 0.001)
        if timer is not None:
            if timer.when() == deadline:
                return
            timer.cancel()
        self._timer = self.server.loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self._deadline is not None and time.monotonic() >= self._deadline:
            self.refuse("handshake-deadline", f"{self.url}: no session within "
                        f"{self.server.limits.handshake_deadline:g} s of connecting", abort=True)
            return
        self.step()

    def _handle(self, events: list[Any]) -> None:
        for event in events:
            if isinstance(event, Connected):
                if self.state == HANDSHAKING:
                    self.state = AUTHENTICATED
                    self._deadline = None
                    self.server.authenticated(self)
                self.server.connected(self, event)
            elif isinstance(event, MessageReceived):
                if self.slot is not None and self.server.round_message(self, self.slot,
                                                                       event.data):
                    self.deliver(self.slot, event.data)
            elif isinstance(event, Closed | Restarted):
                reason = event.reason if isinstance(event, Closed) else event.reason.split(":")[0]
                refusal = CLOSE_REFUSAL.get(reason)
                if refusal == "idle" and self.state == HANDSHAKING:
                    refusal = "handshake-deadline"
                if refusal is not None and not (isinstance(event, Closed) and event.by_peer):
                    self.server.refused(refusal, f"{self.url}: {reason}")
                self._lose_peer()
                if self.persistent and self.live and not self.driver.closed:
                    self.state = HANDSHAKING  # the driver's fresh session waits
            elif isinstance(event, LinkClosed):
                self._lose_peer()
                if not self.persistent:
                    self.finish(abort=True)

    def _fresh_session(self, now: float) -> None:
        """A serial line: a new session waits for the next handshake."""
        self.driver.new_session(now)
        self._lose_peer()
        self.state = HANDSHAKING

    def _lose_peer(self) -> None:
        slot, self.slot = self.slot, None
        if slot is not None and slot.conn is self:
            slot.conn = None
        self._resume()

    # -- input waiting for the worker pool ----------------------------------------

    def deliver(self, slot: PeerSlot, data: bytes) -> None:
        """A message of the kiosk for its conversation (now, or once its round found a
        place: ``Server.round_message``)."""
        self.notified = False
        self._enqueue(slot, data)

    def _enqueue(self, slot: PeerSlot, data: bytes) -> None:
        slot.enqueue(data)
        if slot.queued > self.server.limits.input_cap and not self._paused:
            self._paused = True
            if self.transport is not None:
                self.transport.pause_reading()

    def drained(self) -> None:
        """A job of this connection's conversation finished: read again, write."""
        slot = self.slot
        if slot is None or slot.queued <= self.server.limits.input_cap:
            self._resume()
        self.step()

    def _resume(self) -> None:
        if self._paused:
            self._paused = False
            if self.transport is not None and self.live:
                self.transport.resume_reading()

    # -- from the server -----------------------------------------------------------

    def port_reopened(self) -> None:
        """A serial port came back: a fresh session waits on it."""
        if self.live:
            self._fresh_session(time.monotonic())
            self.step()

    def send_now(self, lane: int, data: bytes) -> None:
        """Queue one message on the open session (a push) and write it."""
        if self.state == AUTHENTICATED and self.driver.connected:
            try:
                self.driver.send(lane, data)
            except LocalProtocolError:
                return
            self.step()

    def refuse(self, reason: str, detail: str, *, abort: bool = False,
               goodbye: tuple[str, str] | None = None, retry_ms: int | None = None) -> None:
        """Count the refusal and end the session (``goodbye``: the CLOSE it gets, with
        ``retry_ms`` when the kiosk is to come back after that long)."""
        if not self.live:
            return
        self.kiosk = False  # a refused kiosk's session end does not keep its address known
        self.server.refused(reason, detail)
        if goodbye is not None:
            self.driver.close(*goodbye, retry_ms=retry_ms)
            self.step()  # writes the CLOSE; a TCP connection then closes
            if self.persistent or not self.live:
                return
        if self.persistent:
            self._fresh_session(time.monotonic())
            self.step()
            return
        self.finish(abort=abort)

    def supersede(self) -> None:
        """A newer connection holds this kiosk's key. A session still open is told
        (``superseded``: a kiosk that hears it is not the one that came back, and
        does not take the session back at once); a dead flow is simply dropped."""
        if self.live and self.state == AUTHENTICATED and self.driver.connected:
            self.driver.close(SUPERSEDED, "another connection holds this kiosk's key")
            self.step()  # writes the CLOSE, then closes once it has left
            if self.live:
                self.finish()
            return
        self.finish(abort=True)

    def finish(self, abort: bool = False) -> None:
        """Close the transport: at once with ``abort``, else once what was written
        has left (a peer that never reads gets ``LINGER`` seconds for it)."""
        if not self.live:
            return
        self.state = CLOSING
        self._lose_peer()
        if self._timer is not None:
            self._timer.cancel()
        transport = self.transport
        if transport is None:
            self._ended()
        elif abort:
            transport.abort()
        else:
            transport.close()
            self._timer = self.server.loop.call_later(LINGER, transport.abort)

    def _ended(self) -> None:
        """The transport is gone (or never came): forget the connection."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.state != CLOSED:
            self.state = CLOSED
            self._lose_peer()
            self.server.ended(self)


Factory = Callable[[], Connection]
