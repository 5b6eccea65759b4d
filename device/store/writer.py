"""The single writer thread.

Theory of operation
-------------------
One thread owns the database's write connection; every write is a job
handed to it. Jobs wait in a priority queue: ``URGENT`` (check-ins and
other local writes a person is waiting for) before ``BULK`` (slices of a
merge), first come first served within a priority. A bulk merge is cut into
short slices, each its own job and transaction, so a check-in waits at most
for the slice in progress, never for the whole merge, and SQLite's lock is
never the scheduler (there is no second writer to contend with).

Callers block on the job's future (``call``), or collect futures
(``submit``) and wait later. The job's exception is re-raised in the caller.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

import sqlite_utils

T = TypeVar("T")
URGENT = 0
BULK = 1
_STOP = 2


class Writer:
    def __init__(self, open_db: Callable[[], sqlite_utils.Database]) -> None:
        self._open_db = open_db
        self._jobs: queue.PriorityQueue[tuple[int, int, Any, Future[Any] | None]] = (
            queue.PriorityQueue())
        self._seq = itertools.count()
        self._ready: Future[None] = Future()
        self._thread = threading.Thread(target=self._run, name="haven-writer", daemon=True)
        self._thread.start()
        self._ready.result()

    def _run(self) -> None:
        try:
            db = self._open_db()
        except BaseException as exc:
            self._ready.set_exception(exc)
            return
        self._ready.set_result(None)
        try:
            while True:
                priority, _, fn, fut = self._jobs.get()
                if priority == _STOP:
                    break
                assert fut is not None
                if not fut.set_running_or_notify_cancel():
                    continue
                try:
                    fut.set_result(fn(db))
                except BaseException as exc:
                    fut.set_exception(exc)
        finally:
            db.conn.close()

    def submit(self, fn: Callable[[sqlite_utils.Database], T], priority: int = URGENT
               ) -> Future[T]:
        if not self._thread.is_alive():
            raise RuntimeError("the writer thread has stopped")
        fut: Future[T] = Future()
        self._jobs.put((priority, next(self._seq), fn, fut))
        return fut

    def call(self, fn: Callable[[sqlite_utils.Database], T], priority: int = URGENT) -> T:
        return self.submit(fn, priority).result()

    def close(self) -> None:
        if self._thread.is_alive():
            self._jobs.put((_STOP, next(self._seq), None, None))
            self._thread.join()
