"""A responder's admission of key exchanges (``admit_handshake``): a first
handshake message it does not admit is dropped before any DH and counted; the
initiator's retransmission gets in once admission says yes. Simulated clock."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from protocol.session.core import Session, SessionConfig
from tests.test_session_takeover import Bus, kiosk_session


def test_an_unadmitted_first_message_is_dropped_and_the_retry_gets_in() -> None:
    hub_key, kiosk_key = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    asked: list[float] = []
    admit = [False]

    def admission(now: float) -> bool:
        asked.append(now)
        return admit[0]

    hub = Session(initiator=False, config=SessionConfig(), static_key=hub_key,
                  admit_handshake=admission)
    kiosk = kiosk_session("XX", kiosk_key, hub_key)
    bus = Bus(hub, kiosk)
    assert not bus.run(lambda: kiosk.is_open, 2.5)
    assert asked and hub.stats.handshakes_throttled == len(asked)
    assert hub.stats.frames_sent == 0  # nothing answered: no welcome, no refusal
    assert hub.state == "handshake" and kiosk.state == "handshake"
    admit[0] = True
    assert bus.run(lambda: hub.is_open and kiosk.is_open, 10)
    throttled = hub.stats.handshakes_throttled
    assert throttled == len(asked) - 1  # the one admitted was asked once, not counted


def test_a_second_handshake_beside_an_open_session_is_rationed_too() -> None:
    hub_key, kiosk_key = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    admit = [True]
    hub = Session(initiator=False, config=SessionConfig(), static_key=hub_key,
                  admit_handshake=lambda now: admit[0])
    kiosk = kiosk_session("XX", kiosk_key, hub_key)
    bus = Bus(hub, kiosk)
    assert bus.run(lambda: hub.is_open and kiosk.is_open, 5)
    sid = hub.session_id
    admit[0] = False
    restarted = kiosk_session("XX", kiosk_key, hub_key, now=bus.now)  # same key, new process
    bus.remove(kiosk)
    bus.add(restarted)
    assert not bus.run(lambda: restarted.is_open, 2.0)
    assert hub.is_open and hub.session_id == sid and not hub.is_taking_over
    assert hub.stats.handshakes_throttled >= 1 and hub.stats.takeovers == 0
    admit[0] = True
    assert bus.run(lambda: restarted.is_open and hub.stats.takeovers == 1, 10)


def test_without_admission_every_first_message_is_taken() -> None:
    hub_key, kiosk_key = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    hub = Session(initiator=False, config=SessionConfig(), static_key=hub_key)
    kiosk = kiosk_session("XX", kiosk_key, hub_key)
    bus = Bus(hub, kiosk)
    assert bus.run(lambda: hub.is_open and kiosk.is_open, 5)
    assert hub.stats.handshakes_throttled == 0
