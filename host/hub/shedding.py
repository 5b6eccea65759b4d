"""Surviving the herd: sync rounds in progress up to a bound, the rest told when to come back.

Theory of operation
-------------------
After a regional outage every kiosk of the region comes back within seconds.
Served all at once, each round waits behind all the others for the store,
every round runs past its time limit and is tried again: the hub slows down
for everyone and never catches up. So the hub serves at most ``max_rounds``
sync rounds at once and answers the others "busy, come back in N s" (SPEC.md
"Busy"): a ``close`` with reason ``busy`` and ``retry_ms``. A kiosk waits
that long times a jitter of its own (``device.sync.loop.busy_wait``) and
comes back with a new session.

**What a round is, on the hub.** The kiosk's first message on a
conversation that is not in a round (its ``sync-hello``, or on a session kept
open the first ``sync-pull`` or ``sync-batch`` of its next round) begins
one; every later message keeps it going. The hub cannot see a kiosk's round
end (its outbox is the kiosk's), so a round ends once its conversation has
had no message and no work queued or running for ``quiet`` seconds (a
kiosk sends its next batch as soon as the ack of the last arrives, so a
gap of a round trip is not an end), or once its session is gone and its
work is done. Only a
round's first message is ever refused: a kiosk mid-round, resumed on a new
link included, is never cut off.

**Cheap to refuse.** ``begin`` is a few arithmetic operations on the loop
thread: no store access, no worker job. A busy answer costs the key exchange
that came before the message (which ``admission.HandshakeBudget`` already
rations) and one ``close`` frame; refusals are counted and logged at most a
row an interval (``limits.Refusals``).

**How long to wait: a queue of tickets.** The hub frees about
``max_rounds / held`` rounds a second, ``held`` being the mean time its
rounds held their place lately, from their first message to their end (an
exponential average; ``round_guess + quiet`` before any ended). A kiosk
turned away takes a ticket, the next number, kept by its key; its wait is
the time until the rounds ahead of it have drained at that rate: those in
progress beyond the bound, and the kiosks holding a lower ticket. So each
refusal in a herd is told a little later than the one before, the returns
come back spread out at the rate the hub serves them, and the wait grows
with the queue. A kiosk that comes back before a place is free is told
again, with its own ticket: it keeps its place and is told the shorter wait
left, instead of going to the back behind kiosks that were counted behind
it (which would leave the hub idle later, when the ones pushed back are
still away). A ticket goes when its kiosk begins a round, or when it has not
come back long after its wait.

The kiosk adds a jitter of half its wait at most (SPEC.md "Busy"), so the
hub asks for ``EARLY`` of the expected wait: the returns fall around the
kiosk's turn rather than all after it, and one that is early keeps its
place. Waits are bounded by ``min_retry`` and ``max_retry``.

The clock is the caller's (``now`` in seconds), so tests drive it.
"""

from __future__ import annotations

import bisect
import math
import os
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

#: Weight of the latest round in the mean time a round holds its place.
ROUND_WEIGHT = 0.2
#: The share of the expected wait a busy answer asks for (kiosks add up to half of it).
EARLY = 0.8
#: Seconds a ticket outlives twice its wait, for a kiosk slow to come back.
TICKET_GRACE = 10.0


def default_max_rounds(cpus: int | None = None) -> int:
    """Rounds at once for a hub with ``cpus`` processors (this machine's by default):
    16 a processor, 64 to 256. A Pi-class hub (4 cores, an SD card) gets 64: with one
    job of each round queued at most, a commit (a batch of 100 deltas: about 7 ms on
    a disk, a few times that on a card) waits behind at most 64 others, well within a
    round's time; a server-class one (16 cores and more) 256."""
    return max(64, min(256, 16 * (cpus or os.cpu_count() or 1)))


@dataclass
class _Round:
    started: float
    last: float  #: the round's latest message, or work seen in progress


@dataclass
class _Ticket:
    number: int
    expires: float


@dataclass
class Shedder:
    """Rounds in progress by conversation (any hashable key), and the tickets of kiosks
    told busy, by kiosk (any hashable key). See the module docstring."""

    max_rounds: int
    quiet: float = 1.0  #: seconds without a message or work that end a round
    min_retry: float = 1.0  #: seconds: the least a busy answer asks
    max_retry: float = 300.0  #: seconds: the most a busy answer asks
    round_guess: float = 1.0  #: seconds a round is taken to last before one was measured
    rounds: dict[Hashable, _Round] = field(default_factory=dict)
    tickets: dict[Hashable, _Ticket] = field(default_factory=dict)
    waiting: list[int] = field(default_factory=list)  #: the tickets' numbers, in order
    issued: int = 0  #: tickets handed out since start
    mean_held: float = -1.0  #: seconds a round held its place (negative: none ended yet)
    peak: int = 0  #: the most rounds in progress at once
    admitted: int = 0  #: rounds begun since start
    busy: int = 0  #: busy answers given since start

    def __post_init__(self) -> None:
        if self.max_rounds < 1:
            raise ValueError("max_rounds must be at least 1")
        if not 0 < self.min_retry <= self.max_retry:
            raise ValueError("a busy answer needs 0 < min_retry <= max_retry")

    @property
    def in_progress(self) -> int:
        return len(self.rounds)

    def in_round(self, key: Hashable) -> bool:
        return key in self.rounds

    def message(self, key: Hashable, now: float, kiosk: Hashable | None = None) -> int | None:
        """A message of ``kiosk`` on conversation ``key``: None if it may be handled (its
        round goes on, or a new one begins), else the milliseconds it is told to wait."""
        current = self.rounds.get(key)
        if current is not None:
            current.last = now
            return None
        return self.begin(key, now, kiosk)

    def worked(self, key: Hashable, now: float) -> None:
        """A job of ``key``'s conversation finished at ``now``: its quiet starts here."""
        current = self.rounds.get(key)
        if current is not None:
            current.last = now

    def begin(self, key: Hashable, now: float, kiosk: Hashable | None = None) -> int | None:
        """A new round on ``key`` (of ``kiosk``: None, one that cannot be told again):
        None if admitted, else the busy answer's wait (ms)."""
        if len(self.rounds) < self.max_rounds:
            self.rounds[key] = _Round(now, now)
            self.admitted += 1
            self.peak = max(self.peak, len(self.rounds))
            if kiosk is not None:
                self._drop(kiosk)
            return None
        self.busy += 1
        ticket = self.tickets.get(kiosk) if kiosk is not None else None
        if ticket is None:
            ticket = _Ticket(self.issued, now)
            self.issued += 1
            self.waiting.append(ticket.number)  # the highest number yet: the end
            self.tickets[kiosk if kiosk is not None else object()] = ticket
        wait = self.retry_after(bisect.bisect_left(self.waiting, ticket.number))
        ticket.expires = now + 2 * wait + TICKET_GRACE
        return math.ceil(round(wait * 1000, 6))

    def retry_after(self, position: int | None = None) -> float:
        """Seconds (bounded) a busy answer asks of a kiosk with ``position`` tickets
        ahead of it (None: behind every ticket): ``EARLY`` of the time until the rounds
        ahead of it have drained."""
        if position is None:
            position = len(self.waiting)
        ahead = len(self.rounds) - self.max_rounds + 1 + position
        held = self.mean_held if self.mean_held >= 0 else self.round_guess + self.quiet
        rate = self.max_rounds / max(1e-3, held)  #: rounds freed a second
        return min(self.max_retry, max(self.min_retry, EARLY * ahead / rate))

    def _drop(self, kiosk: Hashable) -> None:
        ticket = self.tickets.pop(kiosk, None)
        if ticket is not None:
            at = bisect.bisect_left(self.waiting, ticket.number)
            if at < len(self.waiting) and self.waiting[at] == ticket.number:
                del self.waiting[at]

    def end(self, key: Hashable, now: float) -> None:
        """The round on ``key`` is over (its session is gone, or it went quiet)."""
        r = self.rounds.pop(key, None)
        if r is not None:
            held = now - r.started
            self.mean_held = held if self.mean_held < 0 else (
                (1 - ROUND_WEIGHT) * self.mean_held + ROUND_WEIGHT * held)

    def sweep(self, now: float, idle: Callable[[Any], bool],
              gone: Callable[[Any], bool]) -> None:
        """End the rounds whose conversation has no work (``idle``) and either lost its
        session (``gone``) or has been quiet for ``quiet`` seconds: no message and no
        work, so that the time the kiosk takes to answer the hub's last reply counts,
        not the time the hub took to make it. Forget the tickets of kiosks that did not
        come back."""
        for key, r in list(self.rounds.items()):
            if not idle(key):
                r.last = now  # ``worked`` moves it again when the job ends
            elif gone(key) or now - r.last >= self.quiet:
                self.end(key, now)
        for kiosk, ticket in list(self.tickets.items()):
            if now >= ticket.expires:
                self._drop(kiosk)

    def report(self) -> dict[str, float | int]:
        return {"in_progress": len(self.rounds), "bound": self.max_rounds, "peak": self.peak,
                "admitted": self.admitted, "busy": self.busy, "waiting": len(self.waiting),
                "mean_held_s": round(max(0.0, self.mean_held), 3),
                "next_retry_s": round(self.retry_after(), 3)}
