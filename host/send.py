"""``haven send``: send files over a port, one after another, in one session.

Theory of operation
-------------------
Every file is checked and chunked first (``build_manifest`` streams it), so
a missing file fails before the port is touched and the line never idles
while we hash. The run's ``SessionDriver`` (``batch.open_run``) connects as
the Noise initiator. On each ``Connected`` the batch message goes out and the
current file's ``Sender`` starts over: the receiver answers its manifest with
what it lacks, so a resumed run, or a new session after a ``Restarted``,
moves only missing chunks. Transfer messages are pulled from the ``Sender`` only while the bulk
lane has room, so the file is read one chunk at a time. A file counts as sent
only when its ``xfer-done`` arrives, i.e. after the receiver checked the whole
file's SHA-256 and renamed it into place. After the last one, ``haven-end``
tells the receiver the batch is over.

The summary's ``chunks_reused`` is what the receiver had already, counted as
the receiver counts it (the entries whose hash it never asked for), so both
ends' summaries agree. Every message says which side refused: "refused by
the receiver" or "refused here (sender)".
"""

from __future__ import annotations

import os
import time
from array import array
from collections.abc import Iterator
from pathlib import Path

from host import errors
from host.batch import BULK_LANE, CONTROL_LANE, LinkOptions, TransferSummary, drain, open_run, poll
from host.progress import Progress
from protocol import messages
from protocol.driver.errors import LinkError
from protocol.driver.session_driver import Restarted, SessionDriver
from protocol.errors import LocalProtocolError
from protocol.session.core import Closed, Connected, MessageReceived
from protocol.transfer import (
    MAX_MESSAGE,
    Manifest,
    Sender,
    TransferAborted,
    TransferComplete,
    build_manifest,
    check_name,
)

READ_SIZE = 1 << 20
LINGER = 3.0  #: seconds to wait for the end of the batch to be acknowledged


class _File:
    def __init__(self, path: Path, progress: Progress) -> None:
        self.path = path
        try:
            check_name(path.name)
        except LocalProtocolError as exc:
            raise errors.UsageError(f"refused here (sender): {exc}") from None
        try:
            self.fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise errors.UsageError(f"{path}: no such file") from None
        except OSError as exc:
            raise errors.UsageError(f"{path}: {exc.strerror}") from None
        if not os.path.isfile(path):
            os.close(self.fd)
            raise errors.UsageError(f"{path}: not a regular file")
        progress.note(f"hashing {path.name}")
        self.manifest: Manifest = build_manifest(self._pieces(), path.name)
        self.ends = array("Q", [0])  # end offset of each chunk
        for _, length in self.manifest.entries():
            self.ends.append(self.ends[-1] + length)

    def _pieces(self) -> Iterator[bytes]:
        offset = 0
        while piece := os.pread(self.fd, READ_SIZE, offset):
            offset += len(piece)
            yield piece

    def read(self, offset: int, length: int) -> bytes:
        return os.pread(self.fd, length, offset)


def send_files(port: str, paths: list[Path], options: LinkOptions,
               progress: Progress | None = None) -> TransferSummary:
    """Send ``paths`` to a ``haven receive`` on ``port``; return the summary."""
    progress = progress or Progress(enabled=False)
    names = [p.name for p in paths]
    if len(set(names)) != len(names):
        raise errors.UsageError("two files with the same name in one batch")
    files: list[_File] = []
    try:
        for path in paths:
            files.append(_File(path, progress))
        with open_run(port, options, initiator=True) as driver:
            return _run(driver, options, files, progress)
    finally:
        for f in files:
            os.close(f.fd)


def _run(runner: SessionDriver, options: LinkOptions, files: list[_File],
         progress: Progress) -> TransferSummary:
    t0 = time.monotonic()
    summary = TransferSummary("send", file_bytes=sum(f.manifest.size for f in files),
                      chunks=sum(f.manifest.count for f in files))
    index = 0
    sender: Sender | None = None
    pending: bytes | None = None
    done_bytes = 0  # where in the current file the last chunk part sent ends

    def retire(s: Sender | None) -> None:
        if s is not None:
            summary.chunks_moved += s.stats.chunks_moved
            summary.chunk_bytes_moved += s.stats.bytes_moved

    while index < len(files):
        for event in poll(runner, options):
            if isinstance(event, Connected):
                retire(sender)
                sender, pending, done_bytes = _start(runner, files, index), None, 0
                peer = event.remote_static
                progress.note("connected" + (f" to {peer.hex()[:16]}…" if peer else ""))
            elif isinstance(event, Restarted):
                retire(sender)
                sender, pending = None, None
                progress.note(f"link silent ({event.reason}); reconnecting")
            elif isinstance(event, MessageReceived) and sender is not None:
                if event.lane != CONTROL_LANE:
                    continue
                current = sender
                for tev in current.receive(event.data):
                    if isinstance(tev, TransferAborted):
                        _flush_abort(runner, options, current)
                        who = "refused by the receiver" if tev.remote else \
                            "refused here (sender)"
                        raise errors.TransferFailed(
                            f"{files[index].path.name}: {who}: {tev.reason}"
                            + (f" ({tev.detail})" if tev.detail else ""))
                    if isinstance(tev, TransferComplete):
                        f = files[index]
                        progress.update(f.path.name, f.manifest.size, f.manifest.size, force=True)
                        progress.end()
                        summary.files.append({"name": f.path.name, "size": f.manifest.size,
                                              "sha256": f.manifest.object_hash.hex()})
                        retire(sender)
                        summary.chunks_reused += current.stats.chunks_reused
                        index += 1
                        sender = (Sender(files[index].manifest, files[index].read, xfer=index)
                                  if index < len(files) else None)
                        pending, done_bytes = None, 0
            elif isinstance(event, Closed):
                raise errors.TransferFailed(
                    f"the receiver ended the session ({event.reason}"
                    + (f": {event.detail}" if event.detail else "") + ") before the end")
        if sender is None or index >= len(files):
            continue
        while runner.can_send(BULK_LANE, MAX_MESSAGE):
            if pending is None:
                pending = sender.next_message()
                if pending is None:
                    break
            runner.send(BULK_LANE, pending)
            done_bytes = _position(files[index], pending, done_bytes)
            pending = None
        if sender.failure is not None:
            _flush_abort(runner, options, sender)
            raise errors.TransferFailed(f"{files[index].path.name}: refused here (sender): "
                                        f"{sender.failure.reason}: {sender.failure.detail}")
        f = files[index]
        progress.update(f.path.name, done_bytes, f.manifest.size)

    runner.send(BULK_LANE, messages.encode(messages.make("haven-end", files=len(files))))
    end = time.monotonic() + LINGER
    try:  # every file is confirmed: nothing that happens now is a failure
        while time.monotonic() < end and not runner.session.all_acked:
            if any(isinstance(e, Closed | Restarted) for e in poll(runner, options)):
                break
        runner.close(linger=0.2)
    except (errors.HavenError, LinkError):
        pass
    return summary.add_run(runner, t0)


def _start(runner: SessionDriver, files: list[_File], index: int) -> Sender | None:
    if index >= len(files):
        return None
    batch = messages.make("haven-batch", files=len(files),
                          bytes=sum(f.manifest.size for f in files))
    runner.send(BULK_LANE, messages.encode(batch))
    return Sender(files[index].manifest, files[index].read, xfer=index)


def _position(f: _File, wire: bytes, current: int) -> int:
    msg = messages.decode(wire, max_size=MAX_MESSAGE)
    if msg.name != "xfer-data":
        return current
    index: int = msg.get("index")
    offset: int = msg.get("offset")
    return int(f.ends[index]) - f.manifest.chunk_length(index) + offset + len(msg.get("data"))


def _flush_abort(runner: SessionDriver, options: LinkOptions, sender: Sender) -> None:
    while (wire := sender.next_message()) is not None:
        runner.send(CONTROL_LANE, wire)
    drain(runner, options)  # the receiver hears why before the session ends
