"""Unhandled exceptions into the journal: their type and frames, then an fsync.

``install(journal)`` sets ``sys.excepthook`` and ``threading.excepthook`` (each
calls the one it replaced after writing, so stderr still shows the traceback to
whoever watches the service) and returns a function that puts them back. The
entry: ``ev`` "unhandled exception", level 4, ``crash`` (process or thread),
``exc`` and ``tb`` (``device.logs.handler.exception_fields``): no message, no
local variable.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any

from device.logs.handler import exception_fields
from device.logs.journal import Journal

EVENT = "unhandled exception"
CRITICAL = 4


def record(journal: Journal, where: str, kind: type[BaseException] | None,
           tb: TracebackType | None) -> None:
    """Write one crash entry and make it durable (never raises)."""
    with contextlib.suppress(Exception):
        journal.append({"lvl": CRITICAL, "mod": "crash", "ev": EVENT, "crash": where,
                        **exception_fields(kind, tb)}, CRITICAL)
        journal.sync()


def install(journal: Journal) -> Callable[[], None]:
    """Crash hooks writing into ``journal``; returns what uninstalls them."""
    before_sys, before_thread = sys.excepthook, threading.excepthook

    def on_process(kind: type[BaseException], exc: BaseException,
                   tb: TracebackType | None) -> None:
        if not issubclass(kind, KeyboardInterrupt):
            record(journal, "process", kind, tb)
        before_sys(kind, exc, tb)

    def on_thread(args: Any) -> None:
        if args.exc_type is not SystemExit:
            record(journal, "thread", args.exc_type, args.exc_traceback)
        before_thread(args)

    sys.excepthook = on_process
    threading.excepthook = on_thread

    def uninstall() -> None:
        if sys.excepthook is on_process:
            sys.excepthook = before_sys
        if threading.excepthook is on_thread:
            threading.excepthook = before_thread
    return uninstall
