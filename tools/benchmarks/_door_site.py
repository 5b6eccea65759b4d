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

A day is ``Sim.turns`` turns, one per door check-in, spread over opening hours
(08:00 to 18:00 UTC) and a short tail after it. In each turn:

* the door kiosk checks in one returning patient (``Store.checkin``, a
  passport and a year, as at the kiosk), and its staff screen calls and
  sees earlier ones (``set_checkin_status``), ``CALL_MS`` and ``DONE_MS``
  after they arrived;
* each other kiosk does the same (a check-in put, two status puts);
* a clinician station writes a note, and for some patients a prescription
  and a lab result, for each check-in seen that turn (the door's too);
* what the hub would send the door kiosk for the turn (``Feed``) goes in
  through ``Store.merge``, as a sync round's pages do, and the door
  kiosk's outbox is acknowledged (the round pushed it);
* after each of these steps the store's checkpoint of its WAL, if one was
  asked for, ends before the next step (``Idle``), as it would in the
  seconds between them on a kiosk; run back to back, a checkpoint would race
  the next step's commits, never find the WAL wholly copied, and the WAL
  would never start over;
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
``DoorScope`` is what the hub sends a door kiosk: the hub's own filter
(``host.hub.scopes.changes_in_scope``) over a hub database holding every
delta of the site, and the verifier records the hub writes for each patient
checked in at the site. With it the door kiosk runs GC passes
(``Store.collect``) at the start of each day (its first round of the day:
yesterday's queue leaves the scope), at the stable point of the day
before's last turn (every replica of its scope synced since); its own
writes are acknowledged with their arrival number and the hub's pages
merged with their cursor. A kiosk runs a pass after every round; one a day
is what a simulation of this size can afford (a pass walks every record
held), and it gathers a day's work into one pass.

It runs as a child process (``python -m tools.benchmarks._door_site``),
so that ``write_bytes`` is the door kiosk's alone, and so that today's code
can be the code of the release before (a ``git archive`` of it, with this
file copied in: it uses nothing the release lacks). It prints one JSON line
per day.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import random
import shutil
import sys
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from device.store import init_store
from device.store.store import Store
from protocol.crdt import schema
from protocol.crdt.clock import HLC
from protocol.crdt.delta import decode, encode
from protocol.crdt.ids import patient_id, random_id, time_ordered_id
from protocol.crdt.writes import build_put
from protocol.driver.database import immediate, open_database

from . import _runtime as rt

DAY_MS = 86_400_000
OPEN_MS = 8 * 3_600_000  #: the first check-in of a day, from midnight UTC
HOURS_MS = 10 * 3_600_000  #: opening hours
T0 = 1_798_761_600_000  #: 2027-01-01 00:00 UTC: the first simulated day
CALL_MS, DONE_MS = 24 * 60_000, 36 * 60_000  #: from arrival to being called, and seen
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


class DoorScope:
    """What the hub sends a door kiosk of the site: ``host.hub.scopes.changes_in_scope``
    on a hub database (``hub.db``, the hub's migrations) holding every delta the site
    wrote, committed a turn at a time with their records' facts (``note_facts``), as the
    hub commits batches, under arrival numbers that are the turn's cursor onwards."""

    name = "door scope"
    PAGE = 256 * 1024  #: bytes a page of changes holds (the kiosk's pull asks this much)

    def __init__(self, hub_db: Path, door_node: int) -> None:
        from host.hub.storage import MIGRATIONS

        self.db = open_database(hub_db, MIGRATIONS, synchronous="NORMAL")
        self.door_node = door_node
        self.hseq = 0
        self.day = ""

    def deliver(self, deltas: list[bytes], now_ms: int, cursor: int) -> list[bytes]:
        from host.hub.scopes import changes_in_scope, note_facts
        from protocol.sync.scope import Scope

        pulled_from = self.hseq
        day = day_of(now_ms)
        with immediate(self.db):
            if day != self.day:
                # A door pull reads every check-in fact of its site (the plan drives from
                # record_facts), so it would cost what the site ever held; older
                # check-ins are out of every door scope, and their facts go here.
                self.day = day
                self.db.execute("DELETE FROM record_facts WHERE type = ? AND day < ?",
                                [schema.CHECKIN.number, day_of(now_ms - DAY_MS)])
            decoded = [decode(data) for data in deltas]
            for d, data in zip(decoded, deltas, strict=True):
                self.hseq = max(self.hseq + 1, cursor)
                self.db.execute("INSERT INTO ops (hseq, rid, stamp, node, data, origin)"
                                " VALUES (?, ?, ?, ?, ?, 'site')",
                                [self.hseq, d.record_id, d.stamp, d.node, data])
            note_facts(self.db, decoded)
        scope = Scope("door", SITE, day)
        out: list[bytes] = []
        more = True
        while more:
            page, pulled_from, more = changes_in_scope(self.db, scope, pulled_from,
                                                       self.door_node, self.PAGE)
            out += page
        return out

    def close(self) -> None:
        self.db.close()


def day_of(now_ms: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(now_ms / 1000))


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

    def __init__(self, fleet_key: bytes, patients: int, kiosks: int, seed: int = 14,
                 verifiers: bool = False) -> None:
        self.rng = random.Random(seed)
        #: Whether the hub writes verifier records (it does for a site with a door kiosk,
        #: since issue 14): for a patient when first checked in at the site.
        self.verifiers: set[int] | None = set() if verifiers else None
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

    def verifier(self, who: int, now_ms: int) -> list[bytes]:
        """The hub's verifier record of patient ``who`` at the site, once."""
        if self.verifiers is None or who in self.verifiers:
            return []
        from protocol.crdt.ids import verifier_record_id, year_verifier

        self.verifiers.add(who)
        pid = self.pids[who]
        return [self.hub.put(verifier_record_id(self.fleet_key, SITE, pid), schema.VERIFIER,
                             now_ms, {"subject": str(uuid.UUID(bytes=pid)), "site": SITE,
                                      "birthYear": year_verifier(self.fleet_key, SITE, pid,
                                                                 f"{self.years[who]:04d}")})]

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
    """The seconds between two steps, for the store's checkpoint thread: the checkpoint
    last asked for has ended before the next step (bounded)."""

    def __init__(self, store: Store) -> None:
        self.checkpointer = store.checkpointer
        self.runs_then = -1  #: checkpoints completed when the last one was asked for
        request = self.checkpointer.request

        def noted() -> None:
            self.runs_then = self.checkpointer.runs
            request()

        self.checkpointer.request = noted  # type: ignore[method-assign]

    def wait(self) -> None:
        # Requests made while one is pending merge into one checkpoint: wait for the
        # request to be taken (the thread clears it as it starts) and for a checkpoint
        # to end after it was made.
        cp = self.checkpointer
        end = time.monotonic() + rt.BOUND
        while (cp._wanted.is_set() or cp.runs <= self.runs_then) \
                and self.runs_then >= 0 and time.monotonic() < end:
            time.sleep(0.001)
        self.runs_then = -1


def files_bytes(data: Path) -> int:
    """Every file under the data directory, in bytes (apparent size)."""
    return sum(p.stat().st_size for p in data.rglob("*") if p.is_file())


def live_bytes(store: Store) -> int:
    """The database's pages in use, as a reader sees it (WAL included), in bytes: what the
    records take, whatever free pages the file and its WAL keep."""
    size, count, free = store.reader.execute(
        "SELECT * FROM pragma_page_size, pragma_page_count, pragma_freelist_count").fetchone()
    return int(size * (count - free))


@dataclass
class Day:
    day: int
    bytes: int  #: the door kiosk's files after the day
    bytes_before: int  #: and at its start, after the day's GC pass
    live: int  #: the database's pages in use after the day (the WAL's too), in bytes
    live_before: int  #: and at its start, after the day's GC pass
    patients_held: int  #: verifier records held after the day, or patient records
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

    @property
    def call(self) -> int:
        """Turns from a check-in to its call."""
        return max(1, round(CALL_MS / self.turn_ms))

    @property
    def done(self) -> int:
        """Turns from a check-in to its end (seen), after its call."""
        return max(self.call + 1, round(DONE_MS / self.turn_ms))

    @property
    def turns(self) -> int:
        """Turns in a day: one per check-in, then until the last is seen."""
        return self.per_kiosk + self.done


def _takes(method: Callable[..., Any], name: str) -> bool:
    return name in inspect.signature(method).parameters


class Door:
    """The door kiosk: its store, what it is sent, and (with a scope) its GC passes."""

    GC_BUDGET_S = 1.0

    def __init__(self, data: Path, sim: Sim, scoped: bool) -> None:
        self.store = init_store(data, SITE, "A")
        self.data, self.sim = data, sim
        self.feed: Feed = (DoorScope(data.parent / f"{data.name}-hub.db", self.store.node)
                           if scoped else Everything())
        self.gc = scoped
        self.idle = Idle(self.store)
        self.site = Site(self.store.fleet_key, sim.patients, sim.kiosks,
                         verifiers=scoped)
        #: Since issue 14 an ack carries the hub's arrival number, and a page its cursor.
        self.from_hub = _takes(Store.merge, "cursor")
        self.stable = 0  #: the stable point: every replica of the scope has this much

    def close(self) -> None:
        self.store.close()
        if isinstance(self.feed, DoorScope):
            self.feed.close()

    def start(self) -> None:
        start = T0 - DAY_MS // 2
        self._merge(self.site.population(start), start)

    def _merge(self, deltas: list[bytes], now: int) -> int:
        sent = self.feed.deliver(deltas, now, _cursor(now))
        if sent:
            args = {"cursor": _cursor(now)} if self.from_hub else {}
            self.store.merge(sent, now_ms=now + self.sim.turn_ms, **args)
        return len(sent)

    def collect(self, now: int) -> None:
        """GC passes until done, as rounds would run them, at the stable point."""
        if self.gc:
            from protocol.sync.scope import Scope

            scope = Scope("door", SITE, day_of(now))
            while not self.store.collect(scope, self.stable, self.GC_BUDGET_S).done:
                pass

    def day(self, day: int, gc_copy: Path | None = None, measured: bool = True) -> Day:
        """One day; ``measured`` false: no writeback simulated (``write_bytes`` not
        counted), which saves time on days whose writes are not reported."""
        t_start = time.monotonic()
        sim, site, store, data = self.sim, self.site, self.store, self.data
        write_back = rt.write_back if measured else _nothing
        day0 = T0 + day * DAY_MS
        own = staff = merge_w = gc_w = merged = 0
        if gc_copy is not None:
            shutil.copytree(data, gc_copy)  # idle: a consistent copy, WAL and all
        before = _written()
        self.collect(day0 + OPEN_MS)  # the day's first round: yesterday leaves the scope
        self.idle.wait()
        write_back(data)
        gc_w += _written() - before
        bytes_before, live_before = files_bytes(data), live_bytes(store)
        waiting: deque[Visit] = deque()
        for turn in range(sim.turns):
            now = day0 + OPEN_MS + turn * sim.turn_ms
            visits: list[Visit] = []
            if turn < sim.per_kiosk:
                before = _written()
                door_who = site.pick()
                got = store.checkin(passport=site.passports[door_who],
                                    birth_year=site.years[door_who],
                                    reason=site.rng.choice(REASONS), now_ms=now)
                visits.append(Visit(b"", site.pids[door_who], 0, turn, got.record_id))
                self.idle.wait()
                write_back(data)
                own += _written() - before
            before = _written()
            remote: list[bytes] = []
            for v in waiting:
                if turn - v.arrived in (sim.call, sim.done):
                    status = "in-progress" if turn - v.arrived == sim.call else "finished"
                    if v.kiosk == 0:
                        store.set_checkin_status(v.label, status, now_ms=now)
                    else:
                        remote.append(site.status(v, status, now))
                    if status == "finished":
                        remote += site.clinical(v, now)
            while waiting and turn - waiting[0].arrived >= sim.done:
                waiting.popleft()
            entries = store.outbox_batch(now_ms=now)
            args = {"arrived": _cursor(now)} if self.from_hub else {}
            store.outbox_ack((e.seq for e in entries), **args)
            self.idle.wait()
            write_back(data)
            mid = _written()
            staff += mid - before
            if turn < sim.per_kiosk:
                for k in range(1, sim.kiosks):
                    who = site.pick()
                    visit, delta = site.checkin(k, who, turn, now)
                    visits.append(visit)
                    remote += site.verifier(who, now)
                    remote.append(delta)
            if turn < sim.per_kiosk:
                remote += site.verifier(door_who, now)  # the door's check-in, at the hub
            waiting.extend(visits)
            merged += self._merge(remote, now)
            self.idle.wait()
            write_back(data)
            merge_w += _written() - mid
            self.stable = _cursor(now)  # every replica of the scope synced this turn
        db, wal = data / "store.db", data / "store.db-wal"
        counts = store.reader.execute(
            "SELECT (SELECT COUNT(*) FROM records), (SELECT COUNT(*) FROM ops),"
            " (SELECT COUNT(*) FROM records WHERE type = ?),"
            " (SELECT COUNT(*) FROM records WHERE type = 9)",
            [schema.PATIENT.number]).fetchone()
        patients = counts[3] or counts[2]  # verifiers where the hub writes them
        return Day(day + 1, files_bytes(data), bytes_before, live_bytes(store), live_before,
                   patients, db.stat().st_size,
                   wal.stat().st_size if wal.exists() else 0, counts[0], counts[1], merged,
                   sim.per_kiosk, own, staff, merge_w, gc_w,
                   round(time.monotonic() - t_start, 1))


def stable_before(sim: Sim, day: int) -> int:
    """The stable point at the start of day ``day`` (0 is the first): the cursor of the
    day before's last turn."""
    return _cursor(T0 + (day - 1) * DAY_MS + OPEN_MS + (sim.turns - 1) * sim.turn_ms)


def _cursor(now_ms: int) -> int:
    return now_ms * 1000  # the hub's arrival numbers are microseconds


def _nothing(data: Path) -> None:
    pass


def _written() -> int:
    return rt.proc_io(os.getpid())["write_bytes"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--days", type=int, required=True)
    p.add_argument("--patients", type=int, required=True)
    p.add_argument("--kiosks", type=int, default=10)
    p.add_argument("--per-kiosk", type=int, required=True)
    p.add_argument("--scope", choices=("everything", "door"), default="everything")
    p.add_argument("--gc-copy", type=Path, help="copy the data directory here before the "
                   "last day's first GC pass")
    p.add_argument("--measured-days", type=int, help="count bytes written only on the last "
                   "N days (default: every day)")
    a = p.parse_args(argv)
    sim = Sim(a.days, a.patients, a.kiosks, a.per_kiosk)
    door = Door(a.data, sim, a.scope == "door")
    try:
        door.start()
        for day in range(sim.days):
            copy = a.gc_copy if day == sim.days - 1 else None
            measured = a.measured_days is None or day >= sim.days - a.measured_days
            print(json.dumps(asdict(door.day(day, copy, measured))), flush=True)
    finally:
        door.close()
    return 0


def growth(days: Iterable[Day], last: int) -> float:
    """How much the files grew over the last ``last`` days, as a share of their size
    before them."""
    days = list(days)
    if len(days) <= last:
        return float("nan")
    before, end = days[-last - 1].bytes, days[-1].bytes
    return (end - before) / before


if __name__ == "__main__":
    sys.exit(main())
