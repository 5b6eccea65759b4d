"""The part of CPython's uuid that protocol/ uses, for MicroPython: a UUID from its text
or its 16 bytes, and back (``bytes``, ``hex``, ``str``); ValueError as CPython's for text
that is not one."""


class UUID:
    def __init__(self, hex=None, bytes=None):
        if (hex is None) == (bytes is None):
            raise TypeError("one of the hex or bytes arguments must be given")
        if hex is not None:
            hex = hex.replace("urn:", "").replace("uuid:", "").strip("{}").replace("-", "")
            if len(hex) != 32:
                raise ValueError("badly formed hexadecimal UUID string")
            self.int = int(hex, 16)
        else:
            if len(bytes) != 16:
                raise ValueError("bytes is not a 16-char string")
            self.int = int.from_bytes(bytes, "big")

    @property
    def bytes(self):
        return self.int.to_bytes(16, "big")

    @property
    def hex(self):
        return f"{self.int:032x}"

    @property
    def version(self):
        # As CPython: a version only for the RFC 4122 variant (bits 10 at 62-63).
        if (self.int >> 62) & 3 != 2:
            return None
        return (self.int >> 76) & 0xF

    def __str__(self):
        h = self.hex
        return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]

    def __repr__(self):
        return "UUID('" + str(self) + "')"

    def __eq__(self, other):
        return isinstance(other, UUID) and self.int == other.int

    def __lt__(self, other):
        return self.int < other.int

    def __hash__(self):
        return hash(self.int)
