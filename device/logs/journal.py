"""The kiosk's log on disk: JSON lines in rotating files, each entry indexed.

Theory of operation
-------------------
``Journal(directory, max_bytes)`` appends one JSON object per line to
``haven.log``; when it would pass ``file_bytes`` (an eighth of ``max_bytes``,
64 KiB at least) it is fsynced and renamed ``haven.log.1`` (the older ones
move up by one), and a new ``haven.log`` begins; files past ``max_bytes`` in
all are deleted, oldest first. Each line starts ``{"i":N,"t":T,`` with ``N``
the entry's index: increasing across files and restarts (at open, the last
complete line of the newest file gives it; a torn last line from a power cut
is cut off), never reused while the directory lives. Because files hold
increasing indexes, a reader finds ``min_index`` by bisecting file offsets, not
by reading everything (``lines``); it reads only complete lines, and holds the
files open, so a rotation under it changes nothing it reads.

Writes go straight to the file (a crashed process loses nothing the kernel
has); fsyncs are few: at rotation, for an error or worse (at most one per
``ERROR_SYNC`` s), for anything else when the last one is older than
``SYNC_EVERY`` s, and at ``sync()`` (the crash hooks, a clean stop).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from device.console.logsource import LogEntry

NAME = "haven.log"
DEFAULT_MAX_BYTES = 8 * 1024 * 1024
MIN_FILE_BYTES = 64 * 1024
FILES = 8
SYNC_EVERY = 60.0
ERROR_SYNC = 1.0
ERROR = 3  #: Mynewt's error level
_HEAD = re.compile(rb'\{"i":(\d+),')
_BLOCK = 4096


def index_of(line: bytes) -> int | None:
    """The index a journal line starts with, or None for a line that is not one."""
    m = _HEAD.match(line)
    return int(m.group(1)) if m else None


class Journal:
    """See the module docstring. Thread-safe."""

    name = "haven"  #: as the Log group names it
    log_type = 2  #: Mynewt's LOG_TYPE_STORAGE

    def __init__(self, directory: Path, max_bytes: int = DEFAULT_MAX_BYTES, *,
                 clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.file_bytes = max(MIN_FILE_BYTES, max_bytes // FILES)
        self.clock = clock
        self.monotonic = monotonic
        self.syncs = 0  #: fsyncs done (benchmarks, tests)
        self._lock = threading.Lock()
        directory.mkdir(parents=True, exist_ok=True)
        #: the first index of haven.log, haven.log.1, ... (newest first)
        self._firsts: list[int] = []
        found: int | None = None
        for k in range(10_000):
            path = self._path(k)
            first, last = self._bounds(path, newest=k == 0) if path.exists() else (None, None)
            if first is None:
                if k == 0:
                    self._firsts.append(-1)  # empty or missing: it starts at the next index
                    continue
                break
            self._firsts.append(first)
            if found is None and last is not None:
                found = last + 1
        self.next_index = found or 0
        if self._firsts[0] == -1:
            self._firsts[0] = self.next_index
        self._fd = -1
        self._closed = False
        self._open()
        self._synced = monotonic()
        self._dirty = False

    # -- files -------------------------------------------------------------------------

    def _path(self, k: int) -> Path:
        return self.directory / (NAME if k == 0 else f"{NAME}.{k}")

    @staticmethod
    def _bounds(path: Path, newest: bool) -> tuple[int | None, int | None]:
        """The first and last index in ``path``; the newest file's torn tail is cut."""
        with path.open("rb+") as f:
            first = index_of(f.readline())
            if first is None:
                return None, None
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - 64 * 1024))
            tail = f.read()
            end = tail.rfind(b"\n")
            # The last line that is an entry: a damaged card can end a file with a line of
            # zeros or junk, and an index read as missing there would be reused.
            last = next((i for i in map(index_of, reversed(tail[:max(end, 0)].split(b"\n")))
                         if i is not None), first)
            if newest and end + 1 < len(tail):  # a line the power cut short
                size -= len(tail) - end - 1
                f.truncate(size)
                if size == 0:
                    return None, None
            return first, last

    def files(self) -> list[Path]:
        """The journal's files, oldest first."""
        with self._lock:
            paths = [self._path(k) for k in range(len(self._firsts))]
        return [p for p in reversed(paths) if p.exists()]

    @property
    def first_index(self) -> int:
        with self._lock:
            return self._firsts[-1]

    # -- writing -----------------------------------------------------------------------

    def append(self, entry: dict[str, Any], level: int = 1) -> int:
        """Write ``entry`` (without ``i``/``t``: given here) as one line; its index."""
        body = json.dumps(entry, separators=(",", ":"), ensure_ascii=True,
                          default=str)[1:]
        with self._lock:
            index = self.next_index
            head = f'{{"i":{index},"t":{int(self.clock() * 1e6)}'
            line = (head + ("," + body if body != "}" else "}") + "\n").encode()
            if self._fd < 0 and not self._closed:
                self._open()  # a rotation could not make the new file: try again
            if self._size and self._size + len(line) > self.file_bytes:
                self._rotate()
            try:
                if os.write(self._fd, line) != len(line):
                    raise OSError(errno.ENOSPC, "the disk took part of a log line")
            except OSError:
                # A full card writes part of a line: cut it, so the next line is whole
                # (else the two make one line no reader can parse, and an entry is lost).
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, self._size)
                raise
            self._size += len(line)
            self.next_index = index + 1
            self._dirty = True
            now = self.monotonic()
            due = ERROR_SYNC if level >= ERROR else SYNC_EVERY
            if now - self._synced >= due:
                self._sync(now)
        return index

    def sync(self) -> None:
        """Make every line written so far durable."""
        with self._lock:
            self._sync(self.monotonic())

    def _sync(self, now: float) -> None:
        if self._dirty and self._fd >= 0:
            os.fsync(self._fd)
            self.syncs += 1
            self._dirty = False
        self._synced = now

    def _rotate(self) -> None:
        self._sync(self.monotonic())
        os.close(self._fd)
        self._fd = -1
        keep = max(1, self.max_bytes // self.file_bytes)
        for k in range(len(self._firsts), 0, -1):
            src = self._path(k - 1)
            if k >= keep:
                with contextlib.suppress(FileNotFoundError):
                    src.unlink()
                continue
            with contextlib.suppress(FileNotFoundError):
                os.replace(src, self._path(k))
        self._firsts = [self.next_index, *self._firsts][:keep]
        self._open()
        with contextlib.suppress(OSError):
            dfd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)

    def _open(self) -> None:
        """``haven.log`` opened for appending (``OSError`` if the card will not: a full
        one can have no room for a new file; the next append tries again)."""
        self._fd = os.open(self.directory / NAME, os.O_WRONLY | os.O_APPEND | os.O_CREAT,
                           0o640)
        self._size = os.fstat(self._fd).st_size

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._fd >= 0:
                self._sync(self.monotonic())
                os.close(self._fd)
                self._fd = -1

    # -- reading -----------------------------------------------------------------------

    def lines(self, min_index: int = 0) -> Iterator[bytes]:
        """The complete lines (newline included) whose index is ``min_index`` or more,
        oldest first."""
        with self._lock:
            opened: list[tuple[int, Any]] = []
            for k, first in enumerate(self._firsts):
                with contextlib.suppress(FileNotFoundError):
                    opened.append((first, self._path(k).open("rb")))
                if first <= min_index:
                    break
        try:
            for first, f in reversed(opened):
                if first < min_index:
                    f.seek(_offset_of(f, min_index))
                for line in f:
                    if not line.endswith(b"\n"):
                        break  # being written: the next reader gets it
                    index = index_of(line)
                    if index is not None and index >= min_index:
                        yield line
        finally:
            for _, f in opened:
                f.close()

    def entries(self, min_index: int) -> Iterator[LogEntry]:
        """``LogSource``: the entries from ``min_index``; ``msg`` is the JSON line."""
        for line in self.lines(min_index):
            try:
                d = json.loads(line)
            except ValueError:
                continue
            yield LogEntry(d["i"], d.get("t", 0), d.get("lvl", 1), 0,
                           line.decode("ascii", "replace").rstrip("\n"))

    def recent(self, count: int, min_level: int = 0) -> list[dict[str, Any]]:
        """The last ``count`` entries at ``min_level`` or above among the last 500."""
        out = []
        for line in self.lines(max(0, self.next_index - 500)):
            with contextlib.suppress(ValueError):
                d = json.loads(line)
                if d.get("lvl", 0) >= min_level:
                    out.append(d)
        return out[-count:]


def _offset_of(f: Any, target: int) -> int:
    """An offset in ``f`` at a line start at or before the first line indexed ``target``
    or more (files hold increasing indexes): a bisection over offsets."""
    lo, hi = 0, f.seek(0, os.SEEK_END)
    while hi - lo > _BLOCK:
        mid = (lo + hi) // 2
        f.seek(mid)
        f.readline()  # the rest of the line mid fell in
        start = f.tell()
        index = index_of(f.readline())
        if index is None or start >= hi:
            hi = mid
        elif index < target:
            lo = start
        else:
            hi = mid
    return lo
