"""The portable primitives under the real MicroPython interpreter, cross-checked against
`cryptography` and hashlib on random inputs.

tests/test_portable_crypto_a.py and _b.py hold the same modules to their RFCs and to
`cryptography` under CPython; this file runs them where they are meant to run, through
``protocol.crypto``'s interface, where an int, a bytes method or an exception behaves as
MicroPython's do. Each operation's cases go to one MicroPython process
(tests/micropython/crosscheck.py); a handful by default, thousands with --long.
"""

from __future__ import annotations

import hashlib
import hmac
import random
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from tests import micropython_port
from tests.portable_cases import CASES

SCRIPT = micropython_port.SCRIPTS / "crosscheck.py"
REFUSED = "refused"

Case = tuple[list[bytes], str]  # the arguments, the expected output line


def _x25519(rng: random.Random) -> Case:
    k, u = rng.randbytes(32), rng.randbytes(32)
    if rng.randrange(8) == 0:  # a small-order point now and then: refused on both sides
        u = rng.choice((0, 1, 2**255 - 20, 2**255 - 19)).to_bytes(32, "little")
    try:
        shared = X25519PrivateKey.from_private_bytes(k).exchange(
            X25519PublicKey.from_public_bytes(u)).hex()
    except ValueError:
        shared = REFUSED
    return [k, u], shared


def _x25519_public(rng: random.Random) -> Case:
    k = rng.randbytes(32)
    return [k], X25519PrivateKey.from_private_bytes(k).public_key().public_bytes_raw().hex()


def _seal(rng: random.Random) -> Case:
    key, nonce = rng.randbytes(32), rng.randbytes(12)
    data, aad = rng.randbytes(rng.randrange(300)), rng.randbytes(rng.randrange(40))
    return [key, nonce, data, aad], ChaCha20Poly1305(key).encrypt(nonce, data, aad).hex()


def _open(rng: random.Random) -> Case:
    key, nonce = rng.randbytes(32), rng.randbytes(12)
    data, aad = rng.randbytes(rng.randrange(300)), rng.randbytes(rng.randrange(40))
    sealed = bytearray(ChaCha20Poly1305(key).encrypt(nonce, data, aad))
    if rng.randrange(2):  # one bit flipped: refused
        bit = rng.randrange(len(sealed) * 8)
        sealed[bit // 8] ^= 1 << (bit % 8)
    try:
        expected = ChaCha20Poly1305(key).decrypt(nonce, bytes(sealed), aad).hex()
    except InvalidTag:
        expected = REFUSED
    return [key, nonce, bytes(sealed), aad], expected


def _ed25519_sign(rng: random.Random) -> Case:
    seed, message = rng.randbytes(32), rng.randbytes(rng.randrange(200))
    key = Ed25519PrivateKey.from_private_bytes(seed)
    return [seed, message], (key.public_key().public_bytes_raw() + key.sign(message)).hex()


def _ed25519_verify(rng: random.Random) -> Case:
    key = Ed25519PrivateKey.from_private_bytes(rng.randbytes(32))
    message = rng.randbytes(rng.randrange(1, 200))
    parts = [bytearray(key.public_key().public_bytes_raw()), bytearray(message),
             bytearray(key.sign(message))]
    if rng.randrange(2):  # one bit flipped in the key, the message or the signature
        which = parts[rng.randrange(3)]
        bit = rng.randrange(len(which) * 8)
        which[bit // 8] ^= 1 << (bit % 8)
    public, message, signature = (bytes(p) for p in parts)
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, message)
        expected = ""
    except InvalidSignature:
        expected = REFUSED
    return [public, message, signature], expected


def _sha256_hmac(rng: random.Random) -> Case:
    key, data = rng.randbytes(rng.randrange(150)), rng.randbytes(rng.randrange(300))
    return [key, data], hmac.new(key, data, hashlib.sha256).hexdigest()


def _blake2s(rng: random.Random) -> Case:
    data = rng.randbytes(rng.choice((rng.randrange(300), 64, 0)))
    return [data], hashlib.blake2s(data).hexdigest()


def _blake2s_hmac(rng: random.Random) -> Case:
    key, data = rng.randbytes(rng.randrange(100)), rng.randbytes(rng.randrange(300))
    return [key, data], hmac.new(key, data, hashlib.blake2s).hexdigest()


def _hkdf(rng: random.Random) -> Case:
    salt, ikm = rng.randbytes(rng.randrange(80)), rng.randbytes(rng.randrange(80))
    info, length = rng.randbytes(rng.randrange(80)), rng.randrange(1, 200)
    okm = HKDF(hashes.SHA256(), length, salt or None, info).derive(ikm)
    return [salt, ikm, info, length.to_bytes(2, "big")], okm.hex()


def _sha512(rng: random.Random) -> Case:
    data = rng.randbytes(rng.choice((rng.randrange(300), rng.randrange(108, 132))))
    return [data], hashlib.sha512(data).hexdigest()


# Each maker's name, less its underscore and with dashes, is the script's operation.
OPERATIONS: dict[str, Callable[[random.Random], Case]] = {
    maker.__name__[1:].replace("_", "-"): maker
    for maker in (_x25519, _x25519_public, _seal, _open, _ed25519_sign, _ed25519_verify,
                  _sha256_hmac, _blake2s, _blake2s_hmac, _hkdf, _sha512)
}


@pytest.mark.parametrize("cases", CASES)
@pytest.mark.parametrize("operation", OPERATIONS)
def test_micropython_agrees_with_cryptography(operation: str, cases: int,
                                              tmp_path: Path) -> None:
    rng = random.Random(f"{operation} {cases}")
    made = [OPERATIONS[operation](rng) for _ in range(cases)]
    case_file = tmp_path / "cases.txt"
    case_file.write_text("".join(
        " ".join([operation, *(a.hex() for a in args)]) + "\n" for args, _ in made))
    # Ed25519 signing takes ~30 ms a case under MicroPython here: thousands take minutes.
    done = micropython_port.run(SCRIPT, str(case_file), timeout=60 + cases * 0.5)
    assert done.returncode == 0, done.stdout + done.stderr
    got = done.stdout.splitlines()
    assert len(got) == cases, done.stdout
    for (args, expected), line in zip(made, got, strict=True):
        assert line == expected, f"{operation}({', '.join(a.hex() for a in args)})"
    assert any(expected != REFUSED for _, expected in made)
