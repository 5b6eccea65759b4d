"""The part of CPython's base64 that protocol/ uses, for MicroPython: the standard
alphabet over binascii, and ``b64decode``'s ``validate`` (only the alphabet, then at
most two ``=``). Errors are ValueErrors, as CPython's binascii.Error is."""

import binascii

_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def b64encode(s):
    return binascii.b2a_base64(s, newline=False)


def b64decode(s, validate=False):
    if isinstance(s, str):
        s = s.encode("ascii")
    s = bytes(s)
    if validate:
        body = s.rstrip(b"=")
        if len(s) - len(body) > 2 or any(c not in _ALPHABET for c in body):
            raise ValueError("Non-base64 digit found")
    return binascii.a2b_base64(s)
