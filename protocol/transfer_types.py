"""The events, statistics and receiver limits of a transfer (see ``transfer.py``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from protocol import MICROPYTHON


@dataclass(frozen=True)
class ReceiverLimits:
    """What a receiver accepts from a peer (bounds its memory, too)."""

    __match_args__ = ("max_size", "max_chunks", "max_chunk", "max_retries")
    max_size: int = 1 << 32
    max_chunks: int = 1 << 18
    max_chunk: int = 1 << 20
    max_retries: int = 3


@dataclass(frozen=True)
class OfferReceived:
    __match_args__ = ("name", "size", "object_hash", "count")
    name: str
    size: int
    object_hash: bytes
    count: int


@dataclass(frozen=True)
class ChunkStored:
    __match_args__ = ("index", "chunk_hash", "length")
    index: int
    chunk_hash: bytes
    length: int


@dataclass(frozen=True)
class ChunkRejected:
    """A chunk's data did not match its hash; it has been asked for again."""

    __match_args__ = ("index", "reason")
    index: int
    reason: str


@dataclass(frozen=True)
class TransferComplete:
    """The receiver verified the whole object (on the sender: confirmed by it)."""

    __match_args__ = ("name", "size", "object_hash")
    name: str
    size: int
    object_hash: bytes


@dataclass(frozen=True)
class TransferAborted:
    """The transfer is over without the object. ``remote``: the peer aborted it."""

    __match_args__ = ("reason", "detail", "remote")
    reason: str
    detail: str = ""
    remote: bool = False


if TYPE_CHECKING or not MICROPYTHON:  # noqa: SIM108 (mypy needs the alias as a plain assignment)
    Event = OfferReceived | ChunkStored | ChunkRejected | TransferComplete | TransferAborted
else:  # MicroPython has no runtime union of types; only annotations name Event there
    Event = object


@dataclass
class TransferStats:
    __match_args__ = ("chunks_total", "chunks_reused", "chunks_moved", "bytes_moved",
                      "duplicates", "rejected", "ignored")
    chunks_total: int = 0
    chunks_reused: int = 0  # entries the receiver had already (the sender counts them
    #                          once done: the entries whose hash was never asked for)
    chunks_moved: int = 0  # chunks sent (sender) or stored (receiver)
    bytes_moved: int = 0  # chunk payload bytes sent or stored
    duplicates: int = 0  # data for chunks already stored, ignored
    rejected: int = 0  # chunks whose data failed their hash
    ignored: int = 0  # messages after the end of the transfer
