"""The two messages around a batch of transfers, and the run's summary.

On lane 1, before the first ``xfer-offer`` of a session, the sender says how
many files and bytes the batch holds (``haven-batch``); after the last file
is confirmed it says the batch is over (``haven-end``), and the receiver may
exit. File ``i`` of the batch is transfer ``i``. Types 48 and 49 sit in the
transfer range of SPEC.md (40-49).

``Summary`` is what ``--json`` prints, for either side.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from protocol.messages import MessageSpec, register

BATCH = register(MessageSpec(48, "haven-batch", {1: ("files", int), 2: ("bytes", int)}))
END = register(MessageSpec(49, "haven-end", {1: ("files", int)}))

BULK_LANE = 1  #: offers, manifests, data, batch and end
CONTROL_LANE = 0  #: needs, done, aborts: small, and they overtake the bulk


@dataclass
class Summary:
    role: str
    files: list[dict[str, Any]] = field(default_factory=list)
    file_bytes: int = 0
    chunks: int = 0
    chunks_moved: int = 0  #: chunks sent (sender) or stored (receiver)
    chunk_bytes_moved: int = 0
    chunks_reused: int = 0  #: receiver: chunks it had already
    wire_bytes_sent: int = 0
    wire_bytes_received: int = 0
    retransmitted_bytes: int = 0
    frames_lost: int = 0
    seconds: float = 0.0
    resets: int = 0  #: sessions replaced after a silence
    peer_key: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
