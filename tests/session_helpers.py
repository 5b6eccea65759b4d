"""Helpers for session tests: key pairs, session pairs, a transfer loop and a frame tap."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from protocol.framing import FrameDecoder
from protocol.session.core import Closed, Connected, MessageReceived, Session, SessionConfig
from tools.linkfaults import Faults
from tools.linksim import Line, LinkSim


def public(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes_raw()


@dataclass
class Pair:
    a: Session
    b: Session
    sim: LinkSim
    a_key: X25519PrivateKey | None = None
    b_key: X25519PrivateKey | None = None
    received: list[tuple[int, bytes]] = field(default_factory=list)

    def events(self, side: int, kind: type) -> list:
        return [e for e in self.sim.events[side] if isinstance(e, kind)]


def make_pair(
    pattern: str = "XX",
    ab: Line | None = None,
    ba: Line | None = None,
    **cfg: object,
) -> Pair:
    a_key = b_key = None
    if pattern != "NN":
        a_key, b_key = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    config = SessionConfig(pattern=pattern, **cfg)  # type: ignore[arg-type]
    a = Session(
        initiator=True, config=config, static_key=a_key,
        remote_static=public(b_key) if pattern == "IK" and b_key else None,
    )
    b = Session(initiator=False, config=SessionConfig(pattern=pattern, **cfg),  # type: ignore[arg-type]
                static_key=b_key)
    sim = LinkSim(a, b, ab or Line(), ba or Line(seed=2, name="ba"))
    return Pair(a, b, sim, a_key, b_key)


def random_messages(n: int, size: int, seed: int = 1) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(rng.randint(1, size)) for _ in range(n)]


def transfer(pair: Pair, msgs: list[tuple[int, bytes]], limit: float) -> bool:
    """Send ``(lane, data)`` from a to b; True when all arrived and were acknowledged."""
    pending = list(msgs)

    def until(sim: LinkSim) -> bool:
        while pending and pair.a.can_send(pending[0][0], len(pending[0][1])):
            lane, data = pending.pop(0)
            pair.a.send_message(lane, data)
        for ev in sim.events[1]:
            if isinstance(ev, MessageReceived):
                pair.received.append((ev.lane, ev.data))
        sim.events[1][:] = [e for e in sim.events[1] if not isinstance(e, MessageReceived)]
        if any(isinstance(e, Closed) for e in sim.events[0] + sim.events[1]):
            return True
        return not pending and pair.a.all_acked and len(pair.received) >= len(msgs)

    return pair.sim.run(until, limit) and not any(
        isinstance(e, Closed) for e in pair.sim.events[0] + pair.sim.events[1]
    )


class Tap:
    """Records every frame a session writes (to replay them, or to read their kinds)."""

    def __init__(self, session: Session) -> None:
        self.frames: list[bytes] = []
        self._decoder = FrameDecoder(max_payload=1 << 16, crc=False)
        original = session.data_to_send

        def spy(now: float) -> bytes:
            out = original(now)
            self.frames += self._decoder.feed(out)
            return out

        session.data_to_send = spy  # type: ignore[method-assign]


__all__ = ["Closed", "Connected", "Faults", "Line", "MessageReceived", "Pair", "Tap", "make_pair",
           "transfer"]
