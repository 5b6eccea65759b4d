"""Short patient codes: eight characters a patient without documents keeps.

Theory of operation
-------------------
SPEC.md, "Short patient codes". A code is built, not drawn at random: random
codes of 8 characters would collide (about 13% across 100,000 patients, and
each collision merges two people). It is the kiosk's number, which the hub
gave it at enrolment and never gives again (3 characters: up to 32,768
kiosks), then the kiosk's own counter of patients without documents (4
characters: up to 1,048,575 per kiosk, from 1), then a check character: 8
characters, unique with no coordination at check-in time. A full counter is
an error (``code-range``), never a wrap.

The alphabet is Crockford's base32 (the digits and the letters without I, L,
O and U): nothing in it looks or sounds like anything else. Its own check
symbols (``* ~ $ = U``) cannot be read aloud, so the check character is
Luhn mod 32 over the alphabet's values instead: it catches every change of
one character, and every swap of two neighbours but those of ``0`` and ``Z``
(values 0 and 31, the one blind spot of Luhn mod N, as 09/90 is Luhn's).

Written and printed as ``XXXX-XXXX``. ``parse`` takes it as a patient
types or reads it: lower case, spaces, the dash or none, and Crockford's
read-aloud aliases (O for 0, I and L for 1); a wrong check character is
refused (``code-check``), and so is a counter of 0, which no kiosk gives
(``code-range``): all zeros would pass any Luhn check. ``is_code`` is the
rule that tells a code from a passport number typed in the same field: a
code has its dash (the page's keyboard has the key, the printed code and its
QR carry it); a passport number never needs one, and one typed without a
dash is never a code.

Pure: no I/O, no clock, ASCII only (the caller normalises Unicode first).
"""

from __future__ import annotations

from protocol.errors import LocalProtocolError

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
BASE = len(ALPHABET)
KIOSK_CHARS, COUNTER_CHARS = 3, 4
LENGTH = KIOSK_CHARS + COUNTER_CHARS + 1
MAX_KIOSK = BASE ** KIOSK_CHARS - 1  #: 32,767
MAX_COUNTER = BASE ** COUNTER_CHARS - 1  #: 1,048,575
#: What a patient may type for each character: the alphabet, and Crockford's aliases.
VALUES = {c: i for i, c in enumerate(ALPHABET)}
VALUES.update({"O": 0, "I": 1, "L": 1})
WHITE = " \t\r\n"


class ShortCodeError(LocalProtocolError):
    """Not a short patient code; ``code`` says why (``code-length``, ``code-char``,
    ``code-check``, ``code-range``)."""

    code = "bad-code"


def check_value(values: list[int]) -> int:
    """Luhn mod 32: the value that makes ``values + [it]`` valid."""
    total, factor = 0, 2
    for v in reversed(values):
        addend = factor * v
        total += addend // BASE + addend % BASE
        factor = 3 - factor
    return (BASE - total % BASE) % BASE


def check_valid(values: list[int]) -> bool:
    total, factor = 0, 1
    for v in reversed(values):
        addend = factor * v
        total += addend // BASE + addend % BASE
        factor = 3 - factor
    return total % BASE == 0


def digits(n: int, width: int) -> list[int]:
    """``n`` as ``width`` base-32 digit values, the most significant first."""
    out = []
    for _ in range(width):
        n, d = divmod(n, BASE)
        out.append(d)
    return out[::-1]


def encode(kiosk: int, counter: int) -> str:
    """The code (8 characters, no dash) for the kiosk's ``counter``-th patient."""
    if not 0 <= kiosk <= MAX_KIOSK:
        raise ShortCodeError(f"a kiosk number is 0 to {MAX_KIOSK}, not {kiosk}", "code-range")
    if not 1 <= counter <= MAX_COUNTER:
        raise ShortCodeError(f"a kiosk hands out codes 1 to {MAX_COUNTER}; {counter} is past"
                             " them", "code-range")
    values = digits(kiosk, KIOSK_CHARS) + digits(counter, COUNTER_CHARS)
    values.append(check_value(values))
    return "".join(ALPHABET[v] for v in values)


def display(code: str) -> str:
    """``XXXX-XXXX``: as printed, shown, and carried in the QR."""
    code = parse(code)
    return f"{code[:4]}-{code[4:]}"


def parse(text: str) -> str:
    """The canonical code (8 characters, no dash) of what a patient typed or read."""
    chars = [c for c in text.upper() if c not in WHITE and c != "-"]
    if len(chars) != LENGTH:
        raise ShortCodeError(f"a patient code has {LENGTH} characters, not {len(chars)}",
                             "code-length")
    bad = [c for c in chars if c not in VALUES]
    if bad:
        raise ShortCodeError(f"{bad[0]!r} is not a character of patient codes", "code-char")
    values = [VALUES[c] for c in chars]
    if not check_valid(values):
        raise ShortCodeError("the check character does not match: a character is wrong",
                             "code-check")
    if not any(values[KIOSK_CHARS:-1]):  # 0000-0000 passes any Luhn check; never given
        raise ShortCodeError("no kiosk gives a code with counter 0", "code-range")
    return "".join(ALPHABET[v] for v in values)


def split(code: str) -> tuple[int, int]:
    """(kiosk number, counter) of a code."""
    values = [VALUES[c] for c in parse(code)]
    kiosk = counter = 0
    for v in values[:KIOSK_CHARS]:
        kiosk = kiosk * BASE + v
    for v in values[KIOSK_CHARS:-1]:
        counter = counter * BASE + v
    return kiosk, counter


def is_code(text: str) -> bool:
    """Whether what was typed in the start screen's field is meant as a code rather
    than a passport number: four letters or digits, a dash, four letters or digits
    (spaces aside). Its characters and check are ``parse``'s to judge."""
    chars = "".join(c for c in text if c not in WHITE)
    head, dash, tail = chars.partition("-")
    return bool(dash) and len(head) == len(tail) == 4 and all(
        "0" <= c <= "9" or "A" <= c <= "Z" for c in (head + tail).upper())
