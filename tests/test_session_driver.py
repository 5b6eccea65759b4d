"""The shared driver (``protocol.driver``) over real links: TCP on 127.0.0.1 and
pyserial's ``socket://``; owner-only secret files on a real directory.

One side runs the blocking ``poll`` loop, the other the sans-I/O steps an
event loop would call (``feed``, ``output``, ``next_deadline``, ``events``).
Every loop has a deadline.
"""

from __future__ import annotations

import os
import socket
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from protocol.driver.errors import LinkError, SecretInvalid, SecretMissing, SecretPermissions
from protocol.driver.link import Link, SerialLink, TcpLink, open_link
from protocol.driver.secret_files import read_secret, write_secret
from protocol.driver.session_driver import (
    DriverEvent,
    LinkClosed,
    Restarted,
    SessionDriver,
    session_config,
)
from protocol.session.core import Session
from protocol.session.events import Closed, Connected, MessageReceived

DEADLINE = 20.0


@pytest.fixture
def server() -> Iterator[socket.socket]:
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(5.0)
    yield srv
    srv.close()


def connect(srv: socket.socket, url: str | None = None) -> tuple[Link, TcpLink]:
    """A client link (``url``, default tcp://) and the server's accepted end."""
    port = srv.getsockname()[1]
    client = open_link(url or f"tcp://127.0.0.1:{port}")
    conn, _ = srv.accept()
    return client, TcpLink(conn)


class Pair:
    """A blocking initiator and an event-loop-style responder over two links."""

    def __init__(self, a_link: Link, b_link: Link, *, stream: bool,
                 lookup: Callable[[bytes], Session | None] | None = None) -> None:
        keys = X25519PrivateKey.generate(), X25519PrivateKey.generate()
        config = session_config(stream=stream, keepalive=0.5, dead_timeout=5.0)
        self.a = SessionDriver(initiator=True, config=config, static_key=keys[0],
                               remote_static=keys[1].public_key().public_bytes_raw(),
                               link=a_link)
        self.b = SessionDriver(initiator=False, config=config, static_key=keys[1],
                               resume_lookup=lookup, restart=True)
        self.b_link = b_link
        self.got_a: list[DriverEvent] = []
        self.got_b: list[DriverEvent] = []

    def step_b(self) -> None:
        """What an event loop does on input or at the deadline."""
        now = time.monotonic()
        out = self.b.output(now)
        if out:
            self.b_link.write(out)
        data = self.b_link.read(0.0)
        if data != b"":
            self.b.feed(data, time.monotonic())
        self.got_b += self.b.events()

    def run_until(self, done: Callable[[], bool]) -> None:
        end = time.monotonic() + DEADLINE
        while not done():
            assert time.monotonic() < end, (self.got_a, self.got_b)
            self.got_a += self.a.poll(0.01)
            self.step_b()

    def messages(self, events: list[DriverEvent]) -> list[bytes]:
        return [e.data for e in events if isinstance(e, MessageReceived)]


def test_blocking_and_event_loop_sides_talk_over_tcp(server: socket.socket) -> None:
    a_link, b_link = connect(server)
    pair = Pair(a_link, b_link, stream=True)
    pair.run_until(lambda: pair.a.connected and pair.b.connected)
    assert isinstance(pair.b.next_deadline(), float)
    pair.a.send(1, b"up" * 5000)
    pair.b.send(0, b"down")
    pair.run_until(lambda: len(pair.messages(pair.got_a)) == 1
                   and len(pair.messages(pair.got_b)) == 1)
    assert pair.messages(pair.got_b) == [b"up" * 5000]
    assert pair.messages(pair.got_a) == [b"down"]
    assert pair.a.stats().bytes_sent == pair.b.stats().bytes_received > 10000
    # A clean close: the responder hears it, and its fresh session waits for the next.
    pair.a.close("done", linger=0.05)
    pair.run_until(lambda: any(isinstance(e, Closed) for e in pair.got_b))
    closed = [e for e in pair.got_b if isinstance(e, Closed)]
    assert closed[0].reason == "done" and closed[0].by_peer
    assert not pair.b.closed and pair.b.restarts == 1
    # The far end going away is an event, not an exception.
    a_link.close()
    end = time.monotonic() + DEADLINE
    while not any(isinstance(e, LinkClosed) for e in pair.got_b):
        assert time.monotonic() < end
        pair.step_b()
    b_link.close()


@pytest.mark.parametrize("stream", [True, False], ids=["tcp", "serial"])
def test_resume_on_a_new_link_sends_nothing_acknowledged(server: socket.socket,
                                                         stream: bool) -> None:
    """The initiator's link breaks; ``attach`` resumes the session on a new one. What
    the peer acknowledged before is not sent again; what it had not is."""
    sessions: dict[bytes, Session] = {}
    port = server.getsockname()[1]
    url = f"tcp://127.0.0.1:{port}" if stream else f"socket://127.0.0.1:{port}"
    a_link, b_link = connect(server, url)
    assert isinstance(a_link, TcpLink if stream else SerialLink)
    pair = Pair(a_link, b_link, stream=stream, lookup=sessions.get)
    pair.run_until(lambda: pair.a.connected and pair.b.connected)
    assert pair.b.session.session_id is not None
    sessions[pair.b.session.session_id] = pair.b.session
    first = os.urandom(20000)
    pair.a.send(1, first)
    pair.run_until(lambda: pair.messages(pair.got_b) == [first] and pair.a.session.all_acked)
    sent_before = pair.a.stats().data_bytes_sent
    a_link.close()
    b_link.close()
    a_link, pair.b_link = connect(server, url)
    # The responder's new link gets a new session, which finds the old one by its id.
    pair.b.attach(pair.b_link)
    pair.a.attach(a_link)
    second = os.urandom(3000)
    pair.a.send(1, second)
    pair.run_until(lambda: len(pair.messages(pair.got_b)) == 2)
    assert pair.messages(pair.got_b) == [first, second]
    resumed = [e for e in pair.got_a if isinstance(e, Connected)]
    assert [e.resumed for e in resumed] == [False, True]
    assert pair.a.stats().data_bytes_sent - sent_before == len(second) + 2  # its length prefix
    assert pair.a.stats().retransmitted_bytes == 0
    a_link.close()
    pair.b_link.close()


def test_a_session_that_dies_on_our_side_is_restarted(server: socket.socket) -> None:
    a_link, b_link = connect(server)
    pair = Pair(a_link, b_link, stream=True)
    pair.a.restart = True
    pair.run_until(lambda: pair.a.connected and pair.b.connected)
    # The responder goes silent: nobody steps it any more.
    got: list[DriverEvent] = []
    end = time.monotonic() + DEADLINE
    while not any(isinstance(e, Restarted) for e in got):
        assert time.monotonic() < end
        got += pair.a.poll(0.05)
    restarted = next(e for e in got if isinstance(e, Restarted))
    assert restarted.reason.startswith("timeout")
    assert pair.a.restarts == 1 and not pair.a.closed
    assert pair.a.silent_for(time.monotonic()) >= 5.0
    a_link.close()
    b_link.close()


def test_links_refuse_clearly() -> None:
    with pytest.raises(LinkError, match="tcp://HOST:PORT"):
        open_link("tcp://nowhere")
    with pytest.raises(LinkError, match="cannot open port"):
        open_link("/dev/no-such-tty")
    with socket.create_server(("127.0.0.1", 0)) as srv:
        port = srv.getsockname()[1]
    with pytest.raises(LinkError, match="cannot connect"):
        open_link(f"tcp://127.0.0.1:{port}")
    driver = SessionDriver(initiator=True, config=session_config(stream=True, pattern="NN"))
    with pytest.raises(LinkError, match="no link"):
        driver.poll()
    loop = open_link("loop://")
    loop.write(b"abc")
    assert loop.read(0.1) == b"abc" and loop.fileno() is None and not loop.stream
    loop.close()


def test_a_socket_url_keeps_what_arrived_before_the_far_end_closed() -> None:
    """The last bytes and the close, read in one call: the bytes come first, then None."""
    with socket.create_server(("127.0.0.1", 0)) as srv:
        link = open_link(f"socket://127.0.0.1:{srv.getsockname()[1]}")
        far, _ = srv.accept()
        far.sendall(b"goodbye" * 100)
        far.close()
        time.sleep(0.05)  # both the bytes and the close are waiting now
        got = b""
        end = time.monotonic() + DEADLINE
        while (data := link.read(0.1)) is not None:
            assert time.monotonic() < end
            got += data
        link.close()
    assert got == b"goodbye" * 100 and link.fileno() is not None


def test_secret_files_are_owner_only_whole_and_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "k.key"
    write_secret(path, b"k" * 32)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_secret(path, "key", 32) == b"k" * 32
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.key"]  # no temporary left
    with pytest.raises(FileExistsError):
        write_secret(path, b"x" * 32)
    assert path.read_bytes() == b"k" * 32
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.key"]
    with pytest.raises(SecretInvalid, match="holds 32 bytes, not 16"):
        read_secret(path, "key", 16)
    path.chmod(0o640)
    with pytest.raises(SecretPermissions, match="chmod 600"):
        read_secret(path, "key")
    with pytest.raises(PermissionError):  # the built-in a caller may already catch
        read_secret(path, "key")
    with pytest.raises(SecretMissing, match="is missing"):
        read_secret(tmp_path / "nope", "key")
    with pytest.raises(FileNotFoundError):
        read_secret(tmp_path / "nope", "key")
