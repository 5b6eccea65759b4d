"""Computes crypto cases under MicroPython for tests/test_portable_crypto_c.py.

Reads a file of cases, one a line: an operation's name and its arguments in
hex, one space between words (an empty argument is an empty word). Prints one
line a case: the result in hex, or ``refused`` when the interface raised (an
AEAD tag, a signature, a key).
Goes through ``protocol.crypto``, the interface the session calls, where it
names the operation, and to the portable module otherwise.
"""

import sys

from protocol import crypto
from protocol.errors import ProtocolError
from protocol.portable.hmac_sha256 import hkdf
from protocol.portable.sha512 import sha512


def _x25519(k, u):
    private = crypto.X25519PrivateKey.from_private_bytes(k)
    return private.exchange(crypto.X25519PublicKey.from_public_bytes(u))


def _x25519_public(k):
    return crypto.X25519PrivateKey.from_private_bytes(k).public_key().public_bytes_raw()


def _seal(key, nonce, data, aad):
    return crypto.ChaCha20Poly1305(key).encrypt(nonce, data, aad)


def _open(key, nonce, data, aad):
    return crypto.ChaCha20Poly1305(key).decrypt(nonce, data, aad)


def _sign(seed, message):
    key = crypto.Ed25519PrivateKey.from_private_bytes(seed)
    return key.public_key().public_bytes_raw() + key.sign(message)


def _verify(public, message, signature):
    crypto.Ed25519PublicKey.from_public_bytes(public).verify(signature, message)
    return b""


OPS = {
    "x25519": _x25519,
    "x25519-public": _x25519_public,
    "seal": _seal,
    "open": _open,
    "ed25519-sign": _sign,
    "ed25519-verify": _verify,
    "sha256-hmac": lambda key, data: crypto.hmac_digest("SHA256", key, data),
    "blake2s": lambda data: crypto.hash_digest("BLAKE2s", data),
    "blake2s-hmac": lambda key, data: crypto.hmac_digest("BLAKE2s", key, data),
    "hkdf": lambda salt, ikm, info, length: hkdf(salt, ikm, info, length[0] << 8 | length[1]),
    "sha512": sha512,
}

with open(sys.argv[1]) as cases:
    for line in cases:
        words = line.rstrip("\n").split(" ")
        args = [bytes.fromhex(w) for w in words[1:]]
        try:
            print(OPS[words[0]](*args).hex())
        except (ProtocolError, ValueError):
            print("refused")
