"""``json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)`` for
MicroPython, whose json.dumps sorts nothing (its dicts keep no order) and writes text
other than ASCII as it is.

The same text as CPython's for what protocol/ writes this way (telemetry's JSON fields,
a replica's canonical JSON): dicts with text keys, lists and tuples, text, integers,
booleans, None and floats. MicroPython's repr of a float is not always the shortest text
that reads back (98.6 comes out as 98.59999999999999), so ``_float`` finds that text
itself and lays it out as CPython's repr does; with 16 or 17 significant digits
MicroPython's own rounding can still make the last one differ, so what must match keeps
no such floats.
"""

from __future__ import annotations

from typing import Any

_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b",
            "\f": "\\f"}


def _text(s: str) -> str:
    out = ['"']
    for ch in s:
        code = ord(ch)
        if " " <= ch <= "~" and ch not in '"\\':
            out.append(ch)
        elif ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif code > 0xFFFF:  # a surrogate pair, as CPython's ensure_ascii writes it
            code -= 0x10000
            out.append(f"\\u{0xD800 | code >> 10:04x}\\u{0xDC00 | code & 0x3FF:04x}")
        else:
            out.append(f"\\u{code:04x}")
    out.append('"')
    return "".join(out)


def _float(x: float) -> str:
    """CPython's repr of ``x``: the fewest significant digits that read back as ``x``,
    positional from 1e-4 up to 1e16, else with an exponent."""
    if x == 0:
        return "-0.0" if str(x)[0] == "-" else "0.0"
    text = ""
    for precision in range(17):
        text = f"{x:.{precision}e}"
        if float(text) == x:
            break
    mantissa, exp_text = text.split("e")
    exp = int(exp_text)
    sign = "-" if mantissa[0] == "-" else ""
    digits = mantissa.lstrip("-").replace(".", "").rstrip("0") or "0"
    if -4 <= exp < 16:
        if exp < 0:
            return sign + "0." + "0" * (-exp - 1) + digits
        whole = digits[: exp + 1]
        return sign + whole + "0" * (exp + 1 - len(whole)) + "." + (digits[exp + 1 :] or "0")
    point = "." + digits[1:] if len(digits) > 1 else ""
    return f"{sign}{digits[0]}{point}e{'-' if exp < 0 else '+'}{abs(exp):02d}"


def dumps(value: Any, allow_nan: bool = True) -> str:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            if not allow_nan:
                raise ValueError("Out of range float values are not JSON compliant")
            return "NaN" if value != value else "Infinity" if value > 0 else "-Infinity"
        return _float(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(dumps(v, allow_nan) for v in value) + "]"
    if isinstance(value, dict):
        keys = sorted(value)
        return "{" + ",".join(_text(k) + ":" + dumps(value[k], allow_nan) for k in keys) + "}"
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")
