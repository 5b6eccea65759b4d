"""The store of a kiosk that boots locked: check-ins go on, sealed, until staff unlock it.

Theory of operation
-------------------
``LockableStore`` stands where the runtime and the page hold a ``Store``.
Until ``unlock`` is given the right passphrase (``unlock.unwrap``) it opens
no store: ``checkin`` seals to ``pending`` (the patient gets a queue number
and no short code), and every other store call raises ``unlock.Locked``,
which the page and the staff screen turn into "locked: unlock first".

``open`` opens the store with the keys the passphrase gave, then, holding
the lock every locked check-in takes, raises the store's queue counters past
the numbers given while locked and swaps the store in: a check-in after
that goes to the store and can take no number already given.
``merge_pending`` then merges the pending check-ins (``PendingCheckins.merge``:
idempotent, so a crash part-way merges the rest at the next unlock); the page
runs it in the background, so a long night's backlog never holds up the
unlock (``unlock`` does both, for a caller that waits). From then on the object
forwards every call to the store.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from device.store import unlock
from device.store.pending import PendingCheckin, PendingCheckins, PendingMerge
from device.store.store import CheckinResult, Store
from protocol.driver.wall_clock import wall_ms


class LockableStore:
    def __init__(self, data: Path, *, clock: Callable[[], int] = wall_ms) -> None:
        self.data = Path(data)
        self.clock = clock
        #: Set once the store is open (the sync thread waits on it).
        self.opened = threading.Event()
        self.store: Store | None = None
        self.pending = PendingCheckins(self.data, unlock.pending_public(self.data))
        self._swap = threading.Lock()  #: a locked check-in, or the swap, at a time
        self._unlocking = threading.Lock()  #: one unwrap at a time
        self._merging = threading.Lock()  #: one merge at a time, and none past ``close``
        self._pending_key: X25519PrivateKey | None = None
        self.last_merge: PendingMerge | None = None

    @property
    def locked(self) -> bool:
        return self.store is None

    def checkin(self, **kw: Any) -> CheckinResult | PendingCheckin:
        with self._swap:
            if self.store is None:
                return self.pending.add(now_ms=self.clock(), **kw)
        return self.store.checkin(**kw)

    def unlock(self, passphrase: Any) -> PendingMerge:
        """``open`` with ``passphrase``, then ``merge_pending`` what was taken while locked."""
        self.open(passphrase)
        return self.merge_pending()

    def open(self, passphrase: Any) -> None:
        """Open the store with ``passphrase`` (blocking: scrypt) and send check-ins to it
        from now on. ``WrongPassphrase``, ``BadPassphrase`` or a damaged keys file's
        ``StoreError``: nothing changed. Open already: the passphrase is still checked."""
        with self._unlocking:
            keys = unlock.unwrap(self.data, passphrase)
            if self.store is None:
                provider = unlock.PassphraseKeys(self.data, keys)
                store = Store(self.data, provider, fleet=provider, clock=self.clock)
                with self._swap:
                    store.raise_queue_numbers(self.pending.counters())
                    self.store = store
                self._pending_key = keys.pending_key
                self.opened.set()

    def merge_pending(self) -> PendingMerge:
        """Merge the check-ins taken while locked into the open store (one merge at a
        time; what a merge cut short left is merged again). Not ``merge``: that name
        forwards to ``Store.merge``, the hub's deltas the sync merges."""
        with self._merging:
            if self.store is None or self._pending_key is None:
                raise unlock.Locked("the store is locked: nothing can be merged yet")
            self.last_merge = self.pending.merge(self.store, self._pending_key)
            return self.last_merge

    def pending_count(self) -> int:
        return self.pending.count()

    # What the runtime calls whatever the state ----------------------------------------

    def release_memory(self) -> None:
        if self.store is not None:
            self.store.release_memory()

    def truncate_wal(self) -> None:
        if self.store is not None:
            self.store.truncate_wal()

    def close(self) -> None:
        with self._merging, self._swap:
            store, self.store = self.store, None
        if store is not None:
            store.close()
        self.pending.close()

    def __enter__(self) -> LockableStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getattr__(self, name: str) -> Any:
        store = self.__dict__.get("store")
        if store is None:
            raise unlock.Locked("the store is locked: staff unlock it on the staff screen "
                                "with the passphrase")
        return getattr(store, name)
