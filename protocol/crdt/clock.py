"""Hybrid logical clocks, dots and version vectors.

Theory of operation
-------------------
A stamp is one unsigned 64-bit integer: ``wall_ms << 16 | logical``
(Kulkarni et al., "Logical Physical Clocks", 2014, in the packed form
CockroachDB uses). ``now(wall_ms)`` returns ``max(last + 1, wall_ms << 16)``,
so stamps a node hands out are strictly increasing, stay within a few ticks
of the wall clock that was passed in, and a burst of more than 65,535 writes
in one millisecond spills into the next millisecond instead of overflowing.
``observe(stamp, wall_ms)`` merges a remote stamp, so anything written after
receiving a delta is stamped after it: causality implies stamp order.

Stamps are bounded: a remote stamp whose wall part is more than
``max_ahead_ms`` ahead of the local clock is refused with ``ClockAheadError``
(the hub quarantines such deltas). A receiver never rewrites a stamp; it only
decides whether to accept it.

A dot names one write: ``(node, stamp)``. A node's stamps are strictly
increasing, so the stamp *is* the node's write counter (monotone, not dense)
and no separate counter has to travel with every delta. Dots order by
``(stamp, node)``: that is how ties break, never on arrival order.

A version vector maps each node to the greatest stamp seen from it. Deltas
cross the link in per-device order (the session de-duplicates by device and
sequence), so "everything from node N up to stamp s" is what it summarises.
This module is pure: the caller passes the time in.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from protocol import MICROPYTHON
from protocol.errors import LocalProtocolError, RemoteProtocolError

if TYPE_CHECKING or not MICROPYTHON:
    from collections.abc import Iterable, Iterator, Mapping
    from typing import NamedTuple

    class _DotFields(NamedTuple):
        stamp: int
        node: int

    _VersionMap = Mapping[int, int]
else:  # MicroPython: no typing.NamedTuple, no collections.abc
    from collections import namedtuple

    from protocol.portable.mapping import Mapping

    _DotFields = namedtuple("Dot", ("stamp", "node"))
    _VersionMap = Mapping

LOGICAL_BITS = 16
LOGICAL_MASK = (1 << LOGICAL_BITS) - 1
MAX_STAMP = (1 << 64) - 1
MAX_NODE = (1 << 32) - 1
#: How far ahead of the local clock a remote stamp may be (five minutes).
DEFAULT_MAX_AHEAD_MS = 5 * 60 * 1000


class ClockAheadError(RemoteProtocolError):
    """A stamp is further ahead of our clock than we accept."""

    code = "clock-ahead"


def pack(wall_ms: int, logical: int = 0) -> int:
    """The stamp for ``wall_ms`` and a logical count."""
    if not 0 <= logical <= LOGICAL_MASK or wall_ms < 0:
        raise LocalProtocolError("stamp parts out of range")
    return wall_ms << LOGICAL_BITS | logical


def wall_of(stamp: int) -> int:
    """The wall-clock milliseconds of ``stamp``."""
    return stamp >> LOGICAL_BITS


class HLC:
    """One node's hybrid logical clock. ``last`` is the greatest stamp it knows."""

    def __init__(self, last: int = 0, *, max_ahead_ms: int = DEFAULT_MAX_AHEAD_MS) -> None:
        if not 0 <= last <= MAX_STAMP:
            raise LocalProtocolError("clock state out of range")
        self.last = last
        self.max_ahead_ms = max_ahead_ms

    def now(self, wall_ms: int) -> int:
        """A fresh stamp, greater than every stamp seen or handed out so far."""
        if wall_ms < 0:
            raise LocalProtocolError("wall clock before 1970")
        stamp = max(self.last + 1, wall_ms << LOGICAL_BITS)
        if stamp > MAX_STAMP:
            raise LocalProtocolError("clock exhausted")
        self.last = stamp
        return stamp

    def check(self, stamp: int, wall_ms: int) -> None:
        """Raise ``ClockAheadError`` if ``stamp`` is too far ahead of ``wall_ms``."""
        ahead = wall_of(stamp) - wall_ms
        if ahead > self.max_ahead_ms:
            raise ClockAheadError(
                f"stamp is {ahead} ms ahead of the local clock (limit {self.max_ahead_ms} ms)"
            )

    def observe(self, stamp: int, wall_ms: int) -> None:
        """Take a remote stamp into account (after ``check``); the stamp is not changed."""
        self.check(stamp, wall_ms)
        if stamp > self.last:
            self.last = stamp


class Dot(_DotFields):
    """One write: the node that made it and its stamp. Orders by (stamp, node)."""

    __slots__ = ()

    def version_id(self) -> str:
        """The printable id of the version this write made (same on every replica)."""
        return f"{self.node:08x}-{self.stamp:016x}"

    def to_bytes(self) -> bytes:
        return self.node.to_bytes(4, "big") + self.stamp.to_bytes(8, "big")


class VersionVector(_VersionMap):
    """node -> greatest stamp seen from it."""

    def __init__(self, entries: Mapping[int, int] | Iterable[tuple[int, int]] = ()) -> None:
        self._v: dict[int, int] = {}
        items = entries.items() if isinstance(entries, (dict, Mapping)) else entries
        for node, stamp in items:
            self.add(Dot(stamp, node))

    def __getitem__(self, node: int) -> int:
        return self._v[node]

    def __iter__(self) -> Iterator[int]:
        return iter(self._v)

    def __len__(self) -> int:
        return len(self._v)

    def __repr__(self) -> str:
        return f"VersionVector({dict(sorted(self._v.items()))})"

    def add(self, dot: Dot) -> None:
        if self._v.get(dot.node, -1) < dot.stamp:
            self._v[dot.node] = dot.stamp

    def covers(self, dot: Dot) -> bool:
        return self._v.get(dot.node, -1) >= dot.stamp

    def merge(self, other: Mapping[int, int]) -> VersionVector:
        out = VersionVector(self._v)
        for node, stamp in other.items():
            out.add(Dot(stamp, node))
        return out

    def dominates(self, other: Mapping[int, int]) -> bool:
        return all(self._v.get(n, -1) >= s for n, s in other.items())

    def to_wire(self) -> dict[int, int]:
        return dict(self._v)

    @classmethod
    def from_wire(cls, obj: object) -> VersionVector:
        if not isinstance(obj, dict):
            raise RemoteProtocolError("a version vector is a map", "bad-vv")
        for node, stamp in obj.items():
            if not (_is_uint(node, MAX_NODE) and _is_uint(stamp, MAX_STAMP)):
                raise RemoteProtocolError("version vector entry out of range", "bad-vv")
        return cls(obj)


def _is_uint(value: object, limit: int) -> bool:
    return type(value) is int and 0 <= value <= limit
