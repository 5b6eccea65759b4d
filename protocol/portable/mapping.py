"""collections.abc.Mapping's mixin methods, for MicroPython, which has no collections.abc.

A class that defines ``__getitem__``, ``__iter__`` and ``__len__`` gets ``get``,
``keys``, ``items``, ``values``, ``in`` and ``==`` from here, as it would from
``Mapping`` on CPython (where ``protocol.crdt.clock`` takes the real one).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterator


class Mapping:
    def __getitem__(self, key: Any) -> Any:
        raise NotImplementedError

    def __iter__(self) -> Iterator[Any]:
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError

    def get(self, key: Any, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def __contains__(self, key: Any) -> bool:
        try:
            self[key]
        except KeyError:
            return False
        return True

    def keys(self) -> list[Any]:
        return list(self)

    def items(self) -> list[tuple[Any, Any]]:
        return [(key, self[key]) for key in self]

    def values(self) -> list[Any]:
        return [self[key] for key in self]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, dict):
            return dict(self.items()) == other
        if isinstance(other, Mapping):
            return dict(self.items()) == dict(other.items())
        return NotImplemented
