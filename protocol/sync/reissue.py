"""A write issued again by its author (SPEC.md "Sync": "Quarantine and clocks").

A kiosk whose clock ran ahead stamps its writes too far ahead of the hub's
clock, and the hub quarantines them (``clock-ahead``). Once the kiosk knows
the hub's time it issues each such write again, as a new write of its own
with a fresh stamp; it never changes a stamp another replica accepted. The
hub then drops the quarantined original: ``is_reissue`` says that a write it
accepted from the same node carries the same content (record, type, kind,
values, set changes, resolution) under another stamp. Pure: no I/O.
"""

from __future__ import annotations

from protocol.crdt.delta import Delta


def is_reissue(original: Delta, again: Delta) -> bool:
    """Whether ``again`` is ``original`` issued again by its author: the same node,
    record and content, another stamp (the causal context may differ)."""
    return (again.node == original.node and again.record_id == original.record_id
            and again.stamp != original.stamp and again.type == original.type
            and again.kind == original.kind and dict(again.set) == dict(original.set)
            and dict(again.add) == dict(original.add)
            and dict(again.remove) == dict(original.remove)
            and again.resolves == original.resolves and again.schema == original.schema
            and dict(again.extra) == dict(original.extra))
