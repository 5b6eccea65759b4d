"""The store's exceptions: one branch of ``device.exc``, each leaf also a matching built-in."""

from __future__ import annotations

from device.exc import DeviceError


class StoreError(DeviceError):
    """Root of every error the kiosk store raises."""

    code = "store-error"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class KeyFileMissing(StoreError, FileNotFoundError):
    code = "key-missing"


class KeyFilePermissions(StoreError, PermissionError):
    code = "key-permissions"


class KeyMismatch(StoreError, ValueError):
    code = "key-mismatch"


class CorruptData(StoreError, ValueError):
    """A ciphertext failed authentication, or stored bytes do not decode."""

    code = "corrupt"


class NotInitialised(StoreError, FileNotFoundError):
    code = "not-initialised"


class BadRequest(StoreError, ValueError):
    """A caller's request the store refuses (unknown type, invalid value, held record...)."""

    code = "bad-request"


class StorageFull(StoreError, OSError):
    """The disk holding the store is full (or nearly): nothing was written."""

    code = "storage-full"


class BadSnapshot(StoreError, ValueError):
    """A snapshot from the hub that does not match its checksum: nothing was changed."""

    code = "bad-snapshot"
