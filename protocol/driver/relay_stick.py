"""Relay files on a courier's stick: written whole or not at all, read back, listed.

Theory of operation
-------------------
A stick is pulled out at any moment, fills up, is read-only, or carries
other people's files. A relay file is written under a hidden temporary name
(``.NAME.part``), synced, renamed to its opaque name (random, ``SUFFIX``),
the folder synced, then read back (its pages dropped from the cache first,
where the system allows) and compared: a stick that lost or altered it is
found at once. A cut leaves a ``.part`` file, which readers pass over (and
report), or the whole file: never a half one under a bundle's name. Every
failure is a ``StickError`` whose message is one line saying what to do.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from pathlib import Path

from protocol.driver.errors import DriverError
from protocol.driver.secret_files import fsync_dir

SUFFIX = ".hvr"
PART = ".part"
#: Far above any relay file (a piece of 64 MiB, padded by an eighth at most): a larger
#: file under a relay file's name is not read into memory.
MAX_FILE = 128 << 20


class StickError(DriverError, OSError):
    """The stick could not be read or written (full, read-only, pulled out)."""

    code = "stick"


def _said(exc: OSError, where: Path) -> StickError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        what, code = "the stick is full: free some space or use another stick", "stick-full"
    elif exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        what, code = ("the stick is read-only (or not ours to write): unlock it or use "
                      "another", "stick-read-only")
    elif exc.errno in (errno.ENOENT, errno.EIO, errno.ENODEV, errno.ENXIO, errno.ENOTDIR):
        what, code = "the stick was pulled out or failed: put it back and run this again", \
            "stick-gone"
    else:
        what, code = f"{exc.strerror or exc}", "stick"
    return StickError(f"{where}: {what}", code)


def writable(directory: Path) -> None:
    """``StickError`` unless a file can be made in ``directory`` (checked before anything
    is applied, so a read-only stick changes nothing)."""
    probe = directory / f".probe{secrets.token_hex(4)}{PART}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise _said(exc, directory) from None


def write(directory: Path, data: bytes) -> Path:
    """Write ``data`` to a new opaque name in ``directory``: whole, synced, read back."""
    name = secrets.token_hex(10) + SUFFIX
    tmp, path = directory / f".{name}{PART}", directory / name
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
        with contextlib.suppress(OSError):  # vfat and some sticks refuse a folder's fsync
            fsync_dir(directory)
        if read(path) != data:
            path.unlink()
            raise StickError(f"{path}: what was read back is not what was written: the "
                             "stick is failing; use another", "stick-verify")
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, StickError):
            raise
        raise _said(exc, path) from None
    return path


def read(path: Path) -> bytes:
    """A file's bytes, read from the stick rather than the cache where the system allows."""
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            with contextlib.suppress(OSError, AttributeError):
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            chunks = []
            while chunk := os.read(fd, 1 << 20):
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)
    except OSError as exc:
        raise _said(exc, path) from None


def peek(path: Path, size: int) -> bytes:
    """A file's first ``size`` bytes (its header), without reading the rest."""
    try:
        with path.open("rb") as f:
            return f.read(size)
    except OSError as exc:
        raise _said(exc, path) from None


def listing(directory: Path) -> tuple[list[Path], list[Path], list[Path]]:
    """(relay files, half-written ones a cut left, foreign entries) in ``directory``,
    each sorted by name."""
    try:
        entries = sorted(directory.iterdir())
    except OSError as exc:
        raise _said(exc, directory) from None
    ours = [p for p in entries if p.name.endswith(SUFFIX) and not p.name.startswith(".")
            and _relay_sized_file(p)]
    parts = [p for p in entries if p.name.startswith(".") and p.name.endswith(PART)]
    foreign = [p for p in entries if p not in ours and p not in parts]
    return ours, parts, foreign


def _relay_sized_file(path: Path) -> bool:
    """A regular file, not a link, of a relay file's size at most: a pipe under a relay
    file's name would block its reader for good, a link would read a file of the
    machine's, and a huge file would be read whole."""
    try:
        st = path.lstat()
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_size <= MAX_FILE


def remove(path: Path) -> None:
    """Remove a file that was applied (``StickError`` if the stick will not)."""
    try:
        path.unlink()
    except FileNotFoundError:
        return
    except OSError as exc:
        raise _said(exc, path) from None

