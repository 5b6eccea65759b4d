"""The hub's side of one kiosk's sync session, without I/O.

Theory of operation
-------------------
A ``HubPeer`` is made when a session connects, with the kiosk's static key
as the session authenticated it. ``on_message`` takes one message's bytes
and returns the messages to send back (lane, bytes); when the kiosk must be
turned away, ``close`` holds the reason and detail for the session's close.

The hello's certificate must be signed by this hub and name the session's
key; the kiosk must be enrolled with that key and approved. A batch does
not carry the previous hash: the hub takes it from its own record of the
kiosk's chain (the checkpoint, or the committed batch before an older
sequence), computes the batch's hash and checks the kiosk's Ed25519
signature over it, so a batch built on another chain is refused like a
forged one. A sequence beyond the next is out of chain; one already
committed with the same hash is acknowledged again and applied no more,
one with another hash is a replay. Within a good batch each delta is checked on its own (strict
decoding, the kiosk's own node, known fields, a stamp no further ahead of
the hub's clock than ``max_ahead_ms``): bad ones are quarantined, the rest
committed, and the ack goes out only after the commit returned. Every
refusal is logged with the kiosk and a reason code; none ends the process.
Transfer messages (document content) go to the session's ``DocumentInbox``
(``documents.py``).
"""

from __future__ import annotations

import json
from collections.abc import Callable

from host.hub.document_inbox import DocumentInbox
from host.hub.storage import Device, HubStore, Op
from protocol import messages
from protocol.crdt.clock import DEFAULT_MAX_AHEAD_MS, wall_of
from protocol.crdt.delta import Delta, decode
from protocol.crdt.replica import check_known_fields
from protocol.errors import ProtocolError, RemoteProtocolError
from protocol.sync import batches as sync
from protocol.sync import certificate as sync_cert
from protocol.transfer import transfer_id

Reply = tuple[int, bytes]
CHANGES_BYTES = 256 * 1024


class HubPeer:
    def __init__(self, store: HubStore, hub_ed25519: bytes, remote_static: bytes | None,
                 clock: Callable[[], int], max_ahead_ms: int = DEFAULT_MAX_AHEAD_MS,
                 documents: DocumentInbox | None = None) -> None:
        self.store = store
        self.documents = documents
        self.hub_ed25519 = hub_ed25519
        self.remote = remote_static
        self.clock = clock
        self.max_ahead_ms = max_ahead_ms
        self.device: Device | None = None
        self.close: tuple[str, str] | None = None
        self.batches = self.rejected = 0

    def _log(self, code: str, detail: str) -> None:
        self.store.log(self.device.device_id if self.device else None, code, detail,
                       self.clock())

    def _refuse(self, reason: str, detail: str) -> list[Reply]:
        self._log(reason, detail)
        self.close = (reason, detail)
        return []

    def on_message(self, data: bytes) -> list[Reply]:
        try:
            msg = messages.decode(data)
        except RemoteProtocolError as exc:
            return self._refuse("protocol", f"undecodable message: {exc}")
        if self.device is None:
            if msg.type != sync.HELLO.number:
                return self._refuse("protocol", f"expected sync-hello, got {msg.name}")
            return self._hello(msg)
        if msg.type == sync.BATCH.number:
            return self._batch(msg)
        if msg.type == sync.PULL.number:
            return self._pull(msg)
        if self.documents is not None and transfer_id(msg) is not None:
            return self.documents.on_message(self.device.device_id, msg)
        self._log("unknown-message", msg.name)
        return []

    def _hello(self, msg: messages.Message) -> list[Reply]:
        try:
            cert = sync_cert.read_certificate(msg.get("cert"), self.hub_ed25519)
        except ProtocolError as exc:
            return self._refuse("bad-certificate", str(exc))
        dev = self.store.device(cert.device_id)
        if dev is None:
            return self._refuse("unknown-device", f"kiosk {cert.device_id} is not enrolled")
        if cert.x25519 != self.remote or dev.x25519 != self.remote:
            return self._refuse("wrong-certificate", f"the certificate of kiosk "
                                f"{cert.device_id} does not match this session's key")
        if dev.state == "revoked":
            return self._refuse("revoked", f"kiosk {dev.device_id} was revoked")
        if dev.state != "approved":
            return self._refuse("unapproved", f"kiosk {dev.device_id} is {dev.state}")
        self.device = dev
        vv = msg.get("vv")
        self.store.seen(dev.device_id, self.clock(), vv=json.dumps(
            {f"{n:08x}": s for n, s in vv.items() if isinstance(n, int)}, sort_keys=True))
        welcome = messages.make("sync-welcome", time=self.clock(),
                                vv=self.store.version_vector(), seq=dev.last_seq,
                                hash=dev.last_hash)
        return [(0, messages.encode(welcome))]

    def _reject(self, seq: int, code: str, detail: str) -> list[Reply]:
        self.rejected += 1
        self._log(code, f"batch {seq}: {detail}")
        return [(0, messages.encode(messages.make("sync-reject", seq=seq, reason=code,
                                                  detail=detail[:200])))]

    def _batch(self, msg: messages.Message) -> list[Reply]:
        assert self.device is not None
        dev = self.device = self.store.device(self.device.device_id) or self.device
        if dev.state != "approved":
            return self._refuse("revoked", f"kiosk {dev.device_id} was revoked")
        seq = msg.get("seq")
        prev = self._prev_hash(dev, seq)
        if prev is None:
            return self._reject(seq, "out-of-chain",
                                f"expected batch {dev.last_seq + 1} after the last committed")
        batch = sync.Batch(seq, prev, msg.get("payload"), msg.get("sig"))
        try:
            sync.verify_batch(batch, dev.device_id, dev.ed25519)
        except RemoteProtocolError as exc:
            return self._reject(batch.seq, exc.code, str(exc))
        if batch.seq <= dev.last_seq:
            if self.store.batch_hash(dev.device_id, batch.seq) == batch.hash:
                self._log("duplicate", f"batch {batch.seq} again; acknowledged, not applied")
                return [self._ack(batch, self.store.batch_quarantined(dev.device_id, batch.seq))]
            return self._reject(batch.seq, "replay", "a different batch already has this "
                                "sequence number")
        try:
            deltas = sync.unpack(batch.payload)
        except RemoteProtocolError as exc:
            return self._reject(batch.seq, exc.code, str(exc))
        now = self.clock()
        ops: list[Op] = []
        bad: list[tuple[str, str, bytes]] = []
        quarantined: list[int] = []
        for i, data in enumerate(deltas):
            try:
                delta = self._check(data, dev, now)
                ops.append(Op(delta.record_id, delta.stamp, delta.node, data))
            except RemoteProtocolError as exc:
                bad.append((exc.code, str(exc), data))
                quarantined.append(i)
        self.store.commit_batch(dev.device_id, batch.seq, batch.hash, ops, bad, now,
                                quarantined)
        if bad:
            self._log("quarantined", f"batch {batch.seq}: {len(bad)} deltas ({bad[0][0]})")
        self.device = self.store.device(dev.device_id)
        self.batches += 1
        return [self._ack(batch, quarantined)]

    def _prev_hash(self, dev: Device, seq: int) -> bytes | None:
        """The hash batch ``seq`` must follow in this kiosk's chain, as the hub holds
        it; None when ``seq`` is not the next one and no committed batch precedes it."""
        if seq == dev.last_seq + 1:
            return dev.last_hash
        if seq == 1:
            return sync.GENESIS
        if 1 < seq <= dev.last_seq:
            return self.store.batch_hash(dev.device_id, seq - 1)
        return None

    def _check(self, data: bytes, dev: Device, now: int) -> Delta:
        delta = decode(data)
        if delta.node != dev.node:
            raise RemoteProtocolError("a kiosk sends its own writes only", "foreign-node")
        if wall_of(delta.stamp) > now + self.max_ahead_ms:
            raise RemoteProtocolError("stamp too far ahead of the hub's clock", "clock-ahead")
        check_known_fields(delta)
        return delta

    @staticmethod
    def _ack(batch: sync.Batch, quarantined: list[int]) -> Reply:
        return (0, messages.encode(messages.make(
            "sync-ack", seq=batch.seq, quarantined=quarantined or None)))

    def _pull(self, msg: messages.Message) -> list[Reply]:
        assert self.device is not None
        cursor = max(0, msg.get("cursor"))
        limit = min(max(msg.get("max_bytes") or CHANGES_BYTES, 1024), CHANGES_BYTES)
        deltas, new, more = self.store.changes_since(cursor, self.device.node, limit)
        self.store.seen(self.device.device_id, self.clock(), cursor=cursor)
        reply = messages.make("sync-changes", payload=sync.pack(deltas), cursor=new, more=more)
        return [(1, messages.encode(reply))]
