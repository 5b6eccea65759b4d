"""The node on one clock: readings, alarms, commits and the link to the kiosk.

Theory of operation
-------------------
``Node`` is sans-I/O: its driver calls ``advance(now)`` (and ``receive`` /
``output`` for the serial line) with ``now`` in seconds on a monotonic clock,
and wakes it again at ``deadline()``. A reading is due every ``interval``
seconds from the start; a late call takes each missed one at its own time.
Each reading goes into the ring and through the monitor; an alarm is
committed to flash at once, readings at most every ``commit_every`` seconds.

**Numbers across reboots.** A reboot keeps only what was committed, so up to
an hour of readings may be lost, and the kiosk may already hold some of them
under the numbers the node now gives its new readings. The first welcome of a
boot settles it: if the kiosk holds readings up to ``acked`` beyond what this
boot started from (``boot_seq``), the readings taken since the boot are
numbered again from ``acked``. No number ever names two readings.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from device.fridge_node import sensors
from device.fridge_node.link import Link
from device.fridge_node.monitor import Monitor
from device.fridge_node.ring import Ring, RingFiles, stamp_of
from device.fridge_node.settings import Settings

if TYPE_CHECKING:
    from typing import Any, Protocol

    class Sensor(Protocol):
        def read(self, now: float) -> bytes | None: ...


class Node:
    """The fridge node (module doc); its files are in ``folder``."""

    def __init__(self, folder: str, sensor: Sensor, now: float) -> None:
        self.settings = settings = Settings(folder)
        self.sensor = sensor
        self.ring = Ring(settings["capacity"])
        self.files = RingFiles(folder)
        self.files.load(self.ring)
        self.ring.boot += 1
        self.boot_seq = self.ring.next_seq
        self.files.commit(self.ring)  # the boot count
        self.monitor = Monitor()
        self.apply_settings()
        #: Unix time minus monotonic time in whole seconds, once known: an int, since a
        #: board's floats are single precision (a Unix time as one is 128 s grained)
        self.offset: int | None = None
        self.next_reading = now
        self.last_commit = now
        self.dirty = False
        self.welcomed = False
        self.taken = 0  #: readings taken since the boot
        self.faults = 0  #: of which faults
        self.last_value: int | str | None = None
        self.link = Link(self.ring, self.welcome)

    def apply_settings(self) -> None:
        """Take the limits as they are now (a technician changed them)."""
        m, s = self.monitor, self.settings
        m.low, m.high, m.alarm_after = s["low"], s["high"], s["alarm_after"]

    def advance(self, now: float) -> None:
        """Take the readings that are due, commit if it is time, keep the link going."""
        while self.next_reading <= now:
            self._take(self.next_reading)
            self.next_reading += self.settings["interval"]
        if self.dirty and now >= self.last_commit + self.settings["commit_every"]:
            self.commit(now)
        s = self.settings
        self.link.advance(now, s.node_key, s.kiosk_public, s["baud"], self.ring.boot, s.device)

    def receive(self, data: bytes, now: float) -> None:
        self.advance(now)
        self.link.receive(data, now)

    def output(self, now: float) -> bytes:
        self.advance(now)
        return self.link.output(now)

    def deadline(self) -> float:
        times = [self.next_reading]
        if self.dirty:
            times.append(self.last_commit + self.settings["commit_every"])
        link = self.link.deadline()
        if link is not None:
            times.append(link)
        return min(times)

    def commit(self, now: float) -> None:
        self.files.commit(self.ring)
        self.last_commit = now
        self.dirty = False

    def welcome(self, time: int, acked: int, alarms_acked: int, now: float) -> None:
        """The kiosk told the time and what it holds (module doc: numbers across reboots)."""
        ring = self.ring
        self.offset = time - round(now)
        ring.set_clock(self.offset)
        if not self.welcomed and acked > self.boot_seq:
            ring.drop_below(self.boot_seq)
            ring.renumber(acked)
            self.commit(now)
        else:
            ring.drop_below(acked)
            if ring.count == 0 and acked > ring.first:
                ring.renumber(acked)
        self.welcomed = True
        ring.drop_alarms_below(alarms_acked)

    def _take(self, at: float) -> None:
        value = sensors.decode(self.sensor.read(at))
        self.taken += 1
        if isinstance(value, str):
            self.faults += 1
        self.last_value = value
        self.ring.add(stamp_of(at, self.offset), value)
        self.dirty = True
        alarms = self.monitor.reading(at, value)
        for kind, state, since, minutes, extreme in alarms:
            self.ring.add_alarm(kind, state, stamp_of(since, self.offset), minutes, extreme)
        if alarms:
            self.commit(at)
        self.link.pump()

    def status(self) -> dict[str, Any]:
        ring, link = self.ring, self.link
        return {
            "device": self.settings.device, "boot": ring.boot, "link": link.state,
            "readings": ring.count, "first": ring.first, "next": ring.next_seq,
            "dropped": ring.dropped, "alarms": len(ring.alarms), "next_alarm": ring.next_alarm,
            "alarms_dropped": ring.alarms_dropped, "taken": self.taken, "faults": self.faults,
            "last": self.last_value, "clock": self.offset is not None,
            "commits": self.files.commits, "torn": self.files.torn,
            "sessions": link.sessions, "last_close": link.last_close,
            "bad_messages": link.bad_messages,
        }
