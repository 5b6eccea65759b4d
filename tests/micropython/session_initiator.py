"""A Session as the IK initiator (a sensor node's role) under MicroPython, on stdin/stdout.

Usage: ``session_initiator.py STATIC_SEED_HEX RESPONDER_PUBLIC_HEX EXPECT LANE:TEXT...``

stdin and stdout are the line: the bytes ``Session.data_to_send`` makes go to stdout
as they are, and what arrives on stdin goes to ``receive_data``. It queues each
``LANE:TEXT`` message, and stops once the session is closed, or once it received
``EXPECT`` messages and the peer acknowledged all of its own (it then
closes the session with reason ``done``). What happened goes to stderr, one line
each: ``connected``, ``message LANE TEXT``, ``closed REASON BY_PEER``, and
``handshake_us N``: the microseconds this process spent in the Session's calls up
to ``Connected`` (the handshake's computation on this side, none of the wait for
the peer). The test that runs it (tests/test_micropython_session.py) bounds it in
time; so does the ``time_limit`` here.
"""

import select
import sys
import time

from protocol.crypto import X25519PrivateKey
from protocol.session.core import Closed, Connected, MessageReceived, Session, SessionConfig

TIME_LIMIT_MS = 30_000


def report(*words):
    sys.stderr.write(" ".join(str(w) for w in words) + "\n")


def read_available(poll, wait_ms):
    """The bytes stdin holds now, after waiting up to ``wait_ms`` for the first;
    ``None`` at end of file. MicroPython's read(n) waits for all n bytes, so one
    byte at a time, while poll says more are there."""
    out = bytearray()
    timeout = wait_ms
    while poll.poll(timeout):
        byte = sys.stdin.buffer.read(1)
        if not byte:
            return bytes(out) if out else None
        out += byte
        timeout = 0
    return bytes(out)


def main():
    seed, responder, expect = sys.argv[1:4]
    wanted, expect = sys.argv[4:], int(expect)
    start = time.ticks_ms()

    def now():
        return time.ticks_diff(time.ticks_ms(), start) / 1000

    spent = 0
    t0 = time.ticks_us()
    session = Session(
        initiator=True, config=SessionConfig(pattern="IK", lanes=2),
        static_key=X25519PrivateKey.from_private_bytes(bytes.fromhex(seed)),
        remote_static=bytes.fromhex(responder), now=now())
    spent += time.ticks_diff(time.ticks_us(), t0)
    for item in wanted:
        lane, text = item.split(":", 1)
        session.send_message(int(lane), text.encode())
    poll = select.poll()
    poll.register(sys.stdin, select.POLLIN)
    connected, received, closed = False, 0, False
    while not closed and time.ticks_diff(time.ticks_ms(), start) < TIME_LIMIT_MS:
        t0 = time.ticks_us()
        out = session.data_to_send(now())
        if not connected:
            spent += time.ticks_diff(time.ticks_us(), t0)
        if out:
            sys.stdout.buffer.write(out)
            sys.stdout.buffer.flush()
        deadline = session.next_deadline()
        wait = 200 if deadline is None else max(0, min(200, int((deadline - now()) * 1000)))
        data = read_available(poll, wait)
        if data is None:
            report("closed", "eof", False)
            break
        t0 = time.ticks_us()
        session.receive_data(data, now())
        if not connected:
            spent += time.ticks_diff(time.ticks_us(), t0)
        while True:
            event = session.next_event()
            if event is None:
                break
            if isinstance(event, Connected):
                connected = True
                report("connected")
                report("handshake_us", spent)
            elif isinstance(event, MessageReceived):
                received += 1
                report("message", event.lane, event.data.decode())
            elif isinstance(event, Closed):
                closed = True
                report("closed", event.reason, event.by_peer)
        if not closed and connected and received >= expect and session.all_acked:
            session.close("done")
            sys.stdout.buffer.write(session.data_to_send(now()))
            sys.stdout.buffer.flush()
            report("closed", "done", False)
            closed = True
    if not closed:
        report("closed", "time-limit", False)


main()
