"""Forged, replayed and damaged frames, resume, and peers that misbehave."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable

import pytest

import protocol.session.handshakes as session_mod
from protocol import varint
from protocol.framing import FrameDecoder, encode_frame
from protocol.session import frames as w
from protocol.session.core import Closed, Connected, MessageReceived, Session, SessionConfig
from tests.session_helpers import Line, Tap, make_pair, random_messages, transfer
from tools.linksim import LinkSim

TAG = w.TAG_SIZE


class Interposer:
    """A man in the middle of what ``session`` writes: while ``edit`` is set, each frame
    is replaced by the frames ``edit`` returns. ``last_pn`` is the low 16 bits of the
    packet number of the last sealed frame the session wrote."""

    def __init__(self, session: Session) -> None:
        self.edit: Callable[[bytes], list[bytes]] | None = None
        self.last_pn = 0
        decoder = FrameDecoder(max_payload=1 << 16, crc=False)
        original = session.data_to_send

        def wrapped(now: float) -> bytes:
            out = original(now)
            frames = decoder.feed(out)
            for frame in frames:
                if sealed(frame):
                    self.last_pn = int.from_bytes(frame[1:3], "big")
            if self.edit is None:
                return out
            return b"".join(encode_frame(g, crc=False) for f in frames for g in self.edit(f))

        session.data_to_send = wrapped  # type: ignore[method-assign]


def sealed(frame: bytes) -> bool:
    """A frame under the AEAD: data, control or mixed."""
    kind = frame[0] if frame else 0
    return (w.is_part_kind(kind) or kind == w.KIND_MIXED) and len(frame) > w.HEADER_SIZE + TAG


def flip(frame: bytes, rng: random.Random, last: int | None = None) -> bytes:
    """``frame`` with one bit flipped in its ciphertext (not its header, not its tag);
    with ``last``, in one of the last ``last`` bytes before the tag."""
    lo, hi = w.HEADER_SIZE, len(frame) - TAG
    if last is not None:
        lo = max(lo, hi - last)
    out = bytearray(frame)
    out[rng.randrange(lo, hi)] ^= 1 << rng.randrange(8)
    return bytes(out)


def with_pn(frame: bytes, pn: int) -> bytes:
    """``frame`` under another packet number (low 16 bits, as on the wire)."""
    return frame[:1] + (pn & 0xFFFF).to_bytes(2, "big") + frame[3:]


def test_forged_and_replayed_acks_drop_no_data():
    pair = make_pair("XX", rate=11520.0)
    tap = Tap(pair.b)  # the receiver's frames: acknowledgements
    forward, back = Interposer(pair.a), Interposer(pair.b)
    msgs = [(1, m) for m in random_messages(30, 3000, seed=4)]
    assert transfer(pair, msgs[:10], limit=60)
    pair.sim.run(lambda s: False, 1.0)  # nothing genuine left on the line
    old_acks = [f for f in tap.frames if sealed(f)]
    heard = pair.a.stats.frames_received
    rng = random.Random(1)
    # A man in the middle now loses every third data frame on its way to the receiver,
    # so the receiver has gaps an acknowledgement could lie about...
    count = itertools.count()
    forward.edit = lambda f: [] if sealed(f) and f[0] != w.KIND_CONTROL and (
        next(count) % 3 == 0) else [f]
    # ...and replaces every acknowledgement coming back with a copy in which one bit is
    # flipped near its end (where the lane offsets and SACK ranges are): a fresh packet
    # number, so only the tag can refuse it. Taken as it reads, data would be dropped.
    back.edit = lambda f: [flip(f, rng, last=4)] if sealed(f) else [f]
    for _, data in msgs[10:]:
        pair.a.send_message(1, data)
    for _ in range(300):
        pair.sim.run(lambda s: False, 0.05)
        frame = rng.choice(old_acks)
        fresh = back.last_pn + rng.randint(1, 64)
        # It also replays old acknowledgements (the replay window refuses them), and
        # sends old ones with a bit flipped and invented ones, both under packet
        # numbers not used yet (the tag refuses them).
        invented = bytes([w.KIND_CONTROL, 0, 0]) + rng.randbytes(40)
        for attack in (frame, with_pn(flip(frame, rng), fresh), with_pn(invented, fresh)):
            pair.a.receive_data(encode_frame(attack, crc=False), pair.sim.now)
    forged_heard = pair.a.stats.frames_received - heard
    acked_during_attack = pair.a.all_acked
    assert pair.a.is_open
    # When the man in the middle leaves, everything arrives exactly once.
    forward.edit = back.edit = None
    assert transfer(pair, [], limit=120), len(pair.received)
    assert [m for _, m in pair.received] == [m for _, m in msgs]
    assert forged_heard == 0 and not acked_during_attack


def test_bit_flipped_data_frames_are_refused_and_change_nothing():
    pair = make_pair("NN", rate=11520.0)
    tap = Tap(pair.a)
    forward = Interposer(pair.a)
    msgs = [(1, m) for m in random_messages(20, 2000, seed=5)]
    assert transfer(pair, msgs[:10], limit=60)
    pair.sim.run(lambda s: False, 1.0)  # nothing genuine left on the line
    had = [f for f in tap.frames if sealed(f)]  # every sealed frame the receiver has had
    heard = pair.b.stats.frames_received
    rng = random.Random(2)
    # A man in the middle flips one bit of every frame on its way: fresh packet numbers,
    # so only the tag can refuse them. Taken as they read, they would corrupt messages.
    forward.edit = lambda f: [flip(f, rng)] if sealed(f) else [f]
    for _, data in msgs[10:]:
        pair.a.send_message(1, data)
    pair.sim.run(lambda s: False, 5.0)
    forged_heard = pair.b.stats.frames_received - heard
    # Then it replays every frame the receiver has had: only the replay window refuses
    # them (an ARQ would take the data again without a word).
    for frame in had:
        pair.b.receive_data(encode_frame(frame, crc=False), pair.sim.now)
    replays_heard = pair.b.stats.frames_received - heard - forged_heard
    assert pair.b.is_open
    # When it leaves, every message arrives once and intact.
    forward.edit = None
    assert transfer(pair, [], limit=120), len(pair.received)
    assert [m for _, m in pair.received] == [m for _, m in msgs]
    assert (forged_heard, replays_heard) == (0, 0)
    assert pair.b.is_open


def test_resume_sends_nothing_acknowledged_again():
    pair = make_pair("XX", rate=11520.0)
    msgs = [(1, m) for m in random_messages(80, 3000, seed=6)]
    total = sum(len(m) for _, m in msgs)
    for _, data in msgs:
        pair.a.send_message(1, data)
    pair.sim.run(lambda s: s.now > 8.0, 20)
    old_b = pair.b
    sent_before = pair.a.stats.data_bytes_sent
    received_before = [e.data for e in pair.events(1, MessageReceived)]
    # What the receiver holds at the break: at least its whole messages, with lengths.
    held = sum(len(varint.encode(len(m))) + len(m) for m in received_before)
    assert 0 < held < total
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
    old_events = list(iter(old_b.next_event, None))
    assert [c.reason for c in old_events if isinstance(c, Closed)] == ["resumed"]
    # What the receiver held never crossed again: at most the rest (plus framing of
    # the lengths, and the frames in flight at the break) is sent after the resume.
    resent = pair.a.stats.data_bytes_sent - sent_before
    assert resent <= (total + 8 * len(msgs)) - held + 4096 * 4


def test_resume_with_a_wrong_token_is_refused():
    pair, other = make_pair("NN", rate=11520.0), make_pair("NN", rate=11520.0)
    for p in (pair, other):
        assert p.sim.run(lambda s, p=p: p.a.is_open and p.b.is_open, 10)
    # The session named is another one, whose secret this peer never had: the token
    # it presents cannot verify.
    now = pair.sim.now + 5
    pair.a.reconnect(now)
    new_b = Session(initiator=False, config=SessionConfig(pattern="NN", rate=11520.0), now=now,
                    resume_lookup=lambda sid: other.b)
    sim = LinkSim(pair.a, new_b, Line(), Line(seed=3), now=now)
    sim.run(lambda s: any(isinstance(e, Closed) for e in s.events[1]), 30)
    assert [e.reason for e in sim.events[1] if isinstance(e, Closed)] == ["protocol"]
    assert not new_b.is_open and other.b.state == "open"
    assert other.b.next_event() is None  # nothing happened to the session named


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
    assert b.window_overruns == 0


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
    pair.a.receive_data(rng.randbytes(10000).replace(b"\x00", b"\x01"), pair.sim.now)
    assert pair.a.buffered_bytes < 4200  # a run with no delimiter holds one frame at most
