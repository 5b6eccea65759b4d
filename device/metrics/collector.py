"""The runtime's metrics: rounds, health minutes and usage, in memory for the hour,
on the card every few hours, and to the hub as telemetry records.

Theory of operation
-------------------
``Metrics`` is told of each sync round (``round``), each check-in and each
abandoned flow (``checkin``, ``abandoned``: the page's language and screen,
never what was typed), and takes a health sample a minute (``sample_due``,
``sample``). Everything goes into two ``Period`` counts: the hour, which
goes to the card (``ring.MetricsFile``) once over, ``WRITE_EVERY_HOURS``
hours in one write (a power cut loses those, as metrics, not records), or
when the runtime stops; and the period since the last telemetry record.

A telemetry record (``take_telemetry``: levels and extremes, then the
period's sync and usage as JSON text) is due every ``telemetry_every_s``,
``min_gap_s`` after a start, and as soon as ``min_gap_s`` allows when the
state the hub alerts on changed: the disk's or memory's level, the
printer's state, the thermal sensor's. So a kiosk at rest writes a handful
a day (each is a store commit: the card's budget), and the hub hears of a
disk running out, and of its end, within minutes.

Time is the hub's as the kiosk knows it at start (``now_ms``), moved on by
the runtime's monotonic clock, so a wall clock that jumps does not tear a
period, and a simulated clock drives it all in tests and benchmarks. Every
method may be called from any thread.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from device.metrics import reader
from device.metrics.period import OUTCOMES, Period
from device.metrics.ring import DEFAULT_MAX_BYTES, MetricsFile
from device.metrics.samples import Sample
from protocol.sync.telemetry import compact_json

HOUR_MS = 3_600_000
SAMPLE_EVERY_S = 60.0
TELEMETRY_EVERY_S = 24 * 3600.0
#: Hours kept in memory before they are appended in one write: each write costs the
#: card a page or two however short (172 KiB a day an hour at a time, 84 KiB by 4).
WRITE_EVERY_HOURS = 4
MIN_GAP_S = 600.0
#: The state the hub alerts on, by name, and its value when nothing was read yet.
WATCHED = ("storage", "memory", "printer", "thermal")


def round_row(at_ms: int, outcome: str, summary: Any | None, seconds: float) -> dict[str, Any]:
    """One round as the card keeps it: ``summary`` is the engine's (None: no round ran,
    no hub answered)."""
    def n(name: str) -> int:
        return int(getattr(summary, name, 0) or 0)
    sent, lost = n("frames_sent"), n("frames_lost")
    rtt = getattr(summary, "rtt_ms", None)
    return {"t_ms": at_ms, "seconds": round(float(seconds), 3),
            "outcome": outcome if outcome in OUTCOMES else "error",
            "bytes_sent": n("bytes_sent"), "bytes_received": n("bytes_received"),
            "frames_sent": sent, "frames_lost": lost,
            "error_rate": round(lost / sent, 4) if sent else 0.0,
            "rtt_ms": None if rtt is None else float(rtt),
            "pushed": n("pushed"), "pulled": n("pulled")}


class Metrics:
    def __init__(self, data: Path, *, start_ms: int, clock: Callable[[], float],
                 max_bytes: int = DEFAULT_MAX_BYTES,
                 sample_every_s: float = SAMPLE_EVERY_S,
                 telemetry_every_s: float = TELEMETRY_EVERY_S,
                 min_gap_s: float = MIN_GAP_S) -> None:
        """``start_ms``: the time now (ms since 1970, the hub's as the kiosk knows it);
        ``clock``: monotonic seconds that move it on."""
        self.file = MetricsFile(data, max_bytes)
        self._clock, self._base_ms, self._base_s = clock, start_ms, clock()
        self.sample_every_s = sample_every_s
        self.telemetry_every_s, self.min_gap_s = telemetry_every_s, min_gap_s
        self._lock = threading.Lock()
        self.hour = Period(start_ms - start_ms % HOUR_MS)
        self.period = Period(start_ms, keep_minutes=False)
        self._last_sample: int | None = None
        self._last_sent: int | None = None
        self._sent_state: dict[str, str] | None = None
        self.state: dict[str, str] = dict.fromkeys(WATCHED, "unknown")
        self.disk_free_mib: float | None = None
        self._waiting: list[dict[str, Any]] = []  #: hours over, not on the card yet

    def now_ms(self) -> int:
        return self._base_ms + int((self._clock() - self._base_s) * 1000)

    # What happens ----------------------------------------------------------------------

    def round(self, outcome: str, summary: Any | None, seconds: float) -> None:
        with self._lock:
            now = self._roll()
            row = round_row(now, outcome, summary, seconds)
            self.hour.add_round(row)
            self.period.add_round(row)

    def checkin(self, lang: Any, seconds: Any) -> None:
        with self._lock:
            self._roll()
            self.hour.add_checkin(lang, seconds)
            self.period.add_checkin(lang, seconds)

    def abandoned(self, screen: Any, lang: Any) -> None:
        with self._lock:
            self._roll()
            self.hour.add_abandon(screen, lang)
            self.period.add_abandon(screen, lang)

    def sample_due(self) -> bool:
        last = self._last_sample
        return last is None or self.now_ms() - last >= self.sample_every_s * 1000

    def sample(self, sample: Sample, levels: Mapping[str, str]) -> None:
        """A minute's health, with the levels of ``WATCHED`` as the runtime has them."""
        with self._lock:
            now = self._roll()
            self._last_sample = now
            self.hour.add_sample(now, sample)
            self.period.add_sample(now, sample)
            self.state.update({k: str(v) for k, v in levels.items() if k in WATCHED})
            self.state["thermal"] = sample.thermal
            self.disk_free_mib = sample.row()[2]

    # Telemetry -------------------------------------------------------------------------

    def telemetry_due(self) -> bool:
        with self._lock:
            if self._last_sample is None:
                return False
            now = self.now_ms()
            if self._last_sent is None:  # the first, once the start has settled
                return now - self.period.start_ms >= self.min_gap_s * 1000
            since = (now - self._last_sent) / 1000
            return since >= self.telemetry_every_s or (
                since >= self.min_gap_s and self.state != self._sent_state)

    def take_telemetry(self) -> dict[str, Any]:
        """The telemetry record's values for the period since the last, which ends."""
        with self._lock:
            now = self._roll()
            p = self.period
            extremes = p.health_extremes()
            values: dict[str, Any] = {
                "start": p.start_ms, "end": now, "storage": self.state["storage"],
                "memory": self.state["memory"],
                "devices": compact_json({k: self.state[k] for k in ("printer", "thermal")}),
                "summary": compact_json({"sync": p.sync(), "usage": p.usage(),
                                         "health": extremes,
                                         "contact_s": int(self.telemetry_every_s)})}
            for field, value in (("diskFreeMiB", self.disk_free_mib),
                                 ("rssMiB", extremes["rss_mib_max"]),
                                 ("tempMaxC", extremes["temp_c_max"])):
                if value is not None:
                    values[field] = value
            self.period = Period(now, keep_minutes=False)
            self._last_sent = now
            self._sent_state = dict(self.state)
            return values

    def telemetry_failed(self) -> None:
        """The record was not written (a locked or full store): tried again in a while."""
        with self._lock:
            self._sent_state = None

    # The card --------------------------------------------------------------------------

    def _roll(self) -> int:
        """The time now, the hour finished first if it is over."""
        now = self.now_ms()
        if now - self.hour.start_ms >= HOUR_MS:
            self._finish(self.hour.start_ms + HOUR_MS)
            self.hour = Period(now - now % HOUR_MS)
            if len(self._waiting) >= WRITE_EVERY_HOURS:
                self._write()
        return now

    def _finish(self, end_ms: int) -> None:
        h = self.hour
        if h.rounds or h.minutes or h.checkins or h.abandoned:
            self._waiting.append(h.line(end_ms))

    def _write(self) -> None:
        with contextlib.suppress(OSError):  # a full card: the hours are lost, the kiosk goes on
            if self._waiting:
                self.file.append(self._waiting)
        self._waiting = []

    def flush(self) -> None:
        """The hours so far to the card (the runtime stops); the next starts now."""
        with self._lock:
            now = self.now_ms()
            self._finish(now)
            self._write()
            self.hour = Period(now)

    def read(self, since_ms: int | None = None) -> dict[str, Any]:
        """What the card holds and the hours in memory (``reader.read``'s form)."""
        with self._lock:
            held = [*self._waiting, self.hour.line(self.now_ms())]
        return reader.from_lines([*self.file.lines(), *held], since_ms)
