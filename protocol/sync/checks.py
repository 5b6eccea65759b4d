"""The check of a delta that came from elsewhere (SPEC.md, "Sync": "Hub checks").

Theory of operation
-------------------
A replica takes in deltas written elsewhere: the hub from a kiosk's batch,
a kiosk from the hub's ``sync-changes``. Both ask the same questions of
each delta, in this order, and quarantine one that fails (the rest go on):

1. strict decoding (``protocol.crdt.delta.decode``, its codes);
2. the writer's node, when the receiver knows who must have written it:
   the hub takes from a kiosk that kiosk's own writes only
   (``foreign-node``); the kiosk takes anybody's from the hub;
3. a stamp no more than ``max_ahead_ms`` ahead of the receiver's clock
   (``clock-ahead``): a receiver never rewrites a stamp, so one from a
   runaway clock would win every later merge;
4. values that fit the fields this schema knows (``check_known_fields``).

``check_remote_deltas`` runs the checks over a batch, decoded together
(``decode_many``, with the same answers as one by one); ``check_remote_delta``
is the same for one delta. The time comes in as an argument.
"""

from __future__ import annotations

from collections.abc import Sequence

from protocol.crdt.clock import DEFAULT_MAX_AHEAD_MS, LOGICAL_BITS, ClockAheadError
from protocol.crdt.delta import Delta, decode_many
from protocol.crdt.replica import check_known_fields
from protocol.errors import RemoteProtocolError

Checked = Delta | RemoteProtocolError


def check_remote_deltas(items: Sequence[bytes], now: int, *, node: int | None = None,
                        max_ahead_ms: int = DEFAULT_MAX_AHEAD_MS) -> list[Checked]:
    """Each item's delta, or the ``RemoteProtocolError`` that refuses it.

    ``now``: the receiver's clock (ms since 1970); ``node``: the only node the
    sender may write as (None: any)."""
    limit = (now + max_ahead_ms + 1) << LOGICAL_BITS  # the first stamp too far ahead
    out: list[Checked] = []
    for got in decode_many(items):
        if not isinstance(got, RemoteProtocolError):
            try:
                _check(got, limit, node)
            except RemoteProtocolError as exc:
                got = exc
        out.append(got)
    return out


def check_remote_delta(data: bytes, now: int, *, node: int | None = None,
                       max_ahead_ms: int = DEFAULT_MAX_AHEAD_MS) -> Delta:
    """One delta's ``check_remote_deltas``: the delta, or its error raised."""
    got, = check_remote_deltas([data], now, node=node, max_ahead_ms=max_ahead_ms)
    if isinstance(got, RemoteProtocolError):
        raise got
    return got


def _check(delta: Delta, limit: int, node: int | None) -> None:
    if node is not None and delta.node != node:
        raise RemoteProtocolError("a kiosk sends its own writes only", "foreign-node")
    if delta.stamp >= limit:
        raise ClockAheadError("stamp too far ahead of the receiver's clock")
    check_known_fields(delta)


def span_text(ms: int) -> str:
    """A duration for people (how far a stamp is ahead): seconds, minutes, hours, days."""
    for unit, size in (("days", 86_400_000), ("hours", 3_600_000), ("minutes", 60_000)):
        if ms >= 2 * size:
            return f"{ms / size:.1f} {unit}"
    return f"{ms / 1000:.0f} s"
