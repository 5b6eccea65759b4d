"""The kiosk's own logs: a journal on disk, an allowlist of fields, crash hooks.

``start(directory, max_bytes)`` opens the ``Journal``, adds its handler to the
root logger and installs the crash hooks; ``Logs.stop()`` undoes all three.
See ``journal`` (files, indexes, fsyncs), ``fields`` (the allowlist and the
redaction report), ``handler`` (what a log call may leave) and ``crash``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from device.logs import crash
from device.logs.fields import fields as fields
from device.logs.handler import JournalHandler
from device.logs.journal import DEFAULT_MAX_BYTES, Journal

DIRECTORY = "logs"  #: inside the data directory


@dataclass
class Logs:
    journal: Journal
    handler: JournalHandler
    _uninstall: Callable[[], None]

    def stop(self) -> None:
        logging.getLogger().removeHandler(self.handler)
        self._uninstall()
        self.journal.close()


def start(directory: Path, max_bytes: int = DEFAULT_MAX_BYTES,
          level: int = logging.INFO) -> Logs:
    journal = Journal(directory, max_bytes)
    handler = JournalHandler(journal, level)
    root = logging.getLogger()
    root.addHandler(handler)
    if root.level > level or root.level == logging.NOTSET:
        root.setLevel(level)
    return Logs(journal, handler, crash.install(journal))
