"""Unhandled exceptions into the journal: their type and frames, then an fsync.

``install(journal)`` sets ``sys.excepthook`` and ``threading.excepthook`` and
returns a function that puts them back. The entry: ``ev`` "unhandled exception",
level 4, ``crash`` (process or thread), ``exc`` and ``tb``
(``device.logs.handler.exception_fields``): no message, no local variable. stderr
(the service manager's journal) gets the same as one line instead of Python's
traceback, whose message may quote a value.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any

from device.logs.handler import as_text, exception_fields
from device.logs.journal import Journal

EVENT = "unhandled exception"
CRITICAL = 4


def record(journal: Journal, where: str, kind: type[BaseException] | None,
           tb: TracebackType | None) -> None:
    """Write one crash entry, make it durable, say it on stderr (never raises)."""
    entry = {"lvl": CRITICAL, "mod": "crash", "ev": EVENT, "crash": where,
             **exception_fields(kind, tb)}
    with contextlib.suppress(Exception):
        journal.append(entry, CRITICAL)
        journal.sync()
    with contextlib.suppress(Exception):
        if sys.stderr is not None:
            sys.stderr.write(f"CRITICAL {as_text(entry)}\n")
            sys.stderr.flush()


def install(journal: Journal) -> Callable[[], None]:
    """Crash hooks writing into ``journal``; returns what uninstalls them."""
    before_sys, before_thread = sys.excepthook, threading.excepthook

    def on_process(kind: type[BaseException], exc: BaseException,
                   tb: TracebackType | None) -> None:
        if issubclass(kind, KeyboardInterrupt):
            before_sys(kind, exc, tb)
        else:
            record(journal, "process", kind, tb)

    def on_thread(args: Any) -> None:
        if args.exc_type is not SystemExit:
            record(journal, "thread", args.exc_type, args.exc_traceback)

    sys.excepthook = on_process
    threading.excepthook = on_thread

    def uninstall() -> None:
        if sys.excepthook is on_process:
            sys.excepthook = before_sys
        if threading.excepthook is on_thread:
            threading.excepthook = before_thread
    return uninstall
