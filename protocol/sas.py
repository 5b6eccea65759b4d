"""A short authentication string over a session, with a commitment (SPEC.md "Provisioning").

Theory of operation
-------------------
A fresh kiosk knows no key of the hub and none of the technician, so its
Noise session (``XX``) with the technician's tool is unauthenticated: a rogue
device on the cable could run one session with the tool and another with the
kiosk. Both ends therefore derive a short code from what their own session
saw, and the technician checks that the kiosk's screen shows the code the tool
computed, by typing it into the tool, which sends it back to the kiosk. The
two sessions of a man in the middle have different handshake hashes, so the
codes differ unless he can steer one of them onto the other.

To stop him from steering, the code mixes one nonce from each end, and the
tool (the initiator) *commits* to its nonce before the kiosk reveals its own,
as ZRTP does with its hash commitment:

    tool                                           kiosk
    commit = H(COMMIT_LABEL, binding, nonce_i) ->
                                               <- nonce_r        (after presence)
    nonce_i                                    ->  kiosk checks the commitment
    code = H(CODE_LABEL, binding, nonce_i, nonce_r) mod 10^DIGITS, on both ends

A man in the middle must fix ``nonce_i`` towards the kiosk (commit) before he
sees ``nonce_r``, and learns the tool's ``nonce_i`` only after he sent the tool
his own ``nonce_r``: whichever way he interleaves the two runs, one of the two
codes is out of his hands when the other is fixed, and they match with a
probability of 10^-DIGITS per attempt. Each attempt costs a press of the
kiosk's service button (``device.tech.presence``), and a wrong code ends the
provisioning.

The code is never a key: it is not mixed into the session (a short pre-shared
key would let a man in the middle test every code offline against one
recorded handshake); it only confirms, after the fact, that both ends share
one session.

``binding`` is the session id both ends see: the first 16 bytes of the Noise
handshake hash (``protocol.session``). Pure: no I/O, no clock, no randomness
(the caller draws the nonces).
"""

from __future__ import annotations

import hashlib
import hmac

from protocol.errors import LocalProtocolError, RemoteProtocolError

COMMIT_LABEL = b"haven/sas-commit/v1\x00"
CODE_LABEL = b"haven/sas-code/v1\x00"
NONCE_BYTES = 32
COMMIT_BYTES = 32
DIGITS = 6
BINDING_MIN = 16


class SasError(RemoteProtocolError):
    """A commitment or a code we refuse."""

    code = "bad-sas"


def _nonce(nonce: bytes, what: str) -> bytes:
    if type(nonce) is not bytes or len(nonce) != NONCE_BYTES:
        raise SasError(f"{what} is not {NONCE_BYTES} bytes", "bad-nonce")
    return nonce


def _binding(binding: bytes) -> bytes:
    if type(binding) is not bytes or len(binding) < BINDING_MIN:
        raise LocalProtocolError(f"a binding is at least {BINDING_MIN} bytes")
    return binding


def _frame(*parts: bytes) -> bytes:
    """Each part with its length, so no two lists of parts hash alike."""
    return b"".join(len(p).to_bytes(2, "big") + p for p in parts)


def commit(binding: bytes, nonce_i: bytes) -> bytes:
    """The initiator's commitment to its nonce, bound to this session."""
    return hashlib.sha256(COMMIT_LABEL + _frame(_binding(binding),
                                                _nonce(nonce_i, "the nonce"))).digest()


def check_commit(commitment: bytes, binding: bytes, nonce_i: bytes) -> None:
    """``SasError`` (``bad-commit``) unless ``nonce_i`` is the one committed to."""
    if type(commitment) is not bytes or len(commitment) != COMMIT_BYTES:
        raise SasError(f"a commitment is {COMMIT_BYTES} bytes", "bad-commit")
    if not hmac.compare_digest(commitment, commit(binding, nonce_i)):
        raise SasError("the nonce revealed is not the one committed to", "bad-commit")


def code(binding: bytes, nonce_i: bytes, nonce_r: bytes) -> str:
    """The short code both ends show: ``DIGITS`` decimal digits."""
    digest = hashlib.sha256(CODE_LABEL + _frame(
        _binding(binding), _nonce(nonce_i, "the initiator's nonce"),
        _nonce(nonce_r, "the responder's nonce"))).digest()
    # 8 bytes reduced mod 10^6: the bias is below 2^-40
    return ("0" * DIGITS + str(int.from_bytes(digest[:8], "big") % 10**DIGITS))[-DIGITS:]


def normalise(typed: str) -> str:
    """A code as a person types it ("123 456", "123-456") -> its digits;
    ``SasError`` (``bad-code``) if it is not ``DIGITS`` digits."""
    digits = "".join(ch for ch in typed if ch not in " -\t")
    if len(digits) != DIGITS or not all("0" <= ch <= "9" for ch in digits):
        raise SasError(f"a code is {DIGITS} digits", "bad-code")
    return digits


def matches(expected: str, typed: str) -> bool:
    """Whether the code typed is the one shown (constant time)."""
    try:
        digits = normalise(typed)
    except SasError:
        return False
    return hmac.compare_digest(expected.encode(), digits.encode())


def display(value: str) -> str:
    """A code as a screen shows it: two groups of three."""
    return f"{value[:3]} {value[3:]}"
