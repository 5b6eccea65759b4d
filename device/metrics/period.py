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
column (``health``), which is what makes an hour one short line.
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
    rtts: list[float] = field(default_factory=list)
    notable: list[dict[str, Any]] = field(default_factory=list)
    rounds_not_kept: int = 0
    minutes: list[tuple[int, Sample]] = field(default_factory=list)
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
            self.rtts.append(row["rtt_ms"])
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
                "rtt_ms_max": max(self.rtts, default=None),
                "rtt_ms_mean": round(sum(self.rtts) / len(self.rtts), 1) if self.rtts else None,
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

    def health_extremes(self) -> dict[str, Any]:
        rows = [s.row() for _, s in self.minutes]
        temps = [r[3] for r in rows if r[3] is not None]
        return {"rss_mib_max": max((r[0] for r in rows), default=None),
                "available_mib_min": min((r[1] for r in rows), default=None),
                "disk_free_mib_min": min((r[2] for r in rows), default=None),
                "temp_c_max": max(temps, default=None),
                "load1_max": max((r[4] for r in rows), default=None)}

    def line(self, end_ms: int) -> dict[str, Any]:
        """The period as the card keeps it (one JSON line)."""
        return {"start_ms": self.start_ms, "end_ms": end_ms, "sync": self.sync(),
                "usage": self.usage(), "health": self.health(), "rounds": self.notable}
