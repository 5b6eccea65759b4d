"""One ``haven-kiosk run`` per data folder: an exclusive lock held for the runtime's life.

Theory of operation
-------------------
``hold(data)`` opens ``DATA/run.lock`` and takes an exclusive, non-blocking
``flock`` on it. The kernel drops the lock when the process ends, however it
ends (``kill -9``, a power cut), so a stale lock never keeps a kiosk down and
nothing has to be cleaned up. A second runtime on the same folder gets
``RunLockHeld`` before it opens the store or the page, so it never touches
the first one's ``runtime.json``. The file holds the holder's pid, as a
hint for the message only: the lock, not the file's content, decides.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from device.exc import DeviceError

LOCK_FILE = "run.lock"


class RunLockHeld(DeviceError, BlockingIOError):
    """Another runtime holds this data folder."""


class RunLockError(DeviceError, OSError):
    """The lock file cannot be opened (a missing or read-only data folder)."""


@contextlib.contextmanager
def hold(data: Path) -> Iterator[Path]:
    """Hold ``data``'s run lock for the ``with`` block; ``RunLockHeld`` if another has it."""
    path = Path(data) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except FileNotFoundError:
        raise RunLockError(f"no data folder {data} (haven-kiosk init makes one)") from None
    except OSError as exc:
        raise RunLockError(f"cannot open {path}: {exc.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            raise RunLockHeld(f"another haven-kiosk run (pid {holder or '?'}) is using {data};"
                              " refusing to start a second one") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield path
    finally:
        os.close(fd)  # closing drops the lock; the file stays for the next runtime
