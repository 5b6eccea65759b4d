"""Metrics as plain data, for debug bundles and reports.

``read(data)`` reads what the card holds (``ring``); a running kiosk's
``Metrics.read`` adds the hour still in memory. The form (a JSON-able
dict): ``hours``, each with its ``sync`` and ``usage`` counts and its
``health`` minute by minute, and ``rounds``: the rounds that moved
something or failed, oldest first.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from device.metrics.ring import DEFAULT_MAX_BYTES, MetricsFile

VERSION = 1
_COLUMNS = (("rss", "rss_mib"), ("avail", "mem_available_mib"), ("disk", "disk_free_mib"),
            ("temp", "temp_c"), ("load", "load1"))


def read(data: Path, since_ms: int | None = None,
         max_bytes: int = DEFAULT_MAX_BYTES) -> dict[str, Any]:
    """The metrics kept in ``data`` (hours ending after ``since_ms``, if given)."""
    return from_lines(MetricsFile(data, max_bytes).lines(), since_ms)


def from_lines(lines: Iterable[dict[str, Any]], since_ms: int | None = None
               ) -> dict[str, Any]:
    hours: list[dict[str, Any]] = []
    rounds: list[dict[str, Any]] = []
    for line in lines:
        end = line.get("end_ms")
        if not isinstance(end, int) or since_ms is not None and end <= since_ms:
            continue
        start = line["start_ms"]
        hours.append({"start_ms": start, "end_ms": end, "sync": _dict(line.get("sync")),
                      "usage": _dict(line.get("usage")),
                      "health": _minutes(start, _dict(line.get("health")))})
        rounds += [r for r in line.get("rounds") or () if isinstance(r, dict)]
    return {"version": VERSION, "hours": hours, "rounds": rounds}


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _minutes(start: int, cols: dict[str, Any]) -> list[dict[str, Any]]:
    times = cols.get("t")
    if not isinstance(times, list):
        return []
    out = []
    for i, t in enumerate(times):
        row: dict[str, Any] = {"t_ms": start + int(t) * 1000}
        for key, name in _COLUMNS:
            column = cols.get(key)
            row[name] = column[i] if isinstance(column, list) and i < len(column) else None
        out.append(row)
    return out
