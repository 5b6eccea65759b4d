"""The part of CPython's hmac that protocol/ uses, for MicroPython: HMAC-SHA256 only."""

import hashlib

from protocol.portable.hmac_sha256 import hmac_sha256


def compare_digest(a, b):
    """True when ``a == b``, in time that depends on their lengths only."""
    if len(a) != len(b):
        return False
    diff = 0
    for i in range(len(a)):
        diff |= a[i] ^ b[i]
    return diff == 0


class _HMAC:
    def __init__(self, key, msg):
        self._key = key
        self._msg = msg

    def digest(self):
        return hmac_sha256(self._key, self._msg)


def new(key, msg=b"", digestmod=None):
    if digestmod is not hashlib.sha256:
        raise ValueError("only HMAC-SHA256 is available under MicroPython")
    return _HMAC(key, msg)


def digest(key, msg, digest):
    if digest not in ("sha256", hashlib.sha256):
        raise ValueError("only HMAC-SHA256 is available under MicroPython")
    return hmac_sha256(key, msg)
