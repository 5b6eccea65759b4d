"""``haven receive``: receive the files of one session into a directory.

Theory of operation
-------------------
The run's ``SessionDriver`` (``batch.open_run``) answers the sender's
handshake as the Noise responder. Each ``xfer-offer`` starts a ``Receiver`` over the directory's
``DirStore`` (``transfer_store.py``), which keeps every chunk durable as it
arrives and already knows the chunks of the files in the directory. Manifest
pieces are recorded in the store before the ``Receiver`` sees them, so a
chunk can be written where it belongs. When the ``Receiver`` has checked the
whole file's SHA-256, the store renames the file into place, and only then
does its ``xfer-done`` go out: the sender exits 0 only for a file that is on
disk under its name. The run ends with the sender's ``haven-end`` (or its
goodbye once every announced file is in). A ``Restarted`` drops the transfer in
progress; the sender offers it again and only missing chunks cross.

Before a file's first byte is written, the store says whether the disk has
room for it (``DirStore.room_for``); if not, the offer is refused with an
``xfer-abort`` of reason ``no-space``, which the sender prints. A write that
still fails for a full disk (another process filled it) aborts the same way
and removes the part file. Every message says which side refused: "refused
here (receiver)" or "refused by the sender". The summary counts a file's
chunks and those reused once the file is complete, as the sender does.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from host import errors
from host.batch import CONTROL_LANE, LinkOptions, TransferSummary, drain, open_run, poll
from host.progress import Progress, human
from host.transfer_store import STATE_DIR, DirStore, disk_full
from protocol import messages
from protocol.driver.session_driver import Restarted, SessionDriver
from protocol.errors import ProtocolError
from protocol.session.core import Closed, Connected, MessageReceived
from protocol.transfer import (
    MAX_MESSAGE,
    ChunkStored,
    OfferReceived,
    Receiver,
    TransferAborted,
    TransferComplete,
)


class _Run:
    def __init__(self, runner: SessionDriver, options: LinkOptions, store: DirStore,
                 progress: Progress) -> None:
        self.runner = runner
        self.options = options
        self.store = store
        self.progress = progress
        self.summary = TransferSummary("receive")
        self.receiver: Receiver | None = None
        self.announced: int | None = None  # files in the batch
        self.finished = False
        self.done_bytes = 0

    def run(self) -> TransferSummary:
        t0 = time.monotonic()
        while not self.finished:
            for event in poll(self.runner, self.options):
                self._on_event(event)
                if self.finished:
                    break
        self.runner.close(linger=0.2)
        return self.summary.add_run(self.runner, t0)

    def _on_event(self, event: object) -> None:
        if isinstance(event, Connected):
            peer = event.remote_static
            self.progress.note("connected" + (f" to {peer.hex()[:16]}…" if peer else ""))
        elif isinstance(event, Restarted):
            self._retire()
            self.progress.note(f"link silent ({event.reason}); waiting for the sender")
        elif isinstance(event, MessageReceived):
            self._on_message(event.data)
        elif isinstance(event, Closed):
            if self.announced is not None and len(self.summary.files) >= self.announced \
                    and self.receiver is None:
                self.finished = True
                return
            raise errors.TransferFailed(
                f"the sender ended the session ({event.reason}"
                + (f": {event.detail}" if event.detail else "") + ") before the end")

    def _on_message(self, data: bytes) -> None:
        try:
            msg = messages.decode(data, max_size=MAX_MESSAGE)
        except ProtocolError:
            return  # an authenticated peer sent garbage: the transfer refuses what follows
        if msg.name == "haven-batch":
            self.announced = msg.get("files")
            return
        if msg.name == "haven-end":
            if self.receiver is None:
                self.finished = True
            return
        if msg.name == "xfer-offer":
            self._retire()
            self.receiver = Receiver(self.store)
        if self.receiver is None:
            return
        try:
            if msg.name == "xfer-manifest" and self.receiver.state == "receiving":
                self.store.add_layout(msg.get("start"), msg.get("hashes"), msg.get("lengths"))
            events = self.receiver.receive(msg)
            for tev in events:
                self._on_transfer_event(tev)
        except (OSError, sqlite3.Error) as exc:
            if not disk_full(exc):
                raise
            self.store.discard()
            for tev in self.receiver.abort(
                    "no-space", f"the receiver's disk is full ({self.store.root})"):
                self._on_transfer_event(tev)
        if self.receiver is not None:
            for wire in self.receiver.messages_to_send():
                self.runner.send(CONTROL_LANE, wire)

    def _on_transfer_event(self, tev: object) -> None:
        assert self.receiver is not None
        if isinstance(tev, OfferReceived):
            if tev.name == STATE_DIR:
                for ev in self.receiver.abort("bad-name", f"{STATE_DIR} is the receiver's own"):
                    self._on_transfer_event(ev)
                return
            need, free = self.store.room_for(tev.object_hash, tev.name, tev.size)
            if need > free:
                for ev in self.receiver.abort(
                        "no-space", f"{human(tev.size)} offered, {human(free)} free in "
                        f"{self.store.root}"):
                    self._on_transfer_event(ev)
                return
            self.store.begin(tev.object_hash, tev.name, tev.size)
            self.done_bytes = 0
            self.progress.update(tev.name, 0, tev.size, force=True)
        elif isinstance(tev, ChunkStored):
            self.done_bytes += tev.length
            self.progress.update(self.receiver.name, self._shown(), self.receiver.size)
        elif isinstance(tev, TransferComplete):
            path = self.store.finish()
            self.progress.update(tev.name, tev.size, tev.size, force=True)
            self.progress.end()
            self.summary.files.append({"name": tev.name, "size": tev.size,
                                       "sha256": tev.object_hash.hex(), "path": str(path)})
            self.summary.file_bytes += tev.size
            self.summary.chunks += self.receiver.stats.chunks_total
            self.summary.chunks_reused += self.receiver.stats.chunks_reused
            for wire in self.receiver.messages_to_send():
                self.runner.send(CONTROL_LANE, wire)
            self._retire()
        elif isinstance(tev, TransferAborted):
            name = self.receiver.name or "the transfer"
            for wire in self.receiver.messages_to_send():
                self.runner.send(CONTROL_LANE, wire)
            drain(self.runner, self.options)  # the sender hears why before the session ends
            who = "refused by the sender" if tev.remote else "refused here (receiver)"
            raise errors.TransferFailed(f"{name}: {who}: {tev.reason}"
                                        + (f" ({tev.detail})" if tev.detail else ""))

    def _shown(self) -> int:
        assert self.receiver is not None
        r = self.receiver.stats
        if r.chunks_total == 0:
            return self.done_bytes
        # chunks already here count as received, by their share of the file
        reused = self.receiver.size * r.chunks_reused // r.chunks_total
        return min(self.receiver.size, self.done_bytes + reused)

    def _retire(self) -> None:
        r = self.receiver
        if r is not None:  # what crossed counts even in a session cut short
            self.summary.chunks_moved += r.stats.chunks_moved
            self.summary.chunk_bytes_moved += r.stats.bytes_moved
        self.receiver = None


def receive_files(port: str, directory: Path, options: LinkOptions,
                  progress: Progress | None = None) -> TransferSummary:
    """Receive one session's files from a ``haven send`` on ``port`` into ``directory``."""
    store = DirStore(directory)
    try:
        with open_run(port, options, initiator=False) as driver:
            return _Run(driver, options, store, progress or Progress(enabled=False)).run()
    finally:
        store.close()
