"""One way to write the technician modules' small state files: whole or not at all."""

from __future__ import annotations

from pathlib import Path

from protocol.driver.secret_files import write_whole as write_whole


def stamp(path: Path) -> tuple[int, int, int] | None:
    """What tells a file's versions apart (inode, mtime, size); None if it is missing."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)
