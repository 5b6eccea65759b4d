"""The relay envelope (``protocol.sync.relay``): buckets, the replay window, sealing."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from protocol.sync.relay import (
    DOWN,
    MIN_FILE,
    UP,
    WINDOW,
    Bundle,
    RelayError,
    ReplayWindow,
    bucket,
    direction_of,
    open_bundle,
    seal_bundle,
    verify,
)


@given(st.integers(min_value=0, max_value=5 << 30))
def test_buckets_hide_sizes_for_at_most_an_eighth_more(size: int) -> None:
    padded = bucket(size)
    assert padded >= max(size, MIN_FILE) and bucket(padded) == padded
    assert size <= MIN_FILE or padded <= size * 1.125
    assert bucket(size + 1) >= padded


def test_the_window_refuses_what_it_applied_and_what_is_too_old() -> None:
    window = ReplayWindow()
    for seq in (1, 3, 2):
        window.check(seq)
        window.accept(seq)
    for seq in (1, 2, 3):
        with pytest.raises(RelayError, match="applied already"):
            window.check(seq)
    window.accept(3 + WINDOW)
    window.check(4)  # inside the window, never applied: taken (a late piece)
    with pytest.raises(RelayError, match="older than"):
        window.check(3)
    again = ReplayWindow.from_state(window.state())
    assert (again.top, again.mask) == (window.top, window.mask)
    assert ReplayWindow.from_state("junk").top == 0


def test_a_bundle_opens_only_for_its_reader_and_verifies_only_by_its_writer() -> None:
    writer, reader = Ed25519PrivateKey.generate(), X25519PrivateKey.generate()
    to = reader.public_key().public_bytes_raw()
    bundle = Bundle(UP, "0000abcd", to, 7, 1_700_000_000_000, [b"hello", b"batch"])
    data, pad = seal_bundle(bundle, writer, to)
    assert len(data) == bucket(len(data) - pad) and direction_of(data) == UP
    got, sig = open_bundle(data, UP, reader)
    assert got == bundle
    verify(got, sig, writer.public_key().public_bytes_raw())
    with pytest.raises(RelayError) as refused:
        verify(got, sig, Ed25519PrivateKey.generate().public_key().public_bytes_raw())
    assert refused.value.code == "forged"
    for other, key, code in ((data, X25519PrivateKey.generate(), "unopened"),
                             (data[:-1], reader, "unopened"),
                             (data, reader, "foreign"),  # asked for the other direction
                             (b"PK\x03\x04 a zip file", reader, "foreign")):
        with pytest.raises(RelayError) as refused:
            open_bundle(other, DOWN if other is data and key is reader else UP, key)
        assert refused.value.code == code
