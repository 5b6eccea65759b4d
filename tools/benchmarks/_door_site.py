"""A door kiosk's files over weeks of a busy site, simulated in minutes (``./tools/bench scopes``).

Theory of operation
-------------------
Only the door kiosk is real: a ``Store`` in a data directory on disk, whose
clock is simulated (every call passes ``now_ms``). The rest of the site is
a generator (``Site``) that writes what the other kiosks, the clinician
stations and the hub would write, with the real writers
(``protocol.crdt.writes.build_put`` on each node's own ``HLC``) and the real
encoding (``delta.encode``), so every byte the door kiosk receives is a
delta one of them would have sent. Nothing of theirs is kept but what the
generator needs to go on (patients, and which check-ins wait for what).

A day is ``ticks`` turns, one per door check-in, spread over opening hours
(08:00 to 18:00 UTC) and a short tail after it. In each turn:

* the door kiosk checks in one returning patient (``Store.checkin``, a
  passport and a year, as at the kiosk), and its staff screen calls and
  sees earlier ones (``set_checkin_status``), ``CALL`` and ``DONE`` turns
  after they arrived;
* each other kiosk does the same (a check-in put, two status puts);
* a clinician station writes a note, and for some patients a prescription
  and a lab result, for each check-in seen that turn (the door's too);
* what the hub would send the door kiosk for the turn (``Feed``) goes in
  through ``Store.merge``, as a sync round's pages do, and the door
  kiosk's outbox is acknowledged (the round pushed it);
* the store's checkpoint of its WAL, if one was asked for, ends before the
  next turn (``Idle``): at a turn's minute and more of idle time, it would;
  run back to back, the writes would never let the WAL start over, and it
  would grow without end as it does not on a kiosk;
* the kernel's writeback is simulated as in the kiosk benchmark
  (``_runtime.write_back``: a turn is longer than ``dirty_expire``), so
  ``write_bytes`` of ``/proc/self/io`` counts what reaches the card.

The population is fixed: ``patients`` records, written by the hub before
the first day (name, year of birth, gender, passport), and every check-in
is one of them coming back. After each day the door kiosk's files are
measured: every file under its data directory (``store.db``, its WAL,
keys, anything else).

``Feed`` says what the hub sends. ``Everything`` is today's code: every
delta of every other node (a kiosk pulls the whole fleet's writes).
"""

from __future__ import annotations

import os
import random
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from device.store import init_store
from device.store.store import Store
from protocol.crdt import schema
from protocol.crdt.clock import HLC
from protocol.crdt.delta import encode
from protocol.crdt.ids import patient_id, random_id, time_ordered_id
from protocol.crdt.writes import build_put

from . import _runtime as rt

DAY_MS = 86_400_000
OPEN_MS = 8 * 3_600_000  #: the first check-in of a day, from midnight UTC
HOURS_MS = 10 * 3_600_000  #: opening hours
T0 = 1_798_761_600_000  #: 2027-01-01 00:00 UTC: the first simulated day
CALL, DONE = 20, 30  #: turns from arrival to being called, and to being seen
SITE = "Riverside"
REASONS = ("fever", "cough", "injury", "follow-up", "antenatal", "vaccination", "pain")
NOTE_TEXT = ("Seen at the clinic. Vital signs recorded; history taken; examined. "
             "Plan discussed with the patient, who understood and agreed. Review if not "
             "better in three days, or sooner if worse.")


class Feed(Protocol):
    """What the hub sends the door kiosk of what the rest of the site wrote."""

    name: str

    def deliver(self, deltas: list[bytes], now_ms: int, cursor: int) -> list[bytes]: ...


class Everything:
    """Today's code: a kiosk pulls every delta of every other node."""

    name = "today's code"

    def deliver(self, deltas: list[bytes], now_ms: int, cursor: int) -> list[bytes]:
        return deltas


@dataclass
class Node:
    node: int
    hlc: HLC = field(default_factory=HLC)

    def put(self, rid: bytes, spec: schema.TypeSpec, now_ms: int,
            values: dict[str, Any]) -> bytes:
        # Only this node writes these records after creating them, so the record's
        # heads are its own and the write's context is empty: no view is needed.
        return encode(build_put(None, rid, spec, self.node, self.hlc.now(now_ms), values))


@dataclass
class Visit:
    checkin: bytes  #: record id (unused for the door's own: the store knows them)
    subject: bytes
    kiosk: int  #: index into the kiosks; 0 is the door kiosk
    arrived: int  #: turn of the day it arrived
    label: str = ""  #: the door's own check-in id, for its staff screen


class Site:
    """Everyone but the door kiosk: their writes, turn by turn (seeded)."""

    def __init__(self, fleet_key: bytes, patients: int, kiosks: int, seed: int = 14) -> None:
        self.rng = random.Random(seed)
        self.fleet_key = fleet_key
        self.hub = self._node()
        self.kiosks = [self._node() for _ in range(kiosks - 1)]  # not the door kiosk
        self.clinicians = [self._node() for _ in range(3)]
        self.passports = [f"RV{i:07d}" for i in range(patients)]
        self.years = [1940 + self.rng.randrange(80) for _ in range(patients)]
        self.pids = [patient_id(fleet_key, p).bytes for p in self.passports]
        self.numbers = [0] * kiosks

    def _node(self) -> Node:
        return Node(self.rng.getrandbits(32) | 1)

    def _rid(self) -> bytes:
        return random_id(self.rng.randbytes(16)).bytes

    def population(self, now_ms: int) -> list[bytes]:
        """The hub's patient records, before the first day."""
        first = ("Amina", "Yusuf", "Fatima", "Omar", "Grace", "John", "Leila", "Samir")
        last = ("Rahimi", "Haddad", "Okafor", "Mensah", "Karimi", "Nyambura", "Aziz")
        return [self.hub.put(pid, schema.PATIENT, now_ms, {
            "name": f"{self.rng.choice(first)} {self.rng.choice(last)}",
            "birthDate": f"{year:04d}-{1 + i % 12:02d}-{1 + i % 28:02d}",
            "gender": self.rng.choice(("female", "male")), "identifier": passport})
            for i, (pid, year, passport) in enumerate(
                zip(self.pids, self.years, self.passports, strict=True))]

    def pick(self) -> int:
        return self.rng.randrange(len(self.pids))

    def checkin(self, k: int, who: int, turn: int, now_ms: int) -> tuple[Visit, bytes]:
        """Kiosk ``k``'s (1..) check-in of patient ``who``: the visit and its delta."""
        writer = self.kiosks[k - 1]
        cid = time_ordered_id(now_ms, self.rng.randbytes(10)).bytes
        self.numbers[k] += 1
        started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now_ms / 1000))
        data = writer.put(cid, schema.CHECKIN, now_ms, {
            "subject": str(uuid.UUID(bytes=self.pids[who])), "status": "arrived",
            "periodStart": started, "location": SITE,
            "queueNumber": f"{chr(65 + k)}-{self.numbers[k]:03d}", "identity": "match",
            "claimBirthDate": f"{self.years[who]:04d}",
            "reasonCode": self.rng.choice(REASONS)})
        return Visit(cid, self.pids[who], k, turn), data

    def status(self, visit: Visit, status: str, now_ms: int) -> bytes:
        return self.kiosks[visit.kiosk - 1].put(visit.checkin, schema.CHECKIN, now_ms,
                                                {"status": status})

    def clinical(self, visit: Visit, now_ms: int) -> list[bytes]:
        """What a clinician writes for a patient seen: a note; a prescription for 60 %,
        a lab result for 30 %."""
        station = self.rng.choice(self.clinicians)
        subject = str(uuid.UUID(bytes=visit.subject))
        at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now_ms / 1000))
        out = [station.put(self._rid(), schema.NOTE, now_ms, {
            "subject": subject, "text": NOTE_TEXT, "authorString": "Clinician 3", "time": at})]
        if self.rng.random() < 0.6:
            out.append(station.put(self._rid(), schema.PRESCRIPTION, now_ms, {
                "subject": subject, "status": "active", "medication": "Amoxicillin 500 mg",
                "dosageInstruction": "one capsule three times a day for five days",
                "quantity": 15, "authoredOn": at, "requester": "Clinician 3"}))
        if self.rng.random() < 0.3:
            out.append(station.put(self._rid(), schema.LAB_RESULT, now_ms, {
                "subject": subject, "status": "final", "code": "718-7",
                "value": round(self.rng.uniform(8, 17), 1), "unit": "g/dL",
                "effectiveDateTime": at, "interpretation": "N"}))
        return out


class Idle:
    """The minute between two turns, for the store's checkpoint thread: every checkpoint
    asked for has ended before the next turn (bounded)."""

    def __init__(self, store: Store) -> None:
        self.checkpointer = store.checkpointer
        self.asked = 0
        request = self.checkpointer.request

        def counted() -> None:
            self.asked += 1
            request()

        self.checkpointer.request = counted  # type: ignore[method-assign]

    def wait(self) -> None:
        end = time.monotonic() + rt.BOUND
        while self.checkpointer.runs < self.asked and time.monotonic() < end:
            time.sleep(0.001)


def files_bytes(data: Path) -> int:
    """Every file under the data directory, in bytes (apparent size)."""
    return sum(p.stat().st_size for p in data.rglob("*") if p.is_file())


@dataclass
class Day:
    day: int
    bytes: int  #: the door kiosk's files after the day
    bytes_before: int  #: and at its start, after the day's GC pass
    patients_held: int  #: patient and verifier records held after the day
    store_db: int
    wal: int
    records: int
    ops: int
    merged: int  #: deltas the hub sent that day
    checkins: int  #: the door kiosk's own
    own_write_bytes: int  #: write_bytes of its check-ins
    staff_write_bytes: int  #: of its staff's writes and the outbox's acknowledgement
    merge_write_bytes: int
    gc_write_bytes: int
    seconds: float


@dataclass
class Sim:
    days: int
    patients: int
    kiosks: int
    per_kiosk: int  #: check-ins per kiosk a day
    out: list[Day] = field(default_factory=list)

    @property
    def turn_ms(self) -> int:
        return HOURS_MS // self.per_kiosk


def run(work: Path, sim: Sim, feed: Feed, log: Callable[[str], None],
        gc: Callable[[Store, int, int], None] | None = None) -> Sim:
    """The simulation, into ``work``; ``gc(store, day_start_ms, cursor)`` runs at the
    start of each day, as the kiosk's first round of a day would."""
    data = work / "door"
    store = init_store(data, SITE, "A")
    idle = Idle(store)
    try:
        site = Site(store.fleet_key, sim.patients, sim.kiosks)
        start = T0 - DAY_MS // 2
        store.merge(feed.deliver(site.population(start), start, _cursor(start)), now_ms=start)
        for day in range(sim.days):
            sim.out.append(_day(store, idle, site, sim, feed, day, gc))
            d = sim.out[-1]
            log(f"{feed.name}, day {day + 1}: {d.bytes / 2**20:.1f} MiB, {d.records} records, "
                f"{d.merged} deltas merged, {d.seconds:.1f} s")
    finally:
        store.close()
    return sim


def _cursor(now_ms: int) -> int:
    return now_ms * 1000  # the hub's arrival numbers are microseconds


def _day(store: Store, idle: Idle, site: Site, sim: Sim, feed: Feed, day: int,
         gc: Callable[[Store, int, int], None] | None) -> Day:
    t_start = time.monotonic()
    data = store.data
    day0 = T0 + day * DAY_MS
    own = staff = merge_w = gc_w = merged = 0
    if gc is not None:
        before = _written()
        gc(store, day0 + OPEN_MS, _cursor(day0 + OPEN_MS))
        rt.write_back(data)
        gc_w += _written() - before
    bytes_before = files_bytes(data)
    waiting: deque[Visit] = deque()
    for turn in range(sim.per_kiosk + DONE):
        now = day0 + OPEN_MS + turn * sim.turn_ms
        visits: list[Visit] = []
        if turn < sim.per_kiosk:
            before = _written()
            who = site.pick()
            got = store.checkin(passport=site.passports[who], birth_year=site.years[who],
                                reason=site.rng.choice(REASONS), now_ms=now)
            visits.append(Visit(b"", site.pids[who], 0, turn, got.record_id))
            rt.write_back(data)
            own += _written() - before
        before = _written()
        remote: list[bytes] = []
        for v in waiting:
            if turn - v.arrived in (CALL, DONE):
                status = "in-progress" if turn - v.arrived == CALL else "finished"
                if v.kiosk == 0:
                    store.set_checkin_status(v.label, status, now_ms=now)
                else:
                    remote.append(site.status(v, status, now))
                if status == "finished":
                    remote += site.clinical(v, now)
        while waiting and turn - waiting[0].arrived >= DONE:
            waiting.popleft()
        entries = store.outbox_batch(now_ms=now)
        store.outbox_ack(e.seq for e in entries)
        rt.write_back(data)
        mid = _written()
        staff += mid - before
        if turn < sim.per_kiosk:
            for k in range(1, sim.kiosks):
                visit, delta = site.checkin(k, site.pick(), turn, now)
                visits.append(visit)
                remote.append(delta)
        waiting.extend(visits)
        sent = feed.deliver(remote, now, _cursor(now))
        if sent:
            store.merge(sent, now_ms=now + sim.turn_ms)
            merged += len(sent)
        idle.wait()
        rt.write_back(data)
        merge_w += _written() - mid
    db = data / "store.db"
    wal = data / "store.db-wal"
    counts = store.reader.execute(
        "SELECT (SELECT COUNT(*) FROM records), (SELECT COUNT(*) FROM ops),"
        " (SELECT COUNT(*) FROM records WHERE type IN (?, 9))",
        [schema.PATIENT.number]).fetchone()
    return Day(day + 1, files_bytes(data), bytes_before, counts[2], db.stat().st_size,
               wal.stat().st_size if wal.exists() else 0, counts[0], counts[1], merged,
               sim.per_kiosk, own, staff, merge_w, gc_w, round(time.monotonic() - t_start, 1))


def _written() -> int:
    return rt.proc_io(os.getpid())["write_bytes"]


def growth(days: Iterable[Day], last: int) -> float:
    """How much the files grew over the last ``last`` days, as a share of their size
    before them."""
    days = list(days)
    if len(days) <= last:
        return float("nan")
    before, end = days[-last - 1].bytes, days[-1].bytes
    return (end - before) / before
