"""What one period (an hour on the card, or the time since the last telemetry record)
adds up to: sync rounds, health minutes, usage.

Theory of operation
-------------------
``Period`` counts; it never keeps what would identify a patient. Usage keys
come from closed vocabularies (``LANGUAGES``, ``SCREENS``): anything else
counts as ``other``. A check-in's time is clamped to an hour. Rounds that
moved something or failed are kept one by one (at most ``MAX_ROUNDS`` a
period, the rest only counted); an idle round that worked is only counted,
as a kiosk makes thousands a day. Health is kept per minute, column by
column (``health``), which is what makes an hour one short line;
a period that is not an hour keeps only the extremes (``keep_minutes``
false), so nothing in it grows with time, whenever it ends.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from device.metrics.samples import Sample

#: The page's languages and screens (device/ui: app.LANGUAGES, static/index.html).
LANGUAGES = frozenset({"en", "fr", "ar", "sw", "prs"})
SCREENS = frozenset({"s-start", "s-year", "s-name", "s-consent", "s-reason", "s-ticket"})
OTHER = "other"
#: Round outcomes (the runtime's: ``device.status``), "refused" for a hub's refusal.
OUTCOMES = ("synced", "offline", "error", "refused")
MAX_ROUNDS = 60
MAX_CHECKIN_S = 3600.0


_PICK = (max, min, min, max, max)


def language(code: Any) -> str:
    return code if isinstance(code, str) and code in LANGUAGES else OTHER


def screen(name: Any) -> str:
    return name if isinstance(name, str) and name in SCREENS else OTHER


@dataclass
class Period:
    start_ms: int
    rounds: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    seconds_max: float = 0.0
    bytes_sent: int = 0
    bytes_received: int = 0
    frames_sent: int = 0
    frames_lost: int = 0
    rtt_n: int = 0
    rtt_total: float = 0.0
    rtt_max: float | None = None
    notable: list[dict[str, Any]] = field(default_factory=list)
    rounds_not_kept: int = 0
    keep_minutes: bool = True
    minutes: list[tuple[int, Sample]] = field(default_factory=list)
    #: The minutes' extremes: rss max, available min, disk min, temperature max, load max
    extremes: list[float | None] = field(default_factory=lambda: [None] * 5)
    checkins: int = 0
    languages: Counter[str] = field(default_factory=Counter)
    abandoned: Counter[str] = field(default_factory=Counter)
    checkin_n: int = 0
    checkin_total: float = 0.0
    checkin_max: float = 0.0

    def add_round(self, row: dict[str, Any]) -> None:
        """One round (``collector.round_row``)."""
        self.rounds += 1
        self.outcomes[row["outcome"]] += 1
        self.seconds += row["seconds"]
        self.seconds_max = max(self.seconds_max, row["seconds"])
        self.bytes_sent += row["bytes_sent"]
        self.bytes_received += row["bytes_received"]
        self.frames_sent += row["frames_sent"]
        self.frames_lost += row["frames_lost"]
        if row["rtt_ms"] is not None:
            self.rtt_n += 1
            self.rtt_total += row["rtt_ms"]
            self.rtt_max = max(self.rtt_max or 0.0, row["rtt_ms"])
        if row["outcome"] != "synced" or row["pushed"] or row["pulled"]:
            if len(self.notable) < MAX_ROUNDS:
                self.notable.append(row)
            else:
                self.rounds_not_kept += 1

    def add_checkin(self, lang: Any, seconds: Any) -> None:
        self.checkins += 1
        self.languages[language(lang)] += 1
        if isinstance(seconds, (int, float)) and seconds == seconds and seconds >= 0:
            s = min(float(seconds), MAX_CHECKIN_S)
            self.checkin_n += 1
            self.checkin_total += s
            self.checkin_max = max(self.checkin_max, s)

    def add_abandon(self, where: Any, lang: Any) -> None:
        self.abandoned[screen(where)] += 1
        self.languages[language(lang)] += 0  # seen, even if nobody finished in it

    def sync(self) -> dict[str, Any]:
        return {"rounds": self.rounds, "ok": self.outcomes["synced"],
                "failed": self.rounds - self.outcomes["synced"],
                "outcomes": dict(sorted(self.outcomes.items())),
                "seconds": round(self.seconds, 2), "seconds_max": round(self.seconds_max, 2),
                "bytes_sent": self.bytes_sent, "bytes_received": self.bytes_received,
                "frames_sent": self.frames_sent, "frames_lost": self.frames_lost,
                "rtt_ms_max": self.rtt_max,
                "rtt_ms_mean": round(self.rtt_total / self.rtt_n, 1) if self.rtt_n else None,
                "rounds_not_kept": self.rounds_not_kept}

    def usage(self) -> dict[str, Any]:
        return {"checkins": self.checkins,
                "languages": {k: v for k, v in sorted(self.languages.items()) if v},
                "abandoned": dict(sorted(self.abandoned.items())),
                "checkin_seconds": {"count": self.checkin_n,
                                    "total": round(self.checkin_total, 1),
                                    "max": round(self.checkin_max, 1)}}

    def health(self) -> dict[str, Any]:
        """The minutes column by column: ``t`` seconds after ``start_ms``."""
        cols: dict[str, list[Any]] = {"t": [], "rss": [], "avail": [], "disk": [], "temp": [],
                                      "load": []}
        for at, sample in self.minutes:
            cols["t"].append(max(0, (at - self.start_ms) // 1000))
            for name, value in zip(("rss", "avail", "disk", "temp", "load"), sample.row(),
                                   strict=True):
                cols[name].append(value)
        return cols

    def add_sample(self, at_ms: int, sample: Sample) -> None:
        if self.keep_minutes:
            self.minutes.append((at_ms, sample))
        for i, (value, pick) in enumerate(zip(sample.row(), _PICK, strict=True)):
            held = self.extremes[i]
            if value is not None:
                self.extremes[i] = value if held is None else pick(held, value)

    def health_extremes(self) -> dict[str, Any]:
        return dict(zip(("rss_mib_max", "available_mib_min", "disk_free_mib_min",
                         "temp_c_max", "load1_max"), self.extremes, strict=True))

    def line(self, end_ms: int) -> dict[str, Any]:
        """The period as the card keeps it (one JSON line)."""
        return {"start_ms": self.start_ms, "end_ms": end_ms, "sync": self.sync(),
                "usage": self.usage(), "health": self.health(), "rounds": self.notable}
