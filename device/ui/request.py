"""What the page server hands its routes and takes back: requests, responses, errors.

A request body is JSON of bounded size (the server answers 413 past
``Limits.max_body``) and bounded nesting: ``Request.json`` first counts
brackets outside strings (``json_depth``, one regular expression over the
bytes) and answers 400 ``too-deep`` past ``max_depth``, so ``json.loads``
never recurses deep enough to raise ``RecursionError`` (a 500, and a
thread's stack at stake). A body that is not a JSON object is 400
``bad-json``.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from device.exc import DeviceError

MAX_DEPTH = 16
#: A string (closed or not: an open one runs to the end), or one bracket.
_TOKENS = re.compile(rb'"(?:[^"\\]|\\.)*"?|[\[\]{}]', re.DOTALL)
_OPEN = frozenset(b"[{")
_STRING = ord('"')


def json_depth(body: bytes, limit: int) -> int:
    """The deepest nesting of arrays and objects in ``body``, counted up to ``limit + 1``
    (past the limit the count stops: the scan never reads further than it needs)."""
    depth = deepest = 0
    for m in _TOKENS.finditer(body):
        first = body[m.start()]
        if first == _STRING:
            continue
        if first in _OPEN:
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > limit:
                    return deepest
        else:
            depth = max(0, depth - 1)
    return deepest


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes = b""
    max_depth: int = MAX_DEPTH

    def json(self) -> dict[str, Any]:
        if json_depth(self.body, self.max_depth) > self.max_depth:
            raise HttpError(400, "too-deep")
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
