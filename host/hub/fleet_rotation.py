"""Fleet key rotation on the hub: a new generation of the fleet key, and every patient
id migrated to it (SPEC.md "Fleet key rotation").

Theory of operation
-------------------
The hub holds no passport number: a patient id is an HMAC of one under the
fleet key. So ids chain across generations of the key
(``protocol.crdt.ids.rotated_id``): the id of generation ``g`` is a keyed
hash, under ``k_g``, of the id of generation ``g - 1``, which the hub holds.

``FleetKeys`` holds the hub's chain: ``fleet.key`` (generation 1) and
``fleet.g.key`` for each later one, owner-only files in the data directory,
saved by ``haven hub keys backup``. ``rotate`` records the rotation in
``meta`` first (``PASS``: the new generation, the arrival number it starts
at, where the migration stands), then writes the new key: a power cut
between the two leaves a rotation whose key ``resume`` makes. The
generation in effect is the recorded one.

``migrate_slice`` is the migration, a slice of records at a time, in id
order, its place in ``PASS`` after each slice (``haven hub keys
rotate-fleet`` runs it to the end; a running ``haven hub serve`` goes on
with it in the background). Each patient ``P`` of an older generation,
live and not erased (``protocol.crdt.erasure.erasure_record_id``), becomes
``P'`` by ``migrate_patient``: a hub put on ``P'`` with each field of
``P`` whose write is newer than ``P'``'s (sets as adds), a put of
``subject = P'`` on each record naming ``P`` (a door verifier is deleted
instead: the verifier pass writes ``P'``'s under the new key), and a delete
of ``P``. Every write is an ordinary one by the hub's node and clock, so
kiosks converge on it; a slice cut short is done again, and a patient
already migrated is deleted, so it is passed over.

Which generation a record's id is of: one first written by a kiosk, of the
generation that kiosk was at when it wrote it; one first written by the hub,
of the one before the rotation if it came before it, else of the new one. A
kiosk says which generations it moved to, and when by its own clock, in its
hello and batches (``protocol.sync.fleet_chain``, kept here by
``note_moves``), so a write is placed by its node and stamp
alone, whatever route it took. ``after_batch`` looks at what arrived since
its last pass: a patient of an older generation is migrated at once, and a
record naming one in its subject is re-pointed, so a kiosk that was offline
during the rotation, or has not synced since, is remapped when its writes
arrive.
"""

from __future__ import annotations

import functools
import json
import secrets
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from host.errors import UsageError
from host.hub.storage import HubStore, Op
from host.hub.verifiers import view_of
from protocol.crdt import ids
from protocol.crdt.clock import HLC
from protocol.crdt.delta import Delta, decode, encode
from protocol.crdt.erasure import SUBJECT_TYPES, erasure_record_id
from protocol.crdt.record import RecordView
from protocol.crdt.schema import PATIENT, SUBJECT, TYPES, VERIFIER
from protocol.crdt.writes import build_delete, build_put
from protocol.driver.secret_files import read_secret, write_secret
from protocol.sync.fleet_chain import (
    key_file_name,
    seal_chain,
    valid_moves,
    writer_generation,
)

if TYPE_CHECKING:
    from host.hub.hub import Hub

#: ``meta`` key: the rotation under way or last done, as JSON (see above).
PASS = "fleet_rotation"
#: ``meta`` key prefix, then a kiosk's node: its moves to later generations, as JSON.
MOVES = "fleet_moves:"
#: Records looked at in one slice (its patients migrated in one transaction).
SLICE = 500
#: Arrivals the late-write pass reads at a time.
LATE_PAGE = 2000
FIRST_KEY = "fleet.key"


def later_key_names(data: Path) -> list[str]:
    """The files of the fleet key's generations 2, 3... that ``data`` holds, in order."""
    out: list[str] = []
    while (data / (name := key_file_name(FIRST_KEY, len(out) + 2))).exists():
        out.append(name)
    return out


def is_later_key_name(name: str) -> bool:
    """Whether ``name`` is the file of a later generation of the fleet key."""
    stem, _, rest = name.partition(".")
    number, _, suffix = rest.partition(".")
    return (stem, suffix) == ("fleet", "key") and number.isdigit() and int(number) >= 2 \
        and name == key_file_name(FIRST_KEY, int(number))


def missing_key(data: Path, state: dict[str, Any] | None, held: list[str]) -> str | None:
    """Why the keys ``held`` (later key files) cannot serve data whose rotation state
    is ``state``, or None: every generation up to the one it records needs its key, but
    the last while its migration is not done (``rotate`` records it, then writes its
    key; the migration's first slice writes it if a power cut came between)."""
    wanted = 1 if state is None else int(state["generation"])
    for generation in range(2, wanted + 1):
        name = key_file_name(FIRST_KEY, generation)
        if name not in held and (generation < wanted or state is None or state["done"]):
            return (f"{name} is missing: the hub's data was rotated to fleet key "
                    f"generation {wanted}, and kiosks hold its keys; restore a key backup "
                    f"taken after that rotation (haven hub keys backup) into {data}")
    return None


def state_of(store: HubStore) -> dict[str, Any] | None:
    """The rotation under way or last done (``PASS``); None: the key never rotated."""
    held = store.get_meta(PASS)
    return json.loads(held) if held else None


class FleetKeys:
    """The hub's fleet keys, one per generation up to the one in effect; also what the
    hub's role in a sync round asks of them (``protocol.sync.hub_round.HubFleet``)."""

    def __init__(self, data: Path, first: bytes, store: HubStore) -> None:
        self.data = Path(data)
        self.store = store
        self.keys = [first]
        self.refresh()

    def refresh(self) -> None:
        """Read the keys of generations rotated to since (by this or another process)."""
        state = state_of(self.store)
        wanted = 1 if state is None else int(state["generation"])
        missing = missing_key(self.data, state, later_key_names(self.data))
        if missing is not None:
            raise UsageError(missing)
        del self.keys[wanted:]
        while len(self.keys) < wanted:
            path = self.data / key_file_name(FIRST_KEY, len(self.keys) + 1)
            if not path.exists():
                break  # recorded, not written yet: ``resume`` writes it
            self.keys.append(read_secret(path, "hub key", 32))

    @property
    def generation(self) -> int:
        return len(self.keys)

    def generation_now(self) -> int:
        self.refresh()
        return self.generation

    @property
    def newest(self) -> bytes:
        """The key of the generation in effect: door verifiers are made under it."""
        return self.keys[-1]

    def forward(self, pid: bytes, generation: int) -> bytes:
        """The id, in the generation in effect, of the patient whose id of ``generation``
        is ``pid``."""
        return ids.chained_id(uuid.UUID(bytes=pid), [
            ids.hmac_of(k) for k in self.keys[generation:]]).bytes

    def patient_id(self, passport: str) -> uuid.UUID:
        return uuid.UUID(bytes=self.forward(self.first_id("passport", passport), 1))

    def code_patient_id(self, code: str) -> uuid.UUID:
        return uuid.UUID(bytes=self.forward(self.first_id("code", code), 1))

    def first_id(self, kind: str, value: str) -> bytes:
        """The first generation's id of what a patient gave: ``kind`` "passport" or
        "code"."""
        made = ids.patient_id if kind == "passport" else ids.code_patient_id
        return made(self.keys[0], value).bytes

    def rotations(self) -> list[Callable[[bytes], bytes]]:
        """One function per generation after the first: a patient's id in it from their
        id one generation before."""
        return [functools.partial(_rotated, key) for key in self.keys[1:]]

    def chain_for(self, x25519: bytes, generation: int) -> bytes | None:
        self.refresh()
        if generation >= self.generation:
            return None
        return seal_chain(self.keys[0], self.keys[1:], x25519)

    def note_moves(self, node: int, moves: list[list[int]]) -> None:
        if valid_moves(moves) and moves != self.moves_of(node):
            self.store.set_meta(f"{MOVES}{node}", json.dumps(moves))

    def moves_of(self, node: int) -> list[list[int]]:
        held = self.store.get_meta(f"{MOVES}{node}")
        return json.loads(held) if held else []


def _rotated(key: bytes, pid: bytes) -> bytes:
    return ids.rotated_id(key, pid).bytes


def rotate(hub: Hub, now: int) -> int:
    """A new generation of the fleet key, in effect from now on; returns it. Refused
    while a migration to the last one is under way (``migrate_slice`` ends it)."""
    keys = hub.fleet
    keys.refresh()
    state = state_of(hub.store)
    if state is not None and not state["done"]:
        raise UsageError(f"the migration of patient ids to fleet key generation "
                         f"{state['generation']} is not done ({state['patients']} patients "
                         f"so far): let it end (haven hub keys rotate-fleet --resume) first")
    generation = keys.generation + 1
    head = hub.store.head()
    hub.store.set_meta(PASS, json.dumps({"generation": generation, "head": head, "after": "",
                                         "late": head, "patients": 0, "done": False}))
    _write_key(hub.data, generation)
    keys.refresh()
    hub.store.log(None, "fleet-rotated", f"fleet key generation {generation} in effect; "
                  "patient ids migrate to it", now)
    return generation


def _write_key(data: Path, generation: int) -> None:
    path = data / key_file_name(FIRST_KEY, generation)
    if not path.exists():
        write_secret(path, secrets.token_bytes(32))


def migrate_slice(hub: Hub, now: int, hlc_of: Callable[[], HLC], limit: int = SLICE) -> bool:
    """One slice of the migration under way, its place kept; True while it goes on."""
    with hub.store.own_writes():
        state = state_of(hub.store)
        if state is None or state["done"]:
            return False
        _write_key(hub.data, int(state["generation"]))  # recorded before a power cut
        hub.fleet.refresh()
        store, hlc = hub.store, hlc_of()
        rids = store.record_ids(bytes.fromhex(state["after"]), limit)
        deltas: list[Delta] = []
        for rid in rids:
            facts = store.facts(rid)  # a record with facts names a patient, or a site
            if facts is not None and facts[0] != PATIENT.number:
                continue
            generation = _generation_of(hub, state, rid)
            if generation < hub.fleet.generation:
                moved = migrate_patient(hub, rid, hub.fleet.forward(rid, generation), hlc, now)
                deltas += moved
                state["patients"] += bool(moved)
        _commit(hub, deltas, hlc)
        state["after"] = rids[-1].hex() if rids else state["after"]
        state["done"] = len(rids) < limit
        store.set_meta(PASS, json.dumps(state))
        if state["done"]:
            store.log(None, "fleet-migrated", f"{state['patients']} patients migrated to "
                      f"fleet key generation {state['generation']}", now)
    hub.write_verifiers(now)  # the door verifiers of the patients migrated, new key
    return not state["done"]


def after_batch(hub: Hub, now: int, hlc_of: Callable[[], HLC]) -> int:
    """The writes of kiosks at an older generation that arrived since the last pass,
    remapped (see above); returns how many records were written."""
    with hub.store.own_writes():
        state = state_of(hub.store)
        if state is None:
            return 0
        hub.fleet.refresh()
        store, hlc, written = hub.store, hlc_of(), 0
        moves: dict[int, list[list[int]]] = {}  # each node's, read once a pass
        for _ in range(10_000):  # bounded: each page moves the place on
            page = store.arrived_after(int(state["late"]), LATE_PAGE)
            if not page:
                break
            deltas: list[Delta] = []
            moved: set[bytes] = set()  # patients migrated on this page: once each
            for _hseq, rid, stamp, node in page:
                if node == hub.node or writer_generation(
                        moves.setdefault(node, hub.fleet.moves_of(node)),
                        stamp) >= hub.fleet.generation:
                    continue  # the usual case, decided without opening the delta
                op = next(op for op in store.record_ops(rid) if (op.stamp, op.node) == (
                    stamp, node))
                deltas += _remap(hub, state, op, hlc, now, moved)
            _commit(hub, deltas, hlc)
            written += len(deltas)
            state["late"] = page[-1][0]
            store.set_meta(PASS, json.dumps(state))
    return written


def _remap(hub: Hub, state: dict[str, Any], op: Op, hlc: HLC, now: int,
           moved: set[bytes]) -> list[Delta]:
    """The writes that remap ``op``, a write of a kiosk at an older generation."""
    generation = writer_generation(hub.fleet.moves_of(op.node), op.stamp)
    delta = decode(op.data)
    if delta.type == PATIENT.number:
        if (delta.record_id in moved
                or _generation_of(hub, state, delta.record_id) >= hub.fleet.generation):
            return []
        moved.add(delta.record_id)
        return migrate_patient(hub, delta.record_id,
                               hub.fleet.forward(delta.record_id, generation), hlc, now)
    subject = delta.set.get(SUBJECT.number)
    if delta.type not in SUBJECT_TYPES or type(subject) is not bytes or len(subject) != 16:
        return []
    old_patient = view_of(hub.store, subject)
    if subject in moved or old_patient is not None and not old_patient.deleted:
        return []  # its patient is migrated on this page, or later: that re-points it
    if old_patient is not None and _generation_of(hub, state, subject) >= hub.fleet.generation:
        return []  # a patient of the generation in effect: its kiosk's move came late
    return _repoint(hub, delta.record_id, subject,
                    hub.fleet.forward(subject, generation), hlc, now)


def _generation_of(hub: Hub, state: dict[str, Any], rid: bytes) -> int:
    """The generation of the id ``rid`` of a record held, by its first write: a kiosk's
    by its moves, the hub's by whether it came before the rotation."""
    hseq, node, stamp = hub.store.first_write(rid)
    if node != hub.node:
        return writer_generation(hub.fleet.moves_of(node), stamp)
    return int(state["generation"]) - (hseq <= int(state["head"]))


def _erased(store: HubStore, pid: bytes) -> bool:
    return bool(store.record_ops(erasure_record_id(pid)))


def migrate_patient(hub: Hub, old: bytes, new: bytes, hlc: HLC, now: int) -> list[Delta]:
    """The writes that move patient ``old`` to ``new`` (see above); none for a patient
    deleted, erased, or not held."""
    store = hub.store
    view = view_of(store, old)
    if (view is None or view.type != PATIENT.number or view.deleted or _erased(store, old)
            or _erased(store, new)):
        return []
    out = _merged_into(view, view_of(store, new), new, hub.node, hlc.now(now))
    for rid in store.subject_records(old):
        out += _repoint(hub, rid, old, new, hlc, now)
    out.append(build_delete(view, old, hub.node, hlc.now(now)))
    return out


def _merged_into(old: RecordView, held: RecordView | None, new: bytes, node: int,
                 stamp: int) -> list[Delta]:
    """A put on ``new`` of each field of ``old`` written later than ``new``'s (every
    field when ``new`` is not held), and of each element of ``old``'s sets."""
    values: dict[str, Any] = {}
    for number, value in old.fields.items():
        dot, ours = old.field_dots.get(number), held.field_dots.get(number) if held else None
        if ours is None or dot is not None and dot > ours:
            fspec = PATIENT.by_number[number]
            values[fspec.name] = fspec.from_wire(value)
    add = {PATIENT.by_number[n].name: sorted(v) for n, v in old.sets.items() if v}
    if held is not None and (held.deleted or held.held or not values and not add):
        return []  # deleted or held for review there: staff settle it
    return [build_put(held, new, PATIENT, node, stamp, values, add)]


def _repoint(hub: Hub, rid: bytes, old: bytes, new: bytes, hlc: HLC, now: int,
             ) -> list[Delta]:
    """A put of ``subject = new`` on record ``rid`` if it names ``old``; a door verifier
    of ``old`` is deleted instead."""
    view = view_of(hub.store, rid)
    if view is None or view.deleted or view.held or view.fields.get(SUBJECT.number) != old:
        return []  # a record held for review keeps its subject until staff resolve it
    if view.type == VERIFIER.number:
        return [build_delete(view, rid, hub.node, hlc.now(now))]
    return [build_put(view, rid, TYPES[view.type], hub.node, hlc.now(now),
                      {"subject": str(uuid.UUID(bytes=new))})]


def _commit(hub: Hub, deltas: list[Delta], hlc: HLC) -> None:
    hub.store.add_local(*(Op(d.record_id, d.stamp, d.node, encode(d)) for d in deltas))
    if deltas:
        hub.store.set_meta("hlc", hlc.last)


def progress(store: HubStore) -> dict[str, Any] | None:
    """The rotation's state for ``haven hub status``: generation, patients migrated,
    done."""
    state = state_of(store)
    return None if state is None else {k: state[k] for k in ("generation", "patients",
                                                              "done")}


def migrate_all(hub: Hub, now: Callable[[], int], hlc_of: Callable[[], HLC],
                limit: int = SLICE,
                on_slice: Callable[[dict[str, Any]], None] | None = None) -> None:
    """``migrate_slice`` until the migration is done (``haven hub keys rotate-fleet``)."""
    for _ in range(1_000_000):  # bounded: each slice moves the place on
        more = migrate_slice(hub, now(), hlc_of, limit)
        if on_slice is not None:
            on_slice(state_of(hub.store) or {})
        if not more:
            return
