"""Render results (as stored in bench-out/results.json) as BENCHMARKS.md.

bench-out/ is not committed, so a checkout's results.json may hold only the
benchmarks run there: the sections of the committed BENCHMARKS.md for the
others are kept as they were, each still naming the run it came from.
"""

from __future__ import annotations

import re
from typing import Any

HEADER = """# Benchmarks

Written by `./tools/bench` from its latest run (do not edit by hand; rerun it).
Every figure comes from this machine and the run named below each table;
ratios against a peer are only meaningful within one run.

"""


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 100 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value).replace("|", "\\|")


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c)) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def sections(markdown: str) -> dict[str, str]:
    """The sections of a BENCHMARKS.md by benchmark name (``## Title (`name`)``)."""
    found = re.split(r"(?m)^(?=## )", markdown)
    named = (re.match(r"## .*\(`([\w-]+)`\)\n", part) for part in found)
    return {m.group(1): part for m, part in zip(named, found, strict=True) if m}


def render(results: dict[str, dict[str, Any]], previous: str = "") -> str:
    kept = sections(previous)
    parts = [HEADER]
    for name in sorted(results.keys() | kept.keys()):
        r = results.get(name)
        if r is None:
            parts.append(kept[name])
            continue
        parts.append(f"## {r['title']} (`{name}`)\n\n")
        parts.append(f"Run {r['when']}, {r['seconds']:.0f} s, "
                     f"`{r['command']}`{' (quick sizes)' if r['quick'] else ''}.\n\n")
        for note in r.get("notes", []):
            parts.append(f"{note}\n\n")
        if r["rows"]:
            parts.append(table(r["rows"], r["columns"]) + "\n")
    return "".join(parts)
