"""CPU time of the node's crypto and handshake, under MicroPython or CPython alike.

``micropython _micropython_ops.py SECONDS`` (MICROPYPATH at the node's .mpy
tree) or ``python _micropython_ops.py SECONDS`` (PYTHONPATH at the repository):
the same calls through ``protocol.crypto``, which is the portable Python under
MicroPython and ``cryptography`` under CPython, so one run of each gives the
ratio. Prints one JSON object: microseconds of CPU per operation, the best of
three rounds of at least SECONDS / 3 each. CPU time is the process's own
(/proc/self/schedstat, nanoseconds; the kernel updates it at least every
scheduler tick, so only long spans are read), so a loaded machine slows it
little.

Under MicroPython it also times the loops whose RP2040 times were published
(``CALIBRATION``), the basis of the estimate for a board.
"""

import hashlib
import json
import sys
import time

from device.fridge_node.link import session_config
from protocol import MICROPYTHON
from protocol.crypto import (
    ChaCha20Poly1305,
    Ed25519PrivateKey,
    X25519PrivateKey,
    hmac_digest,
)
from protocol.session.core import Connected, Session

if MICROPYTHON:
    from protocol.portable.sha512 import sha512
else:

    def sha512(data):
        return hashlib.sha512(data).digest()


def cpu_ns():
    with open("/proc/self/schedstat") as f:
        return int(f.read().split()[0])


def per_call(fn, seconds):
    """Microseconds of CPU a call of ``fn`` takes: the best of three rounds."""
    best = None
    for _ in range(3):
        calls = 0
        start = cpu_ns()
        while True:
            fn()
            calls += 1
            spent = cpu_ns() - start
            if spent >= seconds * 1e9 / 3 or calls >= 100000:
                break
        mean = spent / calls / 1000
        best = mean if best is None or mean < best else best
    return best


KEY = bytes(range(32))
PEER = X25519PrivateKey.from_private_bytes(bytes(range(32, 64))).public_key()
X_KEY = X25519PrivateKey.from_private_bytes(KEY)
AEAD = ChaCha20Poly1305(KEY)
NONCE = bytes(12)
KIB = bytes(1024)
SIGNER = Ed25519PrivateKey.from_private_bytes(KEY)
VERIFIER = SIGNER.public_key()
MESSAGE = bytes(64)
SIGNATURE = SIGNER.sign(MESSAGE)
CONFIG = session_config(115200)
RESPONDER_KEY = X25519PrivateKey.from_private_bytes(bytes(range(64, 96)))
RESPONDER_PUBLIC = RESPONDER_KEY.public_key().public_bytes_raw()


def handshake():
    """A Noise IK handshake between two sessions: (the initiator's, all) wall ns."""
    start = time.time_ns()
    initiator = Session(initiator=True, config=CONFIG, static_key=X_KEY,
                        remote_static=RESPONDER_PUBLIC, now=0.0)
    mine = time.time_ns() - start
    responder = Session(initiator=False, config=CONFIG, static_key=RESPONDER_KEY, now=0.0)
    for _ in range(10):  # two messages; bounded
        t0 = time.time_ns()
        data = initiator.data_to_send(0.0)
        t1 = time.time_ns()
        responder.receive_data(data, 0.0)
        reply = responder.data_to_send(0.0)
        t2 = time.time_ns()
        initiator.receive_data(reply, 0.0)
        event = initiator.next_event()
        mine += time.time_ns() - t2 + t1 - t0
        if isinstance(event, Connected):
            return mine, time.time_ns() - start
    raise AssertionError("the handshake did not complete")


def initiator_share(seconds):
    """The initiator's µs of CPU in a handshake: the CPU of whole handshakes, split
    by the wall time each side's calls took (a share that load does not bias)."""
    mine = total = count = 0
    start = cpu_ns()
    while count < 3 or cpu_ns() - start < seconds * 1e9:
        a, b = handshake()
        mine, total, count = mine + a, total + b, count + 1
    return (cpu_ns() - start) / count / 1000 * mine / total


OPS = {
    "x25519": lambda: X_KEY.exchange(PEER),
    "chacha20poly1305_kib": lambda: AEAD.encrypt(NONCE, KIB, b""),
    "ed25519_sign": lambda: SIGNER.sign(MESSAGE),
    "ed25519_verify": lambda: VERIFIER.verify(SIGNATURE, MESSAGE),
    "sha512_kib": lambda: sha512(KIB),
    "hmac_sha256": lambda: hmac_digest("SHA256", KEY, MESSAGE),
    "handshake_both": handshake,
}


# The loops of github.com/shaoziyang/micropython_benchmarks (benchmark.py), whose
# tables give a MicroPython v1.23 RP2040 at 125 MHz: the same arithmetic, timed here.
def int_add(p):
    for _ in range(p[0]):
        c = p[1] + p[2]  # noqa: F841
    return p[0]


def int_mul(p):
    for _ in range(p[0]):
        c = p[1] * p[2]  # noqa: F841
    return p[0]


def pi_digits(digits):
    extra = 8
    one = 10 ** (digits + extra)
    t = c = 3 * one
    n, na, d, da = 1, 0, 0, 24
    while t > 1:
        n, na, d, da = n + na, na + 8, d + da, da + 32
        t = t * n // d
        c += t
    return c // 10**extra


CALIBRATION = {
    "int_add_100000": lambda: int_add([100000, 12345678, 56781234]),
    "int_mul_100000": lambda: int_mul([100000, 12345678, 56781234]),
    "pi_1000": lambda: pi_digits(1000),
}


if __name__ == "__main__":
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
    result = {name: per_call(fn, seconds) for name, fn in OPS.items()}
    result["handshake_initiator"] = initiator_share(seconds)
    result["version"] = sys.version
    if MICROPYTHON:
        result["calibration"] = {name: per_call(fn, seconds)
                                 for name, fn in CALIBRATION.items()}
    print(json.dumps(result))
