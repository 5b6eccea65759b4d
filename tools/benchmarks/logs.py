"""``haven tech logs`` through the emulated serial line, beside smpclient reading the files.

A kiosk journal (``device.logs.Journal``, default size) holding 1 MiB of entries
shaped like the runtime's own (sync rounds with their typed fields, link and
console events, technician sessions, warnings with an exception's frames), in
its rotating files (``haven.log.1`` and ``haven.log``). Across the link emulator
at 11,520 B/s each way (115200 baud 8N1), clean and with 1e-4 of the bytes'
bits flipped: ``haven tech logs`` (``host.tech.logs.pull_logs`` on an
authenticated session: the kiosk's deflated pieces, the tool's checks and
appends) into an empty folder, and smpclient downloading the same files from
our SMP FS group (``logs/haven.log.1``, ``logs/haven.log``), one after the other
on one connection. The rate is log bytes (the journal's lines) per second; a
rate above line rate is the deflate. Goals: 0.9 of line rate clean, 0.8 at
1e-4, 1.25 times smpclient.
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path
from typing import Any

from . import Context, Result, benchmark
from ._link import emulator
from .console import RATE, Everyone
from .tech import BAUD, _kiosk, line_figures

_TEMPLATES: list[tuple[int, str, str, dict[str, Any]]] = [
    (1, "haven.kiosk", "synced via %s: %d up, %d down", {"outcome": "ok"}),
    (1, "haven.kiosk", "no hub answered: %s", {"outcome": "offline"}),
    (1, "device.sync.link_monitor", "link down: %s", {}),
    (1, "device.sync.link_monitor", "link up: %s", {}),
    (1, "device.sync.connection", "the link to %s broke while idle: %s", {}),
    (1, "haven.tech", "technician %s (certificate %d) accepted on the console (%s)", {}),
    (2, "device.health.memory", "memory %s: %s; caches dropped", {"level": "soft"}),
    (2, "device.console.server", "console %s: %s; opening it again", {}),
    (3, "device.ui.app", "check-in not saved: %s", {}),
]


def fill(journal: Any, size: int, seed: int = 7) -> None:
    """Entries like the runtime's until the journal's files hold ``size`` bytes."""
    rng = random.Random(seed)
    written = 0
    while written < size:
        level, mod, ev, extra = rng.choices(_TEMPLATES, weights=[40, 8, 3, 3, 3, 2, 2, 2, 1])[0]
        entry: dict[str, Any] = {"lvl": level, "mod": mod, "ev": ev, **extra}
        if extra.get("outcome") == "ok":
            entry.update(deltas_up=rng.randint(0, 40), deltas_down=rng.randint(0, 200),
                         quarantined=0, batches=rng.randint(1, 3),
                         bytes_sent=rng.randint(200, 60_000),
                         bytes_received=rng.randint(100, 90_000), ms=rng.randint(40, 9000))
        if level == 3:
            entry.update(exc="sqlite3.OperationalError",
                         tb=[["device/ui/app.py", 217, "save"],
                             ["device/store/store.py", rng.randint(300, 900), "checkin"]])
        journal.append(entry, level)
        written = sum(p.stat().st_size for p in journal.files())


def _smpclient_files(port: str, names: list[str], limit: float) -> bytes:
    from smpclient import SMPClient
    from smpclient.transport.serial import SMPSerialTransport

    async def run() -> bytes:
        client = SMPClient(SMPSerialTransport(), port, timeout_s=10.0)
        await client.connect()
        try:
            out = b""
            for name in names:
                out += await asyncio.wait_for(client.download_file(name), limit)
            return out
        finally:
            await client.disconnect()
    return asyncio.run(run())


def run_case(ctx: Context, tool: str, logs_dir: Path, corrupt: float, seed: int,
             limit: float) -> dict[str, Any]:
    from device.console.env import ConsoleEnv
    from device.console.server import ConsoleServer
    from device.enrol import CERT, load
    from device.logs.journal import Journal
    from device.tech.service import TechEnv, TechService
    from host.tech.client import TechClient
    from host.tech.logs import LINES, pull_logs

    tag = f"{tool}-{seed}"
    root = ctx.workdir / tag
    store, techs, cred = _kiosk(root)
    journal = Journal(logs_dir)
    files = journal.files()
    expected = b"".join(p.read_bytes() for p in files)
    env = ConsoleEnv(export_dir=root / "export", import_dir=root / "import", stats=dict,
                     restart=lambda: None, technicians=lambda: techs, log=journal,
                     log_dir=logs_dir)
    cert = (store.data / CERT).read_bytes()
    service = TechService(TechEnv(console=env, kiosk_certificate=lambda: cert),
                          static_key=load(store.data).x_key, baud=BAUD)
    row: dict[str, Any] = {"tool": "haven tech logs" if tool == "haven" else tool,
                           "case": "clean" if not corrupt else f"{corrupt:g}"}
    args = ["--rate", str(RATE), "--corrupt", str(corrupt), "--seed", str(seed)]
    seconds: float | None = None
    with emulator("serial", args, ctx.workdir / f"stats-{tag}.json") as emu:
        server = ConsoleServer(emu.endpoints["a"], env,
                               haven=service if tool == "haven" else None)
        if tool != "haven":
            server.port.access = Everyone()
        server.start()
        try:
            if tool == "haven":
                with TechClient(emu.endpoints["b"], cred, baud=BAUD, timeout=limit) as tech:
                    t0 = time.monotonic()
                    pull_logs(tech, root / "out")
                    seconds = time.monotonic() - t0
                got = (root / "out" / LINES).read_bytes()
            else:
                t0 = time.monotonic()
                got = _smpclient_files(emu.endpoints["b"], [f"logs/{p.name}" for p in files],
                                       limit)
                seconds = time.monotonic() - t0
            row["outcome"] = "ok" if got == expected else "CORRUPT"
        except Exception as exc:  # a timeout, a refusal: the row says which
            seconds = None
            row["outcome"] = f"FAILED {type(exc).__name__}: {exc}"[:90]
        finally:
            server.stop()
            service.stop()
            store.close()
            journal.close()
    line_figures(row, len(expected), seconds, emu.stats)
    if seconds is not None:
        wire = emu.stats.get("ab", {}).get("bytes_in", 0)  # the console's bytes to the tool
        row["line_busy"] = round(wire / (seconds * RATE), 3)
    return row


@benchmark("logs", "haven tech logs vs smpclient reading the log files at 115200 baud")
def logs(ctx: Context) -> Result:
    from device.logs.journal import Journal

    size = (128 if ctx.quick else 1024) * 1024
    logs_dir = ctx.workdir / "journal"
    journal = Journal(logs_dir)
    fill(journal, size)
    files = journal.files()
    total = sum(p.stat().st_size for p in files)
    journal.close()
    limit = max(60.0, 6 * total / RATE)
    rows: list[dict[str, Any]] = []
    seed = 0
    for corrupt in (0.0, 1e-4):
        for tool in ("haven", "smpclient"):
            seed += 1
            ctx.log(f"logs {tool} corrupt={corrupt:g} ({total:,} B, limit {limit:.0f} s)")
            row = run_case(ctx, tool, logs_dir, corrupt, seed, limit)
            ctx.log(str(row))
            rows.append(row)
    for case in ("clean", "0.0001"):
        ours = next((r for r in rows if r["tool"] == "haven tech logs"
                     and r["case"] == case and "rate" in r), None)
        for r in rows:
            if r["case"] == case and ours is not None and "rate" in r:
                r["haven_speedup"] = round(ours["rate"] / r["rate"], 2)
    names = ", ".join(p.name for p in files)
    notes = [f"A journal of {total:,} bytes in {len(files)} files ({names}), "
             "entries shaped like the runtime's (device.logs; tools/benchmarks/logs.py: "
             f"fill), {RATE:,} B/s each way (115200 baud 8N1), clean and with 1e-4 of the "
             "bytes' bits flipped (tools/linkemu.py). haven tech logs: an authenticated "
             "Haven session, the kiosk's logs command (its lines from an index, deflated, "
             "1 MiB of lines a piece) and the tool's checks and appends, into an empty "
             "folder. smpclient: SMP FS download of the same files from the same console "
             "(logs/NAME), one after the other on one connection. Goals: 0.9 of line rate "
             "clean, 0.8 at 1e-4, 1.25 times smpclient.",
             "rate: log bytes per second; of_line_rate above 1 is the deflate (the "
             "entries' repeated templates and keys). wire_per_byte: console-to-tool bytes "
             "on the line per log byte; line_busy: those bytes over the time at line "
             "rate. seconds: the pull alone (haven: after the session is authenticated). "
             "At 1e-4, smpclient stops at the first damaged exchange instead of asking "
             "again (as in the tech benchmark)."]
    columns = ["tool", "case", "outcome", "seconds", "rate", "of_line_rate", "haven_speedup",
               "wire_per_byte", "line_busy"]
    return Result(rows, columns, notes, {"log_bytes": total, "rate": RATE})
