"""The kiosk's local store (SQLite through sqlite-utils): see ``store``."""

from .create import init_store
from .exc import (
    BadRequest,
    CorruptData,
    KeyFileMissing,
    KeyFilePermissions,
    KeyMismatch,
    NotInitialised,
    StorageFull,
    StoreError,
)
from .inbox import MergeReport
from .keys import FieldCipher, KeyFile, KeyProvider
from .store import CheckinResult, Store

__all__ = [
    "BadRequest", "CheckinResult", "CorruptData", "FieldCipher", "KeyFile", "KeyFileMissing",
    "KeyFilePermissions", "KeyMismatch", "KeyProvider", "MergeReport", "NotInitialised",
    "StorageFull", "Store", "StoreError", "init_store",
]
