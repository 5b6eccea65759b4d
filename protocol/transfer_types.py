"""The events, statistics and receiver limits of a transfer (see ``transfer.py``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ReceiverLimits:
    """What a receiver accepts from a peer (bounds its memory, too)."""

    max_size: int = 1 << 32
    max_chunks: int = 1 << 18
    max_chunk: int = 1 << 20
    max_retries: int = 3


@dataclass(frozen=True)
class OfferReceived:
    name: str
    size: int
    object_hash: bytes
    count: int


@dataclass(frozen=True)
class ChunkStored:
    index: int
    chunk_hash: bytes
    length: int


@dataclass(frozen=True)
class ChunkRejected:
    """A chunk's data did not match its hash; it has been asked for again."""

    index: int
    reason: str


@dataclass(frozen=True)
class TransferComplete:
    """The receiver verified the whole object (on the sender: confirmed by it)."""

    name: str
    size: int
    object_hash: bytes


@dataclass(frozen=True)
class TransferAborted:
    """The transfer is over without the object. ``remote``: the peer aborted it."""

    reason: str
    detail: str = ""
    remote: bool = False


Event = OfferReceived | ChunkStored | ChunkRejected | TransferComplete | TransferAborted


@dataclass
class TransferStats:
    chunks_total: int = 0
    chunks_reused: int = 0  # entries the receiver had already (the sender counts them
    #                          once done: the entries whose hash was never asked for)
    chunks_moved: int = 0  # chunks sent (sender) or stored (receiver)
    bytes_moved: int = 0  # chunk payload bytes sent or stored
    duplicates: int = 0  # data for chunks already stored, ignored
    rejected: int = 0  # chunks whose data failed their hash
    ignored: int = 0  # messages after the end of the transfer
