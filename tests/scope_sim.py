"""Helpers (no tests): a hub and a few kiosks with real stores, synced in process.

Theory of operation
-------------------
``Fleet`` holds a real hub (``hub.db``) and kiosks with real stores
(``store.db``, ``sync.db``) in a temporary directory. A round is the kiosk's
real role (``device.sync.engine.Round``: ``KioskSync`` over the store and
``sync.db``) and the hub's (``host.hub.peer.HubPeer``: ``HubSync`` over
``hub.db``), handed each other's messages one by one, with no socket. After a
round the hub's own passes run as its server runs them (claims, verifiers).

Time is the test's (``SimClock``): stores stamp writes with it, the hub reads
it, and the hub's arrival numbers (at least the clock in µs, ``next_hseq``)
follow it, so a month passes in one call. A kiosk's round reads the real
clock, as a kiosk does; it learns the hub's time from the welcome.

What a kiosk should hold (``expected_dump``) is the hub's merged view of
every record, filtered by the pure scope API (``protocol.sync.scope``) with
the scope the kiosk's last welcome named. Records deleted everywhere (no
conflict) are left out on both sides: a kiosk drops them once stable, the
hub keeps them.

A round may be cut after any message (``stop_after``): the kiosk crashed
there, its files closed where they stand, or it was killed, and what waited in
memory to be written (its cursor, acknowledgements) is lost; it is opened
again. Every page the hub sends a door kiosk is looked at (``leaks``): nothing
clinical, no name and no year may be in it, but the kiosk's own writes.

Enrolling a fleet (keys, databases, certificates) takes most of a short run, so
``Fleet.copied`` enrols each list of kiosks once per process and copies it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import shutil
import time
import types
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from device import enrol
from device.store import Store
from device.sync.engine import Round, Summary, SyncRefused
from device.sync.state import SyncState
from host.hub import storage as hub_storage
from host.hub.hub import Hub, init_hub
from host.hub.peer import HubPeer
from protocol import messages
from protocol.crdt.delta import decode
from protocol.crdt.ids import patient_id
from protocol.crdt.record import RecordView, canonical_json
from protocol.crdt.schema import CHECKIN, DOCUMENT, LAB_RESULT, NOTE, PATIENT, PRESCRIPTION
from protocol.sync import batches as sync
from protocol.sync.scope import WITHHELD_AT_DOOR, Scope, checkin_in_scope, facts_of, in_scope

from .test_sync_helpers import Kiosk

HOUR_MS = 3600_000
DAY_MS = 24 * HOUR_MS
#: 2026-12-07 09:00 UTC: far from midnight, so a day ends only when a test says.
T0 = int(datetime.datetime(2026, 12, 7, 9, tzinfo=datetime.UTC).timestamp() * 1000)
#: The most messages one round may take before the harness calls it stuck.
ROUND_MESSAGES = 400
#: Patient fields a door kiosk must never hold (name, birthDate), and a check-in's
#: claims of them (claimName, claimBirthDate).
NAME_FIELDS = {PATIENT.number: {1, 2}, CHECKIN.number: set(WITHHELD_AT_DOOR)}
CLINICAL = {PRESCRIPTION.number, LAB_RESULT.number, NOTE.number, DOCUMENT.number}


def replaced(msg: messages.Message, **values: Any) -> bytes:
    """``msg`` with some fields set anew, encoded (a message changed on its way)."""
    spec = msg.spec
    assert spec is not None
    fields = dict(msg.fields)
    fields.update({spec.field_key(name): value for name, value in values.items()})
    return messages.encode(messages.Message(msg.type, fields))


def _by_id(dump: bytes) -> dict[str, Any]:
    return {r["id"]: r for r in json.loads(dump)["records"]}


class SimClock:
    """The test's time in ms since 1970, moved only by ``advance``."""

    def __init__(self, start: int = T0) -> None:
        self.ms = start

    def __call__(self) -> int:
        return self.ms

    def advance(self, ms: int) -> None:
        self.ms += ms


@contextlib.contextmanager
def hub_arrivals_follow(clock: SimClock) -> Iterator[None]:
    """The hub's arrival numbers follow ``clock`` (``next_hseq`` reads the clock in µs),
    so a month of the test's time is a month of cursors, as on a real hub."""
    shim = types.SimpleNamespace(**{k: getattr(time, k) for k in dir(time)
                                    if not k.startswith("__")})
    shim.time_ns = lambda: clock() * 1_000_000
    shim.time = lambda: clock() / 1000
    held = hub_storage.time
    hub_storage.time = shim  # type: ignore[assignment]
    try:
        yield
    finally:
        hub_storage.time = held


def visible(views: list[RecordView]) -> list[RecordView]:
    """The views to compare: a record deleted with no conflict is gone (a kiosk drops it
    once stable; the hub keeps it)."""
    return [v for v in views if not (v.deleted and not v.conflicts)]


def filter_to_scope(views: list[RecordView], scope: Scope) -> list[RecordView]:
    """The records of ``views`` in ``scope``, by the pure scope API: a clinician's
    patients are the subjects of the check-ins in scope; a door kiosk's check-ins come
    without what patients typed (``WITHHELD_AT_DOOR``), in every version."""
    facts = {v.record_id: facts_of(v.record_id, v.type, v.fields) for v in views}
    patients = {f.subject for f in facts.values()
                if f.subject is not None and checkin_in_scope(scope, f)}
    kept = [v for v in views if in_scope(scope, facts[v.record_id], patients)]
    if scope.role != "door":
        return kept
    return [without_claims(v) if v.type == CHECKIN.number else v for v in kept]


def without_claims(view: RecordView) -> RecordView:
    """A check-in without what the patient typed, in its fields and its versions."""
    def strip(fields: dict[int, Any]) -> dict[int, Any]:
        return {k: x for k, x in fields.items() if k not in WITHHELD_AT_DOOR}
    return dataclasses.replace(view, fields=strip(view.fields), conflicts=tuple(
        dataclasses.replace(c, versions=tuple(dataclasses.replace(v, fields=strip(v.fields))
                                              for v in c.versions))
        for c in view.conflicts if c.field not in WITHHELD_AT_DOOR))


def forbidden_for_door(rtype: int, fields: dict[int, Any]) -> str | None:
    """Why a door kiosk may not hold a record (or a delta) of this type with these
    fields: clinical, or a name or a year (a check-in's claimed ones too). None: it may."""
    if rtype in CLINICAL:
        return f"a clinical record (type {rtype})"
    named = NAME_FIELDS.get(rtype, set()) & {k for k, v in fields.items() if v is not None}
    if named:
        return f"a name or a year (type {rtype}, fields {sorted(named)})"
    return None


@dataclass
class SimKiosk:
    """An enrolled kiosk: its store, ``sync.db`` and identity, which a crash reopens."""

    name: str
    role: str
    store: Store
    state: SyncState
    ident: enrol.Identity
    clock: SimClock
    #: (record id, stamp) of every write made here, to find at the hub in the end
    writes: list[tuple[bytes, int]] = field(default_factory=list)
    #: what the hub sent this kiosk that it may not hold (door kiosks)
    leaks: list[str] = field(default_factory=list)
    #: whether a round ended since the role was last set (a kiosk made a door holds what
    #: its old role held until its rebase)
    settled: bool = False
    noted: int = 0  #: the greatest stamp of ours ``note_writes`` has seen

    @classmethod
    def open(cls, data: Path, role: str, clock: SimClock) -> SimKiosk:
        return cls(data.name, role, Store(data, clock=clock), SyncState(data),
                   enrol.load(data), clock)

    @property
    def device(self) -> str:
        return self.ident.cert.device_id

    def close(self) -> None:
        self.state.close()
        self.store.close()

    @property
    def node(self) -> int:
        return self.store.node

    def reopen(self, killed: bool = False) -> None:
        """A crash: the store and ``sync.db`` closed where they stand, opened again.
        ``killed``: as by ``kill -9``, what waits in memory to be written is lost (the
        cursor, acknowledgements, the stable point: ``SyncState``, ``device.store.acks``);
        what was committed stays."""
        data = self.store.data
        if killed:
            self.store._acked.take()
            self.state._later.clear()
            self.state._acked_later.clear()
        self.close()
        self.store, self.state = Store(data, clock=self.clock), SyncState(data)
        self.ident = enrol.load(data)

    def note_writes(self) -> int:
        """Remember the writes made here since the last call (each once); how many."""
        rows = self.store.reader.execute(
            "SELECT rid, stamp FROM ops WHERE node = ? AND stamp > ? ORDER BY stamp",
            [self.node, self.noted]).fetchall()
        self.writes += [(bytes(rid), int(stamp)) for rid, stamp in rows]
        self.noted = max([self.noted, *(int(stamp) for _, stamp in rows)])
        return len(rows)

    def unsynced(self, hub: Hub) -> set[bytes]:
        """Records with a write of ours in the outbox (queued, in flight, or refused)
        that ``hub`` does not hold. (An acknowledged entry leaves the outbox a little
        later, ``device.store.acks``.)"""
        rows = self.store.reader.execute("SELECT rid, stamp, node FROM outbox").fetchall()
        out = set()
        for rid, stamp, node in rows:
            rid = bytes(rid)
            if not any((op.stamp, op.node) == (stamp, node) for op in hub.store.record_ops(rid)):
                out.add(rid)
        return out

    def own_records(self) -> set[bytes]:
        return {rid for rid, _ in self.writes}

    def scope(self) -> Scope | None:
        return self.state.scope_at(self.clock())

    def collect(self, budget_s: float = 5.0) -> Any:
        """A GC pass at the stable point the last welcome carried (verified), to its end;
        its report (None: no welcome named a scope and a stable point yet)."""
        scope, stable = self.scope(), self.state.stable
        if scope is None or stable is None:
            return None
        for _ in range(100):
            report = self.store.collect(scope, stable, budget_s)
            if report.done:
                return report
        raise AssertionError(f"{self.name}'s collection never ended")

    def dump(self) -> bytes:
        return canonical_json(visible(self.store.views()))

    def records(self) -> dict[str, Any]:
        """Each record this kiosk holds (as ``dump``), by id: to say how dumps differ."""
        return _by_id(self.dump())

    def door_leaks(self, own: bool = True) -> list[str]:
        """What this (door) kiosk holds that it may not: clinical records, names and
        years, but in records it wrote itself (``own``; else none at all, as once its
        writes are stable and collected)."""
        mine = self.own_records() if own else set()
        out = []
        for v in self.store.views():
            why = forbidden_for_door(v.type, v.fields)
            if why is not None and v.record_id not in mine:
                out.append(f"{self.name} holds {why}: {v.record_id.hex()}")
        return out


#: A kiosk to enrol: name, letter, role, site, a clinician's window in days (None: 30).
KioskPlan = tuple[str, str, str, str, int | None]
#: Fleets enrolled once in this process (``Fleet.copied``), by their list of kiosks.
#: Each is the directory and how long its enrolment took on the test's clock.
_TEMPLATES: dict[tuple[KioskPlan, ...], tuple[Path, int]] = {}


class Fleet:
    """A hub and its kiosks in ``tmp``, on the test's clock (see the module's doc)."""

    def __init__(self, tmp: Path, clock: SimClock | None = None, *, new: bool = True) -> None:
        """``new``: a hub is made in ``tmp``; else ``tmp`` holds one (``copied``)."""
        self.tmp = tmp
        self.clock = clock or SimClock()
        if new:
            init_hub(tmp / "hub")
        self.hub = Hub(tmp / "hub")
        self.kiosks: list[SimKiosk] = []
        #: what the hub sends a kiosk may be changed on its way (bad input tests)
        self.to_kiosk: Callable[[SimKiosk, bytes], bytes] | None = None

    def close(self) -> None:
        for k in self.kiosks:
            k.close()
        self.hub.close()

    @classmethod
    def copied(cls, templates: Path, tmp: Path, kiosks: Sequence[KioskPlan],
               clock: SimClock) -> Fleet:
        """A hub and ``kiosks`` enrolled, copied into ``tmp`` from the fleet made once in
        ``templates`` for each list of kiosks (see the module's doc)."""
        key = tuple(kiosks)
        if key not in _TEMPLATES:
            made = templates / f"fleet-{len(_TEMPLATES)}"
            made.mkdir()
            fleet = cls(made, SimClock(clock()))
            for name, letter, role, site, window in kiosks:
                fleet.add(name, letter, role, site, window)
            fleet.close()
            _TEMPLATES[key] = (made, fleet.clock() - clock())
        made, took = _TEMPLATES[key]
        clock.advance(took)  # the hub's commands were typed then (role changes)
        shutil.copytree(made, tmp, dirs_exist_ok=True)
        fleet = cls(tmp, clock, new=False)
        fleet.kiosks = [SimKiosk.open(tmp / plan[0], plan[2], clock) for plan in kiosks]
        return fleet

    # Kiosks and the hub's commands ---------------------------------------------------

    def add(self, name: str, letter: str, role: str = "full", site: str = "North",
            window_days: int | None = None) -> SimKiosk:
        k = Kiosk(self.tmp, name, self.hub, letter, site, role)
        k.store.clock = self.clock
        sim = SimKiosk(name, role, k.store, k.state, k.ident, self.clock)
        self.kiosks.append(sim)
        if window_days is not None:
            self.set_role(sim, role, window_days)
        return sim

    def set_role(self, k: SimKiosk, role: str, window_days: int | None = None) -> None:
        """``haven hub role KIOSK ROLE [--window DAYS]``, typed a second after the last
        round (the hub tells a kiosk last here before its role changed to rebase)."""
        self.clock.advance(1000)
        self.hub.set_role(k.device, role, window_days=window_days, now_ms=self.clock())
        self.clock.advance(1000)
        k.role, k.settled = role, False

    def decommission(self, k: SimKiosk) -> None:
        """``haven hub decommission KIOSK``."""
        self.clock.advance(1000)
        self.hub.decommission(k.device, now_ms=self.clock())

    def patient(self, passport: str) -> bytes:
        return patient_id(self.hub.fleet_key, passport).bytes

    # Rounds --------------------------------------------------------------------------

    def sync(self, k: SimKiosk, stop_after: int | None = None,
             killed: bool = False) -> Summary | None:
        """One round of ``k`` with the hub, message by message. ``stop_after``: the round
        is cut after the hub answered that many messages (None returned: the kiosk
        crashed there, ``killed`` or not, and is opened again)."""
        rnd = Round(k.store, k.state, k.ident)
        peer = HubPeer(self.hub.store, self.hub.ed_public, k.ident.cert.x25519,
                       self.clock, stable_key=self.hub.ed_key,
                       after_batch=lambda: self.hub.write_verifiers(self.clock()))
        to_hub = deque(data for _, data in rnd.hello())
        answered = 0
        while to_hub:
            if stop_after is not None and answered >= stop_after:
                k.reopen(killed)
                self.hub_passes()
                return None
            replies = peer.on_message(to_hub.popleft())
            answered += 1
            if peer.sync.close is not None:
                reason, detail = peer.sync.close
                raise SyncRefused(f"the hub refused this kiosk ({reason}: {detail})", reason)
            for _, data in replies:
                if self.to_kiosk is not None:
                    data = self.to_kiosk(k, data)
                self._watch(k, data)
                to_hub.extend(reply for _, reply in rnd.on_message(data))
            assert answered < ROUND_MESSAGES, f"{k.name}'s round did not end"
        assert rnd.done, f"{k.name}'s round stopped before it was done"
        k.state.note_synced(self.clock(), moved=bool(rnd.summary.pushed or rnd.summary.pulled))
        k.settled = True
        self.hub_passes()
        return rnd.summary

    def hub_passes(self) -> None:
        """What the hub's server runs after commits (besides the verifiers after each
        batch): check-ins' claims made patients' records."""
        self.hub.promote_claims(now_ms=self.clock())

    def _watch(self, k: SimKiosk, data: bytes) -> None:
        """A door kiosk is never sent a clinical record, a name or a year (its own writes
        aside: a snapshot carries them)."""
        if k.role != "door":
            return
        msg = messages.decode(data)
        if msg.type != sync.CHANGES.number:
            return
        for raw in sync.unpack(msg.get("payload")):
            delta = decode(raw)
            if delta.node == k.node:
                continue
            why = forbidden_for_door(delta.type, dict(delta.set))
            if why is not None:
                k.leaks.append(f"the hub sent door kiosk {k.name} {why}: "
                               f"{delta.record_id.hex()} by node {delta.node:08x}")

    def sweep(self, kiosks: list[SimKiosk] | None = None) -> bool:
        """One round of each kiosk; whether anything moved."""
        moved = False
        for k in kiosks or self.kiosks:
            head = self.hub.store.head()
            s = self.sync(k)
            assert s is not None
            moved = moved or bool(s.pushed or s.pulled or s.rebased or s.refreshed
                                  or self.hub.store.head() != head)
        return moved

    def quiesce(self, kiosks: list[SimKiosk] | None = None, sweeps: int = 12) -> None:
        """Rounds until nothing moves, then two more (each kiosk's acknowledged cursor
        reaches the hub's head, then every welcome's stable point does), then a GC pass
        on each kiosk."""
        kiosks = kiosks or self.kiosks
        for _ in range(sweeps):
            if not self.sweep(kiosks):
                break
        else:
            raise AssertionError(f"the fleet did not settle in {sweeps} sweeps")
        self.sweep(kiosks)
        self.sweep(kiosks)
        for k in kiosks:
            k.collect()

    # What each kiosk should hold -----------------------------------------------------

    def hub_views(self) -> list[RecordView]:
        return visible(self.hub.views())

    def differences(self, k: SimKiosk) -> str:
        """How ``k``'s records differ from what it should hold, in words."""
        held, expected = k.records(), _by_id(self.expected_dump(k))
        extra = sorted(set(held) - set(expected))
        missing = sorted(set(expected) - set(held))
        changed = sorted(r for r in set(held) & set(expected) if held[r] != expected[r])
        return (f"{k.name} ({k.role}) holds {len(extra)} records out of its scope "
                f"{[held[r] for r in extra][:3]}, lacks {len(missing)} "
                f"{[expected[r] for r in missing][:3]}, differs on {len(changed)} "
                f"{[(held[r], expected[r]) for r in changed][:2]}")

    def check_scope(self, k: SimKiosk) -> None:
        """``k`` holds exactly the hub's records filtered to its scope."""
        assert k.dump() == self.expected_dump(k), self.differences(k)

    def expected_dump(self, k: SimKiosk) -> bytes:
        scope = k.scope()
        assert scope is not None, f"{k.name} has no scope: no welcome named one"
        return canonical_json(filter_to_scope(self.hub_views(), scope))

    def lost_writes(self, k: SimKiosk) -> list[str]:
        """Writes ``k`` made that the hub does not hold."""
        held = {(op.rid, op.stamp) for rid in k.own_records()
                for op in self.hub.store.record_ops(rid) if op.node == k.node}
        return [f"{k.name}'s write {rid.hex()}@{stamp}" for rid, stamp in k.writes
                if (rid, stamp) not in held]
