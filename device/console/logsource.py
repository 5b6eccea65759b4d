"""Where the Log group (4) reads from: a small interface, and an in-memory source.

The runtime hands the console its journal on disk (``device.logs.journal.Journal``);
a ``MemoryLog`` is what a console without one (tests, benchmarks) serves.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class LogEntry:
    index: int  #: increasing, never reused: a client pulls from the last one it saw + 1
    ts_us: int  #: microseconds since the epoch, as Mynewt's log entries carry
    level: int  #: Mynewt's levels: 0 debug, 1 info, 2 warn, 3 error, 4 critical
    module: int
    msg: str


class LogSource(Protocol):
    name: str

    def entries(self, min_index: int) -> Iterable[LogEntry]:
        """The entries whose index is ``min_index`` or more, oldest first."""
        ...


class MemoryLog:
    """The last ``keep`` entries, in memory; thread-safe."""

    def __init__(self, name: str = "haven", keep: int = 500) -> None:
        self.name = name
        self._entries: deque[LogEntry] = deque(maxlen=keep)
        self._next = 0
        self._lock = threading.Lock()

    def append(self, msg: str, *, level: int = 1, module: int = 0,
               ts: float | None = None) -> int:
        with self._lock:
            index = self._next
            self._next += 1
            when = time.time() if ts is None else ts
            self._entries.append(LogEntry(index, int(when * 1e6), level, module, msg[:1000]))
            return index

    def entries(self, min_index: int) -> Iterable[LogEntry]:
        with self._lock:
            return [e for e in self._entries if e.index >= min_index]
