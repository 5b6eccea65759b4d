"""``haven report``: a debug bundle as data (``--json``) and as one HTML page (``--html``).

Theory of operation
-------------------
``report_data(bundle)`` reads the bundle's sections into one JSON-able map:
the summary (sentences a field worker reads first), the sync rounds, link
quality, bytes per day, RSS and free disk, usage, conflicts and quarantines,
the last errors with their counts, crashes, the audit chain and the manifest.
``--json`` prints it; ``render_html`` lays the same map out as a page with
inline SVG (``host.bundle.svg``) and inline CSS, no script, and a
Content-Security-Policy that forbids every fetch: the file opens offline and
asks nothing of any network. Times are UTC; "ago" is counted from when the
bundle was made, on the hub's clock where the kiosk knew the offset.
"""

from __future__ import annotations

import html
import time
from collections import Counter
from collections.abc import Iterable
from typing import Any

from host.bundle import svg
from protocol import debug_bundle as fmt

LAST_ERRORS = 10
WARNING = 2
OUTCOME_COLOURS = {"synced": "#2b8a3e", "ok": "#2b8a3e", "offline": "#868e96",
                   "error": "#d9480f", "refused": "#c92a2a"}
DAY_MS = 86_400_000


def _sec(bundle: fmt.Bundle, name: str) -> Any:
    """A section's data; None if the bundle lacks it or it is not JSON (left out)."""
    try:
        return bundle.section(name) if name in bundle.members else None
    except ValueError:
        return None


def report_data(bundle: fmt.Bundle, checked_against: str) -> dict[str, Any]:
    m = bundle.manifest
    status = _sec(bundle, "status.json") or {}
    metrics = _sec(bundle, "metrics.json") or {}
    hours = [h for h in metrics.get("hours", []) if isinstance(h, dict)]
    # A bundle keeps each hour's rounds with it; the metrics reader's form has them apart.
    held = [*metrics.get("rounds", []), *(r for h in hours for r in h.get("rounds") or [])]
    rounds = sorted((r for r in held if isinstance(r, dict) and isinstance(r.get("t_ms"), int)),
                    key=lambda r: r["t_ms"])
    clock = m.get("clock") or {}
    now = m.get("made_ms") or 0
    if isinstance(clock.get("offset_ms"), int):
        now -= clock["offset_ms"]  # on the hub's clock
    store = status.get("store") or {}
    warnings = _warnings(bundle.log_entries())
    data: dict[str, Any] = {
        "kiosk": m.get("kiosk"), "site": m.get("site"), "made_ms": now,
        "signature": f"signed by kiosk {m.get('kiosk')}, checked against {checked_against}",
        "manifest": m,
        "rounds": [{k: r.get(k) for k in ("t_ms", "outcome", "seconds", "rtt_ms",
                                          "error_rate", "frames_lost", "frames_sent",
                                          "bytes_sent", "bytes_received")} for r in rounds],
        "bytes_per_day": _bytes_per_day(hours),
        "hours": [{k: h.get(k) for k in ("start_ms", "end_ms", "sync")} for h in hours],
        "health": [h for hour in hours for h in hour.get("health", []) if isinstance(h, dict)],
        "checkins_per_hour": [{"t_ms": h.get("start_ms"),
                               "checkins": (h.get("usage") or {}).get("checkins", 0)}
                              for h in hours],
        "languages": _sum_maps((h.get("usage") or {}).get("languages") for h in hours),
        "abandoned": _sum_maps((h.get("usage") or {}).get("abandoned") for h in hours),
        "checkin_seconds": _checkin_seconds(hours),
        "conflicts": store.get("conflicts") or [],
        "quarantine": store.get("quarantine") or [],
        "errors": _errors(warnings)[:LAST_ERRORS],
        "crashes": _sec(bundle, "crashes.json") or [],
        "audit": _audit(_sec(bundle, "audit.json")),
        "status": status,
        "link": _sec(bundle, "link.json") or {},
        "redaction": _sec(bundle, "redaction.json") or {},
    }
    data["summary"] = summary(data, status, now, warnings)
    return data


def _bytes_per_day(hours: list[dict[str, Any]]) -> list[dict[str, Any]]:
    days: dict[int, list[int]] = {}
    for h in hours:
        sync = h.get("sync") or {}
        day = int(h.get("start_ms", 0)) // DAY_MS * DAY_MS
        got = days.setdefault(day, [0, 0])
        got[0] += int(sync.get("bytes_sent", 0) or 0)
        got[1] += int(sync.get("bytes_received", 0) or 0)
    return [{"day_ms": d, "sent": s, "received": r} for d, (s, r) in sorted(days.items())]


def _sum_maps(maps: Iterable[Any]) -> dict[str, int]:
    total: Counter[str] = Counter()
    for one in maps:
        if isinstance(one, dict):
            total.update({str(k): int(v) for k, v in one.items() if isinstance(v, int)})
    return dict(total.most_common())


def _checkin_seconds(hours: list[dict[str, Any]]) -> dict[str, Any]:
    count = total = top = 0.0
    for h in hours:
        s = (h.get("usage") or {}).get("checkin_seconds") or {}
        count += s.get("count", 0) or 0
        total += s.get("total", 0) or 0
        top = max(top, s.get("max", 0) or 0)
    return {"count": int(count), "mean": round(total / count, 1) if count else None,
            "max": top}


def _warnings(entries: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each warning or worse of the logs: its time (ms), logger, template and level."""
    return [{"t_ms": int(e.get("t", 0)) // 1000, "mod": str(e.get("mod", "")),
             "ev": str(e.get("ev", "")), "level": e["lvl"]}
            for e in entries if isinstance(e.get("lvl"), int) and e["lvl"] >= WARNING]


def _errors(warnings: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Warnings by (logger, template): counts, worst level, first and last time; the
    latest first."""
    seen: dict[tuple[str, str], dict[str, Any]] = {}
    for w in warnings:
        t = w["t_ms"]
        row = seen.setdefault((w["mod"], w["ev"]), {
            "mod": w["mod"], "ev": w["ev"], "level": w["level"], "count": 0,
            "first_ms": t, "last_ms": t})
        row["count"] += 1
        row["level"] = max(row["level"], w["level"])
        row["first_ms"], row["last_ms"] = min(row["first_ms"], t), max(row["last_ms"], t)
    return sorted(seen.values(), key=lambda r: -r["last_ms"])


def _audit(audit: Any) -> dict[str, Any]:
    if not isinstance(audit, dict):
        return {"ok": None, "entries": 0, "gaps": [], "last": []}
    entries = audit.get("entries") or []
    return {"ok": audit.get("ok"), "entries": len(entries), "gaps": audit.get("gaps") or [],
            "last": [{k: e.get(k) for k in ("seq", "time", "who", "what", "result", "status")}
                     for e in entries[-10:]]}


# The summary ---------------------------------------------------------------------------

def ago(ms: float, now: float) -> str:
    seconds = max(0.0, (now - ms) / 1000)
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            n = int(seconds // size)
            return f"{n} {unit}{'s' if n != 1 else ''} ago"
    return "just now"


def when(ms: float) -> str:
    return time.strftime("%d %b %H:%M UTC", time.gmtime(ms / 1000))


def summary(data: dict[str, Any], status: dict[str, Any], now: float,
            warnings: list[dict[str, Any]]) -> list[str]:
    """What a field worker reads first, most urgent first."""
    out = [_sync_line(data["rounds"], data["hours"], status, now, warnings)]
    health = data["health"]
    if health:
        last = health[-1]
        low = min(health, key=lambda h: h.get("disk_free_mib") or 0)
        out.append(f"Free disk {last.get('disk_free_mib', 0):.0f} MiB (lowest "
                   f"{low.get('disk_free_mib', 0):.0f} MiB, {when(low.get('t_ms', 0))}); "
                   f"memory in use {last.get('rss_mib', 0):.0f} MiB, peak "
                   f"{max(h.get('rss_mib') or 0 for h in health):.0f} MiB.")
    errors = data["errors"]
    if errors:
        top = max(errors, key=lambda e: e["count"])
        out.append(f"{sum(e['count'] for e in errors)} warnings and errors in the logs; the "
                   f"most frequent: \u201c{top['ev']}\u201d ({top['mod']}, {top['count']}\u00d7,"
                   f" last {when(top['last_ms'])}).")
    if data["crashes"]:
        last_crash = data["crashes"][-1]
        out.append(f"{len(data['crashes'])} crash{'es' if len(data['crashes']) != 1 else ''}"
                   f", the last {when(int(last_crash.get('t', 0)) // 1000)}: "
                   f"{last_crash.get('exc', 'an exception')}.")
    conflicts = sum(c.get("count", 0) for c in data["conflicts"])
    quarantined = sum(q.get("count", 0) for q in data["quarantine"])
    if conflicts or quarantined:
        out.append(f"{conflicts} conflict{'s' if conflicts != 1 else ''} held for review, "
                   f"{quarantined} quarantined delta{'s' if quarantined != 1 else ''}.")
    audit = data["audit"]
    if audit["ok"] is False:
        out.append(f"The audit chain has gaps or bad entries ({len(audit['gaps'])} gaps): "
                   "report it to the hub's operator.")
    offset = (data["manifest"].get("clock") or {}).get("offset_ms")
    if isinstance(offset, int) and abs(offset) > 60_000:
        out.append(f"The kiosk's clock is {abs(offset) / 60_000:.0f} minutes "
                   f"{'ahead of' if offset > 0 else 'behind'} the hub's.")
    return out


def _sync_line(rounds: list[dict[str, Any]], hours: list[dict[str, Any]],
               status: dict[str, Any], now: float, warnings: list[dict[str, Any]]) -> str:
    good = [r["t_ms"] for r in rounds if r.get("outcome") in ("synced", "ok")]
    # Rounds that moved nothing are only counted in their hour: its end bounds them.
    for h in hours:
        start, end = h.get("start_ms"), h.get("end_ms")
        counted = ((h.get("sync") or {}).get("outcomes") or {}).get("synced") or 0
        if isinstance(start, int) and isinstance(end, int) and counted > sum(
                1 for t in good if start <= t < end):
            good.append(min(end, int(now)))
    last_ok = max(good) if good else None
    failed = [r for r in rounds if last_ok is None or r.get("t_ms", 0) > last_ok]
    failed = [r for r in failed if r.get("outcome") not in ("synced", "ok")]
    if last_ok is None and not rounds:
        state = (status.get("sync") or {}).get("state") or "unknown"
        return f"No sync round recorded in this bundle; the kiosk says it is {state}."
    if last_ok is None:
        return (f"Never synced in this bundle's span: {len(failed)} rounds failed "
                f"({_outcomes(failed)}) since {when(failed[0]['t_ms'])}.")
    line = f"Last synced {ago(last_ok, now)} ({when(last_ok)})"
    if failed:
        return (f"{line}: {len(failed)} rounds failed since ({_outcomes(failed)}); the link "
                f"has been failing since {when(failed[0]['t_ms'])}"
                + _logged_since(warnings, last_ok) + ".")
    return f"{line}; every round since went through."


def _logged_since(warnings: list[dict[str, Any]], since: int) -> str:
    """What the logs said most often since ``since``: the likeliest cause, in its words."""
    top = max(_errors(w for w in warnings if w["t_ms"] > since), key=lambda r: r["count"],
              default=None)
    if top is None:
        return ""
    return (f"; the logs since say most often \u201c{top['ev']}\u201d ({top['mod']}, "
            f"{top['count']}\u00d7, from {when(top['first_ms'])})")


def _outcomes(rounds: list[dict[str, Any]]) -> str:
    return ", ".join(f"{n} {k}" for k, n in Counter(
        str(r.get("outcome")) for r in rounds).most_common())


# HTML ----------------------------------------------------------------------------------

CSS = """body{font:15px/1.45 system-ui,sans-serif;margin:24px auto;max-width:760px;color:#222}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 6px;border-bottom:1px solid #ddd}
.summary{background:#fff8e1;border:1px solid #f0d58c;padding:10px 16px;border-radius:6px}
.summary li{margin:4px 0}.meta{color:#555;font-size:13px}table{border-collapse:collapse;width:100%}
td,th{text-align:left;padding:3px 6px;border-bottom:1px solid #eee;font-size:13px}
svg.plot{display:block;margin:8px 0}svg .t{font-size:13px;font-weight:600}
svg .a{font-size:10px;fill:#555}svg .g{stroke:#eee}"""
CSP = ("default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
       "form-action 'none'; base-uri 'none'")


def _e(value: Any) -> str:
    return html.escape(str(value))


def _table(head: list[str], rows: list[list[Any]]) -> str:
    if not rows:
        return "<p class='meta'>None.</p>"
    return ("<table><tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>"
            + "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>"
                      for r in rows) + "</table>")


def render_html(data: dict[str, Any]) -> str:
    m = data["manifest"]
    rounds = data["rounds"]
    health = data["health"]
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<meta http-equiv='Content-Security-Policy' content=\"{CSP}\">",
        f"<title>Kiosk {_e(data['kiosk'])}: debug report</title><style>{CSS}</style></head>",
        f"<body><h1>Kiosk {_e(data['kiosk'])} ({_e(data['site'])})</h1>",
        f"<p class='meta'>Bundle made {_e(when(data['made_ms']))}; {_e(data['signature'])};"
        f" version {_e((m.get('versions') or {}).get('haven_kiosk'))}; log entries "
        f"{_e((m.get('logs') or {}).get('first'))}–{_e((m.get('logs') or {}).get('last'))}"
        ".</p>",
        "<ul class='summary' id='summary'>"
        + "".join(f"<li>{_e(line)}</li>" for line in data["summary"]) + "</ul>",
        "<h2>Sync</h2>",
        svg.marks("Sync rounds and their outcomes",
                  [(r["t_ms"], str(r["outcome"])) for r in _thin(rounds)], OUTCOME_COLOURS),
        svg.lines("Link: round trip time", [("RTT", _pts(rounds, "rtt_ms"))], " ms"),
        svg.lines("Link: errors and resends",
                  [("error rate %", [(x, y * 100) for x, y in _pts(rounds, "error_rate")]),
                   ("frames resent", _pts(rounds, "frames_lost"))]),
        svg.bars("Bytes per day (sent + received)",
                 [(time.strftime("%d %b", time.gmtime(d["day_ms"] / 1000)),
                   (d["sent"] + d["received"]) / 1024) for d in data["bytes_per_day"]],
                 " KiB"),
        "<h2>The kiosk</h2>",
        svg.lines("Memory in use (RSS)", [("RSS", _pts(health, "rss_mib"))], " MiB"),
        svg.lines("Free disk", [("free", _pts(health, "disk_free_mib"))], " MiB", how=min),
        "<h2>Patients' use</h2>",
        svg.lines("Check-ins per hour",
                  [("check-ins", _pts(data["checkins_per_hour"], "checkins"))]),
        svg.bars("Check-ins by language", list(data["languages"].items())),
        svg.bars("Where patients gave up (screen)", list(data["abandoned"].items())),
        f"<p class='meta'>Time per check-in: mean {_e(data['checkin_seconds']['mean'])} s, "
        f"longest {_e(data['checkin_seconds']['max'])} s.</p>",
        "<h2>Conflicts and quarantine</h2>",
        _table(["class", "severity", "count"],
               [[c.get("class"), c.get("severity"), c.get("count")] for c in data["conflicts"]]),
        _table(["quarantine code", "count"],
               [[q.get("code"), q.get("count")] for q in data["quarantine"]]),
        "<h2>Last errors</h2>",
        _table(["last", "level", "where", "what", "count"],
               [[when(e["last_ms"]), e["level"], e["mod"], e["ev"], e["count"]]
                for e in data["errors"]]),
        "<h2>Crashes</h2>",
        _table(["when", "exception", "where"],
               [[when(int(c.get("t", 0)) // 1000), c.get("exc"), _frame(c)]
                for c in data["crashes"][-10:]]),
        "<h2>Audit chain</h2>",
        f"<p class='meta'>{_e(data['audit']['entries'])} entries; "
        + ("intact" if data["audit"]["ok"] else f"gaps: {_e(data['audit']['gaps'])}")
        + "</p>",
        _table(["#", "who", "what", "result"],
               [[e["seq"], e["who"], e["what"], e["result"]] for e in data["audit"]["last"]]),
        "<h2>What this bundle holds</h2>",
        _table(["section", "what", "why it may leave the kiosk"],
               [[s["section"], s["what"], s["why"]]
                for s in data["redaction"].get("sections", [])]),
        "</body></html>",
    ]
    return "\n".join(parts)


def _pts(rows: list[dict[str, Any]], key: str) -> list[tuple[float, float]]:
    return [(float(r.get("t_ms") or 0), float(r[key])) for r in rows
            if isinstance(r.get(key), int | float) and r.get("t_ms")]


def _thin(rounds: list[dict[str, Any]], most: int = 600) -> list[dict[str, Any]]:
    """At most ``most`` rounds for the timeline: the failures first, then every n-th."""
    if len(rounds) <= most:
        return rounds
    bad = [r for r in rounds if r.get("outcome") not in ("synced", "ok")][-most // 2:]
    good = [r for r in rounds if r.get("outcome") in ("synced", "ok")]
    return sorted(bad + good[::max(1, len(good) * 2 // most)], key=lambda r: r["t_ms"])


def _frame(crash: dict[str, Any]) -> str:
    tb = crash.get("tb") or []
    if tb and isinstance(tb[-1], list) and len(tb[-1]) == 3:
        f, line, func = tb[-1]
        return f"{f}:{line} in {func}"
    return ""
