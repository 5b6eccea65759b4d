"""The driver's exceptions: one root, each leaf also the matching built-in.

Callers may catch ``DriverError`` for anything the driver raises, or the
built-in (``OSError``, ``FileNotFoundError``, ``PermissionError``,
``ValueError``) where that is what they already handle. ``code`` is a short,
stable reason, as in ``protocol.errors``.
"""

from __future__ import annotations

from protocol.errors import ProtocolError


class DriverError(ProtocolError):
    """Root of every error raised by ``protocol.driver`` (a branch of ``ProtocolError``)."""

    code = "driver-error"


class LinkError(DriverError, OSError):
    """A link could not be opened, or broke while in use."""

    code = "link"


class SecretFileError(DriverError):
    """An owner-only secret file could not be used."""

    code = "secret-file"


class SecretMissing(SecretFileError, FileNotFoundError):
    code = "key-missing"


class SecretPermissions(SecretFileError, PermissionError):
    """Others may read the file, or it belongs to another user."""

    code = "key-permissions"


class SecretInvalid(SecretFileError, ValueError):
    """The file holds the wrong number of bytes, or not a key."""

    code = "key-size"
