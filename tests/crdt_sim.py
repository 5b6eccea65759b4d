"""A fleet of in-memory replicas and an oracle of who saw what, for the CRDT tests."""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field

from protocol.crdt.clock import Dot
from protocol.crdt.delta import decode
from protocol.crdt.replica import Replica
from protocol.errors import LocalProtocolError

T0 = 1_790_000_000_000
RECORDS = [
    (uuid.UUID(int=1).bytes, "patient"),
    (uuid.UUID(int=2).bytes, "prescription"),
    (uuid.UUID(int=3).bytes, "note"),
    (uuid.UUID(int=4).bytes, "patient"),
]
WORDS = ["alpha", "bravo", "charlie", "delta", "echo"]
ALLERGENS = ["penicillin", "latex", "peanut", "sulfa"]
FIELDS = {
    "patient": ["name", "telecom", "address"],
    "prescription": ["medication", "dosageInstruction", "status"],
    "note": ["text", "authorString"],
}


@dataclass
class Fleet:
    replicas: list[Replica]
    skews: list[int]
    now: int = T0
    log: list[bytes] = field(default_factory=list)
    # The oracle: which dots each replica has applied, and each write's past on its record.
    applied: list[set[Dot]] = field(default_factory=list)
    past: dict[Dot, frozenset[Dot]] = field(default_factory=dict)
    record_of: dict[Dot, bytes] = field(default_factory=dict)
    refused: int = 0

    @classmethod
    def make(cls, rng: random.Random, n: int, max_skew_ms: int = 120_000) -> Fleet:
        nodes = rng.sample(range(1, 2**32), n)
        fleet = cls([Replica(node) for node in nodes],
                     [rng.randint(-max_skew_ms, max_skew_ms) for _ in nodes])
        fleet.applied = [set() for _ in nodes]
        return fleet

    def wall(self, i: int) -> int:
        return self.now + self.skews[i]

    def _wrote(self, i: int, data: bytes) -> None:
        delta = decode(data)
        rid = delta.record_id
        seen = {d for d in self.applied[i] if self.record_of[d] == rid}
        closure: set[Dot] = set(seen)
        for d in seen:
            closure |= self.past[d]
        self.past[delta.dot] = frozenset(closure)
        self.record_of[delta.dot] = rid
        self.applied[i].add(delta.dot)
        self.log.append(data)

    def deliver(self, k: int, i: int) -> None:
        data = self.log[k]
        self.replicas[i].receive(data, self.wall(i))
        self.applied[i].add(decode(data).dot)

    def write(self, rng: random.Random, i: int) -> None:
        """One random local write at replica ``i`` (a refused one changes nothing)."""
        rep = self.replicas[i]
        rid, tname = rng.choice(RECORDS)
        view = rep.view(rid)
        choice = rng.random()
        try:
            if view is not None and view.held and choice < 0.7:
                conflict = rng.choice([c for c in view.conflicts if c.severity == "hold"])
                if rng.random() < 0.5:
                    keep = rng.choice(conflict.versions).id
                    data = rep.resolve(conflict.id, self.wall(i), keep=keep)
                else:
                    fname = rng.choice(FIELDS[tname])
                    data = rep.resolve(conflict.id, self.wall(i),
                                       values={fname: rng.choice(WORDS)})
            elif view is not None and not view.deleted and choice < 0.12:
                data = rep.delete(rid, self.wall(i))
            elif tname == "patient" and choice < 0.45:
                elems = rng.sample(ALLERGENS, rng.randint(1, 2))
                if rng.random() < 0.5:
                    data = rep.put(rid, tname, self.wall(i), add={"allergies": elems})
                else:
                    data = rep.put(rid, tname, self.wall(i), remove={"allergies": elems})
            else:
                names = rng.sample(FIELDS[tname], rng.randint(1, 2))
                values = {n: rng.choice(WORDS) for n in names}
                data = rep.put(rid, tname, self.wall(i), values)
        except LocalProtocolError:
            self.refused += 1
            return
        self._wrote(i, data)

    def step(self, rng: random.Random) -> None:
        self.now += rng.randint(0, 3000)
        i = rng.randrange(len(self.replicas))
        if self.log and rng.random() < 0.5:
            for _ in range(rng.randint(1, 4)):
                self.deliver(rng.randrange(len(self.log)), i)
        else:
            self.write(rng, i)

    def deliver_everything(self, rng: random.Random) -> None:
        """Every delta to every replica, shuffled, with duplicates."""
        self.now += 10_000
        for i in range(len(self.replicas)):
            order = list(range(len(self.log)))
            order += rng.sample(order, len(order) // 3)
            rng.shuffle(order)
            for k in order:
                self.deliver(k, i)

    def oracle_heads(self, rid: bytes) -> set[Dot]:
        dots = {d for d, r in self.record_of.items() if r == rid}
        covered: set[Dot] = set()
        for d in dots:
            covered |= self.past[d]
        return dots - covered
