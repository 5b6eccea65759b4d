"""The kiosk's audit of technician actions (SPEC.md "Audit").

Every module that performs a technician action records it with one call::

    from device import audit
    audit.record(store, who=serial_or_presence, what="config.set", result="ok",
                 detail={"key": "console"})

``record`` signs the entry with the kiosk's Ed25519 key (``device.enrol``,
the key that signs its batches), chains it to the entry before, and writes
it as one put of an ``audit`` record in one transaction with the chain's
head (``meta.audit_head``): the outbox takes it to the hub with the next
sync round. It returns the entry's number. A detail is a small flat map of
codes and short values, never a patient's (``protocol.sync.audit``).
"""

from device.audit.chain import entries, record
from protocol.sync.audit import PRESENCE, AuditValueError

__all__ = ["PRESENCE", "AuditValueError", "entries", "record"]
