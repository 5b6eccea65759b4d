"""Erasing a patient on the hub (``haven hub erase``), and settling what comes after.

Theory of operation
-------------------
Tombstone and purge, not per-patient keys (THREAT_MODEL.md says why). ``erase``
finds the patient (an id, or a passport or short code through the fleet key),
refuses one the hub holds nothing of, and writes as the hub's node, by its
clock, in one transaction: the put of the patient's erasure record
(``protocol.crdt.erasure``: who asked, when, why; never what is erased) and a
delete of each of the patient's live records (``husking.records_of``) whose
context is every head held, so it overtakes every write the hub holds. Kiosks
pull them like any other write (an erasure is in every scope) and purge by them.
After a rotation of the fleet key the patient's ids of earlier generations
(``former_ids``: deleted by the migration, their writes still holding what
they carried) are erased with it, an erasure record each; an id of an
earlier generation given (from a dump or a receipt older than the rotation)
is first carried to the patient's id now (``current_id``). During a migration
the id the patient is moving to is erased too (``moving_ids``).

``_purge`` then takes the patient's values out of everything the hub keeps,
in one transaction:

* every delta of those records in ``ops`` becomes its husk (dot, kind,
  context; no value), sealed again: version vectors, scope sums and the
  merge are what they were, so replicas that purge at different times
  converge; conflicts and review are made from these deltas, so they hold no
  value either;
* a quarantined delta of them becomes its husk; one that does not decode but
  holds one of the records' ids is dropped;
* a held batch's writes of them become husks (one that does not decode but
  holds an id, dropped): the batch's signature no longer verifies; it stays
  for review of the rest, and the log says so;

and then the document content only erased documents used (manifests and
chunks) is overwritten and unlinked, and the write-ahead log is checkpointed
and truncated (tried again for a few seconds while a reader holds it): the
hub's connection runs with ``secure_delete``, so a page freed or rewritten
keeps no old bytes.

What stays is what carries no value: record ids, dots (which node wrote
when), the erasure record, and each record's facts (``record_facts``: type,
patient, a check-in's site and day), by which late writes are matched and
the deletes reach the kiosks whose scopes held the records.

A kiosk that had not heard of the erasure may still send writes of the
patient's records: they are husked as their batch commits
(``husking.husked``). ``after_batch``, run after each batch as the claims
and verifier passes are, re-deletes a record such a write made live again,
husks what came another way, and purges the quarantine rows and held batches
that arrived since its last pass (its place in ``meta``). A hub that erased
nobody pays one look-up.

An erased patient who comes back is registered under ``successor_id`` of the
erased id (kiosks do it; the hub too when it completes a sealed identity:
``registered_id``), so a passport or code names them there (``live_id``).

The hub's log keeps ``erasure`` rows: who asked, when, the erasure record's
id and how many records were deleted in all; never the patient's values or
kinds of record. ``Receipt.line`` is the command to run again after a
backup older than the erasure is restored.
"""

from __future__ import annotations

import datetime
import json
import shlex
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from host.errors import UsageError
from host.hub import at_rest, current, fleet_rotation, husking
from host.hub.database import Db, meta_get
from host.hub.document_inbox import DOCUMENTS_DIR
from host.hub.sealed_documents import SealedChunks
from host.hub.storage import HubStore, Op
from host.hub.verifiers import view_of
from protocol.crdt.clock import HLC
from protocol.crdt.delta import DELETE, Delta, decode, encode
from protocol.crdt.erasure import erasure_record_id, husk, ids_across, successor_id
from protocol.crdt.record import RecordView
from protocol.crdt.schema import DOCUMENT, ERASURE, PATIENT, TYPES
from protocol.crdt.writes import build_put
from protocol.driver.wall_clock import utc_text
from protocol.errors import ProtocolError, RemoteProtocolError
from protocol.sync import batches

if TYPE_CHECKING:
    from host.hub.hub import Hub

#: The hub log's code for an erasure.
LOG_CODE = "erasure"
#: ``meta`` key: where the last after-batch pass stopped (arrival, quarantine id, held
#: batch rowid), as JSON.
PASS = "erasure_pass"
MAX_REQUESTER = 100  #: characters of ``--by``
MAX_REASON = 64  #: characters of ``--reason``
CHECKPOINT_TRIES = 50  #: tries to empty the write-ahead log, 0.1 s apart
MAX_RETURNS = 100  #: erasures of one passport's successive ids followed at most


@dataclass(frozen=True)
class Receipt:
    """What ``erase`` did, for the operator to keep."""

    patient: str
    record: str  #: the erasure record's id
    data: str  #: the hub's data directory
    #: The patient's id of the earliest generation of the fleet key the hub knows of: a
    #: hub restored from a backup older than a rotation holds that one, and a later hub
    #: carries it forward (``current_id``).
    earliest: str
    at_ms: int  #: when it was recorded (the first time)
    by: str
    reason: str
    already: bool  #: the patient was erased before: nothing new but what came since
    deleted: int  #: records deleted now
    emptied: bool = True  #: the write-ahead log was emptied after

    @property
    def line(self) -> str:
        """The receipt: the command that erases the patient again (after a restore of a
        backup older than this), with when and which erasure record."""
        return (f"haven hub erase {self.earliest} --by {shlex.quote(self.by)} --reason "
                f"{shlex.quote(self.reason)} --data {shlex.quote(self.data)}  # erased "
                f"{utc_text(self.at_ms)}, erasure record {self.record}")


def patient_of(fleet: fleet_rotation.FleetKeys, patient: str | None, passport: str | None,
               code: str | None) -> bytes:
    """The patient id named by exactly one of an id, a passport number or a short
    code (the last two: the fleet key's first generation's id, which ``live_id`` takes);
    ``UsageError`` for anything else."""
    if sum(x is not None for x in (patient, passport, code)) != 1:
        raise UsageError("name the patient once: PATIENT_ID, --passport N or --code C")
    if patient is not None:
        try:
            return uuid.UUID(patient.strip()).bytes
        except ValueError:
            raise UsageError(f"not a patient id (a UUID, as haven hub dump shows them): "
                             f"{patient!r}") from None
    try:
        if passport is not None:
            return fleet.first_id("passport", passport)
        assert code is not None
        return fleet.first_id("code", code)
    except ProtocolError as exc:
        raise UsageError(f"{'--passport' if passport is not None else '--code'}: {exc}"
                         ) from None


def live_id(store: HubStore, fleet: fleet_rotation.FleetKeys, first: bytes) -> bytes:
    """The id a patient named by passport or code is held under now, from their first
    generation's id: of the ids they were registered under in each generation
    (``registered_id``), erased ones too, the last the hub holds anything of (the
    newest generation's when none)."""
    seen: list[bytes] = []
    registered_id(store, fleet, first, seen)
    held = [p for p in seen if view_of(store, erasure_record_id(p)) is not None
            or _held_of(store, p)]
    return (held or seen)[-1]


def registered_id(store: HubStore, fleet: fleet_rotation.FleetKeys, first: bytes,
                  seen: list[bytes] | None = None) -> bytes:
    """The id a patient checking in is registered under, from their first generation's
    id: carried through the fleet key's rotations, and while an id is erased, followed
    to its ``successor_id`` (``protocol.crdt.erasure.ids_across``, as a kiosk does).
    ``seen`` gathers every id passed."""
    seen = [] if seen is None else seen

    def follow(pid: bytes) -> bytes:
        for _ in range(MAX_RETURNS):
            seen.append(pid)
            if view_of(store, erasure_record_id(pid)) is None:
                break
            pid = successor_id(pid)
        return pid

    return ids_across(first, fleet.rotations(), follow)[-1]


def former_ids(hub: Hub, pid: bytes) -> set[bytes]:
    """The ids patient ``pid`` had under earlier generations of the fleet key: the
    migration deleted them, but their writes hold the values they had. Found by
    carrying every id held forward (a keyed hash per id and generation; none before a
    rotation)."""
    fleet = hub.fleet
    fleet.refresh()
    out: set[bytes] = set()
    after = b""
    for _ in range(1_000_000):  # bounded: each page moves on
        page = hub.store.record_ids(after, 5000) if fleet.generation > 1 else []
        out.update(rid for rid in page if rid != pid and any(
            fleet.forward(rid, g) == pid for g in range(1, fleet.generation)))
        if len(page) < 5000:
            break
        after = page[-1]
    return out


def earliest_id(hub: Hub, pid: bytes, formers: set[bytes]) -> bytes:
    """Of ``pid`` and its ``formers`` (``former_ids``), the one of the earliest generation."""
    for generation in range(1, hub.fleet.generation):
        for former in sorted(formers):
            if hub.fleet.forward(former, generation) == pid:
                return former
    return pid


def current_id(hub: Hub, pid: bytes) -> bytes:
    """The id patient ``pid`` (of any generation of the fleet key: an id from a dump or
    a receipt older than a rotation) has in the generation in effect, if the hub holds
    records under it (the migration moved them there); else ``pid``."""
    fleet = hub.fleet
    fleet.refresh()
    for generation in range(1, fleet.generation):
        now_id = fleet.forward(pid, generation)
        if _held_of(hub.store, now_id) or view_of(hub.store, erasure_record_id(now_id)):
            return now_id
    return pid


def moving_ids(hub: Hub, pids: set[bytes]) -> set[bytes]:
    """While the migration to the fleet key's newest generation is under way, the ids
    ``pids`` take in it: a kiosk that took the new key before the migration reached the
    patient writes there. (A patient first written in the newest generation gets an id
    nobody holds: its erasure record names nobody.)"""
    state = fleet_rotation.state_of(hub.store)
    if state is None or state["done"]:
        return set()
    before = hub.fleet.generation - 1
    return {hub.fleet.forward(p, before) for p in pids}


def _held_of(store: HubStore, pid: bytes) -> set[bytes]:
    """The patient's records the hub holds writes of."""
    with store.writing() as (db, _):
        return {r for r in husking.records_of(db, [pid])
                if db.execute("SELECT 1 FROM ops WHERE rid = ?", [r]).fetchone()}


def _words(text: str, flag: str, limit: int) -> str:
    text = text.strip()
    if not 0 < len(text) <= limit or not text.isprintable():
        raise UsageError(f"{flag} is 1 to {limit} printable characters")
    return text


def erase(hub: Hub, pid: bytes, by: str, reason: str, now: int,
          hlc_of: Callable[[], HLC]) -> Receipt:
    """Erase patient ``pid`` (see above); erasing again writes nothing new but settles
    what arrived since. ``UsageError`` for a patient the hub holds nothing of, or an id
    of a record that is not a patient's own (a check-in's), with nothing written."""
    by, reason = _words(by, "--by", MAX_REQUESTER), _words(reason, "--reason", MAX_REASON)
    with hub.store.own_writes():
        pid = current_id(hub, pid)
        store, eid, name = hub.store, erasure_record_id(pid), str(uuid.UUID(bytes=pid))
        own = view_of(store, pid)
        if own is not None and own.type != PATIENT.number:
            kind = spec.name if (spec := TYPES.get(own.type)) else "record"
            raise UsageError(f"{name} is {'an' if kind[0] in 'aeiou' else 'a'} {kind}, not a "
                             "patient: give the patient's id (the subject haven hub dump shows on "
                             "it), --passport N or --code C")
        formers = former_ids(hub, pid)
        pids = {pid, *formers} | moving_ids(hub, {pid, *formers})
        rids = {r for p in pids for r in _held_of(store, p)} - {
            erasure_record_id(p) for p in pids}  # one a kiosk wrote there: _erasure_put
        held = _erasure_of(store, pid)
        if held is None and not rids:
            raise UsageError(f"the hub holds nothing of patient {name}: check the id (haven "
                             "hub dump lists the patients), the passport number or the code")
        hlc = hlc_of()
        puts = [_erasure_put(store, p, hub.node, hlc.now(now), {
            "subject": str(uuid.UUID(bytes=p)), "recorded": utc_text(now), "requester": by,
            "reason": reason}) for p in sorted(pids) if _erasure_of(store, p) is None]
        deletes = _deletes(store, rids, hub.node, hlc, now)
        store.add_local(*(Op(d.record_id, d.stamp, d.node, encode(d)) for d in puts + deletes))
        store.set_meta("hlc", hlc.last)
        _purge(hub, pids, rids, now)
        first = held or _erasure_of(store, pid)
        assert first is not None
        recorded, requester, why = (first.fields.get(ERASURE.field(f).number)
                                    for f in ("recorded", "requester", "reason"))
        receipt = Receipt(name, str(uuid.UUID(bytes=eid)), str(hub.data),
                          str(uuid.UUID(bytes=earliest_id(hub, pid, formers))),
                          _ms(recorded) if isinstance(recorded, str) else now,
                          requester if isinstance(requester, str) else by,
                          why if isinstance(why, str) else reason,
                          held is not None, len(deletes))
        store.log(None, LOG_CODE, f"erasure record {receipt.record} " + (
            f"again by {by!r}: {len(deletes)} records deleted since" if held is not None
            else f"by {by!r} ({reason}): {len(deletes)} records deleted"), now)
    return replace(receipt, emptied=_emptied(store))


def _erasure_of(store: HubStore, pid: bytes) -> RecordView | None:
    """The hub's erasure record of patient ``pid``, if it holds one."""
    view = view_of(store, erasure_record_id(pid))
    return view if view is not None and view.type == ERASURE.number else None


def _erasure_put(store: HubStore, pid: bytes, node: int, stamp: int,
                 values: dict[str, str]) -> Delta:
    """The put of patient ``pid``'s erasure record. A kiosk may have written that id
    first, under another type (before the erasure nothing refuses it): its writes are
    husked, their facts forgotten, and the put's context covers them, so the erasure is
    the record's one head."""
    eid = erasure_record_id(pid)
    put = build_put(None, eid, ERASURE, node, stamp, values)
    squatter = view_of(store, eid)
    if squatter is None:
        return put
    with store.writing() as (db, sealer):
        _husk_ops(db, sealer, {eid})
        db.execute("DELETE FROM record_facts WHERE rid = ?", [eid])
    return replace(put, ctx=tuple(sorted(d for d in squatter.heads if d.node != node)))


def _emptied(store: HubStore) -> bool:
    """The write-ahead log, which holds pages as they were, emptied (a reader may hold it
    a moment: tried again for a few seconds)."""
    for _ in range(CHECKPOINT_TRIES):
        if store.checkpoint():
            return True
        time.sleep(0.1)
    return False


def _ms(text: str) -> int:
    return int(datetime.datetime.fromisoformat(text).timestamp() * 1000)


def _deletes(store: HubStore, rids: set[bytes], node: int, hlc: HLC, now: int) -> list[Delta]:
    """A delete of each live record of ``rids``, its context every head held."""
    out = []
    for rid in sorted(rids):
        view = view_of(store, rid)
        if view is None or view.deleted or view.type == ERASURE.number:
            continue
        out.append(_delete(view, node, hlc.now(now)))
    return out


def _delete(view: RecordView, node: int, stamp: int) -> Delta:
    spec = TYPES.get(view.type)
    return Delta(view.record_id, view.type, node, stamp, DELETE,
                 ctx=tuple(sorted(d for d in view.heads if d.node != node)),
                 schema=spec.version if spec else 1)


def after_batch(hub: Hub, now: int, hlc_of: Callable[[], HLC]) -> int:
    """The pass after each batch (see above); returns how many records it deleted again."""
    store = hub.store
    with store.own_writes():
        with store.writing() as (db, _):
            patients = husking.erased(db)
            if not patients:
                return 0
            held = meta_get(db, PASS)
            place: dict[str, int] = json.loads(held) if held else {}
            top = int(db.execute("SELECT COALESCE(MAX(hseq), 0) FROM ops").fetchone()[0])
            touched = {bytes(r) for (r,) in db.execute(
                "SELECT DISTINCT o.rid FROM ops o LEFT JOIN record_facts f ON f.rid = o.rid"
                f" WHERE o.hseq > ? AND (o.rid IN ({husking.ERASED}) OR f.subject IN"
                f" ({husking.ERASED})) AND f.type IS DISTINCT FROM {ERASURE.number}",
                [place.get("ops", 0)])}
        last = _purge(hub, patients, touched, now, place)
        hlc = hlc_of()
        deletes = _deletes(store, touched, hub.node, hlc, now)
        if deletes:
            store.add_local(*(Op(d.record_id, d.stamp, d.node, encode(d)) for d in deletes))
            store.set_meta("hlc", hlc.last)
        store.set_meta(PASS, json.dumps({"ops": top, **last}))
    if touched:
        store.checkpoint()
    return len(deletes)


def _purge(hub: Hub, patients: set[bytes], rids: set[bytes], now: int,
           place: dict[str, int] | None = None) -> dict[str, int]:
    """The values of ``rids`` (records of ``patients``) out of the hub's rows and
    documents; quarantine rows and held batches after ``place`` only (None: all).
    Returns the last quarantine row and held batch looked at."""
    place = place or {}
    store = hub.store
    with store.writing() as (db, sealer):
        documents = {r for r in rids if db.execute(
            "SELECT 1 FROM record_facts WHERE rid = ? AND type = ?",
            [r, DOCUMENT.number]).fetchone()}
        _husk_ops(db, sealer, rids)
        needles = [*rids, *patients]
        last = {"quarantine": _purge_quarantine(db, sealer, patients, needles,
                                                place.get("quarantine", 0), now),
                "held": _purge_held(db, sealer, patients, needles, place.get("held", 0), now)}
    if documents:
        SealedChunks(hub.data / DOCUMENTS_DIR, store.sealer).drop(documents)
    return last


def _husk_ops(db: Db, sealer: at_rest.Sealer, rids: set[bytes]) -> None:
    for rid in sorted(rids):
        for hseq, stamp, node, blob in db.execute(
                "SELECT hseq, stamp, node, data FROM ops WHERE rid = ?", [rid]).fetchall():
            delta = decode(sealer.open_op(rid, stamp, node, bytes(blob)))
            bare = husk(delta)
            if bare is not delta:
                db.execute("UPDATE ops SET data = ? WHERE hseq = ?",
                           [sealer.seal_ops([(rid, stamp, node, encode(bare))])[0], hseq])
    current.refresh(db, sealer, sorted(rids))


def _husked(db: Db, patients: set[bytes], needles: list[bytes],
            data: bytes) -> bytes | None:
    """A delta as the hub keeps it once ``patients`` are erased: itself, its husk, or
    None (it does not decode and holds one of ``needles``, their records' ids)."""
    try:
        delta = decode(data)
    except RemoteProtocolError:
        return None if any(n in data for n in needles) else data
    return encode(husk(delta)) if husking.covered(db, patients, delta) else data


def _log(db: Db, now: int, device: str | None, code: str,
         detail: str) -> None:
    db.execute("INSERT INTO log (at, device_id, code, detail) VALUES (?, ?, ?, ?)",
               [now, device, code, detail])


def _purge_quarantine(db: Db, sealer: at_rest.Sealer, patients: set[bytes],
                      needles: list[bytes], after: int, now: int) -> int:
    for qid, device, blob in db.execute("SELECT id, device_id, data FROM quarantine"
                                        " WHERE id > ? ORDER BY id", [after]).fetchall():
        after, ad = qid, at_rest.quarantine_ad(qid)
        data = sealer.open(ad, bytes(blob))
        kept = _husked(db, patients, needles, data)
        if kept is None:
            db.execute("DELETE FROM quarantine WHERE id = ?", [qid])
            _log(db, now, device, "quarantine-dropped",
                 f"quarantined delta {qid}: unreadable, and an erased patient's")
        elif kept != data:
            db.execute("UPDATE quarantine SET data = ? WHERE id = ?", [sealer.seal(ad, kept), qid])
    return after


def _purge_held(db: Db, sealer: at_rest.Sealer, patients: set[bytes],
                needles: list[bytes], after: int, now: int) -> int:
    for rowid, device, seq, hash_, blob in db.execute(
            "SELECT rowid, device_id, seq, hash, payload FROM held_batches WHERE rowid > ?"
            " ORDER BY rowid", [after]).fetchall():
        after, ad = rowid, at_rest.held_ad(device, bytes(hash_))
        payload = sealer.open(ad, bytes(blob))
        try:
            items = batches.unpack(payload)
        except RemoteProtocolError:  # unreadable: emptied if it names their records
            if not any(n in payload for n in needles):
                continue
            kept: list[bytes] = []
        else:
            kept = [k for k in (_husked(db, patients, needles, d) for d in items)
                    if k is not None]
            if kept == items:
                continue
        db.execute("UPDATE held_batches SET payload = ? WHERE rowid = ?",
                   [sealer.seal(ad, batches.pack(kept)), rowid])
        _log(db, now, device, "held-husked", f"held batch {seq}: an erased patient's writes "
             "taken out; its signature no longer verifies")
    return after
