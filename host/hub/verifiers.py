"""Verifier records: what a door kiosk checks a returning patient's year of birth by.

Theory of operation
-------------------
A door kiosk holds no patient record, so it cannot compare the year a
patient types with one. For each patient P who checked in at site S, where S
has a door kiosk, the hub writes a verifier record (type 9, named by
``ids.verifier_record_id`` of S and P): P, S and a keyed hash of P's year of
birth under a key of the site's (``ids.year_verifier``), never the year. It
is an ordinary put by the hub's node and clock, in the door kiosks' scope.

``write`` runs after each batch the hub commits (``HubPeer``) and when a
role changes. It looks only at what arrived since its last pass (a cursor in
the hub's meta, as the claims pass keeps its own): check-ins (their site and
patient) and patients (their sites, through their check-ins). A site that
gained a door kiosk since the last pass is done whole once (the sites of the
last pass are kept in meta). A verifier is written only when none exists or its value differs:
a pass with nothing new writes nothing.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable

from host.hub.storage import HubStore, Op
from protocol.crdt.clock import HLC
from protocol.crdt.delta import decode, encode
from protocol.crdt.ids import verifier_record_id, year_verifier
from protocol.crdt.record import RecordLog, RecordView
from protocol.crdt.schema import PATIENT, VERIFIER
from protocol.crdt.writes import build_put

#: ``meta`` key: where the last pass stopped and the door sites it knew, as JSON.
PASS = "verifiers_pass"
BIRTH_DATE = PATIENT.field("birthDate").number
_V = {f.name: f.number for f in VERIFIER.fields}


def view_of(store: HubStore, rid: bytes) -> RecordView | None:
    """The hub's merged view of one record, or None."""
    log = RecordLog(rid)
    for op in store.record_ops(rid):
        log.add(decode(op.data))
    return log.view() if log.ops else None


def write(store: HubStore, fleet_key: bytes, node: int, now_ms: int,
          hlc_of: Callable[[], HLC]) -> int:
    """One pass: the verifiers that are missing or stale, written; returns how many."""
    with store.own_writes():
        sites = store.door_sites()
        if not sites:
            return 0  # a site that gains a door kiosk is done whole at the next pass
        last = json.loads(store.get_meta(PASS) or '{"cursor": 0, "sites": []}')
        cursor, done = int(last["cursor"]), set(last["sites"])
        top = store.head()
        if cursor >= top and sites <= done:
            return 0
        pairs = {(site, pid) for site in sites - done for pid in store.site_patients(site)}
        if cursor < top:
            pairs |= {(site, pid) for site, pid in store.visits_touched(cursor, top)
                      if site in sites}
        hlc: HLC | None = None
        written: list[Op] = []
        for site, pid in sorted(pairs):
            patient = view_of(store, pid)
            born = patient.fields.get(BIRTH_DATE) if patient and not patient.deleted else None
            if not isinstance(born, str) or not born[:4].isdigit():
                continue
            values = {"subject": str(uuid.UUID(bytes=pid)), "site": site,
                      "birthYear": year_verifier(fleet_key, site, pid, born[:4])}
            rid = verifier_record_id(fleet_key, site, pid)
            held = view_of(store, rid)
            if held is not None and not held.deleted and all(
                    held.fields.get(_V[k]) == VERIFIER.field(k).to_wire(v)
                    for k, v in values.items()):
                continue
            hlc = hlc or hlc_of()
            delta = build_put(held, rid, VERIFIER, node, hlc.now(now_ms), values)
            written.append(Op(rid, delta.stamp, delta.node, encode(delta)))
        store.add_local(*written)
        if hlc is not None:
            store.set_meta("hlc", hlc.last)
        # a site that lost its door kiosks and gains one again is done whole again
        store.set_meta(PASS, json.dumps({"cursor": top, "sites": sorted(sites)}))
        return len(written)
