"""``record``: one technician action as the next signed link of the kiosk's audit chain."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from device.store import Store
from device.store.store import AUDIT_HEAD
from protocol.crdt.schema import AUDIT
from protocol.sync import audit

#: ``meta`` key of the chain's head: CBOR ``[node, seq, hash]``. A head of another node
#: (the kiosk became a new one, SPEC.md "Clones") is not this identity's: its chain
#: starts again at 1.
HEAD_KEY = AUDIT_HEAD


def record(store: Store, who: str, what: str, result: str,
           detail: Mapping[str, Any] | None = None, now_ms: int | None = None) -> int:
    """Write one technician action (``who``: the certificate's serial, or
    ``audit.PRESENCE``; ``what`` and ``result``: short codes such as ``config.set``
    and ``ok`` or ``refused:expired``) as the kiosk's next audit entry, durable before
    it returns; returns its number. ``now_ms``: the time the entry names (the kiosk's
    trusted time, when the caller has a better one than the store's clock).
    ``AuditValueError`` for a bad value (nothing is written)."""
    now = store.clock() if now_ms is None else now_ms
    # Checked before any I/O; numbered by ``next_link`` in the write's transaction.
    entry = audit.make_entry(1, now, who, what, result, detail)
    _, key = _keys(store)

    def step(held: Any) -> tuple[bytes, str, dict[str, Any], bytes, int]:
        rid, signed, head = audit.next_link(key, store.node, None if held is None
                                            else bytes(held), entry)
        return rid, AUDIT.name, signed.values(), head, signed.entry.seq

    # The write's stamp is the store's clock's, whatever time the entry names.
    return int(store.put_chained(HEAD_KEY, step))


def _keys(store: Store) -> tuple[Any, Ed25519PrivateKey]:
    """The kiosk's keys: the Ed25519 one signs its batches and its audit. (Imported here:
    enrolment and provisioning record their own steps.)"""
    from device.enrol import ensure_keys

    return ensure_keys(store.data)


def entries(store: Store) -> list[dict[str, Any]]:
    """This kiosk's audit entries as it holds them, checked like the hub checks them
    (``protocol.sync.audit.verify``)."""
    return list(chain(store)["entries"])


def chain(store: Store) -> dict[str, Any]:
    """The whole check of this kiosk's chain: entries, gaps, last number, ok."""
    from protocol.crdt.delta import decode

    public = _keys(store)[1].public_key().public_bytes_raw()
    lo, hi = audit.id_range(store.node)
    deltas = [decode(d) for d in store.deltas_in(lo, hi)]
    return dict(audit.verify(store.node, public, deltas))
