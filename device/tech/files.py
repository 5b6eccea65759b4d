"""One way to write the technician modules' small state files: whole or not at all."""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

from protocol.driver.secret_files import fsync_dir


def write_whole(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``: a temporary file beside it (owner-only), synced,
    renamed over it, the directory synced. A power cut leaves the old file or the new."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    with contextlib.suppress(OSError):  # written; a directory may refuse fsync
        fsync_dir(path.parent)


def stamp(path: Path) -> tuple[int, int, int] | None:
    """What tells a file's versions apart (inode, mtime, size); None if it is missing."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)
