"""A session's timers fire at the deadlines it reports: a caller woken exactly at
``next_deadline()`` finds the timer due (no spin, no stall), whatever the rounding of
awkward floats on a simulated clock."""

from __future__ import annotations

import math

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from protocol.session.core import Closed, Session, SessionConfig

START = 0.1  #: neither 0.1 nor its sums with 240 are exact in binary


def connected(a_config: SessionConfig, b_config: SessionConfig) -> tuple[Session, Session]:
    a = Session(initiator=True, config=a_config, static_key=X25519PrivateKey.generate(),
                now=START)
    b = Session(initiator=False, config=b_config, static_key=X25519PrivateKey.generate(),
                now=START)
    for _ in range(6):
        b.receive_data(a.data_to_send(START), START)
        a.receive_data(b.data_to_send(START), START)
    assert a.is_open and b.is_open
    return a, b


def test_waking_at_the_deadline_fires_the_keepalive() -> None:
    a, b = connected(SessionConfig(stream=True, keepalive=240.0, dead_timeout=1e12),
                     SessionConfig(stream=True, keepalive=math.inf, dead_timeout=1e12))
    last = START
    for _ in range(2000):
        d = a.next_deadline()
        assert d is not None and d > last
        sent = a.stats.frames_sent
        out = a.data_to_send(d)
        assert a.stats.frames_sent == sent + 1, f"nothing due at the deadline {d!r}"
        assert a.next_deadline() > d  # the timer moved on: no spin at d
        b.receive_data(out, d)  # the ping, and its pong back
        a.receive_data(b.data_to_send(d), d)
        assert a.data_to_send(d) == b""
        last = d
    assert last > 2000 * 239.0


def test_waking_at_the_deadline_ends_a_silent_session() -> None:
    for dead in (240.0, 0.3, 1e-3 * 7, 86_400.0 / 7):
        a, _ = connected(SessionConfig(stream=True, keepalive=math.inf, dead_timeout=dead),
                         SessionConfig(stream=True, keepalive=math.inf))
        d = a.next_deadline()
        assert d is not None
        a.data_to_send(d)
        closes = [e for e in iter(a.next_event, None) if isinstance(e, Closed)]
        assert [c.reason for c in closes] == ["timeout"], (dead, d)
        assert a.next_deadline() is None
