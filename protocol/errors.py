"""The protocol's exceptions, under one root, as gpiozero's ``exc.py``.

``ProtocolError`` is the root of everything ``protocol`` raises, the pure core
and its I/O subpackage alike (``protocol.driver.errors.DriverError`` is a
branch of it). In the core, ``LocalProtocolError`` means the caller misused
the API and ``RemoteProtocolError`` means the peer (or the line) sent
something we refuse; both are also ``ValueError``, so callers can catch
either. Each leaf of the tree also inherits the matching built-in.

MicroPython lets a class have one built-in base at most, so there the two
leaves are ``ProtocolError`` alone: catch them as such in code meant for both.
"""

from typing import TYPE_CHECKING

from protocol import MICROPYTHON

if TYPE_CHECKING or not MICROPYTHON:  # noqa: SIM108 (mypy takes a base from a plain assignment)
    _ValueError = ValueError
else:
    _ValueError = object


class ProtocolError(Exception):
    """Root of every error raised by ``protocol``."""

    #: A short, stable reason code (used in close messages and counters).
    code = "protocol-error"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class LocalProtocolError(ProtocolError, _ValueError):
    """We were asked to do something the protocol does not allow."""

    code = "local-error"


class RemoteProtocolError(ProtocolError, _ValueError):
    """The peer sent bytes or a message we refuse."""

    code = "remote-error"
