"""The hub's side of one kiosk's sync session: storage and wiring, without I/O.

Theory of operation
-------------------
A ``HubPeer`` is made when a session connects, with the kiosk's static key
as the session authenticated it. ``on_message`` takes one message's bytes
and returns the messages to send back (lane, bytes); when the kiosk must be
turned away, ``close`` holds the reason and detail for the session's close.

Every rule of the conversation (the hello's certificate, the batch chain,
duplicates and replays, the check of each delta, pull paging) is the hub's
role in ``protocol.sync.conversation`` (``HubSync``). This module gives the
role the hub's database (``HubLedger`` over a ``HubStore``) and the clock,
and routes transfer messages (document content) to the session's
``DocumentInbox`` (``document_inbox.py``) once the kiosk said hello. Every
refusal is logged with the kiosk and a reason code; none ends the process.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from host.hub.document_inbox import DocumentInbox
from host.hub.storage import Device, HubStore, Op
from protocol.crdt.clock import DEFAULT_MAX_AHEAD_MS
from protocol.crdt.delta import Delta
from protocol.sync.conversation import HubSync, KioskRecord
from protocol.transfer import transfer_id

Reply = tuple[int, bytes]


class HubLedger:
    """``HubStorage`` for the hub's role, on the hub's database."""

    def __init__(self, store: HubStore) -> None:
        self.store = store

    def device(self, device_id: str) -> Device | None:
        return self.store.device(device_id)

    def batch_hash(self, device_id: str, seq: int) -> bytes | None:
        return self.store.batch_hash(device_id, seq)

    def batch_quarantined(self, device_id: str, seq: int) -> list[int]:
        return self.store.batch_quarantined(device_id, seq)

    def commit_batch(self, device_id: str, seq: int, hash_: bytes,
                     good: list[tuple[Delta, bytes]], bad: list[tuple[str, str, bytes]],
                     now: int, quarantined: list[int]) -> None:
        ops = [Op(delta.record_id, delta.stamp, delta.node, data) for delta, data in good]
        self.store.commit_batch(device_id, seq, hash_, ops, bad, now, quarantined)

    def changes_since(self, cursor: int, exclude_node: int, max_bytes: int,
                      ) -> tuple[list[bytes], int, bool]:
        return self.store.changes_since(cursor, exclude_node, max_bytes)

    def version_vector(self) -> dict[int, int]:
        return self.store.version_vector()

    def seen(self, device_id: str, now: int, cursor: int | None = None,
             vv: Mapping[Any, Any] | None = None) -> None:
        text = None if vv is None else json.dumps(
            {f"{n:08x}": s for n, s in vv.items() if isinstance(n, int)}, sort_keys=True)
        self.store.seen(device_id, now, cursor=cursor, vv=text)

    def log(self, device_id: str | None, code: str, detail: str, now: int) -> None:
        self.store.log(device_id, code, detail, now)


class HubPeer:
    def __init__(self, store: HubStore, hub_ed25519: bytes, remote_static: bytes | None,
                 clock: Callable[[], int], max_ahead_ms: int = DEFAULT_MAX_AHEAD_MS,
                 documents: DocumentInbox | None = None) -> None:
        self.store = store
        self.documents = documents
        self.clock = clock
        self.sync = HubSync(HubLedger(store), hub_ed25519, remote_static,
                            max_ahead_ms=max_ahead_ms)

    @property
    def device(self) -> KioskRecord | None:
        return self.sync.device

    @property
    def close(self) -> tuple[str, str] | None:
        return self.sync.close

    @property
    def batches(self) -> int:
        return self.sync.batches

    @property
    def rejected(self) -> int:
        return self.sync.rejected

    def on_message(self, data: bytes) -> list[Reply]:
        now = self.clock()
        msg = self.sync.decode(data, now)
        if msg is None:
            return []
        dev = self.sync.device
        if dev is not None and self.documents is not None and transfer_id(msg) is not None:
            return self.documents.on_message(dev.device_id, msg)
        return self.sync.receive(msg, now)
