"""The short authentication string (protocol/sas.py) held to its vectors and its rules."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from protocol import sas

VECTORS = json.loads((Path(__file__).parent.parent / "protocol/vectors/sas.json").read_text())


def _framed(*parts: bytes) -> bytes:
    return b"".join(len(p).to_bytes(2, "big") + p for p in parts)


@pytest.mark.parametrize("case", VECTORS["cases"])
def test_vectors(case: dict[str, str]) -> None:
    b, ni, nr = (bytes.fromhex(case[k]) for k in ("binding", "nonce_i", "nonce_r"))
    assert sas.commit(b, ni).hex() == case["commit"]
    assert sas.code(b, ni, nr) == case["code"]
    # as SPEC.md words it, apart from the code
    label = bytes.fromhex(VECTORS["commit_label"])
    assert hashlib.sha256(label + _framed(b, ni)).hexdigest() == case["commit"]
    digest = hashlib.sha256(bytes.fromhex(VECTORS["code_label"]) + _framed(b, ni, nr)).digest()
    assert str(int.from_bytes(digest[:8], "big") % 10**6).zfill(6) == case["code"]


def test_commitment_holds_the_nonce_and_the_session() -> None:
    b, ni = bytes(16), bytes([7]) * 32
    c = sas.commit(b, ni)
    sas.check_commit(c, b, ni)
    with pytest.raises(sas.SasError) as exc:
        sas.check_commit(c, b, bytes([8]) * 32)
    assert exc.value.code == "bad-commit"
    with pytest.raises(sas.SasError):
        sas.check_commit(c, bytes([1]) * 16, ni)  # another session
    with pytest.raises(sas.SasError):
        sas.check_commit(c[:31], b, ni)


def test_codes_of_two_sessions_differ_and_bad_input_is_refused() -> None:
    ni, nr = bytes([1]) * 32, bytes([2]) * 32
    codes = {sas.code(i.to_bytes(16, "big"), ni, nr) for i in range(200)}
    assert len(codes) > 190  # one per session, barring a rare collision of 6 digits
    with pytest.raises(sas.SasError):
        sas.code(bytes(16), ni[:31], nr)
    with pytest.raises(sas.SasError):
        sas.code(bytes(16), ni, "x" * 32)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        sas.code(b"short", ni, nr)


def test_typed_codes() -> None:
    assert sas.normalise(" 123-456 ") == "123456"
    assert sas.matches("123456", "123 456")
    assert not sas.matches("123456", "123457")
    for bad in ("12345", "1234567", "12a456", "١٢٣٤٥٦", ""):
        assert not sas.matches("123456", bad)
        with pytest.raises(sas.SasError):
            sas.normalise(bad)
    assert sas.display("012345") == "012 345"
