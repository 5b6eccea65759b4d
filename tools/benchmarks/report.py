"""Render results (as stored in bench-out/results.json) as BENCHMARKS.md."""

from __future__ import annotations

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


def render(results: dict[str, dict[str, Any]]) -> str:
    parts = [HEADER]
    for name in sorted(results):
        r = results[name]
        parts.append(f"## {r['title']} (`{name}`)\n\n")
        parts.append(f"Run {r['when']}, {r['seconds']:.0f} s, "
                     f"`{r['command']}`{' (quick sizes)' if r['quick'] else ''}.\n\n")
        for note in r.get("notes", []):
            parts.append(f"{note}\n\n")
        if r["rows"]:
            parts.append(table(r["rows"], r["columns"]) + "\n")
    return "".join(parts)
