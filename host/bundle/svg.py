"""Small inline SVG plots for the report: lines over time, bars, a timeline of marks.

Each returns one ``<svg>`` element as text, sized in CSS pixels, with a title, a
time axis (UTC dates) and a value axis; every data point the plot shows is an
element (a ``circle`` on a line, a ``rect`` for a bar or a mark) carrying its
value in ``data-v``, so a browser test can count them. Long series are reduced to
``MAX_POINTS`` buckets first (``reduce``), so a month of minutes stays a few KiB.
"""

from __future__ import annotations

import html
import time
from collections.abc import Callable, Sequence

W, H = 720, 200
LEFT, RIGHT, TOP, BOTTOM = 56, 12, 24, 28
MAX_POINTS = 240
COLOURS = ("#1f6feb", "#d9480f", "#2b8a3e", "#862e9c", "#e67700")
Point = tuple[float, float]


def reduce(points: Sequence[Point], most: int = MAX_POINTS,
           how: Callable[[list[float]], float] = max) -> list[Point]:
    """At most ``most`` points: equal spans of x, each its points' ``how`` (max: a peak
    stays visible)."""
    if len(points) <= most:
        return list(points)
    lo, hi = points[0][0], points[-1][0]
    span = (hi - lo) / most or 1.0
    buckets: dict[int, list[Point]] = {}
    for x, y in points:
        buckets.setdefault(min(most - 1, int((x - lo) / span)), []).append((x, y))
    return [(b[len(b) // 2][0], how([y for _, y in b])) for _, b in sorted(buckets.items())]


def _day(ms: float, span_ms: float) -> str:
    """A tick's label: the day, and the hour too when the plot spans under two days."""
    return time.strftime("%d %b" if span_ms >= 2 * 86_400_000 else "%d %b %H:%M",
                         time.gmtime(ms / 1000))


def _num(v: float) -> str:
    return f"{v:.0f}" if abs(v) >= 100 or v == int(v) else f"{v:.2g}"


class _Frame:
    def __init__(self, title: str, x: tuple[float, float], y: tuple[float, float],
                 unit: str, kind: str) -> None:
        self.x0, self.x1 = x[0], (x[1] if x[1] > x[0] else x[0] + 1)
        self.y0, self.y1 = y[0], (y[1] if y[1] > y[0] else y[0] + 1)
        self.parts = [f'<svg class="plot" data-kind="{kind}" viewBox="0 0 {W} {H}" '
                      f'width="{W}" height="{H}" role="img" aria-label="{html.escape(title)}" '
                      'xmlns="http://www.w3.org/2000/svg">',
                      f'<text x="{LEFT}" y="15" class="t">{html.escape(title)}</text>']
        for i in range(3):  # value axis: 0, half, top
            v = self.y0 + (self.y1 - self.y0) * i / 2
            py = self.py(v)
            self.parts.append(f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{py:.1f}" '
                              f'y2="{py:.1f}" class="g"/><text x="{LEFT - 4}" y="{py + 4:.1f}" '
                              f'class="a" text-anchor="end">{_num(v)}{html.escape(unit)}</text>')

    def px(self, x: float) -> float:
        return LEFT + (x - self.x0) / (self.x1 - self.x0) * (W - LEFT - RIGHT)

    def py(self, y: float) -> float:
        return H - BOTTOM - (y - self.y0) / (self.y1 - self.y0) * (H - TOP - BOTTOM)

    def time_axis(self) -> None:
        for i in range(5):
            x = self.x0 + (self.x1 - self.x0) * i / 4
            self.parts.append(f'<text x="{self.px(x):.1f}" y="{H - 8}" class="a" '
                              f'text-anchor="middle">{_day(x, self.x1 - self.x0)}</text>')

    def text(self) -> str:
        return "".join(self.parts) + "</svg>"


def empty(title: str, why: str) -> str:
    return (f'<svg class="plot empty" viewBox="0 0 {W} 40" width="{W}" height="40" '
            f'xmlns="http://www.w3.org/2000/svg"><text x="{LEFT}" y="15" class="t">'
            f'{html.escape(title)}</text><text x="{LEFT}" y="33" class="a">'
            f'{html.escape(why)}</text></svg>')


def lines(title: str, series: Sequence[tuple[str, Sequence[Point]]], unit: str = "",
          how: Callable[[list[float]], float] = max) -> str:
    """Each series a line over time (x: ms since 1970), its points marked."""
    shown = [(name, reduce(pts, how=how)) for name, pts in series if pts]
    if not shown:
        return empty(title, "no data in this bundle")
    xs = [x for _, pts in shown for x, _ in pts]
    ys = [y for _, pts in shown for _, y in pts]
    f = _Frame(title, (min(xs), max(xs)), (min(0.0, min(ys)), max(ys)), unit, "lines")
    f.time_axis()
    for n, (name, pts) in enumerate(shown):
        colour = COLOURS[n % len(COLOURS)]
        path = " ".join(f"{f.px(x):.1f},{f.py(y):.1f}" for x, y in pts)
        f.parts.append(f'<polyline points="{path}" fill="none" stroke="{colour}" '
                       'stroke-width="1.5"/>')
        f.parts.extend(f'<circle cx="{f.px(x):.1f}" cy="{f.py(y):.1f}" r="1.8" '
                       f'fill="{colour}" data-v="{y:g}"/>' for x, y in pts)
        f.parts.append(f'<text x="{W - RIGHT - 150 * (len(shown) - n)}" y="15" class="a" '
                       f'fill="{colour}">■ {html.escape(name)}</text>')
    return f.text()


def bars(title: str, items: Sequence[tuple[str, float]], unit: str = "") -> str:
    """One bar a label (languages, screens, days)."""
    if not items:
        return empty(title, "no data in this bundle")
    top = max(v for _, v in items)
    f = _Frame(title, (0, len(items)), (0, top), unit, "bars")
    step = (W - LEFT - RIGHT) / len(items)
    for i, (label, v) in enumerate(items):
        y = f.py(v)
        f.parts.append(f'<rect x="{LEFT + i * step + 2:.1f}" y="{y:.1f}" '
                       f'width="{max(1.0, step - 4):.1f}" height="{H - BOTTOM - y:.1f}" '
                       f'fill="{COLOURS[0]}" data-v="{v:g}"><title>{html.escape(label)}: '
                       f'{_num(v)}</title></rect>')
        if len(items) <= 24:
            f.parts.append(f'<text x="{LEFT + (i + 0.5) * step:.1f}" y="{H - 8}" class="a" '
                           f'text-anchor="middle">{html.escape(label[:10])}</text>')
    return f.text()


def marks(title: str, points: Sequence[tuple[float, str]], colours: dict[str, str]) -> str:
    """A timeline: one mark a moment (x: ms), coloured by its kind (a round's outcome)."""
    if not points:
        return empty(title, "no sync rounds recorded in this bundle")
    xs = [x for x, _ in points]
    f = _Frame(title, (min(xs), max(xs)), (0, 1), "", "marks")
    f.parts = f.parts[:2]  # no value axis: a timeline
    f.time_axis()
    kinds = sorted({k for _, k in points})
    for n, kind in enumerate(kinds):
        f.parts.append(f'<text x="{LEFT + 110 * n}" y="{H - BOTTOM - 100}" class="a" '
                       f'fill="{colours.get(kind, "#666")}">■ {html.escape(kind)}</text>')
    for x, kind in points:
        f.parts.append(f'<rect x="{f.px(x) - 1:.1f}" y="{H - BOTTOM - 60}" width="2" '
                       f'height="50" fill="{colours.get(kind, "#666")}" data-v="{x:.0f}">'
                       f'<title>{html.escape(kind)}</title></rect>')
    return f.text()
