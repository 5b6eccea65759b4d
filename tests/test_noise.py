"""Noise handshakes and per-frame AEAD: vectors, round trips, forgery, bad input."""

from __future__ import annotations

import doctest
import json
import random
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

import protocol
import protocol.session.noise
from protocol.errors import LocalProtocolError, RemoteProtocolError
from protocol.session.noise import (
    MAX_MESSAGE,
    MAX_NONCE,
    TAG_SIZE,
    CipherState,
    FrameOpener,
    FrameSealer,
    Handshake,
)
from protocol.session.replay import ReplayWindow

VECTORS = json.loads(
    (Path(protocol.__file__).parent / "vectors" / "noise.json").read_text())["vectors"]

PATTERNS = ["NN", "XX", "IK"]
HASHES = ["SHA256", "BLAKE2s"]


def _key(seed: int) -> X25519PrivateKey:
    return X25519PrivateKey.from_private_bytes(bytes([seed]) * 32)


def _pub(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes_raw()


INIT_S, RESP_S, OTHER_S = _key(1), _key(2), _key(3)


def pair(
    pattern: str,
    *,
    hash: str = "SHA256",
    prologue: tuple[bytes, bytes] = (b"haven v1", b"haven v1"),
    init_remote: bytes | None = None,
    resp_remote: bytes | None = None,
    init_s: X25519PrivateKey | None = None,
    ephemerals: tuple[X25519PrivateKey, X25519PrivateKey] | None = None,
) -> tuple[Handshake, Handshake]:
    statics = pattern != "NN"
    if pattern == "IK" and init_remote is None:
        init_remote = _pub(RESP_S)
    init = Handshake(
        pattern,
        initiator=True,
        static_key=(init_s or INIT_S) if statics else None,
        remote_static=init_remote,
        prologue=prologue[0],
        ephemeral_key=ephemerals[0] if ephemerals else None,
        hash=hash,
    )
    resp = Handshake(
        pattern,
        initiator=False,
        static_key=RESP_S if statics else None,
        remote_static=resp_remote,
        prologue=prologue[1],
        ephemeral_key=ephemerals[1] if ephemerals else None,
        hash=hash,
    )
    return init, resp


def run(init: Handshake, resp: Handshake, tamper: int | None = None, at: int = 0) -> int:
    """Drive both sides to completion and return how many messages that took;
    optionally flip bit ``at`` of message ``tamper``."""
    sides = (init, resp)
    i = 0
    while not (init.is_complete and resp.is_complete):
        writer, reader = sides[i % 2], sides[1 - i % 2]
        msg = bytearray(writer.write_message(f"payload {i}".encode()))
        if i == tamper:
            msg[(at // 8) % len(msg)] ^= 1 << (at % 8)
            reader.read_message(bytes(msg))  # a payload still in the clear may just differ
        else:
            assert reader.read_message(bytes(msg)) == f"payload {i}".encode()
        i += 1
    return i


# -- the cacophony vectors ---------------------------------------------------


@pytest.mark.parametrize("v", VECTORS, ids=[v["protocol_name"] for v in VECTORS])
def test_cacophony_vector(v: dict) -> None:  # type: ignore[type-arg]
    _, pattern, _, _, hash = v["protocol_name"].split("_")

    def key(name: str) -> X25519PrivateKey | None:
        return X25519PrivateKey.from_private_bytes(bytes.fromhex(v[name])) if name in v else None

    remote = bytes.fromhex(v["init_remote_static"]) if "init_remote_static" in v else None
    init = Handshake(
        pattern,
        initiator=True,
        static_key=key("init_static"),
        remote_static=remote,
        prologue=bytes.fromhex(v["init_prologue"]),
        ephemeral_key=key("init_ephemeral"),
        hash=hash,
    )
    resp = Handshake(
        pattern,
        initiator=False,
        static_key=key("resp_static"),
        prologue=bytes.fromhex(v["resp_prologue"]),
        ephemeral_key=key("resp_ephemeral"),
        hash=hash,
    )
    assert init.protocol_name == resp.protocol_name == v["protocol_name"]
    sides = (init, resp)
    transport: dict[int, tuple[FrameSealer, FrameOpener]] = {}
    for i, m in enumerate(v["messages"]):
        writer, reader = sides[i % 2], sides[1 - i % 2]
        payload, expected = bytes.fromhex(m["payload"]), bytes.fromhex(m["ciphertext"])
        if not writer.is_complete:
            wire = writer.write_message(payload)
            assert wire == expected, f"handshake message {i}"
            assert reader.read_message(wire) == payload
            continue
        if not transport:
            assert init.handshake_hash == resp.handshake_hash
            assert init.handshake_hash.hex() == v["handshake_hash"]
            (s_i, o_i), (s_r, o_r) = init.split(), resp.split()
            transport = {id(init): (s_i, o_r), id(resp): (s_r, o_i)}
        sealer, opener = transport[id(writer)]
        # Explicit nonces with an empty header reproduce Noise's in-order transport.
        nonce, wire = sealer.seal(b"", payload)
        assert wire == expected, f"transport message {i}"
        assert opener.open(nonce, b"", wire) == payload
    assert transport, "the vector must reach the transport phase"
    if "init_static" in v:
        assert resp.remote_static == _pub(key("init_static"))  # type: ignore[arg-type]
        assert init.remote_static == _pub(key("resp_static"))  # type: ignore[arg-type]
    else:
        assert init.remote_static is None and resp.remote_static is None


def test_vectors_cover_every_pattern_and_hash() -> None:
    names = {v["protocol_name"] for v in VECTORS}
    assert names == {f"Noise_{p}_25519_ChaChaPoly_{h}" for p in PATTERNS for h in HASHES}


def test_doctests() -> None:
    assert doctest.testmod(protocol.session.noise).failed == 0


# -- handshakes ----------------------------------------------------------------


@pytest.mark.parametrize("hash", HASHES)
@pytest.mark.parametrize("pattern", PATTERNS)
def test_round_trip(pattern: str, hash: str) -> None:
    init, resp = pair(pattern, hash=hash)
    run(init, resp)
    assert init.handshake_hash == resp.handshake_hash
    assert len(init.handshake_hash) == 32
    if pattern == "NN":
        assert init.remote_static is None and resp.remote_static is None
    else:
        assert init.remote_static == _pub(RESP_S)
        assert resp.remote_static == _pub(INIT_S)
    (send_i, recv_i), (send_r, recv_r) = init.split(), resp.split()
    for n in range(3):
        nonce, sealed = send_i.seal(b"hdr", b"to hub %d" % n)
        assert nonce == n and len(sealed) == len(b"to hub 0") + TAG_SIZE
        assert recv_r.open(nonce, b"hdr", sealed) == b"to hub %d" % n
        nonce, sealed = send_r.seal(b"", b"to kiosk")
        assert recv_i.open(nonce, b"", sealed) == b"to kiosk"
    # The two directions use different keys.
    nonce, sealed = send_i.seal(b"", b"x")
    with pytest.raises(RemoteProtocolError):
        recv_i.open(nonce, b"", sealed)


def test_message_counts_and_turns() -> None:
    for pattern, count in (("NN", 2), ("XX", 3), ("IK", 2)):
        init, resp = pair(pattern)
        assert init.is_my_turn and not resp.is_my_turn
        assert run(init, resp) == count
        assert not init.is_my_turn and not resp.is_my_turn


def test_fresh_ephemerals_give_fresh_sessions() -> None:
    a = pair("XX")
    b = pair("XX")
    run(*a)
    run(*b)
    assert a[0].handshake_hash != b[0].handshake_hash


@pytest.mark.parametrize("pattern", PATTERNS)
def test_prologue_mismatch_fails(pattern: str) -> None:
    init, resp = pair(pattern, prologue=(b"haven v1 caps=a", b"haven v1 caps=b"))
    with pytest.raises(RemoteProtocolError) as exc:
        run(init, resp)
    assert exc.value.code == "handshake"


def test_ik_wrong_responder_key_fails() -> None:
    init, resp = pair("IK", init_remote=_pub(OTHER_S))
    with pytest.raises(RemoteProtocolError) as exc:
        resp.read_message(init.write_message(b"hello"))
    assert exc.value.code == "handshake"


@pytest.mark.parametrize(
    ("pattern", "side"), [("XX", "initiator"), ("XX", "responder"), ("IK", "responder")]
)
def test_pinned_remote_static_mismatch_fails(pattern: str, side: str) -> None:
    arg = "init_remote" if side == "initiator" else "resp_remote"
    right = _pub(RESP_S) if side == "initiator" else _pub(INIT_S)
    init, resp = pair(pattern, **{arg: _pub(OTHER_S)})  # type: ignore[arg-type]
    with pytest.raises(RemoteProtocolError) as exc:
        run(init, resp)
    assert exc.value.code == "handshake"
    run(*pair(pattern, **{arg: right}))  # type: ignore[arg-type]  # the right pin passes


def test_unknown_initiator_key_is_visible_to_the_hub() -> None:
    init, resp = pair("IK", init_s=OTHER_S)
    resp.read_message(init.write_message())
    assert resp.remote_static == _pub(OTHER_S)  # the hub looks it up before answering


@pytest.mark.parametrize("pattern", PATTERNS)
def test_tampered_message_fails(pattern: str) -> None:
    messages = {"NN": 2, "XX": 3, "IK": 2}[pattern]
    for index in range(messages):
        for bit in random.Random(index).sample(range(8 * 200), 40):  # wraps round the message
            init, resp = pair(pattern)
            with pytest.raises(RemoteProtocolError) as exc:
                run(init, resp, tamper=index, at=bit)
            assert exc.value.code == "handshake"


def test_failed_handshake_refuses_further_use() -> None:
    init, resp = pair("IK", init_remote=_pub(OTHER_S))
    msg = init.write_message()
    with pytest.raises(RemoteProtocolError):
        resp.read_message(msg)
    for call in (lambda: resp.read_message(msg), lambda: resp.write_message(b"")):
        with pytest.raises(LocalProtocolError) as exc:
            call()
        assert exc.value.code == "state"


def test_out_of_turn_is_local_error() -> None:
    init, resp = pair("XX")
    with pytest.raises(LocalProtocolError):
        init.read_message(b"\x00" * 32)
    with pytest.raises(LocalProtocolError):
        resp.write_message()
    with pytest.raises(LocalProtocolError):
        init.handshake_hash  # noqa: B018
    with pytest.raises(LocalProtocolError):
        init.split()
    run(init, resp)
    with pytest.raises(LocalProtocolError):
        init.write_message()
    with pytest.raises(LocalProtocolError):
        resp.read_message(b"")
    init.split()
    with pytest.raises(LocalProtocolError):
        init.split()  # a second pair of ciphers would reuse nonces
    assert init.is_complete


@pytest.mark.parametrize(
    "kwargs",
    [
        {"pattern": "KK", "initiator": True},
        {"pattern": "XX", "initiator": True, "hash": "MD5", "static_key": INIT_S},
        {"pattern": "XX", "initiator": True},  # needs a static key
        {"pattern": "NN", "initiator": True, "static_key": INIT_S},
        {"pattern": "NN", "initiator": True, "remote_static": b"\x01" * 32},
        {"pattern": "IK", "initiator": True, "static_key": INIT_S},  # needs the hub's key
        {"pattern": "IK", "initiator": False},
        {"pattern": "XX", "initiator": True, "static_key": INIT_S, "remote_static": b"short"},
    ],
)
def test_bad_configuration(kwargs: dict) -> None:  # type: ignore[type-arg]
    with pytest.raises(LocalProtocolError) as exc:
        Handshake(**kwargs)
    assert exc.value.code == "config"


def test_payload_size_limit() -> None:
    init, resp = pair("XX")
    with pytest.raises(LocalProtocolError):
        init.write_message(b"\x00" * MAX_MESSAGE)
    assert init.is_my_turn  # nothing moved
    resp.read_message(init.write_message(b"\x00" * (MAX_MESSAGE - 32 - TAG_SIZE)))


# -- bad input ---------------------------------------------------------------


def _stage(pattern: str, stage: int) -> tuple[Handshake, Handshake]:
    """``(writer, reader)`` of message ``stage``, the earlier ones done, all deterministic."""
    init, resp = pair(pattern, ephemerals=(_key(11), _key(12)))
    sides = (init, resp)
    for i in range(stage):
        sides[1 - i % 2].read_message(sides[i % 2].write_message())
    return sides[stage % 2], sides[1 - stage % 2]


def _reader_at(pattern: str, stage: int) -> Handshake:
    return _stage(pattern, stage)[1]


STAGES = [("NN", 0), ("NN", 1), ("XX", 0), ("XX", 1), ("XX", 2), ("IK", 0), ("IK", 1)]


@settings(max_examples=60, deadline=None)
@given(garbage=st.binary(max_size=300))
@pytest.mark.parametrize(("pattern", "stage"), STAGES)
def test_garbage_only_raises_remote_error(pattern: str, stage: int, garbage: bytes) -> None:
    reader = _reader_at(pattern, stage)
    try:
        reader.read_message(garbage)
        if reader.is_my_turn:
            reader.write_message(b"")
    except RemoteProtocolError as exc:
        assert exc.code == "handshake"


@pytest.mark.parametrize(("pattern", "stage"), STAGES)
def test_truncated_and_oversized(pattern: str, stage: int) -> None:
    good = _stage(pattern, stage)[0].write_message(b"payload")
    for cut in range(len(good)):
        reader = _reader_at(pattern, stage)
        try:
            reader.read_message(good[:cut])
        except RemoteProtocolError as exc:
            assert exc.code == "handshake"
        else:
            # Only a message still in the clear (no key yet) can lose bytes unnoticed.
            assert stage == 0 and pattern in ("NN", "XX") and cut >= 32
    reader = _reader_at(pattern, stage)
    with pytest.raises(RemoteProtocolError):
        reader.read_message(good + b"\x00" * (MAX_MESSAGE + 1 - len(good)))
    assert _reader_at(pattern, stage).read_message(good) == b"payload"


@pytest.mark.parametrize("pattern", PATTERNS)
def test_low_order_ephemeral_fails_cleanly(pattern: str) -> None:
    resp = _reader_at(pattern, 0)
    zero_point = b"\x00" * 32  # a low-order point: X25519 gives an all-zero secret
    with pytest.raises(RemoteProtocolError) as exc:
        resp.read_message(zero_point + b"\x00" * 80)
        resp.write_message(b"")  # NN and XX meet the point at "ee", when writing
    assert exc.value.code == "handshake"


# -- frames ------------------------------------------------------------------

KEY = bytes(range(32))


def frames(n: int, header: bytes = b"h") -> tuple[FrameOpener, list[tuple[int, bytes]]]:
    sealer = FrameSealer(KEY)
    return FrameOpener(KEY), [sealer.seal(header, b"frame %d" % i) for i in range(n)]


def test_sealer_counts_and_overhead() -> None:
    sealer = FrameSealer(KEY)
    assert sealer.next_nonce == 0
    seen = set()
    for i in range(5):
        nonce, sealed = sealer.seal(b"", b"same bytes")
        assert nonce == i and len(sealed) == len(b"same bytes") + TAG_SIZE
        seen.add(sealed)
    assert len(seen) == 5  # a retransmission of the same bytes is a new ciphertext
    assert sealer.next_nonce == 5


def test_sealer_refuses_past_the_last_nonce() -> None:
    sealer, opener = FrameSealer(KEY, start=MAX_NONCE), FrameOpener(KEY)  # 2**64-2 frames later
    nonce, sealed = sealer.seal(b"", b"last")
    assert nonce == 2**64 - 2
    assert opener.open(nonce, b"", sealed) == b"last"
    with pytest.raises(LocalProtocolError) as exc:
        sealer.seal(b"", b"one too many")
    assert exc.value.code == "nonce-exhausted"


def test_out_of_order_within_window_opens_once() -> None:
    opener, sealed = frames(500)
    order = list(range(500))
    random.Random(7).shuffle(order)
    for i in order:
        nonce, ct = sealed[i]
        assert opener.open(nonce, b"h", ct) == b"frame %d" % i
    for i in order:
        nonce, ct = sealed[i]
        with pytest.raises(RemoteProtocolError) as exc:
            opener.open(nonce, b"h", ct)
        assert exc.value.code == "replay"
    assert opener.stats.opened == 500 and opener.stats.replayed == 500
    assert opener.stats.bad_tag == 0 and opener.highest_nonce == 499


def test_too_old_is_refused_at_the_window_edge() -> None:
    opener, sealed = frames(3000)
    assert opener.open(sealed[2999][0], b"h", sealed[2999][1]) == b"frame 2999"
    oldest = 2999 - 2047
    assert opener.open(oldest, b"h", sealed[oldest][1]) == b"frame %d" % oldest
    with pytest.raises(RemoteProtocolError) as exc:
        opener.open(oldest - 1, b"h", sealed[oldest - 1][1])
    assert exc.value.code == "replay"
    assert opener.stats.too_old == 1


@pytest.mark.parametrize("part", ["header", "nonce", "ciphertext", "tag"])
def test_bit_flips_are_refused_and_change_nothing(part: str) -> None:
    opener, sealed = frames(50)
    rng = random.Random(part)
    for i, (nonce, ct) in enumerate(sealed):
        header, bad_ct, bad_nonce = bytearray(b"h"), bytearray(ct), nonce
        if part == "header":
            header[0] ^= 1 << rng.randrange(8)
        elif part == "nonce":
            bad_nonce ^= 1 << rng.randrange(64)
        elif part == "ciphertext":
            bad_ct[rng.randrange(len(ct) - TAG_SIZE)] ^= 1 << rng.randrange(8)
        else:
            bad_ct[-1 - rng.randrange(TAG_SIZE)] ^= 1 << rng.randrange(8)
        with pytest.raises(RemoteProtocolError) as exc:
            opener.open(bad_nonce, bytes(header), bytes(bad_ct))
        # A flipped nonce may land on one already seen: refused before decrypting.
        assert exc.value.code in (("auth", "replay") if part == "nonce" else ("auth",))
        # The failure moved nothing: the real frame with the same nonce still opens.
        assert opener.open(nonce, b"h", ct) == b"frame %d" % i
    assert opener.stats.refused == 50 and opener.stats.opened == 50


def test_forged_huge_nonce_does_not_slide_the_window() -> None:
    opener, sealed = frames(3)
    with pytest.raises(RemoteProtocolError):
        opener.open(2**63, b"h", sealed[0][1])
    assert opener.highest_nonce == -1
    for nonce, ct in sealed:
        opener.open(nonce, b"h", ct)


@pytest.mark.parametrize("nonce", [-1, 2**64 - 1, 2**64, 2**80])
def test_impossible_nonces(nonce: int) -> None:
    opener, sealed = frames(1)
    with pytest.raises(RemoteProtocolError) as exc:
        opener.open(nonce, b"h", sealed[0][1])
    assert exc.value.code == "auth" and opener.stats.bad_tag == 1


@pytest.mark.parametrize("junk", [b"", b"\x00", b"\x00" * 15, b"\x00" * 16, b"\xff" * 100])
def test_short_or_junk_ciphertext(junk: bytes) -> None:
    opener = FrameOpener(KEY)
    with pytest.raises(RemoteProtocolError) as exc:
        opener.open(0, b"", junk)
    assert exc.value.code == "auth"


@settings(max_examples=200, deadline=None)
@given(
    window=st.sampled_from([1, 2, 64, 1024, 2048]),
    deliveries=st.lists(st.integers(0, 3000), max_size=200),
)
def test_opener_matches_a_reference_model(window: int, deliveries: list[int]) -> None:
    sealed = {n: FrameSealer(KEY, start=n).seal(b"", b"%d" % n)[1] for n in set(deliveries)}
    opener = FrameOpener(KEY, window=window)
    accepted: set[int] = set()
    highest = -1
    for n in deliveries:
        expect = n not in accepted and n > highest - window
        try:
            assert opener.open(n, b"", sealed[n]) == b"%d" % n
            opened = True
        except RemoteProtocolError as exc:
            assert exc.code == "replay"
            opened = False
        assert opened == expect
        if opened:
            accepted.add(n)
            highest = max(highest, n)
    assert opener.stats.opened == len(accepted)
    assert opener.stats.refused == len(deliveries) - len(accepted)


def test_window_jump_wider_than_the_window() -> None:
    w = ReplayWindow(64)
    w.accept(0)
    w.accept(10**18)
    assert w.verdict(0) == "too-old"
    assert w.verdict(10**18 - 1) == "fresh"
    assert w.verdict(10**18) == "replayed"
    with pytest.raises(LocalProtocolError):
        w.accept(10**18)


@settings(max_examples=300, deadline=None)
@given(
    highest=st.integers(-1, 2**64 - 2),
    bits=st.sampled_from([8, 16, 24, 32]),
    offset=st.integers(-(2**7) + 1, 2**7 - 1),
)
def test_expand_nonce_recovers_nearby_nonces(highest: int, bits: int, offset: int) -> None:
    window = ReplayWindow()
    if highest >= 0:
        window.accept(highest)
    assert window.highest == highest
    true = highest + 1 + offset
    if not 0 <= true <= MAX_NONCE:
        return
    assert window.expand(true & ((1 << bits) - 1), bits) == true


def test_expand_nonce_on_the_opener() -> None:
    opener, sealed = frames(300)
    for nonce, ct in sealed:
        full = opener.expand_nonce(nonce & 0xFF, 8)
        assert full == nonce
        opener.open(full, b"h", ct)


def test_cipher_state_failed_decrypt_keeps_nonce() -> None:
    send, recv = CipherState(KEY), CipherState(KEY)
    ct = send.encrypt_with_ad(b"ad", b"hello")
    with pytest.raises(RemoteProtocolError):
        recv.decrypt_with_ad(b"other ad", ct)
    assert recv.n == 0
    assert recv.decrypt_with_ad(b"ad", ct) == b"hello" and recv.n == 1
    assert CipherState().encrypt_with_ad(b"", b"clear") == b"clear"  # no key yet
