"""The ticket printer as a device: where it is, whether it answers, and a deadline on all.

Theory of operation
-------------------
``printer`` in the configuration names the target, and ``Printer`` tells
the two kinds apart each time it opens it:

- a serial printer: a pyserial URL (``socket://10.0.0.7:9100``,
  ``rfc2217://...``) or a path that is a tty (``/dev/ttyUSB0``, a pty). Before
  each ticket it asks the real-time status (``DLE EOT 1..4``, see ``escpos``)
  and prints only when the printer says it can: paper out, cover open or an
  error is the printer's state, and the ticket is not sent. No answer within
  ``STATUS_WAIT`` (silence), or an answer that is not a status byte
  (garbage), is ``failed``;
- a device file: anything else, such as the kernel's USB printer node
  (``/dev/usb/lp0``). It is opened without blocking and written within the
  deadline. Its errors are the state: no such device (``ENOENT``, ``ENODEV``,
  ``ENXIO``: unplugged, or a FIFO nobody reads) is ``absent``; ``ENOSPC``,
  which the kernel's usblp driver gives when the printer reports paper out,
  is ``paper-out`` (once asked to abort on errors, ``LPABORT``, rather than
  retry them for ever); any other error (``EIO``, ``EPIPE``...) and a deadline
  passed (a printer that stopped taking bytes) are ``failed``. A device
  file says nothing between tickets, so its state is the last ticket's.

A check-in never waits on a printer longer than ``timeout``: ``print_ticket``
runs the job on the printer's own thread (one job at a time, so a ticket
never interleaves with another or with a status check) and waits for it at
most ``timeout`` (plus a little for the thread to hand the result over). The
job itself works to the same deadline: every read, write and wait is bounded
by it (but for pyserial's ``socket://`` connect, which waits up to 5 s of its
own), and a job that waited in line past it does nothing. A job that still
runs when the caller stops waiting ends by its deadline; its ticket, if it
comes out, is a bonus. A job stuck past its deadline in a call that does not
heed it makes the tickets after it fail at once, not each wait for it.
``print_ticket`` never raises: it answers whether the
ticket was printed, and the reason is the printer's ``state``, which the
staff screen shows (``snapshot``). ``refresh`` asks a serial printer's
status again, in the background, when the state is older than ``max_age``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import fcntl
import logging
import os
import queue
import select
import stat
import threading
import time
from collections.abc import Callable
from typing import Any

import serial

from device.exc import PrinterError, TicketError
from device.hardware import escpos
from device.hardware.escpos import (
    ABSENT,
    COVER_OPEN,
    ERROR,
    FAILED,
    OK,
    PAPER_LOW,
    PAPER_OUT,
    STATES,
    UNKNOWN,
    Ticket,
)

__all__ = ["ABSENT", "COVER_OPEN", "ERROR", "FAILED", "OK", "PAPER_LOW", "PAPER_OUT", "STATES",
           "UNKNOWN", "Printer", "Ticket"]

log = logging.getLogger("haven.printer")
STATUS_WAIT = 0.5  #: a printer answers DLE EOT at once; silence this long is no answer
HANDOVER = 0.5  #: beyond the deadline, for the job's thread to hand its result back
#: A job still running this long past its deadline is stuck in a call that ignores it
#: (pyserial's socket:// connect waits 5 s of its own): tickets fail at once meanwhile.
STUCK_AFTER = 0.25
WRITE_CHUNK = 4096
ABSENT_ERRNOS = {errno.ENOENT, errno.ENODEV, errno.ENXIO}
LPABORT = 0x0608  #: linux/lp.h: abort a write on the printer's error rather than retry


def state_of_errno(code: int | None) -> str:
    if code in ABSENT_ERRNOS:
        return ABSENT
    return PAPER_OUT if code == errno.ENOSPC else FAILED


def _failed(what: str, exc: OSError) -> PrinterError:
    reason = exc.strerror or str(exc) or type(exc).__name__
    return PrinterError(f"{what}: {reason}", state_of_errno(exc.errno))


class Printer:
    """An ESC/POS receipt printer at ``target`` (see the module's docstring)."""

    def __init__(self, target: str, *, width: int = 384, timeout: float = 3.0,
                 baud: int = 9600, clock: Callable[[], float] = time.monotonic) -> None:
        if width not in escpos.WIDTHS:
            raise TicketError(f"a print width of {width} dots is not 256 to 832 in steps of 8")
        self.target, self.width, self.timeout, self.baud = target, width, timeout, baud
        self.clock = clock
        self.state = UNKNOWN
        self.detail = ""
        self._checked: float | None = None  #: when the state was last learnt (clock)
        self._lock = threading.Lock()
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], concurrent.futures.Future[Any],
                                            float] | None] = queue.SimpleQueue()
        self._pending = 0
        self._running_until: float | None = None  #: the running job's deadline
        self._thread: threading.Thread | None = None

    # What callers use ---------------------------------------------------------------------

    async def print_ticket(self, ticket: Ticket) -> bool:
        """Print ``ticket`` within ``timeout``; whether it printed. Never raises."""
        with self._lock:
            stuck = self._running_until is not None and (
                self.clock() > self._running_until + STUCK_AFTER)
        if stuck:  # in the kernel past its deadline: the next would only wait behind it
            self._set(FAILED, "the printer's last job has not ended by its deadline")
            return False
        deadline = self.clock() + self.timeout
        future = self._submit(lambda: self._print(ticket, deadline), deadline)
        try:
            await asyncio.wait_for(asyncio.wrap_future(future), self.timeout + HANDOVER)
        except PrinterError:
            return False  # the job set the state
        except TimeoutError:
            self._set(FAILED, f"no result within {self.timeout:g} s")
            return False
        except Exception as exc:  # a bug must not fail the check-in, which is saved
            log.error("printing failed: %r", exc)
            return False
        return True

    def refresh(self, max_age: float) -> None:
        """Ask the printer's state again in the background if it is older than ``max_age``
        seconds and nothing is queued for the printer."""
        with self._lock:
            fresh = self._checked is not None and self.clock() - self._checked < max_age
            if fresh or self._pending:
                return
        deadline = self.clock() + self.timeout
        self._submit(lambda: self._check(deadline), deadline)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {"state": self.state, "detail": self.detail}

    def close(self) -> None:
        if self._thread is not None:
            self._jobs.put(None)

    # The printer's thread ---------------------------------------------------------------

    def _submit(self, job: Callable[[], Any], deadline: float) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        with self._lock:
            self._pending += 1
            if self._thread is None:  # a daemon: one stuck in the kernel never holds up exit
                self._thread = threading.Thread(target=self._work, name="printer",
                                                daemon=True)
                self._thread.start()
        self._jobs.put((job, future, deadline))
        return future

    def _work(self) -> None:
        while (item := self._jobs.get()) is not None:
            job, future, deadline = item
            try:
                if future.set_running_or_notify_cancel():  # else the caller gave up on it
                    with self._lock:
                        self._running_until = deadline
                    try:
                        future.set_result(job())
                    except BaseException as exc:
                        future.set_exception(exc)
            finally:
                with self._lock:
                    self._pending -= 1
                    self._running_until = None

    def _set(self, state: str, detail: str = "") -> None:
        with self._lock:
            changed = state != self.state
            self.state, self.detail, self._checked = state, detail, self.clock()
        if changed:
            (log.info if state in (OK, PAPER_LOW) else log.warning)(
                "printer %s: %s%s", self.target, state, f" ({detail})" if detail else "")

    def _print(self, ticket: Ticket, deadline: float) -> None:
        if self.clock() >= deadline:
            raise PrinterError("waited in line past the deadline", FAILED)
        data = escpos.ticket_bytes(ticket, self.width)  # a TicketError is ours: no state
        try:
            said = self._send(data, deadline)
        except PrinterError as exc:
            self._set(exc.state, str(exc))
            raise
        self._set(said or OK)

    def _check(self, deadline: float) -> None:
        try:
            said = self._send(b"", deadline)
        except PrinterError as exc:
            self._set(exc.state, str(exc))
            return
        if said is not None:
            self._set(said)
        elif self.state == ABSENT:  # a device file is back: how it prints, a ticket tells
            self._set(UNKNOWN)
        else:
            self._set(self.state, self.detail)

    # Bytes to the device ------------------------------------------------------------------

    def _is_serial(self) -> bool:
        """A pyserial URL, or a character device that is a tty."""
        if "://" in self.target:
            return True
        try:
            if not stat.S_ISCHR(os.stat(self.target).st_mode):
                return False
            fd = os.open(self.target, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        except OSError:
            return False  # none, or a write-only node: the device file's errors tell
        try:
            return os.isatty(fd)
        finally:
            os.close(fd)

    def _send(self, data: bytes, deadline: float) -> str | None:
        """Write ``data`` (none: only look) to the printer by ``deadline``; what a serial
        printer's status said (None from a device file), or a PrinterError with the
        state it leaves."""
        if self._is_serial():
            return self._send_serial(data, deadline)
        if data:
            self._send_file(data, deadline)
        elif not os.path.exists(self.target):
            raise PrinterError(f"no device {self.target}", ABSENT)
        return None

    def _send_file(self, data: bytes, deadline: float) -> None:
        try:
            fd = os.open(self.target, os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK | os.O_NOCTTY
                         | os.O_CLOEXEC)
        except OSError as exc:
            raise _failed(f"cannot open {self.target}", exc) from None
        try:
            # usblp retries a printer's error for ever unless told to abort: then a write
            # gives ENOSPC at paper end and EIO at an error. Other files have no such
            # ioctl (ENOTTY), and are written all the same.
            with contextlib.suppress(OSError):
                fcntl.ioctl(fd, LPABORT, 1)
            poller = select.poll()
            poller.register(fd, select.POLLOUT)
            view = memoryview(data)
            while view:
                left = deadline - self.clock()
                if left <= 0:
                    raise PrinterError(f"{len(view)} bytes not taken within "
                                       f"{self.timeout:g} s", FAILED)
                try:
                    view = view[os.write(fd, view[:WRITE_CHUNK]):]
                except BlockingIOError:
                    poller.poll(max(1, int(min(left, 0.1) * 1000)))
                except OSError as exc:
                    raise _failed(f"cannot write to {self.target}", exc) from None
        finally:
            os.close(fd)

    def _send_serial(self, data: bytes, deadline: float) -> str:
        try:
            port = serial.serial_for_url(self.target, baudrate=self.baud, timeout=0,
                                         write_timeout=max(0.01, deadline - self.clock()))
        except (serial.SerialException, ValueError, OSError) as exc:
            code = getattr(exc, "errno", None)
            raise PrinterError(f"cannot open {self.target}: {exc}",
                               state_of_errno(code) if code else FAILED) from None
        try:
            port.reset_input_buffer()
            answers = bytearray()
            for n in escpos.STATUS_QUERIES:
                port.write(escpos.status_query(n))
                port.timeout = max(0.0, min(STATUS_WAIT, deadline - self.clock()))
                answer = port.read(1)
                if not answer:
                    raise PrinterError(f"no answer to DLE EOT {n}", FAILED)
                answers += answer
            status = escpos.decode_status(bytes(answers))  # PrinterAnswerError: failed
            if not status.can_print:
                raise PrinterError(f"the printer says {status.state}", status.state)
            if data:
                port.write_timeout = max(0.01, deadline - self.clock())
                port.write(data)
            return status.state
        except serial.SerialTimeoutException:
            # what is left unsent goes: a serial driver's close waits for it otherwise
            with contextlib.suppress(serial.SerialException, OSError):
                port.reset_output_buffer()
            raise PrinterError(f"bytes not taken within {self.timeout:g} s", FAILED) from None
        except (serial.SerialException, OSError) as exc:
            raise PrinterError(f"{self.target}: {exc}", FAILED) from None
        finally:
            with contextlib.suppress(serial.SerialException, OSError):
                port.close()
