"""Copying the WAL back into the database, beside the writer, never in its way.

Theory of operation
-------------------
The store turns SQLite's automatic checkpoints off and asks for one after
about ``CHECKPOINT_WEIGHT`` of writes. Rarer checkpoints wear an SD card
less: a page written by many check-ins between two checkpoints is copied
into the database once (each 1 KiB page copied costs a whole 4 KiB page of
the kernel's cache, and of the card). But a checkpoint of a few hundred
check-ins copies thousands of pages, seconds on a card; run by the writer
thread it would hold up every check-in behind it. So a thread of its own,
with a connection of its own, runs a ``PASSIVE`` checkpoint, which SQLite
lets run while the writer commits: the writer never waits for it.

Background work that writes much (a garbage-collection pass) can ``settle``
between its transactions: wait, off the writer, until a checkpoint that
began after the call has ended, so the WAL starts over at the next commit
instead of growing by everything the work writes.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path

log = logging.getLogger("haven.store")


class Checkpointer:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._wanted = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.runs = 0  #: checkpoints completed
        self._done = threading.Condition()
        self._asked = 0  #: requests so far (``settle``)
        self._served = 0  #: requests made before the last checkpoint began that ended

    @property
    def is_running(self) -> bool:
        """True from the first request until ``close`` has stopped the thread."""
        return self._thread is not None and self._thread.is_alive()

    def request(self) -> None:
        """Ask for a checkpoint soon (one runs at a time; requests meanwhile merge)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="haven-checkpoint",
                                            daemon=True)
            self._thread.start()
        self._wanted.set()

    def settle(self, timeout: float) -> bool:
        """Ask for a checkpoint and wait (at most ``timeout`` s) until one that began after
        this call has ended; whether it did. Not on the writer thread: the checkpoint
        copies what the writer committed, while the writer goes on."""
        with self._done:
            self._asked += 1
            ticket = self._asked
        self.request()
        with self._done:
            return self._done.wait_for(lambda: self._served >= ticket or self._stopping,
                                       timeout) and self._served >= ticket

    def close(self, timeout: float = 30.0) -> None:
        """Stop after the checkpoint in progress, if any."""
        self._stopping = True
        self._wanted.set()
        with self._done:
            self._done.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA busy_timeout = 5000")
            while True:
                self._wanted.wait()
                self._wanted.clear()
                with self._done:
                    taken = self._asked
                if self._stopping:
                    return
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    self.runs += 1
                except sqlite3.Error as exc:  # a full disk, say: the WAL keeps everything
                    log.warning("checkpoint failed: %s", exc)
                with self._done:
                    self._served = taken
                    self._done.notify_all()
        finally:
            conn.close()
