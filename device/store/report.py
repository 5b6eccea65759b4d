"""What ``status`` shows: outbox per lane, conflicts, quarantine, last sync."""

from __future__ import annotations

import uuid
from typing import Any

import sqlite_utils

from device.store import outbox


def _meta(db: sqlite_utils.Database, key: str) -> Any:
    row = db.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
    return row[0] if row else None


def status_of(db: sqlite_utils.Database, node: int, now: int) -> dict[str, Any]:
    conflicts = [
        {"id": cid, "record_id": str(uuid.UUID(bytes=rid)), "class": cls,
         "severity": sev, "versions": versions.split()}
        for cid, rid, cls, sev, versions in db.execute(
            "SELECT id, rid, class, severity, versions FROM conflicts ORDER BY id")
    ]
    quarantine = [
        {"id": qid, "received_at": at, "code": code}
        for qid, at, code in db.execute(
            "SELECT id, received_at, code FROM quarantine ORDER BY id")
    ]
    return {
        "node": f"{node:08x}",
        "site": _meta(db, "site"),
        "letter": _meta(db, "letter"),
        "kiosk_number": _meta(db, "kiosk_number"),  #: its short patient codes' first part
        "records": db.execute("SELECT COUNT(*) FROM records").fetchone()[0],
        #: waiting for the hub's write set (``Store.replace_records``)
        "stale": db.execute("SELECT COUNT(*) FROM records WHERE stale = 1").fetchone()[0],
        "held": sum(1 for c in conflicts if c["severity"] == "hold"),
        "conflicts": conflicts,
        "outbox": outbox.summary(db, now),
        "quarantine": quarantine,
    }
