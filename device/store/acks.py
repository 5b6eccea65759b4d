"""Acknowledged outbox entries, on their way out with the next local write.

Theory of operation
-------------------
Removing entries the hub acknowledged is a commit of its own, and every
commit writes whole pages: a kiosk that syncs after each check-in paid one
such commit per check-in. So ``Store.outbox_ack`` only notes the entries
here; the next local write (a check-in) deletes them in its own
transaction, and a job on the writer does it if no write comes within
``FLUSH_AFTER_S``, at once when more than ``MAX_NOTED`` wait, and at close.
Until then the store acts as if they were gone: ``outbox_batch`` skips them
and ``status`` does not count them. A crash forgets the note, and the
entries go to the hub again; it keeps each write once.
"""

from __future__ import annotations

import threading
from typing import Any

FLUSH_AFTER_S = 30.0
#: More noted than this and they leave at once: a kiosk sending its backlog batch
#: after batch would otherwise read past more and more of them in each next batch.
MAX_NOTED = 64


class AckedEntries:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        #: seq -> lane, size, state, arrival number the hub gave the write (or None)
        self._entries: dict[int, tuple[int, int, str, int | None]] = {}

    def add(self, rows: list[tuple[int, int, int, str]], arrived: int | None = None) -> None:
        """Note (seq, lane, size, state) rows as acknowledged, their writes given arrival
        number ``arrived`` by the hub."""
        with self._lock:
            for seq, lane, size, state in rows:
                self._entries[seq] = (lane, size, state, arrived)

    def take(self) -> dict[int, tuple[int, int, str, int | None]]:
        """The noted entries, forgotten here (``put_back`` if deleting them failed)."""
        with self._lock:
            taken, self._entries = self._entries, {}
        return taken

    def put_back(self, taken: dict[int, tuple[int, int, str, int | None]]) -> None:
        with self._lock:
            self._entries.update(taken)

    def __contains__(self, seq: object) -> bool:
        with self._lock:
            return seq in self._entries

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def discount(self, summary: dict[str, Any]) -> dict[str, Any]:
        """``outbox.summary`` without the noted entries."""
        with self._lock:
            entries = dict(self._entries)
        lanes = {k: dict(v) for k, v in summary["lanes"].items()}
        for lane, size, state, _ in entries.values():
            info = lanes.get(str(lane))
            if state != "queued" or info is None:
                continue
            info["entries"] -= 1
            info["bytes"] -= size
            if info["entries"] <= 0:
                del lanes[str(lane)]
        quarantined = [q for q in summary["quarantined"] if q["seq"] not in entries]
        return {**summary, "lanes": lanes, "quarantined": quarantined}
