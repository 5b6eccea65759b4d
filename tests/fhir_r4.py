"""FHIR R4 (4.0.1) validation for the tests: fhir.resources 6.4.0's models.

Theory of operation
-------------------
fhir.resources 6.4.0 is the last release of R4 models; they are written for
pydantic 1, and the project has pydantic 2 (smp needs it), which ships
pydantic 1 as ``pydantic.v1``. ``validate`` runs with ``pydantic`` (and its
submodules) in ``sys.modules`` pointing at ``pydantic.v1`` while the models
import (lazily, as each type is first met), then puts pydantic 2 back. Only
the calling thread should import pydantic meanwhile: the tests validate from
one thread.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pydantic.v1


@contextmanager
def _pydantic_1() -> Iterator[None]:
    v1 = pydantic.v1
    subs = {f"pydantic.{info.name}": importlib.import_module(f"pydantic.v1.{info.name}")
            for info in pkgutil.iter_modules(v1.__path__)
            if not info.name.startswith("_") and info.name != "mypy"}
    saved = {k: m for k, m in sys.modules.items() if k == "pydantic" or k.startswith("pydantic.")}
    sys.modules["pydantic"] = v1
    sys.modules.update(subs)
    try:
        yield
    finally:
        for k in [k for k in sys.modules if k == "pydantic" or k.startswith("pydantic.")]:
            del sys.modules[k]
        sys.modules.update(saved)


def fhir_version() -> str:
    with _pydantic_1():
        from fhir.resources import __fhir_version__
    return str(__fhir_version__)


def validate(resource: dict[str, Any]) -> Any:
    """The resource parsed by its R4 model; ``ValidationError`` (pydantic 1's) if it is not
    valid R4 (unknown elements, wrong types, missing required ones)."""
    with _pydantic_1():
        from fhir.resources import construct_fhir_element
        return construct_fhir_element(resource["resourceType"], resource)


def validation_error() -> type[Exception]:
    return pydantic.v1.ValidationError
