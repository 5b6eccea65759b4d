"""1,000 check-ins synced over the emulated serial line, as a kiosk and a hub run it.

Everything is the shipped commands: ``haven hub init``, ``haven-kiosk
init``, ``haven hub enroll`` and ``haven-kiosk enroll`` make a hub and one
kiosk; the kiosk, offline, then holds the sync benchmark's seeded check-ins
(``sync.records``, the same documents PouchDB replicates there), written as
a check-in writes them (a patient and a check-in record each). The hub runs
``haven hub serve --serial`` on one pty of ``tools/linkemu`` (serial mode,
11,520 B/s each way, i.e. 115200 baud 8N1, seeded byte errors) and
``haven-kiosk sync --baud 115200 --once`` runs on the other.

Seconds run from starting ``haven-kiosk sync`` to its exit (start-up, the
handshake and the close count); ``line_s`` is the emulator's own span from
the kiosk's first byte to the last byte either way. Bytes on the line are
the emulator's count of what each side wrote. Useful bytes are the deltas
the kiosk's outbox held (``haven-kiosk status``, uncompressed) and the
records' JSON size. Afterwards ``haven hub dump`` must hold every check-in
and patient once, field for field, ``haven hub status`` exactly 2 x N
deltas, and the kiosk's outbox must be empty.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tests.test_sync_serial_helpers import finish, hub_serving, kiosk_sync
from tools.demo_sync import _bin, run

from . import Context, Result, benchmark
from ._link import emulator
from .sync import CHECKIN, PATIENT, RATE, json_bytes, put_records, records

BAUD = 115200
CHECKINS = 1000
SEED = 3
SYNC_TIMEOUT = 300.0  #: ``--timeout`` of ``haven-kiosk sync --once``


def _cases(quick: bool) -> list[tuple[str, float]]:
    cases = [("clean", 0.0), ("1e-4", 1e-4), ("1e-3", 1e-3)]
    return cases[:2] if quick else cases


def enrolled_kiosk(work: Path, docs: list[dict[str, str]]) -> tuple[Path, Path]:
    """A hub and a kiosk enrolled with it by the commands a technician runs; the
    kiosk holds ``docs`` in its outbox, never synced."""
    from device.store import Store

    hub_dir, kiosk_dir, cert = work / "hub", work / "kiosk", work / "kiosk.cert"
    haven, kiosk = _bin("haven"), _bin("haven-kiosk")
    run(haven, "hub", "init", "--data", hub_dir)
    run(kiosk, "init", "--data", kiosk_dir, "--site", "Riverside", "--letter", "A")
    run(haven, "hub", "enroll", "--data", hub_dir, kiosk_dir / "enrolment.req", "--out", cert)
    run(kiosk, "enroll", "--data", kiosk_dir, cert)
    with Store(kiosk_dir) as store:
        put_records(store, docs)
    return hub_dir, kiosk_dir


def outbox(kiosk_dir: Path) -> tuple[int, int]:
    """Entries and bytes (uncompressed deltas) waiting in the kiosk's outbox."""
    lanes = json.loads(run(_bin("haven-kiosk"), "status", "--data", kiosk_dir,
                           "--json"))["outbox"]["lanes"]
    return (sum(lane["entries"] for lane in lanes.values()),
            sum(lane["bytes"] for lane in lanes.values()))


def hub_holds_once(hub_dir: Path, docs: list[dict[str, str]]) -> list[str]:
    """What is wrong with the hub's copy of ``docs`` (nothing: every check-in and
    patient once, with its fields, and no other delta)."""
    dump = json.loads(run(_bin("haven"), "hub", "dump", "--data", hub_dir))["records"]
    status = json.loads(run(_bin("haven"), "hub", "status", "--data", hub_dir, "--json"))
    want = {("checkin", d["_id"]): {k: d[k] for k in CHECKIN} for d in docs}
    want.update({("patient", d["subject"]): {k: d[k] for k in PATIENT} for d in docs})
    got = [((r["type"], r["id"]), r["fields"]) for r in dump]
    problems = []
    if len(got) != len(dict(got)):
        problems.append(f"{len(got) - len(dict(got))} records twice in the dump")
    if dict(got) != want:
        wrong = sum(1 for key, fields in want.items() if dict(got).get(key) != fields)
        problems.append(f"{wrong} of {len(want)} records missing or different, "
                        f"{len(set(dict(got)) - set(want))} unexpected")
    if status["deltas"] != 2 * len(docs):
        problems.append(f"the hub holds {status['deltas']} deltas, not {2 * len(docs)}")
    if status["quarantine"]:
        problems.append(f"{len(status['quarantine'])} deltas quarantined")
    return problems


def serial_round(ctx: Context, label: str, corrupt: float,
                 docs: list[dict[str, str]]) -> dict[str, Any]:
    work = ctx.workdir / label
    work.mkdir()
    hub_dir, kiosk_dir = enrolled_kiosk(work, docs)
    entries, delta_bytes = outbox(kiosk_dir)
    emu_args = ["--rate", str(RATE), "--corrupt", str(corrupt), "--seed", str(SEED)]
    with emulator("serial", emu_args, work / "emu.json") as emu, \
            hub_serving(hub_dir, serial=[emu.endpoints["a"]], baud=BAUD):
        t0 = time.monotonic()
        rc, out, err = finish(kiosk_sync(kiosk_dir, emu.endpoints["b"], "--baud", str(BAUD),
                                         "--once", "--timeout", str(SYNC_TIMEOUT), "--json"),
                              limit=SYNC_TIMEOUT + 60)
        seconds = time.monotonic() - t0
    if rc != 0:
        raise RuntimeError(f"haven-kiosk sync exited with {rc}: {err.strip()}")
    summary = json.loads(out.splitlines()[-1])
    problems = hub_holds_once(hub_dir, docs)
    left, _ = outbox(kiosk_dir)
    if left:
        problems.append(f"{left} entries still in the kiosk's outbox")
    for problem in problems:
        ctx.log(f"{label}: {problem}")
    ab, ba = emu.stats["ab"], emu.stats["ba"]  # a: the hub's pty, b: the kiosk's
    # The hub writes a byte or two when it opens its port: the session starts with the
    # kiosk's first byte.
    line_s = max(ab["last_write_s"], ba["last_write_s"]) - ba["first_write_s"]
    return {"entries": entries, "delta_bytes": delta_bytes, "seconds": seconds,
            "line_s": line_s, "up": ba["bytes_in"], "down": ab["bytes_in"],
            "corrupted": ab["corrupted"] + ba["corrupted"], "summary": summary,
            "failed_rounds": err.count("haven-kiosk sync: "), "problems": problems}


def _row(label: str, r: dict[str, Any], json_size: int) -> dict[str, Any]:
    line = r["seconds"] * RATE
    s = r["summary"]
    return {
        "case": label, "seconds": round(r["seconds"], 2), "line_s": round(r["line_s"], 2),
        "up_B": r["up"], "down_B": r["down"], "corrupted": r["corrupted"],
        "deltas_B": r["delta_bytes"], "json_B": json_size,
        "line_busy": round(r["up"] / line, 3),
        "busy_in_line_s": round(r["up"] / (r["line_s"] * RATE), 3),
        "delta_goodput": round(r["delta_bytes"] / line, 3),
        "json_goodput": round(json_size / line, 3),
        "frames_up": s.get("frames_sent"), "frames_resent": s.get("frames_lost"),
        "resent_B": s.get("retransmitted_bytes"),
        "once_on_hub": not r["problems"],
    }


@benchmark("sync-serial", "Sync of 1,000 check-ins over the emulated serial line "
           "(115200 baud, byte errors)")
def sync_serial(ctx: Context) -> Result:
    docs = records(CHECKINS, seed=CHECKINS)
    json_size = json_bytes(docs)
    rows = []
    notes = [
        f"{CHECKINS:,} seeded check-ins (the sync benchmark's, {json_size:,} B as JSON, "
        f"{json_size / CHECKINS:.0f} B each) made on an enrolled kiosk while offline, then "
        f"`haven-kiosk sync --baud {BAUD} --once` to `haven hub serve --serial --baud {BAUD}` "
        f"through `tools/linkemu serial --rate {RATE} --corrupt P --seed {SEED}` "
        f"({RATE:,} B/s each way). A fresh hub and kiosk per case.",
        "seconds: `haven-kiosk sync` from start to exit; line_s: from the kiosk's first byte "
        "on the line to the last byte either way, by the emulator's clock (the rest of "
        "seconds is the command's start-up). up_B / down_B: bytes the kiosk / the hub "
        "wrote on the line; corrupted: bytes the emulator damaged, both ways. deltas_B: "
        "the kiosk's outbox before the sync (uncompressed deltas); json_B: the same "
        "records as JSON.",
        f"line_busy = up_B / (seconds x {RATE:,}), busy_in_line_s the same over line_s; "
        f"delta_goodput = deltas_B / (seconds x "
        f"{RATE:,}); json_goodput = json_B / (seconds x {RATE:,}), the figure to set beside "
        "PouchDB's records (above 1 because batches are deflated). frames_up, frames_resent "
        "(frames the kiosk's session judged lost and sent again) and resent_B (lane bytes "
        "sent again) are from the kiosk's summary; once_on_hub: `haven hub dump` holds every "
        "check-in and patient exactly once, field for field, `haven hub status` counts "
        f"{2 * CHECKINS:,} deltas and none quarantined, and the kiosk's outbox is empty.",
    ]
    for label, corrupt in _cases(ctx.quick):
        ctx.log(f"{label}: {CHECKINS:,} check-ins, {corrupt:g} byte errors")
        r = serial_round(ctx, label, corrupt, docs)
        ctx.log(f"{label}: {r['seconds']:.2f} s, {r['up']:,} B up, {r['down']:,} B down, "
                f"summary {r['summary']}")
        rows.append(_row(label, r, json_size))
        if r["failed_rounds"]:
            notes.append(f"{label}: {r['failed_rounds']} round(s) failed before the one that "
                         "finished; frames and resent bytes are the last round's.")
    return Result(rows, ["case", "seconds", "line_s", "up_B", "down_B", "corrupted",
                         "deltas_B", "json_B", "line_busy", "busy_in_line_s", "delta_goodput",
                         "json_goodput", "frames_up", "frames_resent", "resent_B", "once_on_hub"],
                  notes=notes, params={"checkins": CHECKINS, "rate": RATE, "baud": BAUD,
                                       "seed": SEED})
