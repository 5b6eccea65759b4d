"""``haven hub quarantine``: list, release or drop the deltas the hub quarantined.

A delta is quarantined when it fails a hub check (``protocol.sync.checks``):
a stamp too far ahead of the hub's clock, a value that misfits its field, a
write under another kiosk's node. ``release`` applies one as if it had just
arrived, after the same checks at the hub's time now: a stamp still too far
ahead is refused, saying by how much. A delta from a kiosk decommissioned
(quarantined as ``decommissioned``, or the kiosk decommissioned since) is
released only with ``force``: the kiosk is out of service, and its write may
bring back a record deleted meanwhile (a write that did not see a delete
makes the record a delete-update conflict again). A kiosk's verifier or erasure
(``hub-only``) is never released: only the hub writes those. ``drop`` deletes one. Each is one
transaction with its entry in the hub's log (``quarantine-released``,
``quarantine-dropped``). Ids are the quarantine rows' numbers, never reused.
"""

from __future__ import annotations

from typing import Any

from host.errors import UsageError
from host.hub.storage import HubStore
from protocol.crdt.clock import DEFAULT_MAX_AHEAD_MS, wall_of
from protocol.crdt.delta import decode
from protocol.driver.wall_clock import timed, wall_ms
from protocol.errors import RemoteProtocolError
from protocol.sync.checks import check_remote_delta, span_text
from protocol.sync.round_common import DECOMMISSIONED

#: The code of a kiosk's write of a record only the hub writes (``protocol.sync.hub_round``).
HUB_ONLY = "hub-only"


def parse_id(text: str) -> int:
    """A quarantine id as ``list`` shows it; ``UsageError`` otherwise."""
    if not text.isdigit() or not text.isascii() or len(text) > 18:
        raise UsageError(f"bad quarantine id {text!r}: a number, as haven hub quarantine "
                         "list shows")
    return int(text)


def listing(store: HubStore) -> list[dict[str, Any]]:
    """Every quarantined delta: id, when (``at``: ISO 8601 UTC, ``at_ms``), kiosk, batch,
    code, reason, and its write."""
    out = []
    for q in store.quarantined():
        held = store.quarantined_delta(q["id"])
        write: dict[str, Any] = {}
        if held is not None:
            try:
                d = decode(held[2])
                write = {"record": d.record_id.hex(), "node": f"{d.node:08x}",
                         "stamp": d.stamp, "stamp_ms": wall_of(d.stamp)}
            except RemoteProtocolError:
                pass  # not a delta at all: only its code and reason say what it was
        out.append(timed({**q, **write}, "at"))
    return out


def _held(store: HubStore, text: str) -> tuple[int, str | None, str, bytes]:
    qid = parse_id(text)
    held = store.quarantined_delta(qid)
    if held is None:
        raise UsageError(f"no quarantined delta {qid} (haven hub quarantine list shows them)")
    return (qid, *held)


def release(store: HubStore, text: str, *, max_ahead_ms: int = DEFAULT_MAX_AHEAD_MS,
            now_ms: int | None = None, force: bool = False) -> str:
    """Apply quarantined delta ``text`` if it passes the hub's checks now; what was done.
    A decommissioned kiosk's needs ``force``."""
    now = wall_ms() if now_ms is None else now_ms
    qid, device_id, code, data = _held(store, text)
    dev = store.device(device_id) if device_id else None
    retired = code == DECOMMISSIONED or (dev is not None and dev.state == DECOMMISSIONED)
    if code == HUB_ONLY:  # a verifier or an erasure: the hub's own to write, never a kiosk's
        raise UsageError(f"quarantined delta {qid} is a kiosk's write of a record only the "
                         "hub writes (a verifier or an erasure): it is never applied; drop it")
    if retired and not force:
        raise UsageError(f"quarantined delta {qid} comes from kiosk {device_id}, which is "
                         f"decommissioned: {_risk(store, data)}; drop it, or release it "
                         "with --force")
    try:
        delta = check_remote_delta(data, now, node=dev.node if dev else None,
                                   max_ahead_ms=max_ahead_ms)
    except RemoteProtocolError as exc:
        if exc.code == "clock-ahead":
            ahead = wall_of(decode(data).stamp) - now
            raise UsageError(f"quarantined delta {qid} is still {span_text(ahead)} ahead of the "
                             f"hub's clock (at most {span_text(max_ahead_ms)} is accepted): "
                             "release it later, or drop it") from None
        raise UsageError(f"quarantined delta {qid} is still refused: {exc} ({exc.code})"
                         ) from None
    if store.erasure_records([delta.record_id]):
        raise UsageError(f"quarantined delta {qid} writes an erasure record, which only the "
                         "hub writes: it is never applied; drop it")
    detail = (f"quarantined delta {qid} ({code}) released: "
              f"{delta.node:08x}-{delta.stamp:016x}"
              + (f" (kiosk {device_id} decommissioned: forced)" if retired else ""))
    if not store.release_quarantined(qid, delta, data, detail, now):
        raise UsageError(f"no quarantined delta {qid} (released or dropped meanwhile)")
    return detail


def _risk(store: HubStore, data: bytes) -> str:
    """What taking in a decommissioned kiosk's write would do, in words."""
    try:
        delta = decode(data)
    except RemoteProtocolError:
        return "it does not even decode"
    seen = set(delta.ctx)
    if not delta.is_delete and any(
            decode(op.data).is_delete and (op.stamp, op.node) not in seen
            for op in store.record_ops(delta.record_id) if op.node != delta.node):
        return (f"record {delta.record_id.hex()} was deleted at the hub and this write did "
                "not see it: releasing it brings the record back (a delete-update conflict)")
    return ("the kiosk is out of service, and its write may be stale or bring back what "
            "was deleted since")


def drop(store: HubStore, text: str, now_ms: int | None = None) -> str:
    """Delete quarantined delta ``text``; what was done."""
    qid, _, code, _ = _held(store, text)
    detail = f"quarantined delta {qid} ({code}) dropped"
    if not store.drop_quarantined(qid, detail, wall_ms() if now_ms is None else now_ms):
        raise UsageError(f"no quarantined delta {qid} (released or dropped meanwhile)")
    return detail

