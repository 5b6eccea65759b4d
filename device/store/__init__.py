"""The kiosk's local store (SQLite through sqlite-utils): see ``store``."""

from device.store.create import init_store
from device.store.exc import (
    BadRequest,
    BadSnapshot,
    CorruptData,
    KeyFileMissing,
    KeyFilePermissions,
    KeyMismatch,
    NotInitialised,
    StorageFull,
    StoreError,
)
from device.store.inbox import MergeReport
from device.store.keys import FieldCipher, KeyFile, KeyProvider
from device.store.store import CheckinResult, Store

__all__ = [
    "BadRequest", "BadSnapshot", "CheckinResult", "CorruptData", "FieldCipher", "KeyFile",
    "KeyFileMissing", "KeyFilePermissions", "KeyMismatch", "KeyProvider", "MergeReport",
    "NotInitialised", "StorageFull", "Store", "StoreError", "init_store",
]
