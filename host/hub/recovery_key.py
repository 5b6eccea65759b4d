"""The recovery key of a hub's key backup, as a person writes it down and types it.

Theory of operation
-------------------
A recovery key is 32 random bytes. It is written in Crockford's base32, the
alphabet of short patient codes (``protocol.crdt.short_code``: no I, L, O or
U, nothing that looks or sounds like anything else): 52 characters, the
first of them 0 or 1 (256 bits in 260), then one check character, Luhn mod
32 over the 52 as a short code's. Printed in groups of four, the check
character closing the last group (``XXXX-...-XXXX-XXXXC``).

``parse`` takes what a person typed: lower case, spaces, line breaks and
dashes anywhere, Crockford's aliases (O for 0, I and L for 1). A wrong
length, a character outside the alphabet or a check character that does not
match is refused (``RecoveryKeyError``) before any decryption is tried: a
typo reads as a typo, never as "wrong key". The check catches every change of
one character and every swap of two neighbours but 0 and Z's.

Pure: no I/O.
"""

from __future__ import annotations

from host.errors import UsageError
from protocol.crdt.short_code import (
    ALPHABET,
    BASE,
    VALUES,
    WHITE,
    check_valid,
    check_value,
    digits,
)

KEY_SIZE = 32
DIGITS = 52  #: base32 digits of 256 bits
LENGTH = DIGITS + 1
GROUP = 4


class RecoveryKeyError(UsageError):
    """Not a recovery key as printed: its message says what is wrong."""


def display(key: bytes) -> str:
    """The recovery key as printed for a safe."""
    if len(key) != KEY_SIZE:
        raise ValueError(f"a recovery key is {KEY_SIZE} bytes, not {len(key)}")
    values = digits(int.from_bytes(key, "big"), DIGITS)
    values.append(check_value(values))
    text = "".join(ALPHABET[v] for v in values)
    groups = [text[i:i + GROUP] for i in range(0, DIGITS, GROUP)]
    groups[-1] += text[DIGITS:]
    return "-".join(groups)


def parse(text: str) -> bytes:
    """The 32 bytes of a typed recovery key; ``RecoveryKeyError`` saying what is wrong."""
    chars = [c for c in text.upper() if c not in WHITE and c != "-"]
    if len(chars) != LENGTH:
        raise RecoveryKeyError(f"a recovery key has {LENGTH} characters ({DIGITS // GROUP} "
                               f"groups of {GROUP}, the last with its check character), "
                               f"not {len(chars)}: a character is missing or doubled")
    bad = sorted({c for c in chars if c not in VALUES})
    if bad:
        raise RecoveryKeyError(f"{', '.join(map(repr, bad))} is not a character of recovery "
                               f"keys (0-9 and A-Z without I, L, O, U)")
    values = [VALUES[c] for c in chars]
    if not check_valid(values):
        raise RecoveryKeyError("the recovery key's check character does not match: a "
                               "character is mistyped (compare each group with the paper)")
    n = 0
    for v in values[:DIGITS]:
        n = n * BASE + v
    if n >> (8 * KEY_SIZE):
        raise RecoveryKeyError("a recovery key begins with 0 or 1: the first group is "
                               "mistyped")
    return n.to_bytes(KEY_SIZE, "big")
