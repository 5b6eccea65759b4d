"""HPKE (RFC 9180) and AES-GCM for MicroPython (protocol/portable/hpke.py, aes_gcm.py),
held to RFC 9180 A.1 and the GCM specification's vectors under the real interpreter, and
to `cryptography`'s HPKE both ways: each opens what the other sealed."""

from __future__ import annotations

import json
import os
from pathlib import Path

from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from tests import micropython_port

SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)


def test_portable_hpke_matches_the_rfc_and_cryptography(tmp_path: Path) -> None:
    cases = []
    for size in (0, 1, 15, 16, 17, 32, 100, 200):
        key = X25519PrivateKey.generate()
        plain, info = os.urandom(size), os.urandom(size % 24)
        cases.append({"private": key.private_bytes_raw().hex(), "plain": plain.hex(),
                      "info": info.hex(), "ephemeral": os.urandom(32).hex(),
                      "sealed": SUITE.encrypt(plain, key.public_key(), info=info).hex()})
    path = tmp_path / "cases.json"
    path.write_text(json.dumps(cases))
    run = micropython_port.run(micropython_port.SCRIPTS / "portable_hpke.py", str(path))
    assert run.returncode == 0, run.stdout + run.stderr
    sealed_there, ok = run.stdout.splitlines()
    assert ok.startswith("ok ")
    for case, sealed in zip(cases, json.loads(sealed_there), strict=True):
        key = X25519PrivateKey.from_private_bytes(bytes.fromhex(case["private"]))
        assert SUITE.decrypt(bytes.fromhex(sealed), key,
                             info=bytes.fromhex(case["info"])).hex() == case["plain"]
