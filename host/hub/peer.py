"""The hub's side of one kiosk's sync session: wiring, without I/O.

Theory of operation
-------------------
A ``HubPeer`` is made when a session connects, with the kiosk's static key
as the session authenticated it. ``on_message`` takes one message's bytes
and returns the messages to send back (lane, bytes); when the kiosk must be
turned away, ``sync.close`` holds the reason and detail for the session's
close.

Every rule of the conversation (the hello's certificate, the batch chain,
duplicates and replays, the check of each delta, pull paging) is the hub's
role in ``protocol.sync.conversation`` (``HubSync``), on the hub's database.
This module routes transfer messages (document content) to the session's
``DocumentInbox`` (``document_inbox.py``) once the kiosk said hello, after
the same fresh look at the kiosk's record as every sync message (a kiosk
revoked meanwhile is turned away). Every
refusal is logged with the kiosk and a reason code; none ends the process.
"""

from __future__ import annotations

from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from host.hub.document_inbox import DocumentInbox
from host.hub.storage import HubStore
from protocol.crdt.clock import DEFAULT_MAX_AHEAD_MS
from protocol.messages import Message
from protocol.sync import batches as sync_batches
from protocol.sync import provisioning
from protocol.sync.conversation import Enroller, HubSync, Reply
from protocol.sync.hub_round import HubFleet
from protocol.transfer import transfer_id


class HubPeer:
    def __init__(self, store: HubStore, hub_ed25519: bytes, remote_static: bytes | None,
                 clock: Callable[[], int], max_ahead_ms: int = DEFAULT_MAX_AHEAD_MS,
                 documents: DocumentInbox | None = None, enrol: Enroller | None = None,
                 provision: Callable[[Message, bytes | None, int], list[Reply]] | None = None,
                 stable_key: Ed25519PrivateKey | None = None,
                 after_batch: Callable[[], object] | None = None,
                 defer: bool = False, fleet: HubFleet | None = None) -> None:
        """``enrol``: how a kiosk whose hello presents an offline approval is enrolled
        (``Hub.enroll_by_approval``). ``provision``: the answer to a technician's tool that
        asks instead of a kiosk's hello (``host.hub.provisioning.answer``). ``stable_key``
        signs the stable points of welcomes. ``after_batch``: run after each batch
        (``Hub.after_batch``); a failure is logged, the reply goes. With ``defer``, it
        is not run by ``on_message`` but left ``owed``, for the caller to run with
        ``settle`` once the batch's ack went (before the kiosk's next message).
        ``fleet``: the hub's fleet keys, for kiosks at an older generation
        (``fleet_rotation``)."""
        self.documents = documents
        self.remote = remote_static
        self.provision = provision
        self.clock = clock
        self.store = store
        self.after_batch = after_batch
        self.defer = defer
        self.owed = False  #: a batch was handled and ``after_batch`` waits (``defer``)
        self.sync = HubSync(store, hub_ed25519, remote_static, max_ahead_ms=max_ahead_ms,
                            enrol=enrol, stable_key=stable_key, fleet=fleet)

    def on_message(self, data: bytes) -> list[Reply]:
        now = self.clock()
        msg = self.sync.decode(data, now)
        if msg is None:
            return []
        dev = self.sync.device
        if dev is None and self.provision is not None and msg.type == provisioning.ASK.number:
            return self.provision(msg, self.remote, now)
        if dev is not None and self.documents is not None and transfer_id(msg) is not None:
            if not self.sync.refresh(now):  # revoked since the hello: nothing more
                return []
            return self.documents.on_message(dev.device_id, msg)
        replies = self.sync.receive(msg, now)
        if self.after_batch is not None and msg.type == sync_batches.BATCH.number:
            self.owed = True
            if not self.defer:
                self.settle()
        return replies

    def settle(self) -> None:
        """Run what the last batch left owed (``after_batch``), if anything; a failure is
        logged (the next batch tries again)."""
        if not self.owed or self.after_batch is None:
            return
        self.owed = False
        try:
            self.after_batch()
        except Exception as exc:  # noqa: BLE001 - logged; the next batch tries again
            dev = self.sync.device
            self.store.log(dev.device_id if dev else None, "verifiers",
                           f"writing verifiers failed: {type(exc).__name__}: {exc}",
                           self.clock())
