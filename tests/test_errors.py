"""One root exception per package, as gpiozero's exc.py: every error ``protocol``,
``device`` or ``host`` defines descends from its package's root."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

from device.exc import DeviceError
from host.errors import HavenError
from protocol.errors import ProtocolError

ROOTS = {"protocol": ProtocolError, "device": DeviceError, "host": HavenError}


def errors_defined_in(package: str) -> list[type[BaseException]]:
    found = []
    pkg = importlib.import_module(package)
    for info in pkgutil.walk_packages(pkg.__path__, package + "."):
        module = importlib.import_module(info.name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if (obj.__module__ == info.name and issubclass(obj, BaseException)
                    and not issubclass(obj, Warning)):
                found.append(obj)
    return found


@pytest.mark.parametrize("package", sorted(ROOTS))
def test_every_error_descends_from_the_package_root(package: str) -> None:
    errors = errors_defined_in(package)
    assert len(errors) > 3
    strays = [f"{e.__module__}.{e.__qualname__}" for e in errors
              if not issubclass(e, ROOTS[package])]
    assert not strays


def test_the_transfer_event_is_not_an_exception() -> None:
    from host.errors import TransferFailed
    from protocol.transfer import TransferAborted

    assert issubclass(TransferFailed, HavenError)
    assert not issubclass(TransferAborted, BaseException)
