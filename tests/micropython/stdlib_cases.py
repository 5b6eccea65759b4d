"""The stdlib stand-ins (protocol/portable/stdlib) against CPython's real modules.

Prints one line per case: under MicroPython the stand-ins answer, under CPython
the real modules; tests/test_micropython_port.py requires the same lines.
"""

import base64
import hmac
import unicodedata
import uuid
from dataclasses import dataclass, field, replace


def show(label, fn, *args, **kwargs):
    try:
        print(label, repr(fn(*args, **kwargs)))
    except (ValueError, TypeError) as exc:
        print(label, "error", type(exc).__name__ if isinstance(exc, TypeError) else "ValueError")


for text in ("12345678-1234-5678-1234-567812345678", "{12345678-1234-5678-1234-567812345678}",
             "urn:uuid:12345678123456781234567812345678", "12345678-1234-5678-1234-56781234567",
             "zz345678-1234-5678-1234-567812345678", "", "12345678123456781234567812345678xx"):
    show("uuid " + text, lambda t: str(uuid.UUID(t)), text)
    show("uuid.hex " + text, lambda t: uuid.UUID(t).hex, text)
V4 = bytes.fromhex("12345678123441238123123412341234")
for raw in (bytes(16), bytes(range(16)), bytes(15), V4):
    show("uuid.bytes " + raw.hex(), lambda r: (str(uuid.UUID(bytes=r)), uuid.UUID(bytes=r).version,
                                               uuid.UUID(bytes=r).bytes == r), raw)

for data in (b"", b"f", b"fo", b"foo", bytes(range(256))):
    show("b64encode", base64.b64encode, data)
for text in (b"Zm9v", b"Zm8=", b"Zg==", b"Zg=", b"Z===", b"Zm9v\n", b"Zm 9v", b"Zm9v!",
             b"", b"====", b"Zm9vYg==", b"Zm9vYg", "Zm9v"):
    show("b64decode " + repr(text), base64.b64decode, text, validate=True)

# Non-ASCII text is refused by the stand-in (no Unicode tables there): not compared.
for form, text in (("NFC", "AB12345"), ("NFKC", "passport-7"), ("XYZ", "a")):
    show("normalize " + form + " " + repr(text), unicodedata.normalize, form, text)

for a, b in ((b"abc", b"abc"), (b"abc", b"abd"), (b"ab", b"abc"), (b"", b"")):
    show("compare_digest " + repr((a, b)), hmac.compare_digest, a, b)


@dataclass(frozen=True)
class Point:
    __match_args__ = ("x", "y", "tags")
    x: int
    y: int = 0
    tags: list = field(default_factory=list)


p = Point(1)
print("dataclass", p, p == Point(1, 0, []), p == Point(2), replace(p, y=5))
show("dataclass missing", Point)
show("dataclass extra", Point, 1, 2, [], 4)
show("dataclass unknown", Point, 1, z=3)
print("dataclass fresh default", Point(1).tags is not Point(1).tags)
