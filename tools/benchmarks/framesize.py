"""Efficiency against frame size on the simulated serial line.

For each byte error rate, the same 256 KiB (64 KiB with ``--quick``) of
messages crosses ``tools.linksim`` at 11,520 B/s with every fixed data
payload size in ``SIZES``, then with the adaptive sizer, on one seeded line.
The simulated clock makes this exact and fast. The plot goes to
``docs/frame-size.svg`` (linked from BENCHMARKS.md); the table shows where
adaptation lands against the best fixed size.
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

from protocol.session.core import MessageReceived, Session, SessionConfig
from tools.linkfaults import Faults
from tools.linksim import Line, LinkSim

from . import Context, Result, benchmark

RATE = 11520.0
ERROR_RATES = [1e-5, 1e-4, 3e-4, 1e-3]
SIZES = [64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4000]
PLOT = Path(__file__).resolve().parents[2] / "docs" / "frame-size.svg"


def efficiency(error_rate: float, frame_size: int | None, size: int,
               seed: int = 5) -> tuple[float, int]:
    """(efficiency, the frame size in use at the end) of one run."""
    cfg = dict(pattern="NN", rate=RATE, frame_size=frame_size)
    a = Session(initiator=True, config=SessionConfig(**cfg))  # type: ignore[arg-type]
    b = Session(initiator=False, config=SessionConfig(**cfg))  # type: ignore[arg-type]
    sim = LinkSim(a, b, Line(faults=Faults(corrupt=error_rate), seed=seed),
                  Line(faults=Faults(corrupt=error_rate), seed=seed + 1, name="ba"))
    if not sim.run(lambda s: a.is_open, 60):
        return 0.0, 0
    start = sim.now
    rng = random.Random(seed)
    pending = [rng.randbytes(4096) for _ in range(size // 4096)]
    got = 0

    def done(s: LinkSim) -> bool:
        nonlocal got
        while pending and a.can_send(1, 4096):
            a.send_message(1, pending.pop())
        got += sum(len(e.data) for e in s.events[1] if isinstance(e, MessageReceived))
        s.events[1].clear()
        return not pending and a.all_acked and got >= size - size % 4096

    if not sim.run(done, 3000) or a.state == "closed":
        return 0.0, 0
    return got / ((sim.now - start) * RATE), a.frame_size


Curves = dict[float, list[tuple[int, float]]]


def _svg(curves: Curves, adaptive: dict[float, tuple[int, float]]) -> str:
    w, h, left, bottom = 640, 400, 60, 40

    def x(size: int) -> float:
        lo, hi = math.log(SIZES[0]), math.log(SIZES[-1])
        return left + (math.log(size) - lo) / (hi - lo) * (w - left - 20)

    def y(eff: float) -> float:
        return h - bottom - eff * (h - bottom - 20)

    colors = ["#1b9e77", "#d95f02", "#7570b3", "#e7298a"]
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
             f'font-family="sans-serif" font-size="12">',
             f'<rect width="{w}" height="{h}" fill="white"/>',
             f'<line x1="{left}" y1="{y(0)}" x2="{w - 20}" y2="{y(0)}" stroke="black"/>',
             f'<line x1="{left}" y1="{y(0)}" x2="{left}" y2="20" stroke="black"/>']
    for eff in (0.25, 0.5, 0.75, 1.0):
        parts.append(f'<text x="{left - 8}" y="{y(eff) + 4}" text-anchor="end">{eff}</text>')
        parts.append(f'<line x1="{left}" y1="{y(eff)}" x2="{w - 20}" y2="{y(eff)}" '
                     'stroke="#ddd"/>')
    for size in (64, 256, 1024, 4000):
        parts.append(f'<text x="{x(size)}" y="{h - bottom + 16}" text-anchor="middle">'
                     f'{size}</text>')
    parts.append(f'<text x="{(w + left) / 2}" y="{h - 6}" text-anchor="middle">'
                 'data payload per frame, bytes (log scale)</text>')
    parts.append(f'<text x="14" y="{h / 2}" transform="rotate(-90 14 {h / 2})" '
                 'text-anchor="middle">efficiency (file bytes / line capacity)</text>')
    for i, (rate, points) in enumerate(curves.items()):
        color = colors[i % len(colors)]
        path = " ".join(f"{x(s):.1f},{y(e):.1f}" for s, e in points)
        parts.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
        size, eff = adaptive[rate]
        parts.append(f'<circle cx="{x(max(size, SIZES[0])):.1f}" cy="{y(eff):.1f}" r="5" '
                     f'fill="{color}"/>')
        parts.append(f'<text x="{w - 150}" y="{40 + 16 * i}" fill="{color}">'
                     f'byte errors {rate:g}</text>')
    parts.append(f'<text x="{w - 150}" y="{40 + 16 * len(curves)}">dot: adaptive</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


@benchmark("framesize", "efficiency against frame size on the simulated serial line")
def framesize(ctx: Context) -> Result:
    size = (64 if ctx.quick else 256) << 10
    rows: list[dict[str, Any]] = []
    curves: Curves = {}
    adaptive: dict[float, tuple[int, float]] = {}
    for rate in ERROR_RATES:
        points = [(s, efficiency(rate, s, size)[0]) for s in SIZES]
        curves[rate] = points
        best_size, best = max(points, key=lambda p: p[1])
        eff, final_size = efficiency(rate, None, size)
        adaptive[rate] = (final_size, eff)
        rows.append({
            "byte_errors": rate, "best_fixed_size": best_size, "best_fixed_eff": round(best, 3),
            "adaptive_eff": round(eff, 3), "adaptive_size": final_size,
            "ratio": round(eff / best, 3) if best else None,
            **{f"eff@{s}": round(e, 3) for s, e in points if s in (128, 512, 2048)},
        })
        ctx.log(f"framesize {rate:g}: best {best_size} {best:.3f}, adaptive {eff:.3f}")
    PLOT.parent.mkdir(exist_ok=True)
    PLOT.write_text(_svg(curves, adaptive))
    return Result(
        rows,
        ["byte_errors", "best_fixed_size", "best_fixed_eff", "adaptive_eff", "adaptive_size",
         "ratio",
         "eff@128", "eff@512", "eff@2048"],
        notes=[f"{size >> 10} KiB of messages per point, 11,520 B/s, simulated clock "
               "(tools/linksim.py); goal: adaptive within 5% of the best fixed size.",
               "Plot: [docs/frame-size.svg](docs/frame-size.svg) (curves: fixed sizes; "
               "dots: adaptive, at the frame size it ended on)."],
    )
