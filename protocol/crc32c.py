"""CRC-32C (Castagnoli, polynomial 0x1EDC6F41 reflected as 0x82F63B78).

The check value of b"123456789" is 0xE3069283 (RFC 3720, appendix B.4).
The ``crc32c`` package (hardware instructions where the CPU has them) is used
for inputs of 256 bytes and more when present; the pure-Python table code
below is the fallback and the reference, and the test vectors hold both to
the same values.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

_POLY = 0x82F63B78


def _make_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ _POLY if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _make_table()


def _pure_crc32c(data: bytes, value: int = 0) -> int:
    """The reference: a table-driven CRC-32C in plain Python."""
    crc = value ^ 0xFFFFFFFF
    table = _TABLE
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


# The C extension (hardware CRC instructions) is loaded on the first input
# large enough to gain from it: importing it costs about 5 MB of memory and
# 40 ms (it pulls in importlib.metadata), which a session, whose only CRCs
# guard short handshake frames, never needs to pay on a 512 MB Pi.
_C_THRESHOLD = 256
_c_crc: Callable[[bytes, int], int] | None = None


def _best() -> Callable[[bytes, int], int]:
    global _c_crc
    if _c_crc is None:
        try:  # pragma: no cover - depends on the optional C extension
            import crc32c as c_crc32c

            _c_crc = c_crc32c.crc32c
        except ImportError:
            _c_crc = _pure_crc32c
    return _c_crc


def crc32c(data: bytes, value: int = 0) -> int:
    """Return the CRC-32C of ``data``, continuing from ``value``."""
    if len(data) < _C_THRESHOLD:
        return _pure_crc32c(data, value)
    return int(_best()(data, value))


def implementation() -> str:
    """``"c"`` when the C extension is available, else ``"python"``."""
    return "python" if _best() is _pure_crc32c else "c"
