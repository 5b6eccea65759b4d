"""The technician's own log: what ``haven tech`` did, kept on the technician's machine.

Theory of operation
-------------------
A kiosk records every technician action in its own signed audit chain
(``device.audit``); the technician's tool keeps its side of the story here,
so a visit can be accounted for even when a kiosk was wiped, replaced or
never synced again. One JSON object a line (JSON Lines), appended to
``$XDG_DATA_HOME/haven/tech.log`` (``~/.local/share/haven/tech.log`` by
default; ``HAVEN_TECH_LOG`` names another file): when (UTC), the command,
its result, the port, the kiosk and the credential's serial when known, and
a small detail. Each line is one ``write`` on a file opened for appending,
owner-only, so concurrent tools never interleave a line, and a line cut
short by a power cut is skipped (and counted) on reading, never the rest.
It holds no patient values: the tool never sees any.

A ``haven tech`` command wraps its work in ``logged(action, port=...)``, and
fills in the kiosk, the serial and a detail as it learns them; the line is
written however the command ends.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ENV = "HAVEN_TECH_LOG"
MAX_LINE = 8192
log = logging.getLogger("haven.tech_log")


def default_path() -> Path:
    """``$HAVEN_TECH_LOG``, else ``$XDG_DATA_HOME/haven/tech.log`` (XDG's default
    ``~/.local/share``)."""
    named = os.environ.get(ENV)
    if named:
        return Path(named)
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "haven" / "tech.log"


def write(action: str, result: str, *, port: str | None = None, kiosk: str | None = None,
          serial: int | str | None = None, detail: Mapping[str, Any] | None = None,
          path: Path | None = None, now: float | None = None) -> dict[str, Any]:
    """Append one line: ``action`` (``provision``, ``config.set``...) and its ``result``
    (``ok``, or what went wrong); returns the entry written. ``OSError`` if the log
    cannot be written (the caller says so: the action itself is done or not done
    regardless)."""
    at = time.time() if now is None else now
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at))
    entry: dict[str, Any] = {"at": f"{stamp}.{int(at * 1000) % 1000:03d}Z",
                             "action": action, "result": result}
    for key, value in (("port", port), ("kiosk", kiosk), ("serial", serial),
                       ("detail", dict(detail) if detail else None)):
        if value is not None:
            entry[key] = value
    line = json.dumps(entry, sort_keys=True, ensure_ascii=False, default=str) + "\n"
    data = line.encode("utf-8")
    if len(data) > MAX_LINE:
        raise ValueError(f"a technician's log line is at most {MAX_LINE} bytes")
    target = path or default_path()
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    return entry


@dataclass
class Action:
    """What a command learns as it runs, for its line: the kiosk and the credential's
    serial once known, and a detail."""

    kiosk: str | None = None
    serial: int | str | None = None
    detail: dict[str, Any] | None = None
    result: str = "ok"


@contextmanager
def logged(action: str, *, port: str | None = None, path: Path | None = None
           ) -> Iterator[Action]:
    """Log ``action`` when the block ends: ``ok`` (or what the block set as ``result``),
    or ``error: ...`` with the exception's one line, which goes on. A log that cannot be
    written is reported on the ``haven.tech_log`` logger, never in place of the
    command's own result."""
    done = Action()
    try:
        yield done
    except BaseException as exc:
        done.result = f"error: {type(exc).__name__}: {exc}"[:500]
        raise
    finally:
        try:
            write(action, done.result, port=port, kiosk=done.kiosk, serial=done.serial,
                  detail=done.detail, path=path)
        except (OSError, ValueError) as exc:
            log.warning("the technician's log was not written: %s", exc)


@dataclass(frozen=True)
class Log:
    entries: list[dict[str, Any]]
    skipped: int  #: lines that are not an entry (cut short, or edited by hand)


def read(path: Path | None = None, limit: int | None = None) -> Log:
    """The entries, oldest first (the last ``limit``); a missing log has none."""
    target = path or default_path()
    try:
        raw = target.read_bytes()
    except FileNotFoundError:
        return Log([], 0)
    entries: list[dict[str, Any]] = []
    skipped = 0
    for line in raw.splitlines():
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            skipped += 1
            continue
        if isinstance(obj, dict) and isinstance(obj.get("action"), str):
            entries.append(obj)
        else:
            skipped += 1
    return Log(entries[-limit:] if limit else entries, skipped)
