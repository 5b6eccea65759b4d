"""The readings and alarms waiting for the kiosk, in RAM and in two files.

Theory of operation
-------------------
**RAM.** Readings live in one preallocated circular buffer of ``capacity``
records of 6 bytes (time, value), so the heap never grows with them; the
oldest is reading number ``first`` and the rest follow without gaps. A full
ring drops its oldest reading and counts it (``dropped``). Alarms (few) are
a short list, at most ``MAX_ALARMS``.

**Time.** A record's time is 32 bits: Unix seconds since ``EPOCH``, or
``UNKNOWN``, or, with the top bit set, seconds on this boot's monotonic clock
for a reading taken before the kiosk told the time; ``set_clock`` turns those
into Unix time. Written to a file they become ``UNKNOWN`` (a reboot loses the
monotonic clock): the protocol sends ``None``.

**Values.** Hundredths of °C as a signed 16-bit number, or a fault code as
``FAULT_BASE`` + its index in ``protocol.sensor.FAULTS`` (above any
temperature a DS18B20 reads).

**Files.** ``commit`` writes the whole state to one of two files, ``ring.0``
and ``ring.1``, alternately: a header (magic, generation, body length, the
body's CRC-32) and the body, streamed a chunk at a time (a board has no RAM
for a copy of the ring), the header written last. ``load`` takes the newest
file whose CRC holds.
A power cut during a write tears only the file being written, and the other
still holds the previous commit: nothing committed is lost. The node commits
readings at most hourly (flash wear) and alarms at once, so a power cut loses
at most the last hour's readings, never an alarm or a committed number.
"""

from __future__ import annotations

import binascii
import os
import struct
from typing import TYPE_CHECKING, Any

from protocol import sensor

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

RECORD = 6  #: bytes of a reading: time (uint32), value (int16)
EPOCH = 1577836800  #: 2020-01-01 00:00 UTC: record times count from here
UNKNOWN = 0xFFFFFFFF
UNCLOCKED = 0x80000000  #: flag: the time is seconds on this boot's monotonic clock
FAULT_BASE = 0x7F00
MAX_ALARMS = 32
MAGIC = b"HFR1"
_HEADER = ">4sIII"  # magic, generation, body length, CRC-32 of the body
HEADER_SIZE = 16
CHUNK = 64  #: readings a file is written and read in at a time
_STATE = ">IIIIIIH"  # first, count, dropped, next alarm, boot, alarms dropped, alarms
_ALARM = ">IBBIIh"  # seq, kind, state, since, minutes, extreme
NO_EXTREME = -0x8000


def pack_value(value: int | str) -> int:
    return FAULT_BASE + sensor.FAULTS.index(value) if isinstance(value, str) else value


def unpack_value(raw: int) -> int | str:
    return sensor.FAULTS[raw - FAULT_BASE] if raw >= FAULT_BASE else raw


def unix_time(stamp: int) -> int | None:
    """The Unix time of a record's time, None if unknown."""
    return None if stamp & UNCLOCKED else EPOCH + stamp


class Ring:
    """The readings and alarms not yet acknowledged (module doc)."""

    def __init__(self, capacity: int = 2000) -> None:
        self.capacity = capacity
        self._buf = bytearray(capacity * RECORD)
        self._head = 0  # index of the oldest record
        self.count = 0
        self.first = 0  #: the number of the oldest reading held
        self.dropped = 0  #: readings a full ring dropped
        self.alarms: list[list[Any]] = []  #: [seq, kind, state, since, minutes, extreme]
        self.next_alarm = 0
        self.alarms_dropped = 0
        self.boot = 0  #: boots counted across power cuts
        self.generation = 0  #: of the newest good file

    @property
    def next_seq(self) -> int:
        return self.first + self.count

    # -- readings --------------------------------------------------------------

    def add(self, stamp: int, value: int | str) -> int:
        """Keep one reading; its number."""
        if self.count == self.capacity:
            self._head = (self._head + 1) % self.capacity
            self.first += 1
            self.count -= 1
            self.dropped += 1
        at = (self._head + self.count) % self.capacity * RECORD
        struct.pack_into(">Ih", self._buf, at, stamp, pack_value(value))
        self.count += 1
        return self.next_seq - 1

    def reading(self, seq: int) -> tuple[int, int | str]:
        """``(time stamp, value)`` of reading ``seq`` (held)."""
        at = (self._head + seq - self.first) % self.capacity * RECORD
        stamp, raw = struct.unpack_from(">Ih", self._buf, at)
        return stamp, unpack_value(raw)

    def drop_below(self, seq: int) -> None:
        """Forget readings numbered below ``seq`` (acknowledged)."""
        n = min(max(seq - self.first, 0), self.count)
        self._head = (self._head + n) % self.capacity
        self.first += n
        self.count -= n

    def renumber(self, first: int) -> None:
        """Number the readings held from ``first`` on (see ``link``: a reboot lost
        readings the kiosk has, so their numbers are taken)."""
        self.first = first

    def set_clock(self, offset: int) -> None:
        """The clock is known: Unix time = monotonic + ``offset``."""
        for i in range(self.count):
            at = (self._head + i) % self.capacity * RECORD
            stamp = struct.unpack_from(">I", self._buf, at)[0]
            if stamp != UNKNOWN and stamp & UNCLOCKED:
                struct.pack_into(">I", self._buf, at, stamp_of(stamp & 0x7FFFFFFF, offset))
        for alarm in self.alarms:
            if alarm[3] != UNKNOWN and alarm[3] & UNCLOCKED:
                alarm[3] = stamp_of(alarm[3] & 0x7FFFFFFF, offset)

    # -- alarms ----------------------------------------------------------------

    def add_alarm(self, kind: str, state: str, since: int, minutes: int,
                  extreme: int | None) -> int:
        if len(self.alarms) == MAX_ALARMS:
            self.alarms.pop(0)
            self.alarms_dropped += 1
        seq = self.next_alarm
        self.next_alarm += 1
        self.alarms.append([seq, kind, state, since, minutes, extreme])
        return seq

    def drop_alarms_below(self, seq: int) -> None:
        self.alarms = [a for a in self.alarms if a[0] >= seq]
        self.next_alarm = max(self.next_alarm, seq)

    # -- files -----------------------------------------------------------------

    def parts(self) -> Iterator[bytes | memoryview]:
        """The ring as a file body, a piece at a time (a board has no RAM for it whole);
        each piece is valid until the next is asked for."""
        yield struct.pack(_STATE, self.first, self.count, self.dropped, self.next_alarm,
                          self.boot, self.alarms_dropped, len(self.alarms))
        chunk = bytearray(CHUNK * RECORD)
        done = 0
        while done < self.count:
            n = min(CHUNK, self.count - done)
            for i in range(n):
                at = (self._head + done + i) % self.capacity * RECORD
                stamp, raw = struct.unpack_from(">Ih", self._buf, at)
                struct.pack_into(">Ih", chunk, i * RECORD,
                                 UNKNOWN if stamp & UNCLOCKED else stamp, raw)
            done += n
            yield memoryview(chunk)[: n * RECORD]
        for seq, kind, state, since, minutes, extreme in self.alarms:
            yield struct.pack(_ALARM, seq, sensor.KINDS.index(kind), sensor.STATES.index(state),
                              UNKNOWN if since & UNCLOCKED else since, minutes,
                              NO_EXTREME if extreme is None else extreme)

    def restore(self, read: Callable[[int], bytes]) -> None:
        """Take the state ``parts`` wrote; ``read(n)`` gives its next ``n`` bytes."""
        first, count, self.dropped, self.next_alarm, self.boot, self.alarms_dropped, n = \
            struct.unpack(_STATE, read(struct.calcsize(_STATE)))
        self._head, self.count, self.first = 0, 0, first
        while count:
            records = min(CHUNK, count)
            data = read(records * RECORD)
            for i in range(records):
                stamp, raw = struct.unpack_from(">Ih", data, i * RECORD)
                self.add(stamp, unpack_value(raw))  # a smaller ring drops and counts
            count -= records
        self.alarms = []
        for _ in range(n):
            seq, kind, state, since, minutes, extreme = struct.unpack(
                _ALARM, read(struct.calcsize(_ALARM)))
            self.alarms.append([seq, sensor.KINDS[kind], sensor.STATES[state], since, minutes,
                                None if extreme == NO_EXTREME else extreme])


def stamp_of(mono: float, offset: int | None) -> int:
    """A record's time for monotonic ``mono`` given the clock's ``offset`` (None: unknown),
    in integers: a board's floats would lose the seconds of a Unix time."""
    if offset is None:
        return UNCLOCKED | (int(mono) & 0x7FFFFFFF)
    return max(round(mono) + offset - EPOCH, 0) & 0x7FFFFFFF


class RingFiles:
    """``ring.0`` and ``ring.1`` in ``folder``: commits alternate between them."""

    def __init__(self, folder: str) -> None:
        self.paths = (folder + "/ring.0", folder + "/ring.1")
        self.commits = 0
        self.torn = 0  #: files found damaged at load (a write cut short)

    def load(self, ring: Ring) -> bool:
        """Restore the newest good commit into ``ring``; False if there is none."""
        best: tuple[int, str] | None = None
        for path in self.paths:
            generation = self._check(path)
            if generation is not None and (best is None or generation > best[0]):
                best = (generation, path)
        if best is None:
            return False
        ring.generation = best[0]
        with open(best[1], "rb") as f:
            f.read(HEADER_SIZE)
            ring.restore(f.read)
        return True

    def commit(self, ring: Ring) -> None:
        """Write the ring to the file that does not hold the newest commit. The header
        goes last: a write cut short leaves a file whose header is zeros or whose CRC
        fails, never one that passes."""
        ring.generation += 1
        with open(self.paths[ring.generation % 2], "wb") as f:
            f.write(bytes(HEADER_SIZE))
            crc = length = 0
            for part in ring.parts():
                f.write(part)
                crc = binascii.crc32(part, crc)
                length += len(part)
            f.seek(0)
            f.write(struct.pack(_HEADER, MAGIC, ring.generation, length, crc & 0xFFFFFFFF))
            f.flush()
            fsync = getattr(os, "fsync", None)  # a board's file system commits on close
            if fsync is not None:
                fsync(f.fileno())
        self.commits += 1

    def _check(self, path: str) -> int | None:
        """The generation in ``path`` if its header and CRC hold, else None."""
        try:
            f = open(path, "rb")  # noqa: SIM115 (closed below; MicroPython has no ExitStack)
        except OSError:
            return None
        try:
            head = f.read(HEADER_SIZE)
            if len(head) < HEADER_SIZE or head[:4] != MAGIC:
                self.torn += 1
                return None
            _, generation, length, crc = struct.unpack(_HEADER, head)
            found: int = generation
            got = size = 0
            buf = bytearray(CHUNK * RECORD)
            while True:
                n = f.readinto(buf)
                if not n:
                    break
                got = binascii.crc32(memoryview(buf)[:n], got)
                size += n
        finally:
            f.close()
        if size != length or got & 0xFFFFFFFF != crc:
            self.torn += 1
            return None
        return found
