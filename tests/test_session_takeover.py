"""An open responder and a new handshake on its line: strangers, other keys, a
restarted peer, a resume on the same link, refused keys, and garbage."""

from __future__ import annotations

import random

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from protocol import messages
from protocol.errors import LocalProtocolError
from protocol.framing import encode_frame
from protocol.session import frames as w
from protocol.session.core import (
    Closed,
    Connected,
    Event,
    MessageReceived,
    Session,
    SessionConfig,
)
from protocol.session.events import CLOSED, HANDSHAKE, OPEN, RESUMING, TRANSITIONS, next_state
from protocol.session.handshakes import MAX_URGENT
from tests.session_helpers import Tap, public

STEP = 0.005  #: the bus's clock tick; every write arrives one tick later


class Bus:
    """One line, a simulated clock: what the responder writes reaches every
    initiator on the line, what an initiator writes reaches the responder."""

    def __init__(self, hub: Session, *kiosks: Session, now: float = 0.0) -> None:
        self.hub = hub
        self.kiosks = list(kiosks)
        self.now = now
        self.events: dict[int, list[Event]] = {}
        self._flight: list[tuple[Session, bytes]] = []

    def add(self, kiosk: Session) -> None:
        self.kiosks.append(kiosk)

    def remove(self, kiosk: Session) -> None:
        """The kiosk's process died: it writes and reads nothing more."""
        self.kiosks.remove(kiosk)

    def of(self, s: Session, kind: type = object) -> list:
        return [e for e in self.events.get(id(s), []) if isinstance(e, kind)]

    def inject(self, frame: bytes) -> None:
        """Put one session frame on the line toward the responder, now."""
        self.hub.receive_data(encode_frame(frame, crc=False), self.now)

    def tick(self) -> None:
        for dest, data in self._flight:
            if dest is self.hub or dest in self.kiosks:
                dest.receive_data(data, self.now)
        self._flight = []
        for s in (self.hub, *self.kiosks):
            out = s.data_to_send(self.now)
            if out:
                dests = self.kiosks if s is self.hub else [self.hub]
                self._flight += [(d, out) for d in dests]
            while (ev := s.next_event()) is not None:
                self.events.setdefault(id(s), []).append(ev)
        self.now += STEP

    def run(self, until: object, limit: float) -> bool:
        for _ in range(int(limit / STEP)):
            self.tick()
            if until():  # type: ignore[operator]
                return True
        return False


def xx(**kw: object) -> SessionConfig:
    return SessionConfig(pattern="XX", **kw)  # type: ignore[arg-type]


def setup(pattern: str = "XX", accept: object = None) -> tuple[Bus, Session, Session, object]:
    """An open session between a kiosk (key returned) and the hub, on a bus."""
    hub_key, kiosk_key = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    cfg = SessionConfig(pattern=pattern)
    hub = Session(initiator=False, config=cfg, static_key=hub_key,
                  accept_static=accept)  # type: ignore[arg-type]
    kiosk = kiosk_session(pattern, kiosk_key, hub_key)
    bus = Bus(hub, kiosk)
    assert bus.run(lambda: hub.is_open and kiosk.is_open, 5)
    bus.hub_key = hub_key  # type: ignore[attr-defined]
    return bus, hub, kiosk, kiosk_key


def kiosk_session(pattern: str, key: X25519PrivateKey, hub_key: X25519PrivateKey,
                  now: float = 0.0) -> Session:
    pin = public(hub_key) if pattern == "IK" else None
    return Session(initiator=True, config=SessionConfig(pattern=pattern), static_key=key,
                   remote_static=pin, now=now)


class Traffic:
    """Messages both ways between two sessions, checked for loss, order and duplicates."""

    def __init__(self, bus: Bus, kiosk: Session, seed: int = 1) -> None:
        self.bus, self.kiosk, self.rng = bus, kiosk, random.Random(seed)
        self.sent: dict[int, list[bytes]] = {id(bus.hub): [], id(kiosk): []}

    def send(self, n: int) -> None:
        for s in (self.bus.hub, self.kiosk):
            for _ in range(n):
                data = self.rng.randbytes(self.rng.randint(1, 3000))
                s.send_message(1, data)
                self.sent[id(s)].append(data)

    def got(self, s: Session) -> list[bytes]:
        return [e.data for e in self.bus.of(s, MessageReceived)]

    def settled(self) -> bool:
        hub, kiosk = self.bus.hub, self.kiosk
        return self.got(hub) == self.sent[id(kiosk)] and self.got(kiosk) == self.sent[id(hub)]

    def check(self, limit: float = 20) -> None:
        hub, kiosk = self.bus.hub, self.kiosk
        self.bus.run(lambda: self.settled() and hub.all_acked and kiosk.all_acked, limit)
        assert self.got(hub) == self.sent[id(kiosk)]  # all of it, once, in order
        assert self.got(kiosk) == self.sent[id(hub)]


def assert_undisturbed(bus: Bus, hub: Session, kiosk: Session, sid: bytes | None) -> None:
    assert hub.is_open and kiosk.is_open
    assert hub.session_id == sid and hub.stats.takeovers == 0
    assert len(bus.of(hub, Connected)) == 1 and not bus.of(hub, Closed)
    assert len(bus.of(kiosk, Connected)) == 1 and not bus.of(kiosk, Closed)


# -- strangers and other keys --------------------------------------------------


STRANGERS = {  # the stranger, and the pattern of the session it comes upon
    "xx-other-key": "XX", "ik-wrong-hub-key": "IK", "xx-pins-wrong-hub": "XX",
    "nn-anonymous": "NN", "ik-on-xx": "XX",
}


@pytest.mark.parametrize("stranger", STRANGERS)
def test_a_live_session_survives_a_strangers_handshake(stranger):
    bus, hub, kiosk, _ = setup(STRANGERS[stranger])
    sid = hub.session_id
    traffic = Traffic(bus, kiosk)
    traffic.send(20)
    bus.run(lambda: False, 0.05)  # data in flight both ways when the stranger comes
    other = X25519PrivateKey.generate()
    wrong = public(X25519PrivateKey.generate())
    pattern, pin = {"xx-other-key": ("XX", None), "ik-wrong-hub-key": ("IK", wrong),
                    "xx-pins-wrong-hub": ("XX", wrong), "nn-anonymous": ("NN", None),
                    "ik-on-xx": ("IK", public(bus.hub_key))}[stranger]  # type: ignore[attr-defined]
    cfg = SessionConfig(pattern=pattern)
    s = Session(initiator=True, config=cfg, static_key=None if pattern == "NN" else other,
                remote_static=pin, now=bus.now)
    bus.add(s)
    traffic.send(20)
    bus.run(lambda: False, 3)  # the stranger's handshake, repeated while unanswered
    traffic.check()
    assert_undisturbed(bus, hub, kiosk, sid)
    assert not s.is_open
    closed = [(c.reason, c.by_peer) for c in bus.of(s, Closed)]
    if stranger == "xx-other-key":  # told why, under the complete handshake's own keys
        assert closed == [("busy", True)] and hub.stats.handshakes_dropped == 1
    elif stranger == "nn-anonymous":  # nothing but a resume could prove it is ours
        assert closed == [] and s.state == HANDSHAKE and hub.stats.handshakes_dropped >= 2
    elif stranger == "ik-wrong-hub-key":  # fails Noise at the hub, each time it is sent
        assert closed == [] and hub.stats.handshakes_dropped >= 2
        assert hub.stats.bad_handshake == hub.stats.handshakes_dropped
    elif stranger == "ik-on-xx":  # its first message is no hello to an XX hub
        assert closed == [("protocol", True)] and hub.stats.handshakes_dropped >= 1
    else:  # the stranger gives up on our key; its handshake waits at the hub, alone
        assert closed == [("auth", False)] and hub.is_taking_over


@pytest.mark.parametrize("pattern", ["XX", "IK"])
def test_another_enrolled_keys_handshake_is_dropped(pattern):
    enrolled: set[bytes] = set()
    bus, hub, kiosk, kiosk_key = setup(pattern, accept=lambda k: k in enrolled or not enrolled)
    enrolled.add(public(kiosk_key))
    other = X25519PrivateKey.generate()
    enrolled.add(public(other))  # the hub would accept this kiosk on a link of its own
    sid = hub.session_id
    traffic = Traffic(bus, kiosk, seed=2)
    traffic.send(10)
    second = kiosk_session(pattern, other, bus.hub_key, now=bus.now)  # type: ignore[attr-defined]
    bus.add(second)
    traffic.send(10)
    assert bus.run(lambda: bool(bus.of(second, Closed)), 5)
    traffic.send(10)
    traffic.check()
    assert_undisturbed(bus, hub, kiosk, sid)
    assert [(c.reason, c.by_peer) for c in bus.of(second, Closed)] == [("busy", True)]
    assert hub.stats.handshakes_dropped == 1


def test_a_replayed_ik_first_message_cannot_take_over():
    """IK's first message can be replayed, and the answer to it is the last
    message: only a frame under the new keys proves the peer is there."""
    hub_key, kiosk_key = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    earlier = kiosk_session("IK", kiosk_key, hub_key)
    tap = Tap(earlier)
    earlier.data_to_send(0.0)
    hello = next(f for f in tap.frames if f[0] == w.KIND_HANDSHAKE)
    hub = Session(initiator=False, config=SessionConfig(pattern="IK", dead_timeout=30),
                  static_key=hub_key)
    kiosk = kiosk_session("IK", kiosk_key, hub_key)
    bus = Bus(hub, kiosk)
    assert bus.run(lambda: hub.is_open and kiosk.is_open, 5)
    sid = hub.session_id
    traffic = Traffic(bus, kiosk, seed=3)
    for _ in range(3):
        bus.inject(hello)  # the same kiosk's key: it passes every check but liveness
        traffic.send(5)
        bus.run(lambda: False, 1)
    traffic.check()
    assert_undisturbed(bus, hub, kiosk, sid)
    bus.run(lambda: False, 35)  # the replay's handshake is forgotten, not kept forever
    # A repeat of the replayed message is answered, not started again.
    assert hub.stats.handshakes_dropped == 1 and not hub.is_taking_over


# -- a restarted peer ----------------------------------------------------------


@pytest.mark.parametrize("pattern", ["XX", "IK"])
def test_a_restarted_peer_takes_over_the_session(pattern):
    bus, hub, kiosk, kiosk_key = setup(pattern)
    old_sid = hub.session_id
    traffic = Traffic(bus, kiosk, seed=4)
    traffic.send(10)
    traffic.check()
    hub.send_message(1, b"for the old process, never acknowledged")
    bus.remove(kiosk)  # the kiosk's process dies; a new one starts on the same line
    bus.run(lambda: False, 0.5)
    again = kiosk_session(pattern, kiosk_key, bus.hub_key, now=bus.now)  # type: ignore[attr-defined]
    bus.add(again)
    again.send_message(1, b"hello from the new process")
    assert bus.run(lambda: bool(bus.of(hub, MessageReceived)[10:]), 5)
    connected = bus.of(hub, Connected)
    assert len(connected) == 2 and not connected[1].resumed
    assert connected[1].remote_static == public(kiosk_key)
    assert hub.session_id == connected[1].session_id != old_sid
    assert hub.session_id == bus.of(again, Connected)[0].session_id
    assert not bus.of(hub, Closed) and hub.stats.takeovers == 1
    # The new session starts with fresh lanes both ways.
    assert bus.of(hub, MessageReceived)[10].data == b"hello from the new process"
    fresh = Traffic(bus, again, seed=5)
    fresh.sent[id(hub)] = []
    hub_got_before = len(fresh.got(hub))
    fresh.send(10)
    bus.run(lambda: len(fresh.got(hub)) - hub_got_before == 10 and hub.all_acked
            and again.all_acked, 20)
    assert fresh.got(hub)[hub_got_before:] == fresh.sent[id(again)]
    assert fresh.got(again) == fresh.sent[id(hub)]  # not the old process's message


def test_the_peer_resumes_on_the_same_link():
    bus, hub, kiosk, _ = setup()
    sid = hub.session_id
    traffic = Traffic(bus, kiosk, seed=6)
    traffic.send(30)
    bus.run(lambda: False, 0.05)
    sent_before = kiosk.stats.data_bytes_sent + hub.stats.data_bytes_sent
    kiosk.reconnect(bus.now)  # the kiosk thinks the line broke; the hub's session is open
    assert kiosk.state == HANDSHAKE
    assert bus.run(lambda: kiosk.state == RESUMING, 2)
    traffic.send(10)
    traffic.check()
    assert hub.session_id == kiosk.session_id == sid
    assert [c.resumed for c in bus.of(hub, Connected)] == [False, True]
    assert [c.resumed for c in bus.of(kiosk, Connected)] == [False, True]
    assert hub.stats.takeovers == 1 and not bus.of(hub, Closed)
    resent = kiosk.stats.data_bytes_sent + hub.stats.data_bytes_sent - sent_before
    assert resent < 2 * 40 * 3010  # what was in flight, not everything again


def test_a_resume_with_a_wrong_token_on_the_same_link_changes_nothing():
    bus, hub, kiosk, kiosk_key = setup()
    sid = hub.session_id
    traffic = Traffic(bus, kiosk, seed=7)
    traffic.send(5)
    # Same key, our session's id, but not its secret: it has the secret of a
    # session it opened with another hub.
    forger = kiosk_session("XX", kiosk_key, bus.hub_key, now=bus.now)  # type: ignore[attr-defined]
    elsewhere = Session(initiator=False, config=xx(), static_key=X25519PrivateKey.generate(),
                        now=bus.now)
    assert Bus(elsewhere, forger, now=bus.now).run(lambda: forger.is_open, 5)
    assert forger.session_id != sid
    forger.session_id = sid
    forger.reconnect(bus.now)
    bus.add(forger)
    assert bus.run(lambda: bool(bus.of(forger, Closed)), 5)
    traffic.send(5)
    traffic.check()
    assert_undisturbed(bus, hub, kiosk, sid)
    assert [(c.reason, c.by_peer) for c in bus.of(forger, Closed)] == [("protocol", True)]


# -- refusing a key ------------------------------------------------------------


@pytest.mark.parametrize("pattern", ["XX", "IK"])
@pytest.mark.parametrize("how", ["accept_static", "pinned"])
def test_a_refused_key_is_told_why(pattern, how):
    hub_key, kiosk_key = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    asked: list[bytes] = []

    def accept(key: bytes) -> bool:
        asked.append(key)
        return False

    kw = ({"accept_static": accept} if how == "accept_static"
          else {"remote_static": public(X25519PrivateKey.generate())})
    hub = Session(initiator=False, config=SessionConfig(pattern=pattern), static_key=hub_key,
                  **kw)  # type: ignore[arg-type]
    kiosk = kiosk_session(pattern, kiosk_key, hub_key)
    bus = Bus(hub, kiosk)
    assert bus.run(lambda: bool(bus.of(kiosk, Closed)), 5)
    assert [(c.reason, c.by_peer) for c in bus.of(kiosk, Closed)] == [("unknown-key", True)]
    assert [c.reason for c in bus.of(hub, Closed)] == ["unknown-key"]
    assert not bus.of(hub, Connected) and not hub.is_open
    if how == "accept_static":
        assert asked == [public(kiosk_key)]


def test_an_accepted_key_opens():
    hub_key, kiosk_key = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    hub = Session(initiator=False, config=xx(), static_key=hub_key,
                  accept_static=lambda k: k == public(kiosk_key))
    kiosk = kiosk_session("XX", kiosk_key, hub_key)
    bus = Bus(hub, kiosk)
    assert bus.run(lambda: hub.is_open and kiosk.is_open, 5)


# -- garbage -------------------------------------------------------------------


def handshake_frame(step: int, body: bytes) -> bytes:
    return w.with_crc(bytes((w.KIND_HANDSHAKE, step)) + body)


GARBAGE = {
    "empty": lambda rng: b"",
    "kind-only": lambda rng: bytes((w.KIND_HANDSHAKE,)),
    "bad-crc": lambda rng: handshake_frame(0, rng.randbytes(60))[:-1] + b"\x00",
    "truncated-key": lambda rng: handshake_frame(0, rng.randbytes(20)),
    "random-hello": lambda rng: handshake_frame(0, rng.randbytes(32 + rng.randrange(80))),
    "refusal": lambda rng: w.with_crc(bytes((w.KIND_REFUSE,)) + rng.randbytes(30)),
    "later-step": lambda rng: handshake_frame(2, rng.randbytes(80)),
}


@pytest.mark.parametrize("garbage", GARBAGE)
def test_garbage_first_messages_change_nothing(garbage):
    bus, hub, kiosk, _ = setup()
    sid = hub.session_id
    rng = random.Random(garbage)
    traffic = Traffic(bus, kiosk, seed=8)
    for _ in range(20):
        bus.inject(GARBAGE[garbage](rng))
        traffic.send(1)
        bus.run(lambda: False, 0.05)
    traffic.check()
    assert_undisturbed(bus, hub, kiosk, sid)
    assert not hub.is_taking_over or garbage == "random-hello"


def test_a_flood_of_first_messages_holds_one_second_handshake():
    bus, hub, kiosk, _ = setup()
    sid = hub.session_id
    traffic = Traffic(bus, kiosk, seed=9)
    traffic.send(5)
    for hello in [fresh_hello() for _ in range(50)]:
        hub.receive_data(encode_frame(hello, crc=False), bus.now)
        assert hub.urgent_frames <= MAX_URGENT
    assert hub.stats.handshakes_dropped == 49 and hub.is_taking_over
    # Hellos we refuse, each for its own reason: the refusals wait in a bounded queue.
    for i in range(50):
        hello = messages.make("hello", versions=[100 + i], max_frame=4096, window=65536, lanes=4)
        bus.inject(handshake_frame(0, bytes(32) + messages.encode(hello)))
        assert hub.urgent_frames <= MAX_URGENT
    assert hub.stats.handshakes_dropped == 100
    traffic.check()
    assert_undisturbed(bus, hub, kiosk, sid)


def fresh_hello() -> bytes:
    s = Session(initiator=True, config=xx(), static_key=X25519PrivateKey.generate())
    tap = Tap(s)
    s.data_to_send(0.0)
    return tap.frames[0]


def test_strangers_handshakes_do_not_keep_a_dead_session_alive():
    """Only the peer's authenticated frames count as signs of life: a kiosk gone
    silent is timed out however many strangers knock."""
    hub_key, kiosk_key = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    hub = Session(initiator=False, config=xx(dead_timeout=10), static_key=hub_key)
    kiosk = kiosk_session("XX", kiosk_key, hub_key)
    bus = Bus(hub, kiosk)
    assert bus.run(lambda: hub.is_open, 5)
    bus.remove(kiosk)
    gone = bus.now
    for _ in range(15):
        bus.inject(fresh_hello())
        bus.run(lambda: False, 1)
    assert [c.reason for c in bus.of(hub, Closed)] == ["timeout"]
    assert hub.stats.takeovers == 0 and bus.now - gone >= 10


# -- the state table -----------------------------------------------------------


def test_the_state_table_is_the_only_way_to_change_state():
    assert set(TRANSITIONS) == {HANDSHAKE, RESUMING, OPEN, CLOSED}
    assert TRANSITIONS[OPEN]["take-over"] == OPEN and TRANSITIONS[CLOSED] == {}
    bus, hub, kiosk, _ = setup()
    with pytest.raises(LocalProtocolError):
        next_state(hub.state, "resumed")  # an event the open state does not know
    with pytest.raises(LocalProtocolError):
        hub.reconnect(bus.now)  # a responder never reconnects
    kiosk.close()
    with pytest.raises(LocalProtocolError):
        kiosk.reconnect(bus.now)  # nothing leaves the closed state
    assert kiosk.state == CLOSED
