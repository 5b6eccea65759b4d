"""Step mode: the node on a simulated clock, driven over stdin and stdout.

Theory of operation
-------------------
A test (tests/fridge_node_proc.py) runs the node under the unix port and
moves its clock. Each request and each answer is a 4-byte big-endian length
and a CBOR array; times are integer microseconds of the node's monotonic
clock (CBOR floats are not needed then). The node advances to ``now`` before
it does anything else, so each request runs the readings, commits and timers
that were due:

    ["feed", now, bytes]     -> [deadline, events]           bytes from the line
    ["take", now]            -> [deadline, events, bytes]    bytes to the line
    ["console", now, line]   -> [deadline, events, text]     a technician's command
    ["status", now]          -> [deadline, events, {name: value}]
    ["quit", now]            -> [deadline, events]           commit, then exit

``deadline`` is when the node wants to be called again (its next reading, a
commit, the session's timers), ``events`` what its link did since the last
answer: ``["connected"]`` and ``["closed", reason]``. A malformed request is
answered ``["error", text]`` and changes nothing.
"""

from __future__ import annotations

import struct
import sys
from typing import TYPE_CHECKING

from device.fridge_node import console
from protocol import strict_cbor
from protocol.errors import ProtocolError

if TYPE_CHECKING:
    from typing import Any

    from device.fridge_node.node import Node

US = 1000000


def _read_exactly(stream: Any, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        chunk = stream.read(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def read_request(stream: Any) -> list[Any] | None:
    head = _read_exactly(stream, 4)
    if head is None:
        return None
    body = _read_exactly(stream, struct.unpack(">I", head)[0])
    return None if body is None else strict_cbor.loads(body)


def write_answer(stream: Any, answer: list[Any]) -> None:
    body = strict_cbor.dumps(answer)
    stream.write(struct.pack(">I", len(body)) + body)
    stream.flush()


def answer(node: Node, request: list[Any]) -> tuple[list[Any], bool]:
    """The answer to one request, and whether to go on."""
    op, now = request[0], request[1] / US
    node.advance(now)
    extra: list[Any] = []
    if op == "feed":
        node.receive(request[2], now)
    elif op == "take":
        extra.append(node.output(now))
    elif op == "console":
        extra.append(console.handle(node, request[2]))
    elif op == "status":
        extra.append(node.status())
    elif op == "quit":
        node.commit(now)
    else:
        return ["error", f"unknown request {op!r}"], True
    events, node.link.events = node.link.events, []
    deadline = max(node.deadline(), now)
    due = int(deadline * US)
    if due < deadline * US:
        due += 1
    return [due, [list(e) for e in events]] + extra, op != "quit"


def serve(node: Node) -> None:
    """Answer requests on stdin until ``quit`` or the end of stdin."""
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while True:
        try:
            request = read_request(stdin)
        except ProtocolError as exc:
            write_answer(stdout, ["error", str(exc)])
            continue
        if request is None:
            return
        if not isinstance(request, list) or len(request) < 2 or type(request[1]) is not int:
            write_answer(stdout, ["error", "a request is [op, now, ...]"])
            continue
        try:
            reply, more = answer(node, request)
        except (IndexError, TypeError, ValueError, ProtocolError) as exc:
            reply, more = ["error", f"bad request {request[0]!r}: {exc}"], True
        write_answer(stdout, reply)
        if not more:
            return
