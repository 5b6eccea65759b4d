"""Building a debug bundle on the kiosk (``protocol.debug_bundle`` is the format).

Theory of operation
-------------------
``build(out, sources, ...)`` writes one bundle to ``out`` (an open binary file):
the logs are streamed from the Journal, oldest first, one line at a time (each
entry filtered by ``device.bundle.redaction``) and the metrics an hour at a time,
so a kiosk with 30 days of both never holds them in memory; crash entries are
kept aside as they pass (the last ``MAX_CRASHES``). The other sections are small.
The kiosk's Ed25519 key signs the index; ``seal_to`` (an X25519 public key) then
seals the whole file, which is rewritten in place.

``Sources`` is what the kiosk lends the builder: its data directory (certificate
and signing key), the store (counts, conflicts by class, the audit chain), the
Journal's lines, the metrics' hours, the configuration file and the clocks.
Each part that fails to read is named in the manifest's ``missing`` rather than
failing the whole bundle: a field team needs the bundle most when something broke.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from device.bundle import redaction
from device.bundle.redaction import Dropped
from protocol import debug_bundle as fmt

if TYPE_CHECKING:
    from device.enrol import Identity

log = logging.getLogger("haven.bundle")

MAX_CRASHES = 50
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


@dataclass
class Sources:
    """What a bundle is made of (see the module docstring)."""

    data: Path  #: the kiosk's data directory: its certificate and signing key
    version: str = "0"
    store: Callable[[], Any] = lambda: None  #: the open ``Store``, or None
    #: The Journal's lines, oldest first (``device.logs.journal.Journal.lines``).
    log_lines: Callable[[], Iterable[bytes]] = lambda: ()
    #: The metrics an hour at a time (``metric_hours``).
    metric_hours: Callable[[], Iterable[dict[str, Any]]] = lambda: ()
    status: Callable[[], dict[str, Any]] = dict  #: ``haven tech status``'s map
    config_file: Path | None = None
    wall_ms: Callable[[], int] = lambda: 0  #: the kiosk's clock
    #: The hub's time as the kiosk trusts it: (ms, exact, source), or None.
    hub_time: Callable[[], tuple[int, bool, str] | None] = lambda: None
    boot_ids: Callable[[], list[str]] = lambda: []  #: boots the kiosk knows of


def build(out: IO[bytes], src: Sources, *, nonce: str,
          seal_to: bytes | None = None) -> dict[str, Any]:
    """Write the bundle to ``out``; its manifest."""
    from device.enrol import load

    identity = load(src.data)
    writer = fmt.BundleWriter(out)
    try:
        return _build(out, src, writer, identity, nonce, seal_to)
    except BaseException:
        writer.abandon()
        raise


def _build(out: IO[bytes], src: Sources, writer: fmt.BundleWriter, identity: Identity,
           nonce: str, seal_to: bytes | None) -> dict[str, Any]:
    dropped = Dropped()
    missing: list[str] = []
    fields = redaction.log_fields()
    crashes: deque[dict[str, Any]] = deque(maxlen=MAX_CRASHES)
    with writer.stream(fmt.LOGS) as f:
        span = _write_logs(f, _part(missing, "logs", src.log_lines) or (), fields, dropped,
                           crashes)
    with writer.stream("metrics.json") as f:
        hours = _write_metrics(f, _part(missing, "metrics", src.metric_hours) or (), dropped)
    store = src.store()
    sections = {
        "status.json": _part(missing, "status", lambda: _status(src, store, dropped)),
        "audit.json": _part(missing, "audit", lambda: _audit(store)),
        "link.json": _part(missing, "link", lambda: redaction.scrub(
            {k: src.status().get(k) for k in ("link", "console_link")}, dropped, "link")),
        "crashes.json": list(crashes),
    }
    for name, value in sections.items():
        writer.add(name, fmt.dumps(value))
    cert = identity.cert
    manifest = {
        "format": fmt.FORMAT, "kiosk": cert.device_id, "node": cert.node, "site": cert.site,
        "letter": cert.letter, "hub": fmt.fingerprint(cert.hub_ed25519),
        "made_ms": src.wall_ms(), "nonce": nonce,
        "sealed_to": seal_to.hex() if seal_to is not None else None,
        "versions": {"haven_kiosk": src.version, "python": platform.python_version(),
                     "os": platform.release(), "machine": platform.machine()},
        "config_hash": _config_hash(src.config_file),
        "boot_id": _boot_id(), "boot_ids": src.boot_ids(),
        "clock": _clock(src), "logs": span, "metric_hours": hours, "missing": missing,
        "sections": [fmt.LOGS, "metrics.json", *sections],
    }
    writer.add("redaction.json", fmt.dumps(redaction.report(fields, dropped)))
    writer.add(fmt.MANIFEST, fmt.dumps(manifest))
    writer.finish(identity.ed_key, cert.raw)
    if seal_to is not None:
        out.seek(0)
        sealed = fmt.seal(out.read(), seal_to)
        out.seek(0)
        out.truncate()
        out.write(sealed)
    out.flush()
    return manifest


def _part(missing: list[str], name: str, read: Callable[[], Any]) -> Any:
    try:
        return read()
    except Exception as exc:  # one view failing leaves the rest of the bundle
        log.warning("debug bundle: the %s section could not be read (%s)", name,
                    type(exc).__name__)
        missing.append(name)
        return None


# Logs -------------------------------------------------------------------------------

def _write_logs(f: IO[bytes], lines: Iterable[bytes], fields: dict[str, redaction.LogField],
                dropped: Dropped, crashes: deque[dict[str, Any]]) -> dict[str, Any]:
    first = last = None
    count = 0
    for line in lines:
        got = _entry(line, fields, dropped)
        if got is None:
            continue
        entry, whole = got
        index = entry.get("i")
        if isinstance(index, int):
            first = index if first is None else min(first, index)
            last = index if last is None else max(last, index)
        count += 1
        # A line that kept every field goes as the Journal wrote it (compact JSON).
        f.write(line if whole and line.endswith(b"\n") else fmt.dumps(entry) + b"\n")
        if is_crash(entry):
            crashes.append(entry)
    return {"first": first, "last": last, "entries": count}


def _entry(line: bytes, fields: dict[str, redaction.LogField],
           dropped: Dropped) -> tuple[dict[str, Any], bool] | None:
    """The entry with only its allowlisted fields, and whether that is all of it."""
    try:
        raw = json.loads(line, object_pairs_hook=_once)
    except ValueError:  # cut by a power cut (the Journal's reader skips it too), or forged
        dropped.add("logs.(unreadable line)")
        return None
    if not isinstance(raw, dict):
        return None
    out: dict[str, Any] = {}
    whole = True
    for name, value in raw.items():
        spec = fields.get(name)
        kept = None if spec is None else spec[0](value)
        if kept is None:
            dropped.add(f"logs.{name}" if redaction.KEY.fullmatch(str(name)) else "logs.*")
            whole = False
            continue
        out[name] = kept
        whole = whole and kept == value
    return out, whole


def _once(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose every key is named once: a line passed on whole must hold
    nothing its parsed entry does not (a second "ev" would)."""
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ValueError("a key named twice")
    return out


def is_crash(entry: dict[str, Any]) -> bool:
    """An entry of the Journal's crash hook (an unhandled exception)."""
    return "crash" in entry


# Metrics -------------------------------------------------------------------------------

def metric_hours(metrics: Any) -> Iterator[dict[str, Any]]:
    """``device.metrics``' hours one at a time in its reader's form, each with its own
    rounds: the card's lines, then (a running kiosk's ``Metrics``) the hour in memory.
    One hour at a time: a month of minutes never sits in memory whole."""
    from device.metrics import reader

    last = None
    for line in metrics.file.lines():
        got = reader.from_lines([line])
        for hour in got["hours"]:
            last = hour["end_ms"]
            yield {**hour, "rounds": got["rounds"]}
    if hasattr(metrics, "read"):
        got = metrics.read(since_ms=last)
        for hour in got["hours"]:
            yield {**hour, "rounds": [r for r in got["rounds"]
                                      if hour["start_ms"] <= r.get("t_ms", 0) < hour["end_ms"]]}


def _write_metrics(f: IO[bytes], hours: Iterable[dict[str, Any]], dropped: Dropped) -> int:
    f.write(b'{"version":1,"hours":[')
    count = 0
    for hour in hours:
        f.write((b"," if count else b"") + fmt.dumps(redaction.scrub(hour, dropped, "metrics")))
        count += 1
    f.write(b"]}")
    return count


# The other sections ------------------------------------------------------------------

def _status(src: Sources, store: Any, dropped: Dropped) -> Any:
    status = dict(src.status())
    if store is not None:
        st = store.status()
        status["store"] = {
            "records": st.get("records"), "stale": st.get("stale"), "held": st.get("held"),
            "conflicts": _count(st.get("conflicts", []), ("class", "severity")),
            "quarantine": _count(st.get("quarantine", []), ("code",)),
            "outbox": st.get("outbox")}
    return redaction.scrub(status, dropped, "status")


def _count(rows: list[dict[str, Any]], keys: tuple[str, ...]) -> list[dict[str, Any]]:
    """Rows counted by ``keys`` (conflicts by class and severity, never by record)."""
    counts: dict[tuple[Any, ...], int] = {}
    for row in rows:
        k = tuple(row.get(key) for key in keys)
        counts[k] = counts.get(k, 0) + 1
    return [{**dict(zip(keys, k, strict=True)), "count": n} for k, n in sorted(
        counts.items(), key=lambda kv: str(kv[0]))]


def _audit(store: Any) -> dict[str, Any] | None:
    if store is None:
        return None
    from device.audit.chain import chain

    held = chain(store)
    return {"ok": held["ok"], "last": held["last"], "gaps": held["gaps"],
            "entries": held["entries"]}


def _config_hash(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _boot_id() -> str:
    try:
        return BOOT_ID.read_text().strip()
    except OSError:
        return ""


def _clock(src: Sources) -> dict[str, Any]:
    kiosk = src.wall_ms()
    hub = src.hub_time()
    if hub is None:
        return {"kiosk_ms": kiosk, "hub_ms": None, "offset_ms": None, "exact": False,
                "source": None}
    ms, exact, source = hub
    return {"kiosk_ms": kiosk, "hub_ms": ms, "offset_ms": kiosk - ms, "exact": exact,
            "source": source}


def for_runtime(runtime: Any) -> Sources:
    """The runtime's sources: its store, Journal and metrics (the tech command adds the
    clocks, the status and the configuration file it knows)."""
    def log_lines() -> Iterable[bytes]:
        logs = getattr(runtime, "logs", None)  # made as the runtime starts
        return logs.journal.lines(0) if logs is not None else ()

    def hours() -> Iterable[dict[str, Any]]:
        metrics = getattr(runtime, "metrics", None)
        return metric_hours(metrics) if metrics is not None else ()

    return Sources(data=runtime.data, store=lambda: runtime.store, log_lines=log_lines,
                   metric_hours=hours)


def write_file(path: Path, src: Sources, **kw: Any) -> dict[str, Any]:
    """``build`` into ``path`` (made whole: a temporary file, fsync, rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with tmp.open("w+b") as f:
            manifest = build(f, src, **kw)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return manifest
