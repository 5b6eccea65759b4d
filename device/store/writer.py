"""The single writer thread.

Theory of operation
-------------------
One thread owns the database's write connection; every write is a job
handed to it. Jobs wait in two queues: ``URGENT`` (check-ins and other
local writes a person is waiting for) before ``BULK`` (slices of a merge),
first come first served within a priority. A bulk merge is cut into
short slices, each its own job and transaction, so a check-in waits at most
for the slice in progress, never for the whole merge, and SQLite's lock is
never the scheduler (there is no second writer to contend with).

A bulk job keeps its own transactions short in time: between two of them
it calls ``run_urgent``, which runs every urgent job that is waiting right
there, so a check-in waits for the merge's current chunk and commit, never
for a whole slice (``urgent_waiting`` tells the bulk job to commit early).

Callers block until their job is done (``call``), or collect futures
(``submit``) and wait later. The job's exception is re-raised in the caller.

The interpreter lock. While a bulk job runs, this thread is busy in Python,
and a caller woken by its finished job would have to win the lock from it
(CPython hands it over only every ``sys.getswitchinterval()``, 5 ms). So
after an urgent job that a caller waits for, a bulk job in progress pauses
until that caller has taken the result (at most ``HANDOFF_S``).
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

import sqlite_utils

T = TypeVar("T")
URGENT = 0
BULK = 1
HANDOFF_S = 0.002


class _Job:
    """One job. ``call`` waits on ``done`` (a plain lock: the cheapest wake-up there is);
    ``submit`` hands out ``future`` instead."""

    __slots__ = ("fn", "done", "handoff", "future", "result", "error")

    def __init__(self, fn: Callable[[sqlite_utils.Database], Any],
                 future: Future[Any] | None) -> None:
        self.fn = fn
        self.future = future
        self.done: threading.Lock | None = None
        self.handoff: threading.Lock | None = None
        self.result: Any = None
        self.error: BaseException | None = None


class Writer:
    def __init__(self, open_db: Callable[[], sqlite_utils.Database]) -> None:
        self._open_db = open_db
        self._urgent: deque[_Job] = deque()
        self._bulk: deque[_Job] = deque()
        #: One token per job queued (and one to stop): the thread sleeps on it.
        self._wake: queue.SimpleQueue[None] = queue.SimpleQueue()
        self._stopping = False
        self._in_bulk = False
        self._last_urgent = -1e9
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
                self._wake.get()
                if self._urgent:
                    self._last_urgent = time.monotonic()
                    self._execute(db, self._urgent.popleft())
                elif self._bulk:
                    self._in_bulk = True
                    try:
                        self._execute(db, self._bulk.popleft())
                    finally:
                        self._in_bulk = False
                elif self._stopping:
                    break
        finally:
            db.conn.close()

    def _execute(self, db: sqlite_utils.Database, job: _Job) -> None:
        fut = job.future
        if fut is not None:
            if not fut.set_running_or_notify_cancel():
                return
            try:
                fut.set_result(job.fn(db))
            except BaseException as exc:
                fut.set_exception(exc)
            return
        try:
            job.result = job.fn(db)
        except BaseException as exc:
            job.error = exc
        assert job.done is not None
        job.done.release()
        if job.handoff is not None and self._in_bulk:
            job.handoff.acquire(timeout=HANDOFF_S)

    def pending(self) -> int:
        """Jobs queued and not started."""
        return len(self._urgent) + len(self._bulk)

    def urgent_waiting(self) -> bool:
        """Whether an urgent job is queued (for bulk jobs, on the writer thread)."""
        return bool(self._urgent)

    def run_urgent(self, db: sqlite_utils.Database) -> None:
        """Run the urgent jobs waiting now: a bulk job calls this between transactions.

        Only those already queued: a stream of check-ins slows a merge down, but
        never stops it (each round of them lets the merge do one more chunk)."""
        if self._urgent:
            self._last_urgent = time.monotonic()
        for _ in range(len(self._urgent)):
            self._execute(db, self._urgent.popleft())

    def urgent_lately(self, seconds: float) -> bool:
        """Whether an urgent job ran in the last ``seconds``."""
        return time.monotonic() - self._last_urgent < seconds

    def _put(self, job: _Job, priority: int) -> None:
        if not self._thread.is_alive():
            raise RuntimeError("the writer thread has stopped")
        (self._urgent if priority == URGENT else self._bulk).append(job)
        self._wake.put(None)

    def submit(self, fn: Callable[[sqlite_utils.Database], T], priority: int = URGENT
               ) -> Future[T]:
        fut: Future[T] = Future()
        self._put(_Job(fn, fut), priority)
        return fut

    def call(self, fn: Callable[[sqlite_utils.Database], T], priority: int = URGENT) -> T:
        job = _Job(fn, None)
        job.done = threading.Lock()
        job.done.acquire()
        if priority == URGENT:
            job.handoff = threading.Lock()
            job.handoff.acquire()
        self._put(job, priority)
        job.done.acquire()
        if job.handoff is not None:
            job.handoff.release()  # we hold the interpreter again: the writer may go on
        if job.error is not None:
            raise job.error
        result: T = job.result
        return result

    def close(self) -> None:
        if self._thread.is_alive():
            self._stopping = True
            self._wake.put(None)
            self._thread.join()
