"""Mixed frames: the acknowledgement owed and small messages of several lanes share one
frame's header and tag; under faults every lane still gets each message once, in order."""

from __future__ import annotations

import pytest

from protocol import messages
from protocol.framing import FrameDecoder, encode_frame
from protocol.session import frames as w
from protocol.session.core import Closed, MessageReceived, Session, SessionConfig
from protocol.session.handshakes import PROLOGUE, SUPPORTED_VERSIONS
from protocol.session.noise import FrameSealer, Handshake
from tests.session_helpers import Faults, Line, Tap, make_pair, random_messages
from tools.linksim import LinkSim


def _received(sim: LinkSim, side: int) -> list[tuple[int, bytes]]:
    return [(e.lane, e.data) for e in sim.events[side] if isinstance(e, MessageReceived)]


def test_a_request_and_its_answer_take_one_frame_each_way():
    pair = make_pair("XX", Line(rate=1e6), Line(rate=1e6, seed=2), stream=True)
    assert pair.sim.run(lambda s: pair.a.is_open and pair.b.is_open, 10)
    pair.sim.run(lambda s: False, 1.0)  # the handshake's aftermath is over
    tap_a, tap_b = Tap(pair.a), Tap(pair.b)
    pair.a.send_message(0, b"pull")
    pair.a.send_message(2, b"batch" * 30)
    answered = False

    def hub(s: LinkSim) -> bool:
        nonlocal answered
        if not answered and len(_received(s, 1)) == 2:
            pair.b.send_message(0, b"ack")
            pair.b.send_message(1, b"changes")
            answered = True
        return len(_received(s, 0)) == 2

    assert pair.sim.run(hub, 10)
    assert _received(pair.sim, 1) == [(0, b"pull"), (2, b"batch" * 30)]
    assert _received(pair.sim, 0) == [(0, b"ack"), (1, b"changes")]
    # Both of a's messages went in one frame; b's answer carried its acknowledgement
    # of that frame, so a holds nothing unacknowledged without another frame from b.
    assert [f[0] for f in tap_a.frames] == [w.KIND_MIXED]
    assert [f[0] for f in tap_b.frames] == [w.KIND_MIXED]
    assert pair.a.all_acked
    # a acknowledges the answer on its own once the ack delay is over, and all is quiet.
    pair.sim.run(lambda s: False, 1.0)
    assert [f[0] for f in tap_a.frames] == [w.KIND_MIXED, w.KIND_CONTROL]
    assert len(tap_b.frames) == 1 and pair.b.all_acked


@pytest.mark.parametrize("faults,min_mixed", [
    # min_mixed: at least half the mixed frames these seeds give (17-19, and 8).
    (Faults(corrupt=1e-3), 8),
    (Faults(dup=0.2, loss=0.1, corrupt=5e-4), 4),
])
def test_every_lane_gets_each_message_once_in_order_under_faults(faults, min_mixed):
    pair = make_pair("XX", Line(seed=5, faults=faults), Line(seed=6, name="ba", faults=faults),
                     rate=11520.0,
                     max_frame=512)
    tap = Tap(pair.a)
    sizes = random_messages(160, 300, seed=7)
    msgs = [(i % 4, data) for i, data in enumerate(sizes)]
    for lane, data in msgs:
        pair.a.send_message(lane, data)
    done = pair.sim.run(lambda s: len(_received(s, 1)) == len(msgs) and pair.a.all_acked, 600)
    assert done and not any(isinstance(e, Closed) for e in pair.sim.events[1])
    got = _received(pair.sim, 1)
    for lane in range(4):
        assert [d for ln, d in got if ln == lane] == [d for ln, d in msgs if ln == lane]
    kinds = [f[0] for f in tap.frames]
    assert kinds.count(w.KIND_MIXED) >= min_mixed
    assert max(len(f) for f in tap.frames) <= 512
    assert pair.a.stats.lost_frames > 0  # the faults did cost frames, mixed ones included


@pytest.mark.parametrize("plaintext", [
    w.pack_parts([(0x11, b"\x00ab")]),  # one part only
    w.pack_parts([(0x11, b"\x00ab"), (w.KIND_MIXED, b"")]),  # a mixed frame inside
    w.pack_parts([(0x11, b"\x00ab"), (0x1F, b"\x00ab")]),  # lane 15 of 4
    bytes((0x11, 0x05)) + b"\x00ab",  # a part longer than the frame
], ids=["single", "nested", "no-such-lane", "overrun"])
def test_a_malformed_mixed_frame_closes_the_session(plaintext):
    b = Session(initiator=False, config=SessionConfig(pattern="NN", stream=True))
    sealer = open_by_hand(b, 0.0)
    assert b.is_open
    head = w.header(w.KIND_MIXED, sealer.next_nonce)
    _, sealed = sealer.seal(head, plaintext)  # authenticated: only its content is bad
    b.receive_data(encode_frame(head + sealed, crc=False), 0.0)
    closed = [e for e in iter(b.next_event, None) if isinstance(e, Closed)]
    assert [c.reason for c in closed] == ["protocol"]
    assert b.receive_positions[1] == 0  # nothing of the frame was taken


def open_by_hand(b: Session, now: float) -> FrameSealer:
    """Open an NN session with the responder ``b`` from the public parts (Noise,
    the hello, the frames), and return the sealer of the initiator's frames."""
    cfg = b.config
    hs = Handshake("NN", initiator=True, prologue=PROLOGUE)
    hello = messages.make("hello", versions=SUPPORTED_VERSIONS, max_frame=cfg.max_frame,
                          window=cfg.window, lanes=cfg.lanes, stream=cfg.stream or None)
    first = w.with_crc(bytes((w.KIND_HANDSHAKE, 0)) + hs.write_message(messages.encode(hello)))
    b.receive_data(encode_frame(first, crc=False), now)
    frames = FrameDecoder(max_payload=cfg.max_frame, crc=False).feed(b.data_to_send(now))
    answer = w.strip_crc(next(f for f in frames if f[0] == w.KIND_HANDSHAKE))
    assert answer is not None and answer[1] == 1
    hs.read_message(answer[2:])
    return hs.split()[0]


def test_parts_round_trip():
    parts = [(w.KIND_CONTROL, b"\x02\xa0"), (0x10, b"\x05" + b"x" * 300), (0x13, b"\x00")]
    assert w.unpack_parts(w.pack_parts(parts)) == parts
