"""Python's logging into the journal: the template and allowlisted fields, nothing else.

Theory of operation
-------------------
A log call today reads ``log.error("check-in refused: %s", exc)``: the
template is the code's, the arguments may be anything a patient typed. The
handler writes ``ev`` = the template unformatted, and only the fields of
``device.logs.fields`` (``extra=fields(...)``) that pass their checks; the
arguments are never formatted or kept. A template is kept only if it is a
string literal in the calling code: the handler parses the caller's source
once (``ast``) and looks for a call on that line whose first argument is that
very string. ``log.info(f"checked in {name}")`` or ``log.info(text)`` fails the
check and is written as ``NOT_LITERAL`` with the file and line (``at``), so a
formatted value can never pass as a template. An exception (``exc_info``,
``log.exception``) is kept as its type and its traceback's frames (file, line,
function), never its message or locals. ``as_text`` renders an entry as one line
(the crash hooks' stderr).
"""

from __future__ import annotations

import ast
import logging
import re
import sys
import threading
from pathlib import Path
from types import TracebackType
from typing import Any

from device.logs.fields import ATTRIBUTE, clean
from device.logs.journal import Journal

NOT_LITERAL = "(message not a literal in the code: not kept)"
MAX_FRAMES = 30
_MOD = re.compile(r"[A-Za-z0-9_.-]{1,80}")
#: The folder holding device/, host/, protocol/: frames under it are named relative to it.
ROOT = Path(__file__).resolve().parents[2]


def level_of(levelno: int) -> int:
    """Python's level as Mynewt's: 0 debug, 1 info, 2 warning, 3 error, 4 critical."""
    if levelno >= logging.CRITICAL:
        return 4
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 2
    return 1 if levelno >= logging.INFO else 0


class _Literals:
    """Which string literals each line of a source file passes first to a call."""

    def __init__(self) -> None:
        self._files: dict[str, dict[int, set[str]]] = {}
        self._lock = threading.Lock()

    def has(self, path: str, line: int, text: str) -> bool:
        with self._lock:
            table = self._files.get(path)
            if table is None:
                table = self._files[path] = _parse(path)
        return text in table.get(line, ())


def _parse(path: str) -> dict[int, set[str]]:
    table: dict[int, set[str]] = {}
    try:
        tree = ast.parse(Path(path).read_bytes(), path)
    except (OSError, SyntaxError, ValueError):
        return table
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and node.args:
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                for n in range(node.lineno, (node.end_lineno or node.lineno) + 1):
                    table.setdefault(n, set()).add(first.value)
    return table


def where(filename: str) -> str:
    """A frame's file as the journal names it: relative to the code's root, to
    site-packages, or its base name."""
    path = Path(filename)
    try:
        return path.resolve().relative_to(ROOT).as_posix()
    except (ValueError, OSError):
        pass
    parts = path.parts
    if "site-packages" in parts:
        return "/".join(parts[parts.index("site-packages") + 1:])
    return path.name


def exception_fields(kind: type[BaseException] | None,
                     tb: TracebackType | None) -> dict[str, Any]:
    """``exc`` (the type) and ``tb`` (frames, innermost last) of an exception."""
    if kind is None:
        return {}
    module = kind.__module__
    name = kind.__qualname__ if module == "builtins" else f"{module}.{kind.__qualname__}"
    frames = []
    while tb is not None:
        code = tb.tb_frame.f_code
        frames.append([where(code.co_filename), tb.tb_lineno, code.co_name])
        tb = tb.tb_next
    return {"exc": name, "tb": frames[-MAX_FRAMES:]}


_LITERALS = _Literals()  #: one parse of each source file for every handler


def is_literal(record: logging.LogRecord) -> bool:
    """Whether the record's message is a string literal of its calling code."""
    msg = record.msg
    return isinstance(msg, str) and _LITERALS.has(record.pathname, record.lineno, msg)


def entry_of(record: logging.LogRecord) -> dict[str, Any]:
    """The journal entry of ``record`` (without its index and time)."""
    msg = record.msg
    entry: dict[str, Any] = {
        "lvl": level_of(record.levelno),
        "mod": record.name if _MOD.fullmatch(record.name) else "?",
    }
    if is_literal(record):
        entry["ev"] = msg
    else:
        entry["ev"] = NOT_LITERAL
        entry["at"] = f"{where(record.pathname)}:{record.lineno}"
    given = getattr(record, ATTRIBUTE, None)
    kept, dropped = clean(given) if isinstance(given, dict) else ({}, 0)
    entry.update(kept)
    if record.exc_info and record.exc_info[0] is not None:
        entry.update(exception_fields(record.exc_info[0], record.exc_info[2]))
    elif isinstance(msg, BaseException):
        entry.update(exception_fields(type(msg), msg.__traceback__))
    if dropped:
        entry["dropped"] = dropped
    return entry


def as_text(entry: dict[str, Any]) -> str:
    """One entry as a line for stderr: the template, the fields, the frames."""
    head = f"{entry.get('mod')}: {entry.get('ev')}"
    extra = " ".join(f"{k}={v}" for k, v in entry.items()
                     if k not in ("i", "t", "lvl", "mod", "ev", "tb"))
    frames = " < ".join(f"{f}:{n} {fn}" for f, n, fn in reversed(entry.get("tb", [])))
    return " ".join(x for x in (head, extra, f"[{frames}]" if frames else "") if x)


class JournalHandler(logging.Handler):
    """Writes each record into a ``Journal`` (see the module docstring)."""

    def __init__(self, journal: Journal, level: int = logging.INFO) -> None:
        super().__init__(level)
        self.journal = journal

    def entry(self, record: logging.LogRecord) -> dict[str, Any]:
        return entry_of(record)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.journal.append(self.entry(record), level_of(record.levelno))
        except Exception:
            self.handleError(record)

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
        # logging's own would print the record's arguments to stderr: say only that it failed
        if logging.raiseExceptions and sys.stderr is not None:
            kind = getattr(sys.exc_info()[0], "__name__", "")
            sys.stderr.write(f"journal: an entry was not written ({kind})\n")
