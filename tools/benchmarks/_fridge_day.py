"""One fridge's simulated day on a kiosk, in a process of its own: what it writes.

Theory of operation
-------------------
``python -m tools.benchmarks._fridge_day --data DIR --hub URL --commit-every S``
opens the kiosk's store in ``DIR`` (enrolled with the hub at ``URL``, which
runs in another process, so its writes are not ours), enrols a fridge and
joins a CPython node (``tests.fridge_helpers.NodeStandIn``, the initiator
session) to a ``FridgeLink`` through ``tools.linksim`` on a simulated clock:
115200 baud, a clean line. After a warm-up (the node's handshake and welcome,
a first sync round) it prints ``ready PID`` and waits for a line on stdin
(the caller attaches strace then); then the day:

* the node sends a reading a minute, 1,440 in all, one a message as the real
  node does (``device.fridge_node.link``), and the ``FridgeLink`` commits them
  as ``commit_every`` says;
* after each commit a sync round (``device.sync.loop.SyncLoop``, its kept-open
  TCP session) takes the readings to the hub, and collects garbage after it
  (``device.sync.collect.Collector``, on the simulated clock);
* what the store and ``SyncState`` defer happens at its simulated time: the
  acknowledged outbox entries leave ``acks.FLUSH_AFTER_S`` after a round (the
  store's own timer runs on real time), ``SyncState`` flushes after its
  ``FLUSH_AFTER_S`` (its clock is the simulated one);
* every ``dirty_expire_centisecs`` of simulated time the data folder's files
  are written back (``_runtime.write_back``), as the kernel would: a page
  dirtied again after that counts again in ``write_bytes``.

After the last reading the simulation runs on until the last batch is
committed, synced, acknowledged and collected. It prints one JSON line:
``/proc/self/io`` over the day (``io``), the same split by what ran (the
FridgeLink's commits, the sync rounds, the garbage collection, the ack
flushes, and the store's checkpoint thread, read from its
``/proc/self/task/TID/io``), the same by file (``WriteBack``), the WAL frames
each table and index of ``store.db`` and ``sync.db`` took (``frames``), and
the fsyncs the write-backs made (to subtract).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import logging
import math
import os
import sqlite3
import struct
import sys
import threading
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from device.enrol import load
from device.fridges.link import FridgeLink
from device.fridges.records import FridgeRecords
from device.store import Store
from device.store.acks import FLUSH_AFTER_S as ACK_FLUSH_S
from device.sync.collect import Collector
from device.sync.document_store import DocumentStore
from device.sync.loop import ROUND_LIMIT, SyncLoop
from device.sync.state import DB_NAME as SYNC_DB
from device.sync.state import FLUSH_AFTER_S as STATE_FLUSH_S
from device.sync.state import SyncState
from protocol import sensor
from tests.fridge_helpers import NodeStandIn, joined

from ._runtime import dirty_expire_s, proc_io, write_back

READINGS = 1440  #: a day, one a minute
MINUTE = 60.0
T0 = 1_800_000_000  #: the node's clock at the first reading, Unix seconds
KEYS = ("write_bytes", "wchar")
CACHESTAT = 451  #: cachestat(2)'s number (the same on x86-64 and arm64)
PAGE = os.sysconf("SC_PAGE_SIZE")
SETTLE_ROUNDS = 6  #: at most, after the day, for the last readings' collection
WAL_HEADER, FRAME_HEADER = 32, 24


class Clock:
    """Simulated seconds, the link simulation's."""

    def __init__(self) -> None:
        self.sim: Any = None

    def __call__(self) -> float:
        return self.sim.now if self.sim is not None else 0.0


class Tally:
    """``/proc/self/io`` by what ran: each part less what ran inside it and what the
    checkpoint thread wrote meanwhile (counted apart, as ``checkpoints``)."""

    def __init__(self) -> None:
        self.by: dict[str, dict[str, int]] = {}
        #: what the runs nested in the one under way took, and their checkpoint thread's
        self._inner = self._zero()

    @staticmethod
    def _zero() -> dict[str, int]:
        return dict.fromkeys([*KEYS, *("ck_" + k for k in KEYS)], 0)

    def run(self, what: str, fn: Any, *args: Any) -> Any:
        outer, self._inner = self._inner, self._zero()
        before, ck0 = proc_io(os.getpid()), checkpoint_io()
        try:
            return fn(*args)
        finally:
            after, ck1 = proc_io(os.getpid()), checkpoint_io()
            into = self.by.setdefault(what, dict.fromkeys(KEYS, 0))
            cks = self.by.setdefault("checkpoints", dict.fromkeys(KEYS, 0))
            for k in KEYS:
                whole, ck, ck_inner = after[k] - before[k], ck1[k] - ck0[k], self._inner["ck_" + k]
                into[k] += whole - ck - (self._inner[k] - ck_inner)
                cks[k] += ck - ck_inner
                outer[k] += whole
                outer["ck_" + k] += ck
            self._inner = outer


def checkpoint_io() -> dict[str, int]:
    """What the store's checkpoint thread has written (``/proc/self/task/TID/io``)."""
    for thread in threading.enumerate():
        if thread.name == "haven-checkpoint" and thread.native_id is not None:
            try:
                text = Path(f"/proc/self/task/{thread.native_id}/io").read_text()
            except OSError:  # it ended
                break
            return {k: int(v) for k, _, v in (line.partition(": ")
                                              for line in text.splitlines()) if k in KEYS}
    return dict.fromkeys(KEYS, 0)


class TalliedCollector(Collector):
    """The sync loop's collector, on the simulated clock, its writes and reports kept."""

    def __init__(self, tally: Tally, clock: Clock) -> None:
        super().__init__(clock=clock)
        self.tally = tally
        self.passes = 0
        self.dropped: dict[str, int] = {}

    def after_round(self, store: Any, state: Any, moved: bool) -> Any:
        report = self.tally.run("garbage collection", super().after_round, store, state,
                                moved)
        if report is not None:
            self.passes += 1
            for k in ("pruned", "compacted", "dropped_deleted"):
                self.dropped[k] = self.dropped.get(k, 0) + getattr(report, k, 0)
        return report


class WalFrames:
    """Pages the store's WAL took, by table or index: new frames are read after each step,
    and their page numbers named with ``dbstat`` (the WAL starts over after a
    checkpoint: its salt changes)."""

    def __init__(self, db: Path) -> None:
        self.db, self.wal = db, Path(f"{db}-wal")
        self.frames: dict[str, int] = {}
        self.salt, self.offset = b"", WAL_HEADER
        self.names: dict[int, str] = {}

    def _name(self, page: int) -> str:
        if page not in self.names:
            conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True)
            try:
                self.names = {p: n for n, p in conn.execute("SELECT name, pageno FROM dbstat")}
            except sqlite3.Error:
                self.names = {}
            finally:
                conn.close()
        return self.names.get(page, "(free pages)")

    def read(self) -> None:
        with contextlib.suppress(OSError), self.wal.open("rb") as f:
            header = f.read(WAL_HEADER)
            if len(header) < WAL_HEADER:
                return
            page_size = struct.unpack(">I", header[8:12])[0]
            if header[16:24] != self.salt:
                self.salt, self.offset = header[16:24], WAL_HEADER
            f.seek(self.offset)
            while len(frame := f.read(FRAME_HEADER)) == FRAME_HEADER and \
                    frame[8:16] == self.salt:
                f.seek(page_size, os.SEEK_CUR)
                self.offset += FRAME_HEADER + page_size
                name = self._name(struct.unpack(">I", frame[:4])[0])
                self.frames[name] = self.frames.get(name, 0) + 1


class WriteBack:
    """``_runtime.write_back`` of the data folder, and the dirty pages it found in each
    file just before (``cachestat(2)``, Linux 6.5): the bytes each file sent to the disk
    at the write-backs. SQLite's own fsyncs (a commit's, of the WAL) write pages out
    before that: their bytes are what is left of ``write_bytes``."""

    def __init__(self, data: Path) -> None:
        self.data = data
        self.fsyncs = 0  #: the write-backs' own
        self.by_file: dict[str, int] = {}
        self._libc = ctypes.CDLL(None, use_errno=True)

    def dirty(self, fd: int) -> int | None:
        span, stat = (ctypes.c_uint64 * 2)(0, 0), (ctypes.c_uint64 * 5)()
        if self._libc.syscall(CACHESTAT, fd, span, stat, 0) != 0:
            return None
        return int(stat[1]) * PAGE

    def __call__(self) -> None:
        files = [(p.name, p) for p in self.data.iterdir() if p.is_file()]
        for name, path in files:
            with contextlib.suppress(OSError):
                fd = os.open(path, os.O_RDONLY)
                try:
                    self._count(name, fd)
                finally:
                    os.close(fd)
        self._count("journal (stderr)", 2)
        self.fsyncs += write_back(self.data)

    def _count(self, name: str, fd: int) -> None:
        dirty = self.dirty(fd)
        if dirty is not None:
            self.by_file[name] = self.by_file.get(name, 0) + dirty


class FridgeDay:
    """The kiosk's side of the day (see the module docstring)."""

    def __init__(self, data: Path, url: str, commit_every: float) -> None:
        self.data = data
        self.clock = Clock()
        self.store = Store(data)
        self.state = SyncState(data, clock=self.clock)
        ident = load(data)
        wall = self.wall
        self.records = FridgeRecords(self.store, clock=wall)
        node_key = X25519PrivateKey.generate()
        self.records.enrol("fridge-1", node_key.public_key().public_bytes_raw(), "ds18b20",
                           "pharmacy")
        self.link = FridgeLink(self.records, ident.x_key, clock=wall, commit_every=commit_every)
        self.node = NodeStandIn(node_key, ident.x_key.public_key().public_bytes_raw())
        self.sim = joined(self.node, self.link)
        self.clock.sim = self.sim
        self.tally = Tally()
        # Open for the process's life, as the runtime keeps it (``device.runtime``).
        self.docs = DocumentStore(data, self.store.cipher)
        self.loop = SyncLoop(self.store, self.state, ident, [url], docs=self.docs)
        self.collector = self.loop.collector = TalliedCollector(self.tally, self.clock)
        self.wals = {"store.db": WalFrames(self.store.path),
                     SYNC_DB: WalFrames(data / SYNC_DB)}
        self.expire = dirty_expire_s()
        self.write_back = WriteBack(data)
        self.rounds = 0
        self.failed: list[str] = []
        self.seen = 0  #: the link's commits synced
        self.written_out = self.flush_due = self.state_due = math.inf

    def wall(self) -> float:
        return T0 + self.clock()

    def sync(self) -> None:
        out = self.tally.run("sync rounds", self.loop.round, lambda: ROUND_LIMIT)
        if out.summary is None:
            self.failed.append("; ".join(out.failures) or "no hub answered")
        self.rounds += 1
        self.read_wals()
        self.flush_due = self.clock() + ACK_FLUSH_S
        self.state_due = self.clock() + STATE_FLUSH_S

    def read_wals(self) -> None:
        for wal in self.wals.values():
            wal.read()

    def warm_up(self) -> None:
        """The node welcomed, the fridge's device record synced, everything written out."""
        assert self.sim.run(lambda s: self.node.welcomed, 120.0), "the node was not welcomed"
        self.sync()
        self.sync()
        self.store.flush_acks()
        self.state.flush(force=True)
        write_back(self.data)
        self.read_wals()
        self.write_back.by_file.clear()
        self.tally.by.clear()
        for wal in self.wals.values():
            wal.frames.clear()
        self.collector.passes, self.collector.dropped = 0, {}
        self.rounds, self.seen = 0, self.link.counts.commits
        self.written_out = self.clock()
        self.flush_due = self.state_due = math.inf

    def advance(self, until: float) -> None:
        """Run the line to ``until``: a sync round after each commit, and what is
        deferred (ack flushes, ``SyncState``'s, the kernel's write-back) at its time."""
        while self.clock() < until:
            nxt = min(until, self.flush_due, self.state_due, self.written_out + self.expire)
            self.tally.run("fridge commits", self.sim.run,
                           lambda s: self.link.counts.commits != self.seen,
                           max(0.0, nxt - self.clock()))
            self.read_wals()
            if self.link.counts.commits != self.seen:
                self.seen = self.link.counts.commits
                self.sync()
            now = self.clock()
            if now >= self.flush_due:
                self.tally.run("ack flushes", self.store.flush_acks)
                self.read_wals()
                self.flush_due = math.inf
            if now >= self.state_due:
                self.tally.run("sync rounds", self.state.flush)
                self.state_due = math.inf
            if now - self.written_out >= self.expire:
                self.write_back()
                self.written_out = now

    def run(self) -> dict[str, Any]:
        start, commits0 = self.clock(), self.link.counts.commits
        checkpoints0 = self.store.checkpointer.runs
        before, t0, cpu0 = proc_io(os.getpid()), time.monotonic(), time.process_time()
        for n in range(READINGS):
            self.node.readings(n, [[T0 + 60 * n, 450 + (n * 7) % 50]])
            self.advance(start + (n + 1) * MINUTE)
        # The last batch waits at most commit_every; then rounds until nothing more
        # is collected (the hub's stable point passes the last readings).
        self.advance(self.clock() + self.link.commit_every + MINUTE)
        settled = 0
        for _ in range(SETTLE_ROUNDS):
            self.advance(self.clock() + 2 * MINUTE)
            passes, dropped = self.collector.passes, dict(self.collector.dropped)
            self.sync()
            settled = settled + 1 if self.collector.dropped == dropped or \
                self.collector.passes == passes else 0
            if settled >= 2:
                break
        self.advance(self.clock() + max(ACK_FLUSH_S, STATE_FLUSH_S) + 1)
        self.write_back()
        self.read_wals()
        after, t1, cpu1 = proc_io(os.getpid()), time.monotonic(), time.process_time()
        acks = self.node.acks(sensor.READINGS_ACK)
        return {
            "io": {k: after[k] - before[k] for k in after}, "by": self.tally.by,
            "frames": {name: wal.frames for name, wal in self.wals.items()},
            "page_size": self.store.reader.execute("PRAGMA page_size").fetchone()[0],
            "writeback_fsyncs": self.write_back.fsyncs, "by_file": self.write_back.by_file,
            "readings": self.link.counts.readings,
            "acked": acks[-1] if acks else 0,
            "commits": self.link.counts.commits - commits0, "rounds": self.rounds,
            "round_failures": self.failed[:3], "collect_passes": self.collector.passes,
            "collected": self.collector.dropped,
            "checkpoints": self.store.checkpointer.runs - checkpoints0,
            "simulated_s": self.clock() - start, "seconds": t1 - t0, "cpu_s": cpu1 - cpu0,
            "sessions": self.link.counts.sessions}

    def close(self) -> None:
        self.loop.close()
        self.docs.close()
        self.state.close()
        self.store.close()


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.benchmarks._fridge_day")
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--hub", required=True)
    p.add_argument("--commit-every", required=True, type=float)
    ns = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    fridge = FridgeDay(ns.data, ns.hub, ns.commit_every)
    try:
        fridge.warm_up()
        print(f"ready {os.getpid()}", flush=True)
        sys.stdin.readline()  # the caller attaches strace meanwhile
        print(json.dumps(fridge.run()), flush=True)
    finally:
        fridge.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
