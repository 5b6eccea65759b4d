"""The kiosk's exceptions under one root, as gpiozero's ``exc.py``.

``DeviceError`` is the root of every error ``device`` raises. Each part has
its branch (``device.store.exc.StoreError`` for the store, ``HardwareError``
here for the LED, button and buzzer, ``SyncFailed`` for a round that did not
complete), and each leaf also inherits the matching built-in
(``UnknownPattern`` is a ``ValueError``, ``StorageFull`` an ``OSError``), so a
caller catches whichever it already handles.
"""

from __future__ import annotations


class DeviceError(Exception):
    """Root of every error raised by ``device``."""


class HardwareError(DeviceError):
    """Root of the kiosk's hardware errors."""


class UnknownPattern(HardwareError, ValueError):
    """No such LED pattern."""


class PrinterError(HardwareError):
    """The ticket printer did not print; ``state`` says why (``device.hardware.printer``'s
    states: paper out, cover open, failed, absent...)."""

    def __init__(self, message: str, state: str) -> None:
        super().__init__(message)
        self.state = state


class PrinterAnswerError(PrinterError, ValueError):
    """The printer answered a status query with bytes that are not a status."""


class TicketError(HardwareError, ValueError):
    """A ticket the ESC/POS writer cannot lay out (a field it cannot print, a width that
    is not a printer's)."""
