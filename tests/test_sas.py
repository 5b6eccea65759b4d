"""Provisioning's pure parts: the short authentication string (protocol/sas.py) held to its
vectors and its rules, and the hub's check of a technician's prov-ask."""

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


# The hub's check of a technician's prov-ask (protocol/sync/provisioning.py) -------------

def test_the_hubs_check_of_a_provisioning_ask() -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from protocol.sync import certificate as sync_cert
    from protocol.sync import credential
    from protocol.sync.provisioning import check_ask
    from protocol.tech_messages import x25519_public

    hub, tech = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    pub = tech.public_key().public_bytes_raw()
    t0 = 1_767_225_600_000

    def cert(**kw: object) -> bytes:
        values: dict[str, object] = dict(name="Amina", serial=7, technician_ed25519=pub,
                                         not_before=t0, expires=t0 + 3600_000,
                                         sites=("North",))
        values.update(kw)
        return credential.issue(hub, **values)  # type: ignore[arg-type]

    hub_pub, key = hub.public_key().public_bytes_raw(), x25519_public(pub)
    request = sync_cert.make_request(42, "North", None, X25519PrivateKey.generate(),
                                     Ed25519PrivateKey.generate())

    def ask(doc: bytes, site: str = "North", req: bytes | None = request,
            remote: bytes | None = key, now: int = t0 + 1, revoked: frozenset[int] =
            frozenset()) -> str:
        try:
            got = check_ask(doc, site, req, hub_ed25519=hub_pub, remote_static=remote,
                            now=now, revoked=revoked)
        except ValueError as exc:
            return str(getattr(exc, "code", "?"))
        assert got.tech.serial == 7
        return "ok" if got.request is None or got.request.node == 42 else "?"

    assert ask(cert()) == "ok" and ask(cert(), req=None) == "ok"
    assert ask(cert(), remote=bytes(32)) == "key-mismatch"  # a stolen certificate
    assert ask(cert(), remote=None) == "key-mismatch"
    assert ask(cert(), site="South", req=None) == "out-of-scope"
    assert ask(cert(), site="South") == "wrong-site"  # the request names North
    assert ask(cert(actions=("read",))) == "not-allowed"
    assert ask(cert(), revoked=frozenset({7})) == "revoked"
    assert ask(cert(), now=t0 + 7200_000) == "expired"
    other = Ed25519PrivateKey.generate()
    forged = credential.issue(other, name="M", serial=7, technician_ed25519=pub,
                              not_before=t0, expires=t0 + 3600_000, sites=("North",))
    assert ask(forged) not in ("ok", "?")
    assert ask(cert(), req=b"\x00garbage") not in ("ok", "?")
