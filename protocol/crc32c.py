"""CRC-32C (Castagnoli, polynomial 0x1EDC6F41 reflected as 0x82F63B78).

The check value of b"123456789" is 0xE3069283 (RFC 3720, appendix B.4).
The ``crc32c`` package (hardware instructions where the CPU has them) is used
when present; the pure-Python table code below is the fallback and the
reference, and the test vectors hold both to the same values.
"""

from __future__ import annotations

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


def crc32c(data: bytes, value: int = 0) -> int:
    """Return the CRC-32C of ``data``, continuing from ``value``."""
    crc = value ^ 0xFFFFFFFF
    table = _TABLE
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


_pure_crc32c = crc32c

try:  # pragma: no cover - depends on the optional C extension
    import crc32c as _c_crc32c

    def crc32c(data: bytes, value: int = 0) -> int:
        return int(_c_crc32c.crc32c(data, value))

    IMPLEMENTATION = "c"
except ImportError:
    IMPLEMENTATION = "python"
