"""``haven-kiosk relay export --to DIR``: a sync round's first half, onto a stick.

Theory of operation
-------------------
The kiosk's role (``KioskSync``, through ``Round``) says hello; then, as no ack
can come before the hub reads the stick, every batch the hub has not
acknowledged goes at once: the saved ones as they were signed, then the
outbox's next writes signed as new batches and saved in ``sync.db`` before
they are written (as live sync saves a batch before it is first sent). The
hub acknowledges each once, whichever way it arrives: a batch sent by stick
and again live, or on two sticks, is applied once.

Batches are cut into pieces of at most ``PIECE_BYTES``; each piece is a bundle
of its own (the hello, its batches; the last one the pull too), so the hub
applies what arrived and the rest goes on the next trip.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from device.enrol import Identity
from device.relay.ledger import mark, take_up
from device.store import Store
from device.sync.engine import Round
from device.sync.state import SyncState
from protocol.driver import relay_stick
from protocol.driver.wall_clock import wall_ms
from protocol.sync import batches as sync
from protocol.sync.relay import PIECE_BYTES, UP, Bundle, RelayError, message_bytes, seal_bundle
from protocol.sync.round_common import encode


@dataclass
class Exported:
    files: list[Path] = field(default_factory=list)
    batches: int = 0
    deltas: int = 0
    bytes: int = 0  #: on the stick, padding included
    padding: int = 0


def export(store: Store, state: SyncState, ident: Identity, to: Path, *,
           now_ms: int | None = None, piece_bytes: int = PIECE_BYTES) -> Exported:
    """Write this kiosk's bundles to ``to``; ``StickError`` (nothing lost: the batches
    stay unacknowledged) or ``RelayError``."""
    relay_stick.writable(to)
    rnd = Round(store, state, ident)
    if rnd.sync.forked:
        raise RelayError("the hub holds this kiosk's batches as a suspected clone's: call "
                         "a technician; nothing was written", "held")
    now = wall_ms() if now_ms is None else now_ms
    hello = rnd.sync.hello(now)[0][1]
    ledger = rnd.sync.storage
    pull = encode("sync-pull", cursor=ledger.cursor(),
                  snapshot=True if ledger.rebase_owed() else None)
    stale = ledger.stale_records()[:sync.MAX_SNAPSHOT_RECORDS]  # asked for again
    asks = [pull, *([encode("sync-pull", cursor=ledger.cursor(), snapshot=stale)]
                    if stale else [])]
    out = Exported()
    pieces: list[list[bytes]] = [[]]
    for batch in _batches(rnd):
        msg = encode("sync-batch", seq=batch.seq, payload=batch.payload, sig=batch.sig,
                     fleet=rnd.sync._moves())
        if pieces[-1] and message_bytes([hello, *asks, *pieces[-1], msg]) > piece_bytes:
            pieces.append([])
        pieces[-1].append(msg)
        out.batches += 1
        out.deltas += len(sync.unpack(batch.payload))
    first = take_up(state, len(pieces))
    mark(state, first + len(pieces) - 1)
    for i, piece in enumerate(pieces):
        last = i == len(pieces) - 1
        bundle = Bundle(UP, ident.cert.device_id, ident.cert.hub_x25519, first + i, now,
                        [hello, *(asks if last else []), *piece])
        data, pad = seal_bundle(bundle, ident.ed_key, ident.cert.hub_x25519)
        out.files.append(relay_stick.write(to, data))
        out.bytes += len(data)
        out.padding += pad
    return out


def _batches(rnd: Round) -> list[sync.Batch]:
    """Every batch the hub has not acknowledged: those saved, then new ones of the
    outbox's writes, each saved before it goes."""
    ledger = rnd.sync.storage
    saved = ledger.unacked_batches()
    out = [b for b, _ in saved]
    skip = {e for _, entries in saved for e in entries}
    while writes := ledger.next_writes_besides(skip):
        seq, prev = ledger.head()
        batch = sync.make_batch(rnd.ident.ed_key, rnd.device, seq + 1, prev,
                                [data for _, _, data in writes],
                                min(lane for _, lane, _ in writes))
        entries = [entry for entry, _, _ in writes]
        ledger.save_batch(batch, entries)
        skip.update(entries)
        out.append(batch)
    return out

