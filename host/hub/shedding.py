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
work is done. Only a round's first message is ever refused: a kiosk that
answers within ``quiet``, resumed on a new link or not, is never cut off
mid-round (one slower than that may be told busy at its next message; it
sends it again after its wait, and nothing is lost).

**Cheap to refuse.** ``begin`` is a few dictionary and list operations on
the loop thread: no store access, no worker job. A busy answer costs the key exchange
that came before the message (which ``admission.HandshakeBudget`` already
rations) and one ``close`` frame; refusals are counted and logged at most a
row an interval (``limits.Refusals``).

**How long to wait: a queue of tickets.** The hub's pace (``rate``) is the
rate rounds ended lately while kiosks waited their turn (the last ``ENDS``
ends); before that, ``max_rounds`` over the mean time a round held its
place (``round_guess + quiet`` before any ended). A kiosk turned away takes
a ticket, the next number, kept by its key; its wait is the time until the
rounds ahead of it have drained at that pace: those in progress beyond the
bound, the first messages held (below) and the kiosks holding a lower
ticket. So each refusal in a herd is told a little later than the one
before, the returns come back spread out at the pace the hub serves them,
and the wait grows with the queue. A kiosk that comes back before a place
is free keeps its place and is told the shorter wait left, instead of
going to the back behind kiosks that were counted behind it (which would
leave the hub idle later, when the ones pushed back are still away). A
ticket goes when its kiosk begins a round, or when it has not come back
long after its wait. Waits are bounded by ``min_retry`` and ``max_retry``;
the kiosk adds a jitter of up to half (SPEC.md "Busy").

**Held, not bounced.** Each busy answer costs both ends a key exchange, and
a kiosk whose turn is near would be bounced again and again. So a first
message whose place is expected within ``hold`` seconds, while fewer than
``max_rounds`` are held, waits on the loop (``HOLD``: the server keeps its
bytes, nothing reaches the store) and goes, first come first, as soon as a
round ends (``sweep``); held ``hold`` seconds, it is told busy after all,
keeping its place in the queue.

The clock is the caller's (``now`` in seconds), so tests drive it.
"""

from __future__ import annotations

import bisect
import math
import os
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

#: Weight of the latest round in the mean time a round holds its place.
ROUND_WEIGHT = 0.2
#: The share of the expected wait a busy answer asks for (kiosks add up to half of it).
EARLY = 1.0
GO, HOLD = "go", "hold"  #: ``Shedder.message``'s verdicts, besides a busy answer's wait
#: Round ends the hub's pace is measured over.
ENDS = 64
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
class _Hold:
    since: float
    kiosk: Hashable | None
    number: int  #: its ticket's number, should it be told busy after all


@dataclass
class Shedder:
    """Rounds in progress by conversation (any hashable key), and the tickets of kiosks
    told busy, by kiosk (any hashable key). See the module docstring."""

    max_rounds: int
    quiet: float = 1.0  #: seconds without a message or work that end a round
    min_retry: float = 1.0  #: seconds: the least a busy answer asks
    max_retry: float = 300.0  #: seconds: the most a busy answer asks
    round_guess: float = 1.0  #: seconds a round is taken to last before one was measured
    hold: float = 2.0  #: seconds a first message may wait for a place (0: none waits)
    rounds: dict[Hashable, _Round] = field(default_factory=dict)
    #: Conversations whose first message waits for a place, first come first.
    holding: dict[Hashable, _Hold] = field(default_factory=dict)
    tickets: dict[Hashable, _Ticket] = field(default_factory=dict)
    waiting: list[int] = field(default_factory=list)  #: the tickets' numbers, in order
    issued: int = 0  #: tickets handed out since start
    mean_held: float = -1.0  #: seconds a round held its place (negative: none ended yet)
    #: When the latest rounds ended while kiosks waited their turn.
    ends: deque[float] = field(default_factory=lambda: deque(maxlen=ENDS))
    peak: int = 0  #: the most rounds in progress at once
    admitted: int = 0  #: rounds begun since start
    busy: int = 0  #: busy answers given since start
    held: int = 0  #: first messages that waited for a place since start

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

    def is_holding(self, key: Hashable) -> bool:
        return key in self.holding

    def message(self, key: Hashable, now: float, kiosk: Hashable | None = None) -> str | int:
        """A message of ``kiosk`` on conversation ``key``: ``GO`` if it may be handled (its
        round goes on, or a new one begins), ``HOLD`` if it waits for a place (``sweep``
        lets it go, or tells it busy), else the milliseconds it is told to wait."""
        current = self.rounds.get(key)
        if current is not None:
            current.last = now
            return GO
        if key in self.holding:
            return HOLD  # a later message of a round that waits: after the first
        return self.begin(key, now, kiosk)

    def worked(self, key: Hashable, now: float) -> None:
        """A job of ``key``'s conversation finished at ``now``: its quiet starts here."""
        current = self.rounds.get(key)
        if current is not None:
            current.last = now

    def begin(self, key: Hashable, now: float, kiosk: Hashable | None = None) -> str | int:
        """A new round on ``key`` (of ``kiosk``: None, one that cannot be told again):
        ``GO``, ``HOLD`` or the busy answer's wait (ms), as ``message``."""
        if len(self.rounds) < self.max_rounds and not self.holding:
            self._admit(key, kiosk, now)
            return GO
        ticket = self.tickets.get(kiosk) if kiosk is not None else None
        number = ticket.number if ticket is not None else self.issued
        position = bisect.bisect_left(self.waiting, number)
        if self.hold > 0 and len(self.holding) < self.max_rounds \
                and self.expected(position) <= self.hold:
            if ticket is None:
                self.issued += 1
            else:
                self._drop(kiosk)
            self.holding[key] = _Hold(now, kiosk, number)
            self.held += 1
            return HOLD
        return self._busy(kiosk, number, now)

    def _admit(self, key: Hashable, kiosk: Hashable | None, now: float) -> None:
        self.rounds[key] = _Round(now, now)
        self.admitted += 1
        self.peak = max(self.peak, len(self.rounds))
        if kiosk is not None:
            self._drop(kiosk)

    def _busy(self, kiosk: Hashable | None, number: int, now: float) -> int:
        """The busy answer's wait (ms) for ``kiosk``, holding ticket ``number`` from now
        on (``issued``: a new one, at the end)."""
        self.busy += 1
        ticket = self.tickets.get(kiosk) if kiosk is not None else None
        if ticket is None:
            ticket = _Ticket(number, now)
            self.issued = max(self.issued, number + 1)
            bisect.insort(self.waiting, number)
            self.tickets[kiosk if kiosk is not None else object()] = ticket
        wait = self.retry_after(bisect.bisect_left(self.waiting, ticket.number))
        ticket.expires = now + 2 * wait + TICKET_GRACE
        return math.ceil(round(wait * 1000, 6))

    def rate(self) -> float:
        """Rounds the hub frees a second: measured over its last ``ENDS`` round ends
        while rounds were being turned away (the rate the queue drains at); before
        that, ``max_rounds`` over the mean time a round held its place."""
        ends = self.ends
        if len(ends) >= 2 and ends[-1] > ends[0]:
            return (len(ends) - 1) / (ends[-1] - ends[0])
        held = self.mean_held if self.mean_held >= 0 else self.round_guess + self.quiet
        return self.max_rounds / max(1e-3, held)

    def expected(self, position: int | None = None) -> float:
        """Seconds until a place is free for a kiosk with ``position`` tickets ahead of it
        (None: behind every ticket): the rounds in progress beyond the bound, the first
        messages held and those tickets drained at ``rate``."""
        if position is None:
            position = len(self.waiting)
        ahead = len(self.rounds) - self.max_rounds + 1 + len(self.holding) + position
        return max(0.0, ahead / self.rate())

    def retry_after(self, position: int | None = None) -> float:
        """Seconds (bounded) a busy answer asks: ``EARLY`` of ``expected``."""
        return min(self.max_retry, max(self.min_retry, EARLY * self.expected(position)))

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
            if self.tickets or self.holding:  # kiosks wait: at the bound, ends are its pace
                self.ends.append(now)

    def sweep(self, now: float, idle: Callable[[Any], bool], gone: Callable[[Any], bool],
              ) -> tuple[list[Any], list[tuple[Any, int]]]:
        """End the rounds whose conversation has no work (``idle``) and either lost its
        session (``gone``) or has been quiet for ``quiet`` seconds: no message and no
        work, so that the time the kiosk takes to answer the hub's last reply counts,
        not the time the hub took to make it. Then the places free go to the first
        messages held, first come first; those held ``hold`` seconds are told busy
        (keeping their place in the queue). Forget the tickets of kiosks that did not
        come back. Returns the held conversations let go now, and those told busy with
        their wait (ms); a held one whose session is gone is forgotten."""
        for key, r in list(self.rounds.items()):
            if not idle(key):
                r.last = now  # ``worked`` moves it again when the job ends
            elif gone(key) or now - r.last >= self.quiet:
                self.end(key, now)
        go: list[Any] = []
        told: list[tuple[Any, int]] = []
        for key, h in list(self.holding.items()):
            if gone(key):
                del self.holding[key]
            elif len(self.rounds) < self.max_rounds:
                del self.holding[key]
                self._admit(key, h.kiosk, now)
                go.append(key)
            elif now - h.since >= self.hold:
                del self.holding[key]
                told.append((key, self._busy(h.kiosk, h.number, now)))
        for kiosk, ticket in list(self.tickets.items()):
            if now >= ticket.expires:
                self._drop(kiosk)
        return go, told

    def report(self) -> dict[str, float | int]:
        return {"in_progress": len(self.rounds), "bound": self.max_rounds, "peak": self.peak,
                "admitted": self.admitted, "busy": self.busy, "waiting": len(self.waiting),
                "held": self.held, "holding": len(self.holding),
                "mean_held_s": round(max(0.0, self.mean_held), 3),
                "rate_per_s": round(self.rate(), 2),
                "next_retry_s": round(self.retry_after(), 3)}
