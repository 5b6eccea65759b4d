"""Raw deflate (RFC 1951) for MicroPython, where sync batches are packed and unpacked.

MicroPython's ``deflate`` module decompresses only (most builds, the unix port's
too), and its errors do not say whether a stream was cut short, trailed by other
bytes or is not deflate at all, which a batch must tell apart as CPython's zlib
does (``protocol.sync.batches``). So both directions are here, in Python:

* ``compress``: LZ77 over a 32 KiB window (a hash of each 3 bytes, its latest
  position, greedy matches) coded with the fixed Huffman codes (section 3.2.6) in
  one final block. Other bytes than zlib's, as RFC 1951 allows; any inflater reads
  them.
* ``decompress``: the decoder of Mark Adler's puff.c (zlib's reference), with zlib's
  checks: ``Truncated`` when the data ends inside the stream, ``Trailing`` when bytes
  follow it, ``TooLarge`` past ``limit`` bytes out, ``DeflateError`` for anything that
  is not deflate (a reserved block type, a bad stored length, an over-subscribed or
  incomplete code, a distance before the start).
"""

from __future__ import annotations

from protocol.errors import RemoteProtocolError

_MAX_BITS = 15
_LEN_BASE = (3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83,
             99, 115, 131, 163, 195, 227, 258)
_LEN_EXTRA = (0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5,
              5, 0)
_DIST_BASE = (1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769,
              1025, 1537, 2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577)
_DIST_EXTRA = (0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11,
               12, 12, 13, 13)
_ORDER = (16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15)
WINDOW = 32768


class DeflateError(RemoteProtocolError):
    """Not deflate data (a ValueError on CPython, as every RemoteProtocolError)."""


class Truncated(DeflateError):
    """The data ends inside the stream."""


class Trailing(DeflateError):
    """Bytes follow the end of the stream."""


class TooLarge(DeflateError):
    """The stream inflates to more than the limit."""


# -- decompress ------------------------------------------------------------------


class _Huffman:
    """A canonical code as puff.c keeps it: how many codes of each length, and the
    symbols in code order. ``left`` < 0: over-subscribed; > 0: incomplete."""

    def __init__(self, lengths: list[int]) -> None:
        count = [0] * (_MAX_BITS + 1)
        for n in lengths:
            count[n] += 1
        left = 1
        for n in range(1, _MAX_BITS + 1):
            left = (left << 1) - count[n]
            if left < 0:
                break
        if count[0] == len(lengths):
            left = 0  # no codes at all: complete, as puff.c and zlib take it
        offs = [0, 0]
        for n in range(1, _MAX_BITS):
            offs.append(offs[n] + count[n])
        symbol = [0] * len(lengths)
        for sym, n in enumerate(lengths):
            if n:
                symbol[offs[n]] = sym
                offs[n] += 1
        self.count, self.symbol, self.left = count, symbol, left


class _Reader:
    def __init__(self, data: bytes, limit: int) -> None:
        self.data, self.pos, self.held, self.nheld = data, 0, 0, 0
        self.out, self.limit = bytearray(), limit

    def bits(self, n: int) -> int:
        held, nheld = self.held, self.nheld
        while nheld < n:
            if self.pos >= len(self.data):
                raise Truncated("deflate data cut short")
            held |= self.data[self.pos] << nheld
            self.pos += 1
            nheld += 8
        self.held, self.nheld = held >> n, nheld - n
        return held & ((1 << n) - 1)

    def decode(self, h: _Huffman) -> int:
        code = first = index = 0
        for n in range(1, _MAX_BITS + 1):
            code |= self.bits(1)
            count = h.count[n]
            if code - count < first:
                return h.symbol[index + code - first]
            index += count
            first = (first + count) << 1
            code <<= 1
        raise DeflateError("invalid Huffman code")

    def grew(self) -> None:
        if len(self.out) > self.limit:
            raise TooLarge("deflate data inflates past the limit")

    def stored(self) -> None:
        self.held = self.nheld = 0  # to the byte boundary
        if len(self.data) - self.pos < 4:
            raise Truncated("deflate data cut short")
        d, p = self.data, self.pos
        size = d[p] | d[p + 1] << 8
        if size != (~(d[p + 2] | d[p + 3] << 8)) & 0xFFFF:
            raise DeflateError("invalid stored block lengths")
        p += 4
        if len(d) - p < size:
            raise Truncated("deflate data cut short")
        self.out += d[p : p + size]
        self.pos = p + size
        self.grew()

    def codes(self, lencode: _Huffman, distcode: _Huffman) -> None:
        out = self.out
        while True:
            sym = self.decode(lencode)
            if sym < 256:
                out.append(sym)
            elif sym == 256:
                self.grew()
                return
            else:
                sym -= 257
                if sym >= 29:
                    raise DeflateError("invalid literal/length code")
                length = _LEN_BASE[sym] + self.bits(_LEN_EXTRA[sym])
                sym = self.decode(distcode)
                if sym >= 30:
                    raise DeflateError("invalid distance code")
                dist = _DIST_BASE[sym] + self.bits(_DIST_EXTRA[sym])
                if dist > len(out):
                    raise DeflateError("invalid distance too far back")
                start = len(out) - dist
                if dist >= length:
                    out += out[start : start + length]
                else:  # the copy overlaps what it makes
                    for i in range(length):
                        out.append(out[start + i])
            if len(out) > self.limit:
                raise TooLarge("deflate data inflates past the limit")

    def dynamic(self) -> None:
        nlen, ndist, ncode = self.bits(5) + 257, self.bits(5) + 1, self.bits(4) + 4
        if nlen > 286 or ndist > 30:
            raise DeflateError("too many length or distance symbols")
        lengths = [0] * 19
        for i in range(ncode):
            lengths[_ORDER[i]] = self.bits(3)
        lencode = _Huffman(lengths)
        if lencode.left != 0:
            raise DeflateError("invalid code lengths set")
        lengths = []
        while len(lengths) < nlen + ndist:
            sym = self.decode(lencode)
            if sym < 16:
                lengths.append(sym)
                continue
            if sym == 16:
                if not lengths:
                    raise DeflateError("invalid bit length repeat")
                value, repeat = lengths[-1], 3 + self.bits(2)
            elif sym == 17:
                value, repeat = 0, 3 + self.bits(3)
            else:
                value, repeat = 0, 11 + self.bits(7)
            if len(lengths) + repeat > nlen + ndist:
                raise DeflateError("invalid bit length repeat")
            lengths += [value] * repeat
        if lengths[256] == 0:
            raise DeflateError("invalid code -- missing end-of-block")
        lencode = _Huffman(lengths[:nlen])
        if lencode.left < 0 or lencode.left > 0 and nlen - lencode.count[0] != 1:
            raise DeflateError("invalid literal/lengths set")
        distcode = _Huffman(lengths[nlen:])
        if distcode.left < 0 or distcode.left > 0 and ndist - distcode.count[0] != 1:
            raise DeflateError("invalid distances set")
        self.codes(lencode, distcode)


_FIXED: list[_Huffman] = []


def _fixed() -> list[_Huffman]:
    if not _FIXED:
        _FIXED.append(_Huffman([8] * 144 + [9] * 112 + [7] * 24 + [8] * 8))
        _FIXED.append(_Huffman([5] * 30))
    return _FIXED


def decompress(data: bytes, limit: int) -> bytes:
    """The bytes raw deflate ``data`` holds, at most ``limit`` of them; the stream must
    end exactly where ``data`` does."""
    r = _Reader(bytes(data), limit)
    last = 0
    while not last:
        last = r.bits(1)
        kind = r.bits(2)
        if kind == 0:
            r.stored()
        elif kind == 1:
            lencode, distcode = _fixed()
            r.codes(lencode, distcode)
        elif kind == 2:
            r.dynamic()
        else:
            raise DeflateError("invalid block type")
    if r.pos != len(r.data):
        raise Trailing("bytes after the deflate stream")
    return bytes(r.out)


# -- compress --------------------------------------------------------------------


class _Writer:
    def __init__(self) -> None:
        self.out, self.held, self.nheld = bytearray(), 0, 0

    def bits(self, value: int, n: int) -> None:
        self.held |= value << self.nheld
        self.nheld += n
        while self.nheld >= 8:
            self.out.append(self.held & 0xFF)
            self.held >>= 8
            self.nheld -= 8

    def code(self, code: int, n: int) -> None:
        """A Huffman code: its bits go most significant first."""
        rev = 0
        for _ in range(n):
            rev = rev << 1 | code & 1
            code >>= 1
        self.bits(rev, n)

    def literal(self, sym: int) -> None:
        if sym < 144:
            self.code(0x30 + sym, 8)
        elif sym < 256:
            self.code(0x190 + sym - 144, 9)
        elif sym < 280:
            self.code(sym - 256, 7)
        else:
            self.code(0xC0 + sym - 280, 8)

    def match(self, length: int, dist: int) -> None:
        i = 28
        while _LEN_BASE[i] > length:
            i -= 1
        self.literal(257 + i)
        self.bits(length - _LEN_BASE[i], _LEN_EXTRA[i])
        i = 29
        while _DIST_BASE[i] > dist:
            i -= 1
        self.code(i, 5)
        self.bits(dist - _DIST_BASE[i], _DIST_EXTRA[i])


def compress(data: bytes) -> bytes:
    """``data`` as one final fixed-Huffman deflate block, repeats coded as matches."""
    data = bytes(data)
    w = _Writer()
    w.bits(1, 1)  # final block
    w.bits(1, 2)  # fixed Huffman codes
    latest: dict[bytes, int] = {}
    i, n = 0, len(data)
    while i < n:
        length = j = 0
        if i + 3 <= n:
            key = data[i : i + 3]
            j = latest.get(key, -1)
            latest[key] = i
            if j >= 0 and i - j <= WINDOW:
                length = 3
                while length < 258 and i + length < n and data[j + length] == data[i + length]:
                    length += 1
        if length:
            w.match(length, i - j)
            for k in range(i + 1, min(i + length, n - 2)):
                latest[data[k : k + 3]] = k
            i += length
        else:
            w.literal(data[i])
            i += 1
    w.literal(256)
    if w.nheld:
        w.bits(0, 8 - w.nheld)  # to the byte boundary
    return bytes(w.out)
