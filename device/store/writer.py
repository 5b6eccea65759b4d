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

A bulk job keeps its own transactions short in time: between two of them
it calls ``run_urgent``, which runs every urgent job that is waiting right
there, so a check-in waits for the merge's current chunk and commit, never
for a whole slice (``urgent_waiting`` tells the bulk job to commit early).

Callers block on the job's future (``call``), or collect futures
(``submit``) and wait later. The job's exception is re-raised in the caller.

The interpreter lock. While a bulk job runs, this thread is busy in Python,
and a caller woken by its finished job would have to win the lock from it
(CPython hands it over only every ``sys.getswitchinterval()``, 5 ms). So
after an urgent job that a caller waits for, a bulk job in progress pauses
until that caller has taken the result (at most ``HANDOFF_S``).
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
HANDOFF_S = 0.002

_Job = tuple[int, int, Any, "Future[Any] | None", "threading.Event | None"]


class Writer:
    def __init__(self, open_db: Callable[[], sqlite_utils.Database]) -> None:
        self._open_db = open_db
        self._jobs: queue.PriorityQueue[_Job] = queue.PriorityQueue()
        self._in_bulk = False
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
                job = self._jobs.get()
                if job[0] == _STOP:
                    break
                if job[0] == BULK:
                    self._in_bulk = True
                    try:
                        self._execute(db, job)
                    finally:
                        self._in_bulk = False
                else:
                    self._execute(db, job)
        finally:
            db.conn.close()

    def _execute(self, db: sqlite_utils.Database, job: _Job) -> None:
        _, _, fn, fut, handoff = job
        assert fut is not None
        if not fut.set_running_or_notify_cancel():
            return
        try:
            fut.set_result(fn(db))
        except BaseException as exc:
            fut.set_exception(exc)
        if handoff is not None and self._in_bulk:
            handoff.wait(HANDOFF_S)

    def urgent_waiting(self) -> bool:
        """Whether an urgent job is queued (for bulk jobs, on the writer thread)."""
        heap = self._jobs.queue
        try:
            return bool(heap[0][0] == URGENT)
        except IndexError:
            return False

    def run_urgent(self, db: sqlite_utils.Database) -> None:
        """Run every waiting urgent job now: a bulk job calls this between transactions."""
        while self.urgent_waiting():
            # Only this thread takes jobs, and nothing outranks URGENT: this is one.
            self._execute(db, self._jobs.get_nowait())

    def submit(self, fn: Callable[[sqlite_utils.Database], T], priority: int = URGENT,
               handoff: threading.Event | None = None) -> Future[T]:
        if not self._thread.is_alive():
            raise RuntimeError("the writer thread has stopped")
        fut: Future[T] = Future()
        self._jobs.put((priority, next(self._seq), fn, fut, handoff))
        return fut

    def call(self, fn: Callable[[sqlite_utils.Database], T], priority: int = URGENT) -> T:
        handoff = threading.Event() if priority == URGENT else None
        try:
            return self.submit(fn, priority, handoff).result()
        finally:
            if handoff is not None:
                handoff.set()

    def close(self) -> None:
        if self._thread.is_alive():
            self._jobs.put((_STOP, next(self._seq), None, None, None))
            self._thread.join()
