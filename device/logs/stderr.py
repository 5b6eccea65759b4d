"""The runtime's stderr, redacted: what the service manager's journal keeps.

Theory of operation
-------------------
``haven-kiosk run`` writes its log to stderr as well as to its own journal
(``device.logs.journal``), and on Raspberry Pi OS the service manager keeps
stderr in a journal of its own on the card. A log call's arguments may be
anything a patient typed (``log.error("check-in refused: %s", exc)``, where
the exception quotes a value), so ``RedactedStderr`` formats the template with
only the arguments that cannot carry one: numbers, booleans, ``None``, and
strings that are a link's address (``tcp://host:port``, ``/dev/ttyUSB0``: where
the kiosk syncs, named so a technician reading the console sees which link),
an IP address, and a decimal with a point (a size in MiB: a year of birth has
none). Any other argument shows as ``<hidden>``; an exception shows as its
type, never its message; the traceback as its frames
(``handler.exception_fields``). A message with no arguments is shown only if it
is a literal of the calling code (the journal's check): one built from values is not.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from device.logs.handler import NOT_LITERAL, as_text, exception_fields, is_literal, where

HIDDEN = "<hidden>"
#: What a string argument may be to be shown: a link's address (a pyserial or TCP URL,
#: a device node), an IP address, a decimal with a point; nothing a patient types.
_SHOWN = re.compile(r"(?:tcp|socket|serial|loop|rfc2217|spy|udp)://[\w.:\[\]/-]{1,200}"
                    r"|/dev/[\w./-]{1,100}|\d{1,3}(?:\.\d{1,3}){3}|(?=[0-9a-f:]*:)[0-9a-f:]{2,39}|localhost"
                    r"|-?\d{1,12}\.\d{1,6}")


def shown(arg: Any) -> Any:
    """``arg`` as stderr may show it."""
    if arg is None or isinstance(arg, (bool, int, float)):
        return arg
    if isinstance(arg, BaseException):
        return type(arg).__name__
    if isinstance(arg, str) and _SHOWN.fullmatch(arg):
        return arg
    return HIDDEN


class RedactedStderr(logging.Formatter):
    """``LEVEL logger: message`` with only the arguments ``shown`` keeps."""

    def format(self, record: logging.LogRecord) -> str:
        args = record.args
        if isinstance(args, dict):
            safe: Any = {k: shown(v) for k, v in args.items()}
        else:
            safe = tuple(shown(a) for a in (args or ()))
        if not isinstance(record.msg, str) or not (args or is_literal(record)):
            # A message with no template: an exception, an f-string, asyncio's report of
            # a task's exception (its repr, message and all).
            message = f"{NOT_LITERAL} at {where(record.pathname)}:{record.lineno}"
        else:
            try:
                message = record.msg % safe if args else record.msg
            except (TypeError, ValueError):
                message = f"{record.msg} ({len(args or ())} arguments not shown)"
        line = f"{record.levelname} {record.name}: {message}"
        if record.exc_info and record.exc_info[0] is not None:
            kind, _, tb = record.exc_info
            line += " " + as_text({"mod": "", "ev": "", **exception_fields(kind, tb)}).strip(": ")
        return line
