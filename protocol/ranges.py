"""A set of byte offsets kept as sorted, disjoint half-open ranges."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator


class RangeSet:
    """Sorted disjoint ``[start, end)`` ranges; adjacent ranges are merged."""

    __slots__ = ("_r",)

    def __init__(self) -> None:
        self._r: list[tuple[int, int]] = []

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(self._r)

    def __bool__(self) -> bool:
        return bool(self._r)

    def add(self, start: int, end: int) -> None:
        if end <= start:
            return
        out: list[tuple[int, int]] = []
        placed = False
        for s, e in self._r:
            if e < start:
                out.append((s, e))
            elif end < s:
                if not placed:
                    out.append((start, end))
                    placed = True
                out.append((s, e))
            else:
                start, end = min(s, start), max(e, end)
        if not placed:
            out.append((start, end))
        self._r = out

    def remove(self, start: int, end: int) -> None:
        if end <= start:
            return
        out: list[tuple[int, int]] = []
        for s, e in self._r:
            if e <= start or end <= s:
                out.append((s, e))
                continue
            if s < start:
                out.append((s, start))
            if end < e:
                out.append((end, e))
        self._r = out

    def remove_below(self, offset: int) -> None:
        self.remove(0, offset)

    def covers(self, start: int, end: int) -> bool:
        """True if every offset in ``[start, end)`` is in the set."""
        return any(s <= start and end <= e for s, e in self._r)

    def first(self) -> tuple[int, int] | None:
        return self._r[0] if self._r else None
