"""Reading a request's CBOR map: each field's type checked, a wrong one an ``EINVAL``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from device.console.groups import EINVAL, SmpError

T = TypeVar("T")


def need(body: Mapping[str, Any], key: str, kind: type[T]) -> T:
    value = body.get(key)
    if value is None:
        raise SmpError(EINVAL, f"{key} is missing")
    return _typed(key, value, kind)


def maybe(body: Mapping[str, Any], key: str, kind: type[T], default: T) -> T:
    value = body.get(key)
    if value is None:
        return default
    return _typed(key, value, kind)


def _typed(key: str, value: Any, kind: type[T]) -> T:
    # bool is an int to Python; never to SMP.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise SmpError(EINVAL, f"{key} must be {kind.__name__}")
    return value
