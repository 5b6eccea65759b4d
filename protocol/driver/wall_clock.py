"""The wall clock, in whole milliseconds since the Unix epoch.

The core takes the time as an argument; this is where both sides read it.
Stamps (``protocol.crdt.clock``) bound what a wrong clock can do.
"""

from __future__ import annotations

import time


def wall_ms() -> int:
    return time.time_ns() // 1_000_000
