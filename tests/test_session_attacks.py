"""Forged, replayed and damaged frames, resume, and peers that misbehave."""

from __future__ import annotations

import random

import pytest

import protocol.session.core as session_mod
from protocol.framing import encode_frame
from protocol.session.core import Closed, Connected, MessageReceived, Session, SessionConfig
from tests.session_helpers import Line, Tap, make_pair, random_messages, transfer
from tools.linksim import LinkSim


def test_forged_and_replayed_acks_drop_no_data():
    pair = make_pair("XX", rate=11520.0)
    tap = Tap(pair.b)  # the receiver's frames: acknowledgements
    msgs = [(1, m) for m in random_messages(30, 3000, seed=4)]
    assert transfer(pair, msgs[:10], limit=60)
    old_acks = list(tap.frames)
    # Now the real acknowledgements stop reaching the sender...
    pair.sim.lines[1].outages.append((pair.sim.now, pair.sim.now + 20))
    for _, data in msgs[10:]:
        pair.a.send_message(1, data)
    rng = random.Random(1)
    base = [lane.base for lane in pair.a._tx.lanes]
    stats_before = pair.a._opener.stats.refused
    for _ in range(300):
        pair.sim.run(lambda s: False, 0.05)
        frame = rng.choice(old_acks)
        forged = bytearray(frame)
        forged[rng.randrange(len(forged))] ^= 1 << rng.randrange(8)
        # ...and an attacker replays old ones, flips bits, and invents new ones.
        for attack in (frame, bytes(forged), bytes([0x20]) + rng.randbytes(40)):
            pair.a.receive_data(encode_frame(attack, crc=False), pair.sim.now)
    assert [lane.base for lane in pair.a._tx.lanes] == base
    assert not pair.a.all_acked
    assert pair.a._opener.stats.refused - stats_before >= 600
    assert pair.a.is_open
    # When the line heals, everything arrives exactly once.
    assert transfer(pair, [], limit=120)
    assert [m for _, m in pair.received] == [m for _, m in msgs]


def test_bit_flipped_data_frames_are_refused_and_change_nothing():
    pair = make_pair("NN", rate=11520.0)
    tap = Tap(pair.a)
    msgs = [(1, m) for m in random_messages(20, 2000, seed=5)]
    assert transfer(pair, msgs, limit=60)
    cum = [lane.cum for lane in pair.b._rx.lanes]
    rng = random.Random(2)
    for frame in tap.frames:
        for _ in range(3):
            bad = bytearray(frame)
            bad[rng.randrange(len(bad))] ^= 1 << rng.randrange(8)
            pair.b.receive_data(encode_frame(bytes(bad), crc=False), pair.sim.now)
        pair.b.receive_data(encode_frame(frame, crc=False), pair.sim.now)  # replay
    assert [lane.cum for lane in pair.b._rx.lanes] == cum
    assert pair.b.next_event() is None  # nothing delivered twice
    assert pair.b.is_open


def test_resume_sends_nothing_acknowledged_again():
    pair = make_pair("XX", rate=11520.0)
    msgs = [(1, m) for m in random_messages(80, 3000, seed=6)]
    total = sum(len(m) for _, m in msgs)
    for _, data in msgs:
        pair.a.send_message(1, data)
    pair.sim.run(lambda s: s.now > 8.0, 20)
    old_b = pair.b
    acked_before = pair.a._tx.lanes[1].base
    sent_before = pair.a.stats.data_bytes_sent
    received_before = [e.data for e in pair.events(1, MessageReceived)]
    assert 0 < acked_before < total
    # The link dies; the kiosk dials again on a new one.
    now = pair.sim.now + 30
    pair.a.reconnect(now)
    new_b = Session(
        initiator=False, config=SessionConfig(pattern="XX", rate=11520.0),
        static_key=pair.b_key, now=now,
        resume_lookup=lambda sid: old_b if sid == old_b.session_id else None,
    )
    sim = LinkSim(pair.a, new_b, Line(seed=9), Line(seed=10), now=now)
    got: list[bytes] = []

    def done(s: LinkSim) -> bool:
        got.extend(e.data for e in s.events[1] if isinstance(e, MessageReceived))
        s.events[1][:] = [e for e in s.events[1] if not isinstance(e, MessageReceived)]
        return pair.a.all_acked and len(received_before) + len(got) >= len(msgs)

    assert sim.run(done, 300)
    assert received_before + got == [m for _, m in msgs]
    assert any(isinstance(e, Connected) and e.resumed for e in sim.events[0])
    assert [c.reason for c in old_b._events if isinstance(c, Closed)] == ["resumed"]
    # Acknowledged bytes never crossed again: at most what was unacknowledged
    # at the break (plus framing of the lengths) is sent after the resume.
    resent = pair.a.stats.data_bytes_sent - sent_before
    assert resent <= (total + 8 * len(msgs)) - acked_before + 4096 * 4


def test_resume_with_a_wrong_token_is_refused():
    pair = make_pair("NN", rate=11520.0)
    assert pair.sim.run(lambda s: pair.a.is_open and pair.b.is_open, 10)
    old_b = pair.b
    old_b._resume_secret = b"\x00" * 32  # the peer cannot prove the session
    now = pair.sim.now + 5
    pair.a.reconnect(now)
    new_b = Session(initiator=False, config=SessionConfig(pattern="NN", rate=11520.0), now=now,
                    resume_lookup=lambda sid: old_b)
    sim = LinkSim(pair.a, new_b, Line(), Line(seed=3), now=now)
    sim.run(lambda s: any(isinstance(e, Closed) for e in s.events[1]), 30)
    assert [e.reason for e in sim.events[1] if isinstance(e, Closed)] == ["protocol"]
    assert not new_b.is_open and old_b.state == "open"


def test_peer_with_another_version_is_refused_with_a_reason(monkeypatch):
    monkeypatch.setattr(session_mod, "SUPPORTED_VERSIONS", [7])
    a = Session(initiator=True, config=SessionConfig(pattern="NN"))
    monkeypatch.setattr(session_mod, "SUPPORTED_VERSIONS", [1])
    b = Session(initiator=False, config=SessionConfig(pattern="NN"))
    sim = LinkSim(a, b, Line(), Line(seed=2))
    sim.run(lambda s: len(s.events[0]) and len(s.events[1]), 10)
    assert sim.events[1] == [Closed("version", "no common version: peer speaks [7]")]
    assert sim.events[0][0].reason == "version" and sim.events[0][0].by_peer


def test_absurd_window_and_frame_claims_are_clamped():
    a = Session(initiator=True, config=SessionConfig(pattern="NN", window=1 << 40,
                                                     max_frame=1 << 30))
    b = Session(initiator=False, config=SessionConfig(pattern="NN"))
    sim = LinkSim(a, b, Line(rate=1e6), Line(rate=1e6, seed=2))
    assert sim.run(lambda s: b.is_open and a.is_open, 10)
    assert b.stats.clamped == 1
    pair_msgs = random_messages(20, 20000, seed=3)
    for m in pair_msgs:
        a.send_message(1, m)
        b.send_message(1, m)
    assert sim.run(lambda s: a.all_acked and b.all_acked, 120)
    assert [e.data for e in sim.events[1] if isinstance(e, MessageReceived)] == pair_msgs
    assert b._rx.lanes[1].beyond_window == 0


@pytest.mark.parametrize("junk", ["random", "encrypted-kind"])
def test_a_flood_of_bad_frames_is_counted_then_closed(junk):
    pair = make_pair("NN", Line(rate=1e6), Line(rate=1e6, seed=2), flood_limit=500)
    assert pair.sim.run(lambda s: pair.a.is_open, 10)
    rng = random.Random(4)
    for _ in range(600):
        body = rng.randbytes(60)
        if junk == "encrypted-kind":
            body = bytes([0x11]) + body
        pair.a.receive_data(encode_frame(body, crc=False), pair.sim.now)
    closed = [e for e in iter(pair.a.next_event, None) if isinstance(e, Closed)]
    assert closed and closed[0].reason == "flood"
    assert pair.a._decoder.buffered < 4200
