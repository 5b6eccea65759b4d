"""What the vector scripts share. Runs under MicroPython and CPython alike.

A vector script loads its file with ``vectors(name)``, checks each vector with
``equal`` and ``raises``, and ends with ``done()``, which prints ``ok N``
(N: the checks made). tests/test_micropython_vectors.py runs every script
under both interpreters and requires the same output from each.
"""

import json

from protocol.errors import ProtocolError

_count = [0]


def vectors(name):
    with open("protocol/vectors/" + name + ".json") as f:
        return json.load(f)


def hexed(text):
    return bytes.fromhex(text)


def edn(value):
    """A vector's value: ``h'..'`` text is a byte string (CBOR diagnostic notation), and a
    map's keys are field numbers."""
    if isinstance(value, str) and value.startswith("h'") and value.endswith("'"):
        return hexed(value[2:-1])
    if isinstance(value, list):
        return [edn(v) for v in value]
    if isinstance(value, dict):
        return {int(k): edn(v) for k, v in value.items()}
    return value


def equal(got, want, what=""):
    _count[0] += 1
    if got != want:
        raise AssertionError(f"{what}: got {got!r}, want {want!r}")


def true(value, what=""):
    _count[0] += 1
    if not value:
        raise AssertionError(f"{what}: not true")


def raises(code, fn, *args, **kwargs):
    """``fn(*args)`` must raise a ProtocolError whose code is ``code``
    (any code when ``code`` is None)."""
    _count[0] += 1
    try:
        fn(*args, **kwargs)
    except ProtocolError as exc:
        if code is not None and exc.code != code:
            raise AssertionError(f"want error {code!r}, got {exc.code!r}: {exc}") from None
        return exc
    raise AssertionError(f"want error {code!r}, got none")


def done():
    print("ok", _count[0])
