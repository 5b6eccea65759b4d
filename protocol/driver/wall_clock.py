"""The wall clock, in whole milliseconds since the Unix epoch, and its times as text.

The core takes the time as an argument; this is where both sides read it.
Stamps (``protocol.crdt.clock``) bound what a wrong clock can do. What the
commands show people is ISO 8601 UTC (``utc_text``); their JSON gives each
time twice (``timed``): that text under the time's name, the number under
the name and ``_ms``.
"""

from __future__ import annotations

import datetime
import time
from typing import Any

#: An arrival number (a hub's cursor) at or above this is the hub's clock in µs
#: when it arrived, or a little after; below it, a hub that numbered before its
#: clock did (an arrival number, not a time).
CURSOR_IS_TIME = 10**15


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


def utc_text(ms: int) -> str:
    """An epoch-ms time as ISO 8601 UTC to the second: ``2026-12-05T06:25:11Z``."""
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC).strftime(
        "%Y-%m-%dT%H:%M:%SZ")


def cursor_text(cursor: int | None) -> str | None:
    """The hub time an arrival number stands for (``utc_text``), or None when it is
    none (0, None, or a number from before the hub numbered by its clock)."""
    if cursor is None or cursor < CURSOR_IS_TIME:
        return None
    return utc_text(cursor // 1000)


def timed(row: dict[str, Any], *keys: str) -> dict[str, Any]:
    """``row`` with each time ``key`` (epoch ms, or None) given as ``utc_text`` under
    its name and as the number under ``key_ms``."""
    out = dict(row)
    for key in keys:
        ms = out.pop(key)
        out[key], out[f"{key}_ms"] = (None if ms is None else utc_text(int(ms))), ms
    return out
