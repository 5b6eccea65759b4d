"""The page server under a hostile client, over real TCP on 127.0.0.1.

Two kinds of server: ``HttpServer`` on an event loop in a thread, with short
deadlines and a small handler that counts what reaches it; and the real
``haven-kiosk run`` (store, sync thread, page) in a child whose descriptor
limit is lowered, for check-ins under attack. The descriptor-exhaustion test
runs a server in a child of its own whose limit is low enough that half-sent
requests exhaust it. Last, Debian's Chromium plays the attacker's page: DNS
rebinding (its names resolved to 127.0.0.1) and posts from another site.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from device.store import init_store
from device.ui.http import HttpServer, Limits, Request, Response, json_response
from device.ui.origin import allowed_hosts
from device.ui.request import json_depth
from tests.conftest import require

from .test_ui_helpers import ROOT, Proc, free_port, run_kiosk

BOUND = 10.0
SHORT = Limits(head_timeout=0.4, body_timeout=0.4, idle_timeout=0.4, write_timeout=1.0,
               max_connections=8, max_streams=2)
CHECKIN = {"passport": "HC123456", "year": "1970", "name": "Hostile Client",
           "reason": "sick", "consent": True}


class Counting:
    """A handler that records what reaches it; ``/hold`` waits until ``release`` is set."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []
        self.release: asyncio.Event | None = None

    async def __call__(self, req: Request) -> Response:
        self.seen.append((req.method, req.path))
        if req.path == "/hold":
            assert self.release is not None
            await self.release.wait()
        if req.path == "/events":
            return Response(200, content_type="text/event-stream", stream=self._events())
        if req.method == "POST":
            return json_response({"got": req.json()})
        return json_response({"ok": True})

    async def _events(self) -> AsyncIterator[bytes]:
        yield b"retry: 1000\n\n"
        while True:
            await asyncio.sleep(0.05)
            yield b": keepalive\n\n"


@contextmanager
def served(limits: Limits = SHORT) -> Iterator[tuple[HttpServer, Counting, int]]:
    """An ``HttpServer`` on 127.0.0.1 (port 0), its loop in a thread of its own."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    handler = Counting()

    async def start() -> HttpServer:
        handler.release = asyncio.Event()
        server = HttpServer(handler, limits)
        await server.start("127.0.0.1", 0)
        return server

    server = asyncio.run_coroutine_threadsafe(start(), loop).result(BOUND)
    assert server.accept is not None
    port = int(server.accept.sock.getsockname()[1])
    try:
        yield server, handler, port
    finally:
        assert handler.release is not None
        loop.call_soon_threadsafe(handler.release.set)
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(BOUND)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(BOUND)
        loop.close()


def connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=BOUND)
    return s


def exchange(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``raw`` on a new connection; the status, headers and body of the answer."""
    with connect(port) as s:
        s.sendall(raw)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            assert chunk, f"closed without an answer after {data!r}"
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
        want = int(headers.get("content-length", "0"))
        while len(body) < want:
            chunk = s.recv(65536)
            if not chunk:
                break
            body += chunk
        return int(lines[0].split()[1]), headers, body


def post(port: int, body: bytes, host: str | None = None, extra: str = "",
         version: str = "1.1") -> bytes:
    host_line = f"Host: {host}\r\n" if host is not None else ""
    return (f"POST /api/checkin HTTP/{version}\r\n{host_line}Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{extra}\r\n").encode() + body


def closed_within(s: socket.socket, bound: float) -> float:
    """Seconds until the server closed ``s`` (EOF or reset); fails past ``bound``."""
    start = time.monotonic()
    end = start + bound
    try:
        while time.monotonic() < end:
            s.settimeout(max(0.001, end - time.monotonic()))
            if not s.recv(4096):
                return time.monotonic() - start
    except ConnectionResetError:
        return time.monotonic() - start
    except TimeoutError:
        pass
    raise AssertionError(f"still open after {bound} s")


# Host and Origin -------------------------------------------------------------------------


@pytest.mark.parametrize(("host", "extra", "code"), [
    ("evil.example:{port}", "Origin: http://evil.example:{port}\r\n", "bad-host"),  # rebinding
    ("evil.example:{port}", "", "bad-host"),
    ("127.0.0.1:1", "", "bad-host"),  # another port: another origin
    ("127.0.0.1.evil.example:{port}", "", "bad-host"),
    (None, "", "bad-host"),  # HTTP/1.0 lets a client leave Host out
    ("127.0.0.1:{port}", "Origin: http://evil.example\r\n", "bad-origin"),
    ("127.0.0.1:{port}", "Origin: http://localhost:{port}\r\n", "bad-origin"),
    ("127.0.0.1:{port}", "Origin: null\r\n", "bad-origin"),
    ("127.0.0.1:{port}", "Sec-Fetch-Site: cross-site\r\n", "bad-origin"),
    ("127.0.0.1:{port}", "Sec-Fetch-Site: same-site\r\n", "bad-origin"),
])
def test_a_wrong_host_or_origin_is_refused(host: str | None, extra: str, code: str) -> None:
    with served() as (server, handler, port):
        raw = post(port, b'{"a": 1}', host.format(port=port) if host else None,
                   extra.format(port=port), version="1.0" if host is None else "1.1")
        status, _, body = exchange(port, raw)
        assert (status, json.loads(body)["error"]) == (403, code)
        assert handler.seen == []  # the route never ran
        status, _, body = exchange(port, raw.replace(b"POST /api/checkin", b"GET /x", 1))
        assert status == 403


@pytest.mark.parametrize(("host", "extra"), [
    ("127.0.0.1:{port}", "Origin: http://127.0.0.1:{port}\r\nSec-Fetch-Site: same-origin\r\n"),
    ("localhost:{port}", "Origin: http://localhost:{port}\r\n"),
    ("LOCALHOST:{port}", ""),
    ("[::1]:{port}", "Origin: http://[::1]:{port}\r\n"),
    ("127.0.0.1:{port}", ""),  # a program on the kiosk (curl, haven-kiosk hw): no Origin
])
def test_the_page_own_host_and_origin_are_served(host: str, extra: str) -> None:
    with served() as (_, handler, port):
        status, _, body = exchange(port, post(port, b'{"a": 1}', host.format(port=port),
                                              extra.format(port=port)))
        assert (status, json.loads(body)) == (200, {"got": {"a": 1}})
        assert handler.seen == [("POST", "/api/checkin")]


def test_allowed_hosts_follow_the_listening_address() -> None:
    assert allowed_hosts("127.0.0.1", 8080) == {"127.0.0.1:8080", "localhost:8080",
                                                "[::1]:8080"}
    assert "localhost:8080" in allowed_hosts("0.0.0.0", 8080)
    assert "0.0.0.0:8080" in allowed_hosts("0.0.0.0", 8080)
    assert allowed_hosts("192.0.2.7", 80) == {"192.0.2.7:80", "192.0.2.7"}
    assert allowed_hosts("::1", 9) >= {"[::1]:9", "127.0.0.1:9"}


# Sizes and nesting -----------------------------------------------------------------------


def test_deep_json_gets_a_400_before_parsing() -> None:
    with served() as (_, handler, port):
        host = f"127.0.0.1:{port}"
        for body in (b"[" * 5000 + b"]" * 5000, b'{"a": ' + b"[" * 17 + b"]" * 17 + b"}",
                     b"{" * 5000):
            status, _, answer = exchange(port, post(port, body, host))
            assert (status, json.loads(answer)["error"]) == (400, "too-deep")
        # Brackets inside strings are text, and 16 levels are allowed.
        ok = {"a": "[" * 5000, "b": json.loads("[" * 15 + "]" * 15)}
        status, _, answer = exchange(port, post(port, json.dumps(ok).encode(), host))
        assert (status, json.loads(answer)["got"]) == (200, ok)
    assert json_depth(b'"\\"[[[', 1) == 0  # an escaped quote does not end the string
    assert json_depth(b'{"a":"\\\\"}[[', 5) == 2


def test_oversized_bodies_413_and_heads_431() -> None:
    with served() as (_, handler, port):
        host = f"127.0.0.1:{port}"
        # Told by Content-Length, answered before any of the body is sent.
        head = (f"POST /api/checkin HTTP/1.1\r\nHost: {host}\r\nContent-Type: "
                f"application/json\r\nContent-Length: {16 * 1024 + 1}\r\n\r\n").encode()
        status, _, body = exchange(port, head)
        assert (status, json.loads(body)["error"]) == (413, "too-large")
        chunk = b"4000\r\n" + b" " * 0x4000 + b"\r\n"
        chunked = (f"POST /api/checkin HTTP/1.1\r\nHost: {host}\r\nContent-Type: "
                   "application/json\r\nTransfer-Encoding: chunked\r\n\r\n").encode()
        status, _, body = exchange(port, chunked + chunk * 2 + b"0\r\n\r\n")
        assert (status, json.loads(body)["error"]) == (413, "too-large")
        big = f"GET / HTTP/1.1\r\nHost: {host}\r\nX-Junk: {'a' * 9000}\r\n\r\n".encode()
        assert exchange(port, big)[0] == 431
        assert exchange(port, b"NOT HTTP AT ALL\r\n\r\n")[0] == 400
        assert handler.seen == []


# Deadlines and caps ----------------------------------------------------------------------


def test_half_sent_heads_and_bodies_are_closed_at_their_deadlines() -> None:
    with served() as (server, handler, port):
        host = f"127.0.0.1:{port}"
        with connect(port) as head, connect(port) as body, connect(port) as idle:
            head.sendall(f"POST /api/checkin HTTP/1.1\r\nHost: {host}\r\n".encode())
            body.sendall(post(port, b'{"a": 1}', host)[:-3])
            idle.sendall(f"GET /ok HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            assert idle.recv(65536).startswith(b"HTTP/1.1 200")  # then kept alive, idle
            for s in (head, body, idle):
                waited = closed_within(s, 3.0)
                assert waited < 1.5, waited
        assert handler.seen == [("GET", "/ok")]
        assert server.stats["timed_out"] == 3


def test_over_the_cap_the_longest_waiting_is_dropped_not_answered_slowly() -> None:
    # Deadlines long enough that only the cap can close a waiting connection here.
    patient = replace(SHORT, head_timeout=BOUND, idle_timeout=BOUND)
    with served(patient) as (server, handler, port), ExitStack() as stack:
        host = f"127.0.0.1:{port}"
        waiting = [stack.enter_context(connect(port)) for _ in range(SHORT.max_connections)]
        waiting[0].sendall(b"GET /x HTTP/1.1\r\n")  # half-sent
        time.sleep(0.05)
        status, _, _ = exchange(port, f"GET /ok HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        assert status == 200
        assert closed_within(waiting[0], 0.3) < 0.3  # the oldest made room, at once
        assert server.stats["evicted"] >= 1
        # Every connection busy with a request: a newcomer is closed at once, unanswered.
        for s in waiting:
            s.close()
        busy = [stack.enter_context(connect(port)) for _ in range(SHORT.max_connections)]
        for s in busy:
            s.sendall(f"GET /hold HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        end = time.monotonic() + BOUND
        while len(handler.seen) < 1 + SHORT.max_connections and time.monotonic() < end:
            time.sleep(0.01)
        late = stack.enter_context(connect(port))
        late.sendall(f"GET /ok HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        assert closed_within(late, 0.3) < 0.3
        assert server.stats["dropped"] >= 1


def test_event_streams_are_capped_and_keep_streaming() -> None:
    with served() as (_, _, port), ExitStack() as stack:
        host = f"127.0.0.1:{port}"
        streams = []
        for _ in range(SHORT.max_streams + 1):
            s = stack.enter_context(connect(port))
            s.sendall(f"GET /events HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            got = b""
            while b"retry: 1000" not in got:
                chunk = s.recv(4096)
                assert chunk, got
                got += chunk
            assert b"transfer-encoding: chunked" in got.lower()
            streams.append(s)
        assert closed_within(streams[0], 1.0) < 1.0  # the oldest stream ended
        for s in streams[1:]:  # the others go on
            s.settimeout(1.0)
            assert b": keepalive" in s.recv(4096)


# The accept loop at the descriptor limit ---------------------------------------------------

EXHAUSTED_SERVER = """
import asyncio, logging, resource, sys
from device.ui.http import HttpServer, Limits, json_response
logging.basicConfig(level=logging.WARNING, stream=sys.stdout, format="%(message)s")
resource.setrlimit(resource.RLIMIT_NOFILE, (40, 40))
async def handler(req):
    return json_response({"ok": True})
async def main():
    limits = Limits(head_timeout=0.4, max_connections=1000, fd_reserve=0)
    server = HttpServer(handler, limits)
    print("port", (await server.start("127.0.0.1", 0))[1], flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_at_emfile_the_accept_loop_backs_off_and_keeps_serving() -> None:
    proc = subprocess.Popen([sys.executable, "-c", EXHAUSTED_SERVER], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline().split()[1])
        host = f"127.0.0.1:{port}"
        with ExitStack() as stack:
            # Three times more half-sent requests than the server has descriptors: accept
            # hits EMFILE in a burst after each round of them, until their deadlines pass.
            for _ in range(100):
                stack.enter_context(connect(port)).sendall(b"GET / HTTP/1.1\r\n")
            cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
            status, _, body = exchange(port, f"GET /ok HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            waited = time.monotonic() - t0
            assert (status, json.loads(body)) == (200, {"ok": True})
            assert waited < 5.0, waited
            busy = (cpu_seconds(proc.pid) - cpu0) / max(waited, 0.2)
            assert busy < 0.5, f"{busy:.0%} of a core while out of descriptors: spinning"
    finally:
        proc.terminate()
        out = proc.communicate(timeout=BOUND)[0]
    # Told once (bursts a minute apart at most), not once a try; and the end of it.
    assert out.count("out of descriptors") == 1, out
    assert "accepting again after" in out, out


# The real kiosk, its descriptor limit lowered ------------------------------------------------


@pytest.fixture(scope="module")
def kiosk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Proc]]:
    """``haven-kiosk run`` (offline) with RLIMIT_NOFILE 80: a connection cap of 32."""
    data = tmp_path_factory.mktemp("hostile") / "k"
    init_store(data, "North", "B").close()
    lowered = (sys.executable, "-c", "import os, resource, sys; resource.setrlimit("
               "resource.RLIMIT_NOFILE, (80, 80)); os.execv(sys.argv[1], sys.argv[1:])")
    proc, url = run_kiosk(data, f"tcp://127.0.0.1:{free_port()}", idle=60, prefix=lowered)
    yield url, proc
    proc.stop()


def call(url: str, body: Any) -> tuple[int, Any]:
    req = urllib.request.Request(url + "/api/checkin", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=BOUND) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def number(answer: dict[str, Any]) -> int:
    return int(str(answer["queue_number"]).rsplit("-", 1)[1])


def test_kiosk_rebinding_post_creates_no_checkin(kiosk: tuple[str, Proc]) -> None:
    url, _ = kiosk
    port = int(url.rsplit(":", 1)[1])
    status, before = call(url, CHECKIN)
    assert status == 200, before
    body = json.dumps(CHECKIN).encode()
    raw = post(port, body, f"evil.example:{port}", f"Origin: http://evil.example:{port}\r\n")
    assert exchange(port, raw)[0] == 403
    raw = post(port, body, f"127.0.0.1:{port}", "Origin: http://evil.example\r\n")
    assert exchange(port, raw)[0] == 403
    status, _, answer = exchange(port, post(port, b"[" * 5000, f"127.0.0.1:{port}"))
    assert (status, json.loads(answer)["error"]) == (400, "too-deep")
    status, after = call(url, CHECKIN)
    assert status == 200 and number(after) == number(before) + 1  # nothing in between


def test_kiosk_300_half_sent_requests_do_not_stop_a_checkin(kiosk: tuple[str, Proc]) -> None:
    url, proc = kiosk
    port = int(url.rsplit(":", 1)[1])
    host = f"127.0.0.1:{port}"
    with ExitStack() as stack:
        attackers = []
        for i in range(300):
            s = stack.enter_context(connect(port))
            half = post(port, b'{"a": 1}', host)
            s.sendall(half[: len(half) // 2] if i % 2 else half[:-3])
            attackers.append(s)
        t0 = time.monotonic()
        status, answer = call(url, CHECKIN)
        assert status == 200 and answer["queue_number"], answer
        assert time.monotonic() - t0 < 2.0
        dropped = 0
        for s in attackers:
            s.setblocking(False)
            try:
                dropped += s.recv(1) == b""
            except BlockingIOError:
                pass
            except ConnectionResetError:
                dropped += 1
        assert dropped >= 300 - 32, dropped  # no more than the cap held open
    # The cap kept the runtime under its descriptor limit (evicted clients are closed at
    # once), and an attack is a line a minute in the log at most, not a line a connection.
    assert not any("out of descriptors" in line for line in proc.log), proc.log
    assert sum("page server:" in line for line in proc.log) <= 2, proc.log
    # The event stream still streams.
    with urllib.request.urlopen(url + "/api/events", timeout=BOUND) as resp:
        assert resp.readline() == b"retry: 1000\n"


# In Chromium: DNS rebinding and cross-site posts -------------------------------------------

#: The attacker's names resolve to the kiosk; Chromium's own local-network blocking is off,
#: as in a browser without it, so that the requests reach the server and its guard answers.
REBINDING_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--host-resolver-rules=MAP evil.example 127.0.0.1, "
                  "MAP attacker.example 127.0.0.1",
                  "--disable-features=LocalNetworkAccessChecks,"
                  "BlockInsecurePrivateNetworkRequests,PrivateNetworkAccessSendPreflights,"
                  "PrivateNetworkAccessRespectPreflightResults"]
POST_JS = """async ([url, mode]) => {
  try {
    const r = await fetch(url, mode === "no-cors"
      ? {method: "POST", mode: "no-cors", body: '{"a": 1}'}
      : {method: "POST", headers: {"Content-Type": "application/json"}, body: '{"a": 1}'});
    return r.type === "opaque" ? "opaque" : r.status + " " + await r.text();
  } catch (e) { return "failed"; }
}"""


def test_in_chromium_rebinding_and_cross_site_posts_are_refused() -> None:
    chromium = Path("/usr/bin/chromium")
    require(chromium.exists(), "chromium", "/usr/bin/chromium does not exist")
    sync_api = pytest.importorskip("playwright.sync_api")
    with served() as (server, handler, port), sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(chromium), args=REBINDING_ARGS)
        try:
            page = browser.new_page()
            # Each document comes from "the attacker" (or the kiosk, for the control);
            # every request its script makes goes to the network, so to the kiosk.
            for origin in (f"http://evil.example:{port}", "http://attacker.example:1",
                           f"http://127.0.0.1:{port}"):
                page.route(origin + "/", lambda route: route.fulfill(
                    status=200, content_type="text/html", body="<html><body></body></html>"))
            # DNS rebinding: the attacker's page, its name now resolving to the kiosk.
            page.goto(f"http://evil.example:{port}/")
            got = page.evaluate(POST_JS, ["/api/checkin", "cors"])
            assert got == '403 {"error": "bad-host"}'
            # Another site posting across origins: with a preflight, and without one.
            page.goto("http://attacker.example:1/")
            target = f"http://127.0.0.1:{port}/api/checkin"
            assert page.evaluate(POST_JS, [target, "cors"]) == "failed"
            assert page.evaluate(POST_JS, [target, "no-cors"]) == "opaque"
            # Each reached the server and was refused: Chromium sends both a foreign Origin
            # and Sec-Fetch-Site: cross-site, each enough (the raw tests above take them apart).
            assert server.stats["refused"] == 3
            assert handler.seen == []
            # The control: the page's own origin posts as the check-in page does.
            page.goto(f"http://127.0.0.1:{port}/")
            assert page.evaluate(POST_JS, ["/api/checkin", "cors"]) == '200 {"got": {"a": 1}}'
            assert handler.seen == [("POST", "/api/checkin")]
            assert page.goto(f"http://evil.example:{port}/static/app.js").status == 403
        finally:
            browser.close()
