"""Garbage collection after a sync round, at the hub's stable point.

Theory of operation
-------------------
SPEC.md "Scopes and garbage collection". The hub's welcome names the
kiosk's scope and its stable point (the smallest cursor every live replica
of the scope has acknowledged), verified and kept in ``sync.db``
(``SyncState``). After a round that worked, the sync loop asks the store to
collect (``Store.collect``): records out of the scope with nothing unsynced
go, and records every replica holds lose their write log and tombstones.
The store works in slices, each its own transaction, so a check-in waits for
one slice at most and a crash loses nothing; a pass stops after ``budget_s``
and the next round's goes on.

``Collector`` runs a pass only when there may be something new to collect: the
stable point moved, the scope changed (its day too), the last pass ran out of
time, or the round moved something; and, in one scope, at most once every
``INTERVAL_S``: a pass walks every record, and on a busy kiosk a round
follows nearly every check-in. A kiosk that never had a welcome naming a
stable point collects nothing.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable

from device.store import Store
from device.store.collect import CollectReport
from device.sync.state import SyncState
from protocol.driver.wall_clock import wall_ms
from protocol.sync.scope import Scope

log = logging.getLogger("haven.sync")

#: The most a pass takes (seconds) before it leaves the rest to the next round.
BUDGET_S = 0.5
#: The least time (seconds) between two passes in one scope.
INTERVAL_S = 60.0
#: What a pass dropped (``CollectReport``'s counts), in words.
DROPPED = {"pruned": "records out of scope", "compacted": "write logs",
           "dropped_deleted": "deleted records"}


class Collector:
    """When to collect, from one round to the next."""

    def __init__(self, budget_s: float = BUDGET_S, interval_s: float = INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.budget_s, self.interval_s, self.clock = budget_s, interval_s, clock
        #: what the last finished pass collected at: (scope, stable point)
        self.done_at: tuple[Scope, int] | None = None
        self.last: tuple[Scope, float] | None = None  #: the last pass's scope, and when

    def after_round(self, store: Store, state: SyncState, moved: bool,
                    ) -> CollectReport | None:
        """One pass if there may be something to collect (``moved``: the round pulled
        or pushed something); its report, or None when none ran."""
        scope, stable = state.scope_at(wall_ms() + state.clock_offset), state.stable
        if scope is None or stable is None:
            return None
        if not moved and self.done_at == (scope, stable):
            return None
        now = self.clock()
        if self.last is not None and self.last[0] == scope and now - self.last[1] < self.interval_s:
            return None
        self.last = (scope, now)
        report = store.collect(scope, stable, self.budget_s)
        # A pass that ran out of time leaves the rest for the next round's.
        self.done_at = (scope, stable) if report.done else None
        dropped = {k: v for k, v in dataclasses.asdict(report).items()
                   if k in DROPPED and v}
        if dropped:
            state.note_collected(wall_ms(), dropped)
            log.info("collected by the stable point %d: %s", stable,
                     ", ".join(f"{v} {DROPPED[k]}" for k, v in sorted(dropped.items())))
        return report
