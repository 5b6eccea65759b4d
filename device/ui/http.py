"""The kiosk's page server: HTTP/1.1 parsed by h11 on our asyncio loop, under a hostile client.

Theory of operation
-------------------
h11 does the parsing (request line, headers, framing, keep-alive, chunked
bodies) and never touches a socket; this module owns the I/O, every
deadline and every cap, and hands routes a ``request.Request``.

* Accepting: ``protocol.driver.accept.AcceptLoop`` takes connections off a
  non-blocking listening socket; when descriptors run out it backs off and
  says so once, while open connections go on being served.
* Caps: at most ``Limits.max_connections`` open connections, lowered to fit
  under the process's descriptor limit (``RLIMIT_NOFILE`` less
  ``fd_reserve``). A connection past the cap takes the place of the one that
  has waited longest for a request (a half-sent request or an idle
  keep-alive), which is closed at once, its descriptor free for the next;
  when every connection is busy with a request, the newcomer is closed at
  once. Nobody is answered slowly. Event streams are capped apart
  (``max_streams``): a new one ends the oldest (the page reconnects by
  itself), so streams never take the connections check-ins need.
  Drops, evictions, late clients and refusals are counted (``stats``) and
  logged at most once per ``log_interval``, with the counts since the last
  line: an attack costs no more than a line a minute on the card.
* Deadlines: a request's head must arrive within ``head_timeout`` (from the
  connection's start, or from its first byte on a kept-alive connection,
  which may idle ``idle_timeout`` before it), its body within
  ``body_timeout``, and every write must drain within ``write_timeout``.
  A client that misses one is closed without an answer.
* Sizes: a head over ``max_head`` is 431; a body over ``max_body`` is 413,
  told from Content-Length before any of it is read (or counted as chunks
  arrive); JSON deeper than ``max_depth`` is 400 (``request.Request.json``).
* Who may ask: ``origin.refusal`` (the Host must be the kiosk's own name,
  an Origin the page's own), checked on every request before any route.

Every response carries ``Cache-Control: no-store`` and headers that keep the
page to its own origin. An error answer (4xx, 5xx) closes the connection.
An event stream (``Response.stream``) is sent chunked and closes after.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import socket
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import h11

from device.exc import DeviceError
from device.ui.origin import allowed_hosts, refusal
from device.ui.request import (
    MAX_DEPTH,
    Handler,
    HttpError,
    Request,
    Response,
    json_response,
)
from protocol.driver.accept import AcceptLoop, listen

__all__ = ["Handler", "HttpError", "HttpServer", "Limits", "Request", "Response",
           "json_response", "serve"]

log = logging.getLogger("haven.ui")
REASONS = {100: "Continue", 200: "OK", 204: "No Content", 206: "Partial Content",
           400: "Bad Request",
           403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed", 409: "Conflict",
           413: "Payload Too Large", 416: "Range Not Satisfiable", 429: "Too Many Requests",
           431: "Headers Too Large",
           500: "Internal Server Error", 503: "Service Unavailable",
           507: "Insufficient Storage"}
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Pragma": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                               "style-src 'self'; script-src 'self'; connect-src 'self'; "
                               "font-src 'self'; frame-ancestors 'none'",
}
READ_SIZE = 16 * 1024
#: What a hostile client causes: counted in ``HttpServer.stats``, logged at most once a while.
PRESSURE = ("dropped", "evicted", "timed_out", "refused")


@dataclass(frozen=True)
class Limits:
    """Every bound of the page server (tests make the deadlines short)."""

    max_head: int = 8 * 1024
    max_body: int = 16 * 1024
    max_depth: int = MAX_DEPTH
    head_timeout: float = 10.0
    body_timeout: float = 10.0
    idle_timeout: float = 60.0
    write_timeout: float = 10.0
    max_connections: int = 32
    max_streams: int = 4
    #: Descriptors left to the rest of the process (store, sync link, logs, GPIO).
    fd_reserve: int = 48
    accept_batch: int = 16
    #: Dropped, evicted, late and refused clients are logged at most once per interval.
    log_interval: float = 60.0


def connection_cap(limits: Limits) -> int:
    """``max_connections``, lowered to leave ``fd_reserve`` descriptors to the process."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return limits.max_connections
    return max(1, min(limits.max_connections, soft - limits.fd_reserve))


class _Drop(DeviceError, ConnectionError):
    """Close without an answer: the client missed a deadline (``late``) or went away."""

    def __init__(self, late: bool) -> None:
        super().__init__("late" if late else "gone")
        self.late = late


class _Client:
    """One connection: its socket, its task, and whether it may be dropped for another."""

    __slots__ = ("sock", "task", "busy", "since", "stream", "closing", "head_only", "reading")

    def __init__(self, sock: socket.socket, now: float) -> None:
        self.sock = sock
        self.task: asyncio.Task[None] | None = None
        self.busy = False  #: a request is being handled or answered
        self.since = now  #: when it started waiting for a request (or its stream began)
        self.stream = False
        self.closing = False
        self.head_only = False  #: the request being answered is a HEAD
        self.reading = False  #: its reader is registered on the loop (``_readable``)


def _wake(ready: asyncio.Future[None]) -> None:
    if not ready.done():
        ready.set_result(None)


class HttpServer:
    """A listening server that also ends its open connections (event streams) on close."""

    def __init__(self, handler: Handler, limits: Limits | None = None,
                 hosts: tuple[str, ...] = ()) -> None:
        self.handler = handler
        self.limits = limits or Limits()
        self.extra_hosts = hosts
        self.hosts: frozenset[str] = frozenset()
        self.cap = connection_cap(self.limits)
        self.clients: set[_Client] = set()
        self.accept: AcceptLoop | None = None
        #: Counters: accepted, dropped (over the cap, all busy), evicted, timed-out, refused.
        self.stats = dict.fromkeys(("accepted", *PRESSURE), 0)
        self._logged_at = -float("inf")
        self._logged = dict(self.stats)

    @property
    def tasks(self) -> set[asyncio.Task[None]]:
        return {c.task for c in self.clients if c.task is not None}

    async def start(self, host: str, port: int) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        sock = listen(host, port)
        name = sock.getsockname()
        self.hosts = allowed_hosts(host, int(name[1]), self.extra_hosts)
        self.cap = connection_cap(self.limits)
        self.accept = AcceptLoop(loop, sock, self._accepted, batch=self.limits.accept_batch,
                                 note=lambda text: log.warning("page server: %s", text),
                                 note_interval=self.limits.log_interval)
        return str(name[0]), int(name[1])

    async def close(self, bound: float = 2.0) -> None:
        if self.accept is not None:
            self.accept.close()
        tasks = self.tasks
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=bound)

    # Admission --------------------------------------------------------------------------

    def _accepted(self, sock: socket.socket, addr: Any) -> None:
        self.stats["accepted"] += 1
        if sum(1 for c in self.clients if c.sock.fileno() >= 0) >= self.cap:
            idle = [c for c in self.clients if not c.busy and not c.closing]
            if not idle:
                self._pressure("dropped")
                sock.close()
                return
            self._pressure("evicted")
            self._end(min(idle, key=lambda c: c.since))
        client = _Client(sock, time.monotonic())
        self.clients.add(client)
        client.task = asyncio.get_running_loop().create_task(self._serve(client))
        client.task.add_done_callback(lambda _t: self._closed(client))

    def _pressure(self, what: str) -> None:
        """Count ``what``; log the counts since the last line, at most once per
        ``log_interval`` (a script must not turn its connections into card writes)."""
        self.stats[what] += 1
        now = time.monotonic()
        if now - self._logged_at < self.limits.log_interval:
            return
        since = {k: self.stats[k] - self._logged[k] for k in PRESSURE}
        log.warning("page server: %s", ", ".join(f"{n} {k.replace('_', ' ')}"
                                                 for k, n in since.items() if n))
        self._logged_at, self._logged = now, dict(self.stats)

    def _end(self, client: _Client) -> None:
        """Drop ``client`` now. One waiting for a request (only ever on ``_readable``'s
        reader, or not started) is closed at once, its descriptor free for the next; one
        busy answering is shut down, and closed when its task has ended (a write may be
        registered on its descriptor until then)."""
        client.closing = True
        with contextlib.suppress(OSError):
            client.sock.shutdown(socket.SHUT_RDWR)
        if not client.busy:
            if client.reading:
                asyncio.get_running_loop().remove_reader(client.sock.fileno())
                client.reading = False
            client.sock.close()
        if client.task is not None:
            client.task.cancel()

    def _closed(self, client: _Client) -> None:
        self.clients.discard(client)
        client.sock.close()

    def _streaming(self, client: _Client) -> None:
        client.stream, client.since = True, time.monotonic()
        streams = [c for c in self.clients if c.stream and not c.closing]
        if len(streams) > self.limits.max_streams:
            self._end(min(streams, key=lambda c: c.since))

    # One connection ---------------------------------------------------------------------

    async def _serve(self, client: _Client) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self.limits.max_head)
        first = True
        try:
            while True:
                try:
                    req = await self._read_request(client, conn, first)
                    if req is None:
                        return
                    client.busy = True
                    resp = await self._answer(req)
                except HttpError as exc:
                    req, resp = None, json_response({"error": exc.code, **exc.extra},
                                                    exc.status)
                if not await self._respond(client, conn, req, resp):
                    return
                conn.start_next_cycle()
                client.busy, client.since, first = False, time.monotonic(), False
        except _Drop as exc:
            if exc.late:
                self._pressure("timed_out")
        except (OSError, h11.LocalProtocolError, asyncio.CancelledError):
            return
        except Exception as exc:  # a bug (a stream that failed): log the kind only
            log.error("connection failed: %s", type(exc).__name__)

    async def _recv(self, client: _Client, conn: h11.Connection, deadline: float) -> None:
        while True:
            try:
                data = client.sock.recv(READ_SIZE)
                break
            except (BlockingIOError, InterruptedError):
                await self._readable(client, deadline)
        if not data and (conn.trailing_data[0] or conn.their_state is not h11.IDLE):
            raise _Drop(late=False)  # gone in the middle of a request
        conn.receive_data(data)

    async def _readable(self, client: _Client, deadline: float) -> None:
        """Until ``client`` can be read, or ``_Drop`` at ``deadline``. The reader is ours
        (not ``loop.sock_recv``'s), so ``_end`` can remove it and close at once."""
        loop = asyncio.get_running_loop()
        ready = loop.create_future()
        fd = client.sock.fileno()
        loop.add_reader(fd, _wake, ready)
        client.reading = True
        try:
            async with asyncio.timeout_at(deadline):
                await ready
        except TimeoutError:
            raise _Drop(late=True) from None
        finally:
            if client.reading:
                loop.remove_reader(fd)
                client.reading = False

    def _next(self, conn: h11.Connection) -> Any:
        try:
            return conn.next_event()
        except h11.RemoteProtocolError as exc:
            status = exc.error_status_hint
            raise HttpError(status, "headers-too-large" if status == 431
                            else "bad-request") from None

    async def _read_request(self, client: _Client, conn: h11.Connection,
                            first: bool) -> Request | None:
        """The next request, whole, or None when the client closed between requests."""
        lim, loop = self.limits, asyncio.get_running_loop()
        # A new connection has head_timeout for its first head; a kept-alive one idles up
        # to idle_timeout, then has head_timeout from its next request's first byte.
        deadline = loop.time() + (lim.head_timeout if first else lim.idle_timeout)
        while True:
            event = self._next(conn)
            if event is h11.NEED_DATA:
                started = bool(conn.trailing_data[0])
                await self._recv(client, conn, deadline)
                if not first and not started and conn.trailing_data[0]:
                    deadline = loop.time() + lim.head_timeout
                continue
            if isinstance(event, h11.ConnectionClosed):
                return None
            if isinstance(event, h11.Request):
                break
            raise HttpError(400, "bad-request")
        client.head_only = event.method == b"HEAD"
        req = self._head(event)
        self._guard(req)
        req.body = await self._read_body(client, conn, req)
        return req

    def _head(self, event: h11.Request) -> Request:
        size = len(event.target) + sum(len(k) + len(v) + 4 for k, v in event.headers)
        if size > self.limits.max_head:  # a whole head can come in one read, past h11's cap
            raise HttpError(431, "headers-too-large")
        target = event.target.decode("latin-1")
        if not target.startswith("/"):
            raise HttpError(400, "bad-target")
        headers: dict[str, str] = {}
        for name, value in event.headers:
            key = name.decode("latin-1")
            text = value.decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        parts = urlsplit(target)
        return Request(event.method.decode("latin-1").upper(), parts.path,
                       parse_qs(parts.query), headers, max_depth=self.limits.max_depth)

    def _guard(self, req: Request) -> None:
        code = refusal(req.headers, self.hosts)
        if code is not None:
            self._pressure("refused")
            raise HttpError(403, code)

    async def _read_body(self, client: _Client, conn: h11.Connection, req: Request) -> bytes:
        lim = self.limits
        length = req.headers.get("content-length", "0")
        if not length.isdigit():  # h11 has checked it; a repeated header is refused here
            raise HttpError(400, "bad-length")
        if int(length) > lim.max_body:
            raise HttpError(413, "too-large")
        if conn.they_are_waiting_for_100_continue:
            client.busy = True  # a write may be registered: not to be closed under it
            await self._send(client, conn.send(h11.InformationalResponse(
                status_code=100, headers=[], reason=b"Continue")))
            client.busy = False
        deadline = asyncio.get_running_loop().time() + lim.body_timeout
        chunks: list[bytes] = []
        size = 0
        while True:
            event = self._next(conn)
            if event is h11.NEED_DATA:
                await self._recv(client, conn, deadline)
            elif isinstance(event, h11.Data):
                size += len(event.data)
                if size > lim.max_body:
                    raise HttpError(413, "too-large")
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                return b"".join(chunks)
            else:
                raise _Drop(late=False)

    async def _answer(self, req: Request) -> Response:
        try:
            return await self.handler(req)
        except HttpError:
            raise
        except Exception as exc:  # a bug: answer, log the kind only (no patient data)
            log.error("request failed: %s", type(exc).__name__)
            return json_response({"error": "internal"}, 500)

    # Answers ----------------------------------------------------------------------------

    async def _send(self, client: _Client, data: bytes | None) -> None:
        if not data:
            return
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.limits.write_timeout):
                await loop.sock_sendall(client.sock, data)
        except TimeoutError:
            raise _Drop(late=True) from None

    async def _respond(self, client: _Client, conn: h11.Connection, req: Request | None,
                       resp: Response) -> bool:
        """Send ``resp``; True when the connection may carry another request."""
        client.busy = True
        if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return False
        headers = {**SECURITY_HEADERS, "Content-Type": resp.content_type, **resp.headers}
        if resp.stream is None:
            headers["Content-Length"] = str(len(resp.body))
        if resp.stream is not None or req is None or resp.status >= 400:
            headers["Connection"] = "close"
        await self._send(client, conn.send(h11.Response(
            status_code=resp.status, reason=REASONS.get(resp.status, "OK").encode(),
            headers=[(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()])))
        if resp.stream is not None:
            self._streaming(client)
            try:
                async for chunk in resp.stream:
                    await self._send(client, conn.send(h11.Data(data=chunk)))
            finally:
                close = getattr(resp.stream, "aclose", None)
                if close is not None:
                    with contextlib.suppress(Exception):
                        await close()
            return False
        if resp.body and not client.head_only:
            await self._send(client, conn.send(h11.Data(data=resp.body)))
        await self._send(client, conn.send(h11.EndOfMessage()))
        return conn.states == {h11.CLIENT: h11.DONE, h11.SERVER: h11.DONE}


async def serve(handler: Handler, host: str, port: int,
                limits: Limits | None = None) -> HttpServer:
    """Start serving ``handler`` on ``host:port`` (port 0 picks one)."""
    server = HttpServer(handler, limits)
    await server.start(host, port)
    return server
