"""The session on a simulated clock: handshakes, delivery under faults, lanes."""

from __future__ import annotations

import pytest

from protocol.session.core import Closed, Connected, MessageReceived
from tests.session_helpers import Faults, Line, make_pair, public, random_messages, transfer


@pytest.mark.parametrize("pattern", ["XX", "IK", "NN"])
def test_handshake_connects_both_ends(pattern):
    pair = make_pair(pattern)
    assert pair.sim.run(lambda s: pair.a.is_open and pair.b.is_open, 10)
    ca, cb = pair.events(0, Connected)[0], pair.events(1, Connected)[0]
    assert ca.session_id == cb.session_id and not ca.resumed
    if pattern == "NN":
        assert ca.remote_static is None and cb.remote_static is None
    else:
        assert ca.remote_static == public(pair.b_key)
        assert cb.remote_static == public(pair.a_key)


# Each side's Line keywords; the faults are tools/linkfaults' (the emulator's).
FAULTS = {
    "clean": ({}, {}),
    "1e-4": ({"faults": Faults(corrupt=1e-4)}, {"faults": Faults(corrupt=1e-4)}),
    "1e-3": ({"faults": Faults(corrupt=1e-3)}, {"faults": Faults(corrupt=1e-3)}),
    "bursts": ({"faults": Faults(burst=1e-4, burst_len=16)}, {"faults": Faults(burst=1e-4)}),
    "outages-30s": ({"outages": [(2, 30)]}, {"outages": [(3, 17), (40, 5)]}),
    "dup": ({"faults": Faults(dup=0.2)}, {"faults": Faults(dup=0.2)}),
    "loss": ({"faults": Faults(loss=0.05, corrupt=3e-4)}, {"faults": Faults(loss=0.05)}),
}


@pytest.mark.parametrize("faults", FAULTS)
@pytest.mark.parametrize("pattern", ["XX", "NN"])
def test_every_message_once_in_order_under_faults(pattern, faults):
    ab, ba = FAULTS[faults]
    pair = make_pair(pattern, Line(seed=3, **ab), Line(seed=4, name="ba", **ba), rate=11520.0)
    msgs = [(1, m) for m in random_messages(120, 2000)]
    assert transfer(pair, msgs, limit=600)
    assert pair.received == msgs
    assert pair.b.stats.frames_received > 0


def test_error_beyond_the_dead_timeout_closes_cleanly():
    pair = make_pair("XX", Line(outages=[(1, 999)]), Line(outages=[(1, 999)]), rate=11520.0,
                     dead_timeout=60.0)
    msgs = [(1, m) for m in random_messages(50, 2000)]
    assert not transfer(pair, msgs, limit=300)
    # It gave up only after the configured time without a frame.
    assert pair.sim.now >= 60.0
    assert pair.sim.run(lambda s: pair.events(0, Closed) and pair.events(1, Closed), 30)
    for side in (0, 1):
        assert [c.reason for c in pair.events(side, Closed)] == ["timeout"]


def test_urgent_lane_overtakes_bulk():
    """Bulk data queued ahead of an urgent message delays it by the window at most."""
    pair = make_pair("XX", rate=11520.0, max_inflight=8192)
    assert pair.sim.run(lambda s: pair.a.is_open, 10)
    bulk = random_messages(60, 4000, seed=2)
    for data in bulk:
        pair.a.send_message(3, data)
    pair.sim.run(lambda s: s.now > 3.0, 10)
    before = sum(len(e.data) for e in pair.events(1, MessageReceived))
    pair.a.send_message(0, b"urgent")
    assert transfer(pair, [], limit=120)
    order = [data for _, data in pair.received]
    assert sorted(order) == sorted([*bulk, b"urgent"])
    after = order.index(b"urgent")
    overtaken = sum(len(m) for m in order[after + 1 :])
    passed_by = sum(len(m) for m in order[:after]) - before
    # Only what was already in flight, plus one frame, went ahead of it...
    assert passed_by <= 8192 + 4096 + 4000
    # ...and most of the bulk queued before it arrived after it.
    assert overtaken > sum(len(m) for m in bulk) / 2


def test_stream_mode_has_no_retransmission_timers():
    """On TCP: framing, tags, acknowledgements and resume, but no timers."""
    pair = make_pair("XX", Line(rate=1e6), Line(rate=1e6, seed=2), stream=True)
    msgs = [(1, m) for m in random_messages(200, 3000, seed=8)]
    assert transfer(pair, msgs, limit=120)
    assert pair.received == msgs
    assert pair.a.stats.timeouts == 0 and pair.a.stats.retransmitted_bytes == 0
    pair.a.send_message(1, b"in flight")
    assert pair.a.data_to_send(pair.sim.now) and not pair.a.all_acked
    assert pair.a.retransmit_deadline is None  # a frame in flight, and no timer for it
