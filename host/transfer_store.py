"""A durable ``ChunkStore`` for ``haven receive``: chunks live in the files themselves.

Theory of operation
-------------------
No chunk is stored twice. An object being received is a sparse part file,
``DIR/.haven/incoming/<object hash>.part``, of the object's final size; a
chunk is written at its offset(s) in it. SQLite (``DIR/.haven/index.db``,
WAL, ``synchronous=FULL``; its tables change only by numbered migrations,
``MIGRATIONS``) records where each chunk's bytes are:

* ``layout (object, offset, hash, length)``: the manifest of the object being
  received, filled from its ``xfer-manifest`` pieces (``add_layout``), so
  ``put(hash, data)`` knows where the chunk goes;
* ``chunks (hash, path, offset, length)``: every place, in a part file or in a
  completed file in DIR, where a chunk with that hash can be read.

``put`` writes the chunk, fsyncs the part file, then commits its ``chunks``
rows: progress is durable per chunk, so a killed receiver resumes with what it
had. ``has`` and ``get`` read the chunk back from a recorded place and check
its SHA-256 (a completed file may have been edited since; a stale row is
deleted), so the index can be wrong but never lies to the transfer.

When the transfer completes, ``finish`` copies the chunks the object shares
with files already here (which were never sent) into the part file, fsyncs it,
renames it over ``DIR/name``, fsyncs DIR, and re-points the rows: a new
version of a file then costs only its changed chunks, and the old version's
rows go. Memory is one chunk at a time; a manifest lives in SQLite.

``room_for`` says whether the disk can take an offered object before any of it
is written: the whole file is written once (shared chunks are copied into the
part file), less what a part file from an earlier run already holds, plus
``MARGIN`` for the index. When a write fails for a full disk anyway,
``discard`` removes the part file, so a full disk is not left full of a
partial file.
"""

from __future__ import annotations

import errno
import os
import sqlite3
from pathlib import Path

from host.errors import UsageError
from protocol.chunking import chunk_id
from protocol.driver.database import Migrations, open_database
from protocol.driver.secret_files import fsync_dir
from protocol.transfer import HASH_SIZE, LENGTH_SIZE, check_name

STATE_DIR = ".haven"
MARGIN = 1 << 20  #: bytes kept free beyond an object's own, for the index and its log
MIGRATIONS = Migrations("the transfer index")
#: 1: the tables as release c3497bc made them (``IF NOT EXISTS``: its files are at 1).
MIGRATIONS.sql(
    1,
    """CREATE TABLE IF NOT EXISTS chunks (
        hash BLOB NOT NULL, path TEXT NOT NULL, offset INTEGER NOT NULL,
        length INTEGER NOT NULL, PRIMARY KEY (hash, path, offset)) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS chunks_by_path ON chunks (path)",
    """CREATE TABLE IF NOT EXISTS layout (
        object BLOB NOT NULL, offset INTEGER NOT NULL, hash BLOB NOT NULL,
        length INTEGER NOT NULL, PRIMARY KEY (object, offset)) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS layout_by_hash ON layout (object, hash)",
    """CREATE TABLE IF NOT EXISTS files (
        name TEXT PRIMARY KEY, object BLOB NOT NULL, size INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL)""",
)


class DirStore:
    """Chunks of the files in ``root`` and of the one object being received."""

    def __init__(self, root: Path) -> None:
        self.root = root
        try:
            root.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise UsageError(f"{root} is not a directory") from None
        except OSError as exc:
            raise UsageError(f"cannot create {root}: {exc.strerror}") from None
        self.state = root / STATE_DIR
        self.incoming = self.state / "incoming"
        try:
            self.incoming.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"cannot create {self.incoming}: {exc.strerror}") from None
        self.db = open_database(self.state / "index.db", MIGRATIONS, synchronous="FULL")
        self.object: bytes | None = None
        self.name = ""
        self.size = 0
        self._part: Path | None = None
        self._fd: int | None = None
        self._layout_count = 0
        self._layout_end = 0

    # -- the object being received -------------------------------------------

    def begin(self, object_hash: bytes, name: str, size: int) -> None:
        """Start (or resume) receiving an object; its manifest follows."""
        check_name(name)
        if name == STATE_DIR:
            raise UsageError(f"refusing a file named {STATE_DIR}")
        self._close_part()
        self.object, self.name, self.size = object_hash, name, size
        self._part = self.incoming / f"{object_hash.hex()}.part"
        fresh = not self._part.exists()
        self._fd = os.open(self._part, os.O_RDWR | os.O_CREAT, 0o600)
        os.ftruncate(self._fd, size)
        if fresh:
            os.fsync(self._fd)
            fsync_dir(self.incoming)
        with self.db.atomic():
            self.db.execute("DELETE FROM layout WHERE object = ?", (object_hash,))
        self._layout_count = self._layout_end = 0

    def add_layout(self, start: int, hashes: bytes, lengths: bytes) -> None:
        """Record a manifest piece (entries ``start``...), in order."""
        if self.object is None or start != self._layout_count:
            return  # out of order: the transfer refuses it anyway
        rows = []
        for j in range(len(hashes) // HASH_SIZE):
            length = int.from_bytes(lengths[j * LENGTH_SIZE : (j + 1) * LENGTH_SIZE], "big")
            rows.append((self.object, self._layout_end,
                         hashes[j * HASH_SIZE : (j + 1) * HASH_SIZE], length))
            self._layout_end += length
        self._layout_count += len(rows)
        with self.db.atomic():
            self.db.conn.executemany("INSERT OR REPLACE INTO layout VALUES (?, ?, ?, ?)", rows)

    # -- ChunkStore ------------------------------------------------------------

    def has(self, chunk_hash: bytes) -> bool:
        return self._find(chunk_hash) is not None

    def get(self, chunk_hash: bytes) -> bytes:
        data = self._find(chunk_hash)
        if data is None:
            raise KeyError(chunk_hash.hex())
        return data

    def put(self, chunk_hash: bytes, data: bytes) -> None:
        if self._fd is None or self._part is None:
            raise RuntimeError("put() before begin()")
        offsets = [o for (o,) in self.db.execute(
            "SELECT offset FROM layout WHERE object = ? AND hash = ?", (self.object, chunk_hash))]
        for offset in offsets:
            os.pwrite(self._fd, data, offset)
        os.fsync(self._fd)
        rel = self._rel(self._part)
        with self.db.atomic():
            self.db.conn.executemany("INSERT OR REPLACE INTO chunks VALUES (?, ?, ?, ?)",
                                [(chunk_hash, rel, o, len(data)) for o in offsets])

    def _find(self, chunk_hash: bytes) -> bytes | None:
        rows = self.db.execute("SELECT path, offset, length FROM chunks WHERE hash = ?",
                               (chunk_hash,)).fetchall()
        for path, offset, length in rows:
            data = self._read(path, offset, length)
            if data is not None and chunk_id(data) == chunk_hash:
                return data
            with self.db.atomic():
                self.db.execute("DELETE FROM chunks WHERE hash = ? AND path = ? AND offset = ?",
                                (chunk_hash, path, offset))
        return None

    def _read(self, rel: str, offset: int, length: int) -> bytes | None:
        path = self.root / rel
        if self._part is not None and path == self._part and self._fd is not None:
            return os.pread(self._fd, length, offset)
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return None
        try:
            return os.pread(fd, length, offset)
        finally:
            os.close(fd)

    # -- completion ----------------------------------------------------------

    def is_current(self, name: str, object_hash: bytes) -> bool:
        """True when ``DIR/name`` is, as far as we know, that object already."""
        row = self.db.execute("SELECT object, size, mtime_ns FROM files WHERE name = ?",
                              (name,)).fetchone()
        try:
            st = (self.root / name).stat()
        except OSError:
            return False
        return row is not None and row == (object_hash, st.st_size, st.st_mtime_ns)

    def finish(self) -> Path:
        """Complete the object: fill in shared chunks, rename into place. Returns its path."""
        assert self._fd is not None and self._part is not None and self.object is not None
        target = self.root / self.name
        if self.is_current(self.name, self.object):
            self._drop_part()
            return target
        rel = self._rel(self._part)
        have = {o for (o,) in self.db.execute("SELECT offset FROM chunks WHERE path = ?", (rel,))}
        cursor = self.db.execute(
            "SELECT offset, hash FROM layout WHERE object = ? ORDER BY offset", (self.object,))
        for offset, digest in cursor.fetchall():
            if offset not in have:
                os.pwrite(self._fd, self.get(digest), offset)
        os.fsync(self._fd)
        if target.is_dir():
            raise UsageError(f"{target} is a directory; not replacing it")
        os.replace(self._part, target)
        fsync_dir(self.root)
        st = target.stat()
        with self.db.atomic():
            self.db.execute("DELETE FROM chunks WHERE path = ?", (self.name,))
            self.db.execute("INSERT INTO chunks SELECT hash, ?, offset, length FROM layout "
                            "WHERE object = ?", (self.name, self.object))
            self.db.execute("DELETE FROM chunks WHERE path = ?", (rel,))
            self.db.execute("DELETE FROM layout WHERE object = ?", (self.object,))
            self.db.execute("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?)",
                            (self.name, self.object, st.st_size, st.st_mtime_ns))
        self._close_part()
        return target

    def _drop_part(self) -> None:
        assert self._part is not None
        rel = self._rel(self._part)
        self._part.unlink(missing_ok=True)
        with self.db.atomic():
            self.db.execute("DELETE FROM chunks WHERE path = ?", (rel,))
            self.db.execute("DELETE FROM layout WHERE object = ?", (self.object,))
        self._close_part()

    # -- space ---------------------------------------------------------------

    def room_for(self, object_hash: bytes, name: str, size: int) -> tuple[int, int]:
        """(bytes still to write for this object, bytes free here); the first must not
        pass the second. A file already here as that object needs nothing."""
        if self.is_current(name, object_hash):
            return 0, self.free()
        try:
            held = (self.incoming / f"{object_hash.hex()}.part").stat().st_blocks * 512
        except OSError:
            held = 0
        return max(0, size - held) + MARGIN, self.free()

    def free(self) -> int:
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize

    def discard(self) -> None:
        """Drop the object being received, part file and all (after a full disk)."""
        part, obj = self._part, self.object
        self._close_part()
        if part is not None:
            part.unlink(missing_ok=True)
            try:
                with self.db.atomic():
                    self.db.execute("DELETE FROM chunks WHERE path = ?", (self._rel(part),))
                    self.db.execute("DELETE FROM layout WHERE object = ?", (obj,))
            except sqlite3.Error:
                pass  # rows for a file that is gone are dropped when next looked up

    # -- plumbing ------------------------------------------------------------

    def _rel(self, path: Path) -> str:
        return str(path.relative_to(self.root))

    def _close_part(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
        self._fd = None
        self._part = None
        self.object = None

    def close(self) -> None:
        self._close_part()
        self.db.close()


def disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` says the disk (or the user's quota) is full."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    if isinstance(exc, sqlite3.Error):
        return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL \
            or "full" in str(exc)
    return False
