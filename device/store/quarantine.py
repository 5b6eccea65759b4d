"""The kiosk's quarantine: list, release or drop the deltas its inbox refused.

A delta from the hub that fails a check (``protocol.sync.checks``: a stamp
too far ahead of this kiosk's clock, a value that misfits its field) is kept
sealed in ``quarantine`` with its code and reason (``inbox``). ``release``
merges one as if it had just arrived, after the same checks at the store's
clock now: a stamp still too far ahead is refused, saying by how much.
``drop`` deletes one. Each release, refusal or drop is an entry in the
kiosk's audit (``device.audit``), signed and synced to the hub. Ids are the
rows' numbers, as ``list`` and ``haven-kiosk status`` show them.
"""

from __future__ import annotations

from typing import Any

from device import audit
from device.store.exc import BadRequest
from device.store.store import Store
from protocol import strict_cbor
from protocol.crdt.clock import DEFAULT_MAX_AHEAD_MS, wall_of
from protocol.crdt.delta import decode
from protocol.errors import RemoteProtocolError
from protocol.sync import audit as sync_audit
from protocol.sync.checks import check_remote_delta, span_text

LABEL = b"quarantine"  #: the seal's label (``inbox``)


def parse_id(text: str) -> int:
    """A quarantine id as ``list`` shows it; ``BadRequest`` otherwise."""
    if not text.isascii() or not text.isdigit() or len(text) > 18:
        raise BadRequest(f"bad quarantine id {text!r}: a number, as haven-kiosk quarantine "
                         "list shows", "bad-id")
    return int(text)


def listing(store: Store) -> list[dict[str, Any]]:
    """Every quarantined delta: id, when it came, code, reason and whose write it is."""
    out = []
    for qid, at, code, sealed in store.reader.execute(
            "SELECT id, received_at, code, sealed FROM quarantine ORDER BY id").fetchall():
        reason, data = _open(store, sealed)
        item: dict[str, Any] = {"id": qid, "received_at": at, "code": code, "reason": reason}
        try:
            d = decode(data)
            item.update(record=d.record_id.hex(), node=f"{d.node:08x}", stamp=d.stamp,
                        stamp_ms=wall_of(d.stamp))
        except RemoteProtocolError:
            pass  # not a delta at all: its code and reason say what it was
        out.append(item)
    return out


def release(store: Store, text: str, who: str, now_ms: int | None = None) -> str:
    """Merge quarantined delta ``text`` if it passes the checks now; what was done.
    Refused (``BadRequest``, audited) while its stamp is still too far ahead."""
    _check_who(who)
    qid, code, data = _held(store, text)
    now = store.clock() if now_ms is None else now_ms
    try:
        check_remote_delta(data, now)
    except RemoteProtocolError as exc:
        audit.record(store, who, "quarantine.release", f"refused:{exc.code}",
                     {"id": qid, "check": code})
        if exc.code == "clock-ahead":
            ahead = wall_of(decode(data).stamp) - now
            raise BadRequest(f"quarantined delta {qid} is still {span_text(ahead)} ahead of this "
                             f"kiosk's clock (at most {span_text(DEFAULT_MAX_AHEAD_MS)} is "
                             "accepted): release it later, or drop it", exc.code) from None
        raise BadRequest(f"quarantined delta {qid} is still refused: {exc} ({exc.code})",
                         exc.code) from None
    report = store.merge([data], now)
    # Merged, audited, then gone from quarantine: a crash between them leaves it listed,
    # and a second release merges it again harmlessly; nothing is done unaudited.
    audit.record(store, who, "quarantine.release", "ok", {"id": qid, "check": code})
    _delete(store, qid)
    return f"quarantined delta {qid} ({code}) released: " + (
        "merged" if report.applied else "already held")


def drop(store: Store, text: str, who: str) -> str:
    """Delete quarantined delta ``text``; what was done (audited)."""
    _check_who(who)
    qid, code, _ = _held(store, text)
    audit.record(store, who, "quarantine.drop", "ok", {"id": qid, "check": code})
    _delete(store, qid)
    return f"quarantined delta {qid} ({code}) dropped"


def _check_who(who: str) -> None:
    """Refuse an operator the audit would refuse, before anything is done."""
    try:
        sync_audit.make_entry(1, 0, who, "quarantine.drop", "ok")
    except sync_audit.AuditValueError as exc:
        raise BadRequest(str(exc), "bad-who") from None


def _delete(store: Store, qid: int) -> None:
    store._run(lambda db: db.execute("DELETE FROM quarantine WHERE id = ?", [qid]))


def _held(store: Store, text: str) -> tuple[int, str, bytes]:
    qid = parse_id(text)
    row = store.reader.execute("SELECT code, sealed FROM quarantine WHERE id = ?",
                               [qid]).fetchone()
    if row is None:
        raise BadRequest(f"no quarantined delta {qid} (haven-kiosk quarantine list shows "
                         "them)", "no-such-id")
    return qid, str(row[0]), _open(store, row[1])[1]


def _open(store: Store, sealed: bytes) -> tuple[str, bytes]:
    reason, data = strict_cbor.loads(store.cipher.open_blob(LABEL, bytes(sealed)))
    return str(reason), bytes(data)

