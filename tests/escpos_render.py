"""Helpers (no tests): a small ESC/POS interpreter that prints a ticket's bytes onto an image.

It knows the commands ``device.hardware.escpos`` sends, as a receipt printer
runs them, and refuses anything else (an unknown command, a byte that is not
printable ASCII, an image wider than the paper, an image started with text
in the line buffer): a ticket that renders here uses nothing more. Text is
laid out in font A's 12 x 24 dot cells, magnified by ``GS !``, centred or
not by ``ESC a``, wrapped at the paper's width as printers wrap it; a line is
as high as its tallest character plus 6 dots of spacing, and an empty line
(or ``ESC d``) feeds 30 dots. Characters are drawn with Pillow's default
font in their cells; the raster images dot for dot.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from PIL import Image, ImageDraw, ImageFont

CELL_W, CELL_H, SPACING, EMPTY_LINE = 12, 24, 6, 30


@dataclass
class Block:
    """Something printed: a line of text (one font size) or a raster image, in dots."""

    kind: str  #: "text" or "image"
    x: int
    y: int
    w: int
    h: int
    text: str = ""
    size: int = 1
    bold: bool = False


@dataclass
class Render:
    width: int
    blocks: list[Block] = field(default_factory=list)
    images: list[tuple[int, int, list[bytes], int]] = field(default_factory=list)
    cuts: list[int] = field(default_factory=list)
    height: int = 0

    def text(self) -> list[str]:
        return [b.text for b in self.blocks if b.kind == "text"]

    def image(self) -> Image.Image:
        """The paper: white, with the text's cells and the images' dots in black."""
        img = Image.new("L", (self.width, self.height + 8), 255)
        draw = ImageDraw.Draw(img)
        for b in self.blocks:
            if b.kind != "text":
                continue
            font = ImageFont.load_default(size=CELL_H * b.size)
            for i, c in enumerate(b.text):
                draw.text((b.x + i * CELL_W * b.size, b.y), c, fill=0, font=font)
        for x, y, rows, row_bytes in self.images:
            for dy, row in enumerate(rows):
                for i in range(row_bytes * 8):
                    if row[i // 8] >> (7 - i % 8) & 1:
                        img.putpixel((x + i, y + dy), 0)
        return img


class EscPosError(ValueError):
    """Bytes a receipt printer would not take as this ticket means them."""


def render(data: bytes, width: int) -> Render:
    out = Render(width)
    align, size, bold = 0, 1, False
    line: list[tuple[str, int, bool]] = []
    y = 0

    def place(chars: list[tuple[str, int, bool]]) -> None:
        nonlocal y
        if not chars:
            y += EMPTY_LINE
            return
        w = sum(CELL_W * s for _, s, _ in chars)
        h = max(CELL_H * s for _, s, _ in chars)
        x = {0: 0, 1: (width - w) // 2, 2: width - w}[align]
        start = 0
        for i in range(1, len(chars) + 1):  # one block per run of one size and weight
            if i == len(chars) or chars[i][1:] != chars[start][1:]:
                s, b = chars[start][1], chars[start][2]
                text = "".join(c for c, _, _ in chars[start:i])
                out.blocks.append(Block("text", x, y + h - CELL_H * s, CELL_W * s * len(text),
                                        CELL_H * s, text, s, b))
                x += CELL_W * s * len(text)
                start = i
        y += h + SPACING

    def flush() -> None:
        """LF: print the line buffer (wrapped at the paper's width)."""
        nonlocal line
        chunk: list[tuple[str, int, bool]] = []
        used = 0
        for ch in line:
            w = CELL_W * ch[1]
            if w > width:
                raise EscPosError(f"a character {w} dots wide on {width} dots of paper")
            if used + w > width:
                place(chunk)
                chunk, used = [], 0
            chunk.append(ch)
            used += w
        place(chunk)
        line = []

    def arg(i: int, n: int = 1) -> bytes:
        if i + n > len(data):
            raise EscPosError(f"a command cut short at byte {i}")
        return data[i:i + n]

    i = 0
    while i < len(data):
        b = data[i]
        if 0x20 <= b <= 0x7E:
            line.append((chr(b), size, bold))
            i += 1
        elif b == 0x0A:
            flush()
            i += 1
        elif b == 0x1B:
            cmd = arg(i + 1)
            if cmd == b"@":
                align, size, bold, line = 0, 1, False, []
                i += 2
            elif cmd in (b"R", b"t"):
                if arg(i + 2)[0] != 0:
                    raise EscPosError(f"ESC {cmd.decode()} {arg(i + 2)[0]}: not USA/PC437")
                i += 3
            elif cmd == b"a":
                align = arg(i + 2)[0] % 48
                if align > 2:
                    raise EscPosError(f"ESC a {align}")
                i += 3
            elif cmd == b"E":
                bold = bool(arg(i + 2)[0] & 1)
                i += 3
            elif cmd == b"d":
                if line:
                    flush()
                y += EMPTY_LINE * arg(i + 2)[0]
                i += 3
            elif cmd == b"J":
                if line:
                    flush()
                y += arg(i + 2)[0]
                i += 3
            else:
                raise EscPosError(f"unknown command ESC {cmd!r} at byte {i}")
        elif b == 0x1D:
            cmd = arg(i + 1)
            if cmd == b"!":
                n = arg(i + 2)[0]
                if n >> 4 != n & 0xF:
                    raise EscPosError(f"GS ! {n:#x}: width and height differ")
                size = (n & 0xF) + 1
                i += 3
            elif cmd == b"v":
                if arg(i + 2) != b"0" or arg(i + 3)[0] not in (0, 48):
                    raise EscPosError("GS v: only GS v 0 in normal mode")
                if line:
                    raise EscPosError("GS v 0 with text in the line buffer")
                head = arg(i + 4, 4)
                row_bytes, rows = head[0] | head[1] << 8, head[2] | head[3] << 8
                if row_bytes * 8 > width:
                    raise EscPosError(f"an image {row_bytes * 8} dots wide on {width} dots")
                body = arg(i + 8, row_bytes * rows)
                x = {0: 0, 1: (width - row_bytes * 8) // 2, 2: width - row_bytes * 8}[align]
                out.images.append((x, y, [body[r * row_bytes:(r + 1) * row_bytes]
                                          for r in range(rows)], row_bytes))
                out.blocks.append(Block("image", x, y, row_bytes * 8, rows))
                y += rows
                i += 8 + row_bytes * rows
            elif cmd == b"V":
                if line:
                    flush()
                m = arg(i + 2)[0]
                i += 3 + (m in (65, 66))
                out.cuts.append(y)
            else:
                raise EscPosError(f"unknown command GS {cmd!r} at byte {i}")
        else:
            raise EscPosError(f"byte {b:#04x} at {i} is neither text nor a known command")
    if line:
        raise EscPosError("text left in the line buffer: never printed")
    out.height = y
    return out
