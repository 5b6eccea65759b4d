"""A small HTTP/1.1 server on ``asyncio.start_server``, for the kiosk's local page.

Only what a local browser needs: GET and POST with a capped JSON body,
keep-alive, and streamed responses (server-sent events). Every response
carries ``Cache-Control: no-store`` and headers that keep the page to its
own origin. Requests over the caps get 413/431; malformed ones get 400 and
the connection closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from device.exc import DeviceError

MAX_HEAD = 8 * 1024
MAX_BODY = 16 * 1024
REASONS = {200: "OK", 204: "No Content", 400: "Bad Request", 403: "Forbidden",
           404: "Not Found", 405: "Method Not Allowed", 409: "Conflict",
           413: "Payload Too Large", 429: "Too Many Requests", 431: "Headers Too Large",
           500: "Internal Server Error", 503: "Service Unavailable", 507: "Insufficient Storage"}
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Pragma": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                               "style-src 'self'; script-src 'self'; connect-src 'self'; "
                               "font-src 'self'; frame-ancestors 'none'",
}


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes = b""

    def json(self) -> dict[str, Any]:
        try:
            value = json.loads(self.body or b"{}")
        except (ValueError, UnicodeDecodeError):
            raise HttpError(400, "bad-json") from None
        if not isinstance(value, dict):
            raise HttpError(400, "bad-json")
        return value


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    #: When set, the body is streamed from this iterator and the connection closes after.
    stream: AsyncIterator[bytes] | None = None


class HttpError(DeviceError):
    def __init__(self, status: int, code: str, extra: dict[str, Any] | None = None) -> None:
        super().__init__(code)
        self.status, self.code, self.extra = status, code, extra or {}


def json_response(value: Any, status: int = 200) -> Response:
    return Response(status, json.dumps(value, ensure_ascii=False).encode())


Handler = Callable[[Request], Awaitable[Response]]


async def _read_request(reader: asyncio.StreamReader) -> Request | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    except asyncio.LimitOverrunError:
        raise HttpError(431, "headers-too-large") from None
    try:
        lines = head.decode("latin-1").split("\r\n")
        method, target, _version = lines[0].split(" ", 2)
    except ValueError:
        raise HttpError(400, "bad-request-line") from None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    try:
        length = int(headers.get("content-length", "0"))
    except ValueError:
        raise HttpError(400, "bad-length") from None
    if length < 0 or length > MAX_BODY:
        raise HttpError(413, "too-large")
    body = await reader.readexactly(length) if length else b""
    parts = urlsplit(target)
    return Request(method.upper(), parts.path, parse_qs(parts.query), headers, body)


def _head(resp: Response, keep_alive: bool) -> bytes:
    headers = {**SECURITY_HEADERS, "Content-Type": resp.content_type, **resp.headers}
    if resp.stream is None:
        headers["Content-Length"] = str(len(resp.body))
        headers["Connection"] = "keep-alive" if keep_alive else "close"
    else:
        headers["Connection"] = "close"
    lines = [f"HTTP/1.1 {resp.status} {REASONS.get(resp.status, 'OK')}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def _connection(handler: Handler, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            try:
                req = await _read_request(reader)
                if req is None:
                    return
                resp = await handler(req)
            except HttpError as exc:
                req = None
                resp = json_response({"error": exc.code, **exc.extra}, exc.status)
            except Exception as exc:  # a bug: answer, log the kind only (no patient data)
                logging.getLogger("haven.ui").error("request failed: %s", type(exc).__name__)
                req = None
                resp = json_response({"error": "internal"}, 500)
            keep = (req is not None and resp.status < 400
                    and req.headers.get("connection", "").lower() != "close")
            writer.write(_head(resp, keep))
            if resp.stream is not None:
                async for chunk in resp.stream:
                    writer.write(chunk)
                    await writer.drain()
                return
            writer.write(resp.body)
            await writer.drain()
            if not keep:
                return
    except (ConnectionError, asyncio.IncompleteReadError):
        return
    except asyncio.CancelledError:  # shutting down: close quietly
        return
    finally:
        with contextlib.suppress(Exception):
            writer.close()


class HttpServer:
    """A listening server that also ends its open connections (event streams) on close."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.tasks: set[asyncio.Task[None]] = set()
        self.server: asyncio.Server | None = None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        try:
            await _connection(self.handler, reader, writer)
        finally:
            self.tasks.discard(task)

    async def start(self, host: str, port: int) -> tuple[str, int]:
        self.server = await asyncio.start_server(self._accept, host, port, limit=MAX_HEAD)
        name = self.server.sockets[0].getsockname()
        return str(name[0]), int(name[1])

    async def close(self, bound: float = 2.0) -> None:
        if self.server is not None:
            self.server.close()
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=bound)


async def serve(handler: Handler, host: str, port: int) -> HttpServer:
    """Start serving ``handler`` on ``host:port`` (port 0 picks one)."""
    server = HttpServer(handler)
    await server.start(host, port)
    return server
