"""Sync messages (80-99) and the kiosk's hash-chained batches (SPEC.md, "Sync").

Theory of operation
-------------------
A sync round runs inside an authenticated session (the kiosk initiates,
pattern XX; the kiosk pins the hub's key from its certificate, the hub
checks the kiosk's static key against the certificate and its records).

1. ``sync-hello`` (kiosk): its certificate, version vector, pull cursor and
   chain position. ``sync-welcome`` (hub): its time, its version vector and
   its checkpoint of this kiosk's chain (last sequence and hash), so only
   what is missing crosses. A refused kiosk gets a session ``close`` whose
   reason says why (``unknown-device``, ``revoked``, ``wrong-certificate``).
2. ``sync-batch`` (kiosk): sequence ``n``, the payload (the CBOR array of
   deltas, deflated when that is smaller) and the kiosk's Ed25519 signature
   over the chain head ``(device, n, hash)`` where
   ``hash = SHA-256("haven-batch" || prev || n || payload)``. ``prev``, the
   hash of batch ``n - 1``, is not sent: the hub holds it as its checkpoint
   of this kiosk's chain and computes ``hash`` from its own copy, so a batch
   built on any other chain fails the signature check. The kiosk saves a
   batch before first sending it, so after a crash it sends the same bytes
   again. ``sync-ack`` (hub) names the sequence, follows the batch's durable
   commit and lists the deltas it quarantined; ``sync-reject`` says why a
   batch was refused. The session is authenticated, and the hub acknowledges
   a sequence only for the batch whose hash it committed, so the sequence
   alone names the batch.
3. ``sync-pull`` (kiosk) asks for deltas after a cursor; ``sync-changes``
   (hub) answers with a payload, the new cursor and whether more remain.
   The kiosk saves the cursor only after the merge is durable.

Everything here is pure: encoding, decoding, hashing and signing.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from protocol import MICROPYTHON, strict_cbor
from protocol.crdt.clock import MAX_NODE
from protocol.crypto import Ed25519PrivateKey, Ed25519PublicKey, InvalidSignature
from protocol.errors import RemoteProtocolError
from protocol.messages import MessageSpec, register
from protocol.sync.fleet_chain import valid_moves

GENESIS = b"\x00" * 32
HEAD_LABEL = b"haven-chain-head\x00"
BATCH_LABEL = b"haven-batch\x00"
MAX_BATCH_PLAIN = 4 << 20  #: largest decompressed batch (bytes)
MAX_BATCH_DELTAS = 20_000

MAX_SNAPSHOT_RECORDS = 256  #: record ids one ``sync-pull`` may ask the write sets of


def _hash32(value: object) -> bool:
    return type(value) is bytes and len(value) == 32


def _node(value: object) -> bool:
    return type(value) is int and 0 <= value <= MAX_NODE


def _snapshot_ask(value: object) -> bool:
    """A pull's ``snapshot``: ``true`` (the whole scope) or 1 to 256 distinct record ids."""
    if value is True:
        return True
    return (type(value) is list and 0 < len(value) <= MAX_SNAPSHOT_RECORDS
            and all(type(rid) is bytes and len(rid) == 16 for rid in value)
            and len(set(value)) == len(value))


#: ``revs``: the number of the technicians' revocation list the kiosk holds (SPEC.md
#: "Technicians"); absent: none. ``enrol``: from a kiosk provisioned offline, not
#: enrolled yet (``cert`` empty), its approval and request (SPEC.md "Offline approvals").
#: ``sum2``: the checksum of the scope the kiosk holds (``scope.scope_checksum``), sent
#: only with nothing of its own queued or in flight (SPEC.md "Scopes and garbage
#: collection"); ``sum``: the same by ``scope.scope_checksum_v1``, from kiosks before it.
#: ``fleet``: each generation of the fleet key the kiosk moved to, with its stamp at the
#: move (``fleet_chain``; absent: the first generation only).
HELLO = register(MessageSpec(80, "sync-hello", {
    1: ("cert", bytes), 2: ("vv", dict), 3: ("cursor", int), 4: ("seq", int),
    5: ("hash", bytes)}, {6: ("time", int), 7: ("label", int), 8: ("revs", int),
                          9: ("enrol", bytes), 10: ("sum", _hash32), 11: ("sum2", _hash32),
                          12: ("fleet", valid_moves)}))
#: ``tail``: to a kiosk behind the hub's checkpoint, the last writes of its node that came
#: after its head, ``[[record id, stamp], ...]``: a kiosk that never made them is a copy.
#: ``kiosk``: the kiosk's number (its short patient codes' first part), for a kiosk whose
#: certificate was issued before kiosks were numbered. ``revs``: the hub's signed
#: revocation list of technicians' certificates, when newer than the hello's. ``cert``:
#: the certificate of a kiosk the hello's approval enrolled. ``scope``: the kiosk's scope
#: (``scope.Scope.to_wire``); ``stable``: its stable point, signed by the hub
#: (``scope.sign_stable_point``); ``rebase``: pull a snapshot of the whole scope.
#: ``fleet``: to a kiosk at an older generation of the fleet key than the hub's, the keys
#: of the later generations, sealed to it (``fleet_chain.seal_chain``).
WELCOME = register(MessageSpec(81, "sync-welcome", {
    1: ("time", int), 2: ("vv", dict), 3: ("seq", int), 4: ("hash", bytes)},
    {5: ("tail", list), 6: ("kiosk", int), 7: ("revs", bytes), 8: ("cert", bytes),
     9: ("scope", list), 10: ("stable", bytes), 11: ("rebase", bool), 12: ("fleet", bytes)}))
#: ``prev`` only from a kiosk whose chain left the hub's, for its batches to be held.
#: ``fleet``: as the hello's, from a kiosk that moved to a later generation of the fleet
#: key (its writes' generations, ``fleet_chain.writer_generation``).
BATCH = register(MessageSpec(82, "sync-batch", {
    1: ("seq", int), 3: ("payload", bytes), 4: ("sig", bytes)}, {6: ("prev", bytes),
                                                                 7: ("fleet", valid_moves)}))
#: ``arrived``: the greatest arrival number (cursor) the hub gave the batch's committed
#: deltas; absent when it committed none.
ACK = register(MessageSpec(83, "sync-ack", {1: ("seq", int)}, {3: ("quarantined", list),
                                                              4: ("arrived", int)}))
REJECT = register(MessageSpec(84, "sync-reject", {1: ("seq", int), 2: ("reason", str)},
                              {3: ("detail", str)}))
#: ``snapshot``: every delta of the records asked (``_snapshot_ask``), not what came after
#: ``cursor`` alone; ``upto``: on the pages after the first, the head the first was cut at.
PULL = register(MessageSpec(85, "sync-pull", {1: ("cursor", int)}, {
    2: ("max_bytes", int), 3: ("snapshot", _snapshot_ask), 4: ("upto", int)}))
#: ``snapshot``: a page of a snapshot; ``sum2`` and ``sum``: on the last page of a
#: whole-scope snapshot, the checksums of the scope it carries (``scope.scope_checksum``,
#: and ``scope.scope_checksum_v1`` for kiosks before it); ``upto``: the head the snapshot
#: is cut at; ``lost``: on that page too, the hub's own node, whose writes the hub does not
#: hold are lost (it keeps all it wrote: one it lacks went with a disk a backup replaced).
CHANGES = register(MessageSpec(86, "sync-changes", {
    1: ("payload", bytes), 2: ("cursor", int), 3: ("more", bool)}, {
    4: ("snapshot", bool), 5: ("sum", _hash32), 6: ("upto", int), 7: ("stable", bytes),
    8: ("sum2", _hash32), 9: ("lost", _node)}))
#: The hub to a kiosk on a kept-open session: changes for it arrived (up to ``cursor``).
NOTIFY = register(MessageSpec(87, "sync-notify", {1: ("cursor", int)}))
#: The hub to a kiosk: something about the kiosk itself needs a technician
#: (``code``: ``suspected-clone``, with the kiosk's queue ``label`` and whether its
#: batches are ``held``; ``clone-cleared`` once a technician settled it).
ALERT = register(MessageSpec(88, "sync-alert", {1: ("code", str)}, {
    2: ("detail", str), 3: ("label", int), 4: ("held", bool)}))
STORED, DEFLATED = 0, 1  #: the first byte of a payload: how the array follows


class BatchError(RemoteProtocolError):
    code = "bad-batch"


def chain_hash(label: bytes, prev: bytes, seq: int, body: bytes) -> bytes:
    """A link of one of the kiosk's hash chains: ``SHA-256(label || prev || seq || body)``
    (its batches here, its audit entries in ``protocol.sync.audit``)."""
    return hashlib.sha256(label + prev + seq.to_bytes(8, "big") + body).digest()


def batch_hash(prev: bytes, seq: int, payload: bytes) -> bytes:
    return chain_hash(BATCH_LABEL, prev, seq, payload)


def head_bytes(device: str, seq: int, hash_: bytes, label: bytes = HEAD_LABEL) -> bytes:
    """What the kiosk signs for a chain's head; ``label`` tells its chains apart."""
    return label + device.encode() + b"\x00" + seq.to_bytes(8, "big") + hash_


def head_signed(public: bytes, sig: bytes, head: bytes) -> bool:
    """Whether ``sig`` is the Ed25519 signature by ``public`` over ``head``."""
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(sig, head)
    except (InvalidSignature, ValueError):
        return False
    return True


if TYPE_CHECKING or not MICROPYTHON:
    import zlib

    def _deflate(plain: bytes) -> bytes:
        squeezer = zlib.compressobj(6, zlib.DEFLATED, -15)
        return squeezer.compress(plain) + squeezer.flush()

    def _inflate(body: bytes) -> bytes:
        """Raw deflate, never more than ``MAX_BATCH_PLAIN`` bytes out."""
        try:
            d = zlib.decompressobj(-15)
            plain = d.decompress(body, MAX_BATCH_PLAIN)
            if d.unconsumed_tail or not d.eof or d.unused_data:
                raise BatchError("batch payload too large, truncated or trailed", "batch-size")
        except zlib.error:
            raise BatchError("batch payload is not deflate data", "batch-compress") from None
        return plain

else:  # MicroPython: its deflate module cannot compress, nor tell these errors apart
    from protocol.portable import deflate

    _deflate = deflate.compress

    def _inflate(body):
        try:
            return deflate.decompress(body, MAX_BATCH_PLAIN)
        except (deflate.Truncated, deflate.Trailing, deflate.TooLarge):
            raise BatchError("batch payload too large, truncated or trailed",
                             "batch-size") from None
        except deflate.DeflateError:
            raise BatchError("batch payload is not deflate data", "batch-compress") from None


def pack(deltas: list[bytes]) -> bytes:
    """Deltas as one payload: the CBOR array of byte strings, raw-deflated
    (RFC 1951) after a ``DEFLATED`` byte, or as it is after a ``STORED`` byte
    when deflate would not make it smaller (one small delta)."""
    plain = strict_cbor.dumps(deltas)
    packed = _deflate(plain)
    if len(packed) < len(plain):
        return bytes((DEFLATED,)) + packed
    return bytes((STORED,)) + plain


def unpack(payload: bytes) -> list[bytes]:
    """The deltas of a payload; ``BatchError`` if it is not one, or too large."""
    method, body = payload[:1], payload[1:]
    if method == bytes((STORED,)):
        if len(body) > MAX_BATCH_PLAIN:
            raise BatchError("batch payload too large", "batch-size")
        plain = body
    elif method == bytes((DEFLATED,)):
        plain = _inflate(body)
    else:
        raise BatchError("batch payload is neither stored nor deflated", "batch-compress")
    obj = strict_cbor.loads(plain, max_size=MAX_BATCH_PLAIN)
    if (not isinstance(obj, list) or len(obj) > MAX_BATCH_DELTAS
            or not all(type(x) is bytes for x in obj)):
        raise BatchError("batch payload is not an array of deltas", "batch-shape")
    return obj


@dataclass(frozen=True)
class Batch:
    __match_args__ = ("seq", "prev", "payload", "sig", "lane")
    seq: int
    prev: bytes
    payload: bytes
    sig: bytes
    lane: int = 0

    @property
    def hash(self) -> bytes:
        return batch_hash(self.prev, self.seq, self.payload)


def make_batch(key: Ed25519PrivateKey, device: str, seq: int, prev: bytes,
               deltas: list[bytes], lane: int = 0) -> Batch:
    payload = pack(deltas)
    sig = key.sign(head_bytes(device, seq, batch_hash(prev, seq, payload)))
    return Batch(seq, prev, payload, sig, lane)


def verify_batch(batch: Batch, device: str, public: bytes) -> None:
    """Check the signed chain head; ``BatchError`` (code ``forged``) if it fails.

    ``batch.prev`` is the verifier's own record of the previous hash, so a
    batch signed over another chain fails here too."""
    if not head_signed(public, batch.sig, head_bytes(device, batch.seq, batch.hash)):
        raise BatchError("the batch's chain head is not signed by this kiosk", "forged")
