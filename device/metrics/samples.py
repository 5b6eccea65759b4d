"""One health sample: what a minute of the kiosk's life looked like.

Theory of operation
-------------------
The runtime's memory monitor and storage guard already read the process's
RSS, the system's available memory and the free space of ``--data``; a
sample takes those readings and adds what only metrics need: the CPU's
temperature, the hottest of ``/sys/class/thermal/thermal_zone*/temp``
(millidegrees; ``None`` where the machine has no zone, ``failing`` where a
zone exists and will not read), and the one-minute load average. Paths are
arguments, so tests give a directory of their own.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

THERMAL = Path("/sys/class/thermal")
MIB = 1024 * 1024
#: The thermal sensor's state, as telemetry reports it.
ABSENT, OK, FAILING = "absent", "ok", "failing"


@dataclass(frozen=True)
class Sample:
    rss: int  #: bytes resident in the runtime
    available: int  #: bytes the system could give (MemAvailable)
    disk_free: int  #: bytes free on the disk holding the data
    temp_c: float | None  #: the hottest thermal zone, None without one that reads
    thermal: str  #: ``absent``, ``ok`` or ``failing``
    load1: float  #: one-minute load average

    def row(self) -> tuple[float, float, float, float | None, float]:
        """(rss MiB, available MiB, free disk MiB, temperature, load), rounded."""
        return (round(self.rss / MIB, 1), round(self.available / MIB, 1),
                round(self.disk_free / MIB, 1), self.temp_c, round(self.load1, 2))


def cpu_temperature(thermal: Path = THERMAL) -> tuple[float | None, str]:
    """(°C of the hottest zone, sensor state): (None, ``absent``) without a zone, (None,
    ``failing``) when zones exist and none reads."""
    try:
        zones = sorted(p for p in thermal.glob("thermal_zone*") if (p / "temp").exists())
    except OSError:
        return None, ABSENT
    if not zones:
        return None, ABSENT
    values = []
    for zone in zones:
        try:
            values.append(int((zone / "temp").read_text().strip()) / 1000)
        except (OSError, ValueError):
            continue
    if not values:
        return None, FAILING
    return round(max(values), 1), OK


def load_average() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return 0.0


def take(rss: int, available: int, disk_free: int, thermal: Path = THERMAL) -> Sample:
    temp, state = cpu_temperature(thermal)
    return Sample(rss, available, disk_free, temp, state, load_average())
