"""A session across interpreters: a MicroPython process is the IK initiator (a sensor
node's role), a CPython Session the responder (the kiosk's), joined by the process's
stdin and stdout, so real bytes in real frames cross a real pipe both ways.

The MicroPython end is tests/micropython/session_initiator.py. Both ends run on the
real clock (nothing is lost on a pipe, so no timer fires); every loop is bounded.

Then the timers, losses, resumes and restarts: tests/micropython/session_sim.py runs two
Sessions on a simulated lossy line, once under each interpreter, and both runs must put
the same bytes on the line and see the same events at the same simulated times.
"""

from __future__ import annotations

import os
import selectors
import subprocess
import time
from dataclasses import dataclass, field

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from protocol.session.core import Closed, Connected, MessageReceived, Session, SessionConfig
from tests import micropython_port

NODE_SEED = bytes(range(32))
KIOSK_KEY = X25519PrivateKey.from_private_bytes(bytes(range(32, 64)))
NODE_PUBLIC = X25519PrivateKey.from_private_bytes(NODE_SEED).public_key().public_bytes_raw()
LIMIT = 60.0  # seconds: far beyond what a run takes, so a hang fails instead of waiting


@dataclass
class Run:
    """What the responder saw, and what the MicroPython initiator reported."""

    events: list[object] = field(default_factory=list)
    asked: list[bytes] = field(default_factory=list)
    report: list[str] = field(default_factory=list)
    returncode: int | None = None

    def node_said(self, word: str) -> list[list[str]]:
        return [line.split()[1:] for line in self.report if line.split()[:1] == [word]]


def converse(node_sends: list[str], kiosk_sends: list[tuple[int, bytes]],
             accept: bool = True) -> Run:
    """Run the MicroPython initiator against a responder here until it exits."""
    run = Run()

    def accept_static(key: bytes) -> bool:
        run.asked.append(key)
        return accept

    start = time.monotonic()
    kiosk = Session(initiator=False, config=SessionConfig(pattern="IK", lanes=2),
                    static_key=KIOSK_KEY, accept_static=accept_static, now=0.0)
    script = micropython_port.SCRIPTS / "session_initiator.py"
    kiosk_public = KIOSK_KEY.public_key().public_bytes_raw()
    env = dict(os.environ, MICROPYPATH=micropython_port.path())
    proc = subprocess.Popen(
        [micropython_port.interpreter(), str(script), NODE_SEED.hex(), kiosk_public.hex(),
         str(len(kiosk_sends)), *node_sends],
        cwd=micropython_port.ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    selector.register(proc.stderr, selectors.EVENT_READ)
    errors = bytearray()
    open_streams = 2
    try:
        while open_streams and time.monotonic() - start < LIMIT:
            now = time.monotonic() - start
            out = kiosk.data_to_send(now)
            if out:
                try:
                    proc.stdin.write(out)
                    proc.stdin.flush()
                except BrokenPipeError:
                    pass  # the node is gone; what it said is on stderr
            deadline = kiosk.next_deadline()
            wait = 0.2 if deadline is None else min(0.2, max(0.0, deadline - now))
            for key, _ in selector.select(wait):
                data = os.read(key.fileobj.fileno(), 65536)  # type: ignore[union-attr]
                if not data:
                    selector.unregister(key.fileobj)
                    open_streams -= 1
                elif key.fileobj is proc.stderr:
                    errors += data
                else:
                    kiosk.receive_data(data, time.monotonic() - start)
            while (event := kiosk.next_event()) is not None:
                run.events.append(event)
                if isinstance(event, Connected):
                    for lane, text in kiosk_sends:
                        kiosk.send_message(lane, text)
        run.returncode = proc.wait(timeout=max(1.0, LIMIT - (time.monotonic() - start)))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        selector.close()
        proc.stdin.close()
        proc.stdout.close()
        proc.stderr.close()
    run.report = errors.decode().splitlines()
    return run


def test_node_and_kiosk_talk_both_ways_on_two_lanes() -> None:
    node_sends = ["0:alarm excursion", "1:reading 1 452", "1:reading 2 455"]
    kiosk_sends = [(0, b"welcome"), (1, b"readings-ack 2")]
    run = converse(node_sends, kiosk_sends)
    assert run.returncode == 0, run.report
    assert run.asked == [NODE_PUBLIC]
    connected = [e for e in run.events if isinstance(e, Connected)]
    assert len(connected) == 1 and connected[0].remote_static == NODE_PUBLIC
    got = [(e.lane, e.data) for e in run.events if isinstance(e, MessageReceived)]
    assert got == [(0, b"alarm excursion"), (1, b"reading 1 452"), (1, b"reading 2 455")]
    assert run.node_said("connected") == [[]]
    assert run.node_said("message") == [["0", "welcome"], ["1", "readings-ack", "2"]]
    assert run.node_said("closed") == [["done", "False"]]
    [[spent]] = run.node_said("handshake_us")
    assert int(spent) > 0
    closed = [e for e in run.events if isinstance(e, Closed)]
    assert [(c.reason, c.by_peer) for c in closed] == [("done", True)]


def test_a_node_whose_key_the_kiosk_does_not_know_is_refused() -> None:
    run = converse(["1:reading 1 452"], [(0, b"welcome")], accept=False)
    assert run.returncode == 0, run.report
    assert run.asked == [NODE_PUBLIC]
    assert not [e for e in run.events if isinstance(e, (Connected, MessageReceived))]
    assert [c.reason for c in run.events if isinstance(c, Closed)] == ["unknown-key"]
    assert run.node_said("connected") == [] and run.node_said("message") == []
    assert run.node_said("closed") == [["unknown-key", "True"]]


#: Per scenario of session_sim.py, its events other than messages.
SCENARIOS = {
    "resume": ["kiosk connected resumed=False", "node connected resumed=False",
               "kiosk connected resumed=True", "node connected resumed=True"],
    "restart": ["kiosk connected resumed=False", "node connected resumed=False",
                "node connected resumed=False", "kiosk connected resumed=False"],
    "timeout": ["node connected resumed=False", "kiosk connected resumed=False",
                "node closed timeout", "kiosk closed timeout",
                "node connected resumed=False", "kiosk connected resumed=False"],
    "paced": ["kiosk connected resumed=False", "node connected resumed=False"],
}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_a_lossy_run_goes_the_same_under_both_interpreters(scenario: str) -> None:
    """The same simulated run (lost frames, an outage, timers; a resume, a restarted node,
    a dead line, or a paced serial line) under MicroPython and CPython: the same bytes on
    the line (keys and secrets seeded), the same events at the same simulated times, the
    same counters."""
    script = micropython_port.SCRIPTS / "session_sim.py"
    on_cpython = micropython_port.run_cpython(script, scenario, timeout=LIMIT)
    assert on_cpython.returncode == 0, on_cpython.stderr
    on_micropython = micropython_port.run(script, scenario, timeout=LIMIT)
    assert on_micropython.returncode == 0, on_micropython.stdout + on_micropython.stderr
    assert on_micropython.stdout.splitlines() == on_cpython.stdout.splitlines()
    *events, node, kiosk, node_wrote, kiosk_wrote = on_cpython.stdout.splitlines()
    assert node_wrote.startswith("node wrote ") and kiosk_wrote.startswith("kiosk wrote ")
    steps = [e.split(" ", 1)[1] for e in events if " message " not in e]
    assert steps == SCENARIOS[scenario]
    assert any(" message 1 " in e for e in events)
    assert node.startswith("node open") and node.endswith("acked True")
    assert kiosk.startswith("kiosk open") and kiosk.endswith("acked True")
