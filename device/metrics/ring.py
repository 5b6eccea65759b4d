"""The card's copy of the metrics: JSON lines in two files, bounded in size.

Theory of operation
-------------------
``MetricsFile`` appends lines, one an hour, to ``DATA/metrics/metrics.jsonl``.
Once that file passes half of ``max_bytes`` it becomes ``metrics.jsonl.1``
(the one before is dropped), so the two never hold much more than
``max_bytes``, oldest hours first to go. An append is one ``write`` with no
fsync: a power cut loses at most what the kernel had not written back, and
metrics are not records. A line cut short by a crash, or any line that does
not parse, is passed over when read.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

DIRECTORY = "metrics"
NAME = "metrics.jsonl"
DEFAULT_MAX_BYTES = 4 * 1024 * 1024


class MetricsFile:
    def __init__(self, data: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if max_bytes < 4096:
            raise ValueError("metrics need at least 4 KiB")
        self.directory = Path(data) / DIRECTORY
        self.path = self.directory / NAME
        self.older = self.directory / (NAME + ".1")
        self.max_bytes = max_bytes

    def append(self, lines: Sequence[dict[str, Any]]) -> None:
        """``lines`` in one write."""
        data = b"".join(json.dumps(line, separators=(",", ":"), sort_keys=True,
                                   allow_nan=False).encode() + b"\n" for line in lines)
        self.directory.mkdir(mode=0o700, exist_ok=True)
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            size = 0
        if size and size + len(data) > self.max_bytes // 2:
            os.replace(self.path, self.older)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)

    def lines(self) -> Iterator[dict[str, Any]]:
        """Every line kept, oldest first; lines that do not parse are passed over."""
        for path in (self.older, self.path):
            try:
                text = path.read_text(errors="replace")
            except FileNotFoundError:
                continue
            for raw in text.splitlines():
                try:
                    line = json.loads(raw)
                except ValueError:
                    continue
                if isinstance(line, dict) and isinstance(line.get("start_ms"), int):
                    yield line

    def size(self) -> int:
        return sum(p.stat().st_size for p in (self.older, self.path) if p.exists())
