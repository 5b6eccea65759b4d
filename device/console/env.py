"""What the console's handlers may use of the kiosk: one object, built by the runtime.

Handlers never reach into the runtime; they see a ``ConsoleEnv``. Tests build one
with a fake stats source and a restart hook they watch; the runtime builds its own
(``device.console.runtime_env.env_for``).
"""

from __future__ import annotations

import contextlib
import os
import platform
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from device.console.logsource import LogSource, MemoryLog

if TYPE_CHECKING:
    from device.tech.access import Technicians

#: The largest file an upload may announce, whatever the free space.
DEFAULT_MAX_UPLOAD = 64 * 1024 * 1024
#: Free space an upload must leave on the import directory's disk.
DEFAULT_UPLOAD_RESERVE = 32 * 1024 * 1024


def uname_fields(node: str, version: str) -> dict[str, str]:
    """The OS group's info letters (Zephyr's ``os_mgmt`` info command)."""
    u = os.uname()
    model = ""
    with contextlib.suppress(OSError, UnicodeDecodeError):  # a Raspberry Pi names its board
        model = Path("/proc/device-tree/model").read_bytes().rstrip(b"\x00").decode()
    return {
        "s": u.sysname,
        "n": node or u.nodename,
        "r": u.release,
        "v": u.version,
        "b": f"haven-kiosk {version}",
        "m": u.machine,
        "p": platform.processor() or u.machine,
        "i": model.replace(" ", "_") or u.machine,
        "o": "Haven",
    }


@dataclass
class ConsoleEnv:
    export_dir: Path  #: FS downloads come from here
    import_dir: Path  #: FS uploads land here, and only here
    #: The Stat group's groups: name -> counters (every value an int); called per request.
    stats: Callable[[], Mapping[str, Mapping[str, int]]]
    #: A graceful restart of the runtime (the OS group's reset), called after the answer.
    restart: Callable[[], None]
    version: str = "0"
    node: str = ""
    log: LogSource = field(default_factory=MemoryLog)
    #: The kiosk's log files (``device.logs``), which FS downloads name ``logs/NAME``.
    log_dir: Path | None = None
    #: The wall clock the datetime command reads, and how it is set (None: it cannot be).
    wall: Callable[[], float] = time.time
    set_wall: Callable[[float], None] | None = None
    threads: Callable[[], list[threading.Thread]] = threading.enumerate
    #: The Shell group's allowlist: a command name -> its output (read-only commands).
    shell: Mapping[str, Callable[[], str]] = field(default_factory=dict)
    max_upload: int = DEFAULT_MAX_UPLOAD
    upload_reserve: int = DEFAULT_UPLOAD_RESERVE
    info: dict[str, str] = field(default_factory=dict)
    #: The kiosk's technician checks (``device.tech``), for the Haven group; None while
    #: the kiosk is not enrolled (asked at each request: enrolment may come later).
    technicians: Callable[[], Technicians | None] = lambda: None

    def __post_init__(self) -> None:
        if not self.info:
            self.info = uname_fields(self.node, self.version)
