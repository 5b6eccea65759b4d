"""What the kiosk keeps of its relay trips, in ``sync.db``'s meta rows.

Theory of operation
-------------------
``up``: the last sequence given to a bundle this kiosk wrote (taken, and kept,
before the bundle is written: never given twice). ``down``: the hub's answers
applied (a ``ReplayWindow``). ``mark``: the last export's sequence and the batch
the hub had acknowledged then: an answer whose welcome names an older
checkpoint than ours is one that live sync (or a later answer) overtook, and
is not taken for a hub restored from a backup (which would send everything
again), unless it answers our last export and nothing was acknowledged since.

``RelayLedger`` is the sync round's storage (``KioskLedger``) but for the
hub's time: an answer's welcome time is the hub's clock when it answered,
hours or days ago, so it is kept as a lower bound of trusted time
(``TrustedClock.note_at_least``), and of the clock offset: raised to it when
our clock is behind even that, never lowered (pulled deltas are checked
against our clock plus the offset).
"""

from __future__ import annotations

from device.sync.engine import KioskLedger
from device.sync.state import SyncState
from device.tech.trusted_time import SIGNED
from protocol.driver.wall_clock import wall_ms
from protocol.sync.relay import ReplayWindow

UP, DOWN_TOP, DOWN_MASK = "relay_up", "relay_down_top", "relay_down_mask"
MARK_SEQ, MARK_ACKED = "relay_mark_seq", "relay_mark_acked"


class RelayLedger(KioskLedger):
    def note_clock_offset(self, offset_ms: int) -> None:
        # the welcome's time (our clock's reading plus ``offset_ms``) is the hub's when
        # it answered: a lower bound of the time now, and so of the offset
        self.hub_time.note_at_least(SIGNED, offset_ms + wall_ms())
        if offset_ms > self.state.clock_offset:
            self.state.note_clock_offset(offset_ms)


def take_up(state: SyncState, count: int) -> int:
    """The first of ``count`` new sequences for bundles, kept before they are used."""
    first = state.get_int(UP) + 1
    state.set(UP, first + count - 1)
    state.flush(force=True)
    return first


def mark(state: SyncState, seq: int) -> None:
    state.set(MARK_SEQ, seq)
    state.set(MARK_ACKED, state.acked_head())
    state.flush(force=True)


def overtaken(state: SyncState, answers: int, hub_seq: int) -> bool:
    """Whether an answer to our bundle ``answers``, whose welcome names the hub's
    checkpoint ``hub_seq``, is older than what we know (see the module's docstring)."""
    acked = state.acked_head()
    if hub_seq >= acked:
        return False
    return not (answers == state.get_int(MARK_SEQ) and acked == state.get_int(MARK_ACKED))


def down_window(state: SyncState) -> ReplayWindow:
    return ReplayWindow(state.get_int(DOWN_TOP), state.get_int(DOWN_MASK))


def keep_down_window(state: SyncState, window: ReplayWindow) -> None:
    state.set(DOWN_TOP, window.top)
    state.set(DOWN_MASK, str(window.mask))  # 64 bits: more than SQLite's signed integers
    state.flush(force=True)
