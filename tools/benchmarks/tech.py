"""``haven tech pull`` through the emulated serial line, beside smpclient and smpmgr.

One random file in the console's export directory, pulled across the link
emulator at 11,520 B/s each way (115200 baud 8N1), on a clean line and with 1e-4
of the bytes corrupted (bits flipped): by ``haven tech pull`` (a Haven session
authenticated with a real technician credential, the transfer protocol on it) and,
in the same run, by smpclient and smpmgr downloading the same file from our SMP FS
group (``console.run_case``, the port opened to every command). The console server
runs in this process; both ends pace to the line. The goals: ``haven tech pull`` at
0.95 of line rate clean and 0.85 at 1e-4, and 1.25 times smpclient.
"""

from __future__ import annotations

import random
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from . import Context, Result, benchmark
from ._link import emulator
from .console import RATE
from .console import run_case as smp_case

BAUD = RATE * 10


@contextmanager
def _reasons() -> Iterator[list[str]]:
    """The failures of smpclient and smpmgr inside ``console.run_case``, in words (it
    keeps only the exception's type)."""
    from . import console

    why: list[str] = []
    smpclient, smpmgr = console._smpclient, console._smpmgr

    def client(*args: Any) -> bytes:
        try:
            return smpclient(*args)
        except Exception as exc:
            why.append(f"{type(exc).__module__}.{type(exc).__name__} {exc}".strip())
            raise

    def mgr(*args: Any) -> None:
        try:
            smpmgr(*args)
        except subprocess.CalledProcessError as exc:
            lines = (exc.stderr or b"").decode(errors="replace").strip().splitlines()
            why.append(lines[-1] if lines else f"exit status {exc.returncode}")
            raise

    console._smpclient, console._smpmgr = client, mgr  # type: ignore[assignment]
    try:
        yield why
    finally:
        console._smpclient, console._smpmgr = smpclient, smpmgr


def _kiosk(root: Path) -> tuple[Any, Any, Any]:
    """An enrolled kiosk's store and checks, and a credential for its site."""
    from device import enrol
    from device.store import init_store
    from device.tech import access
    from device.tech.trusted_time import SYNC
    from host.hub import technician
    from host.hub.hub import Hub, init_hub
    from protocol.sync import credential

    init_hub(root / "hub")
    now = int(time.time() * 1000)
    with Hub(root / "hub") as hub:
        store = init_store(root / "kiosk", "North", "A")
        enrol.install(store, hub.enroll(enrol.write_request(store).read_bytes(), now_ms=now))
        _, doc = technician.issue(hub, name="Bench", sites=["North"], now_ms=now)
    techs = access.for_kiosk(store)
    techs.clock.note(SYNC, now)
    return store, techs, credential.load_file(doc)


def pull_case(ctx: Context, data: bytes, corrupt: float, seed: int,
              limit: float) -> dict[str, Any]:
    from device.console.env import ConsoleEnv
    from device.console.server import ConsoleServer
    from device.enrol import CERT, load
    from device.tech.service import TechEnv, TechService
    from host.tech.client import TechClient

    tag = f"tech-{seed}"
    root = ctx.workdir / tag
    store, techs, cred = _kiosk(root)
    export = root / "export"
    export.mkdir()
    (export / "bundle.bin").write_bytes(data)
    env = ConsoleEnv(export_dir=export, import_dir=root / "import", stats=dict,
                     restart=lambda: None, technicians=lambda: techs)
    cert = (store.data / CERT).read_bytes()
    service = TechService(TechEnv(console=env, kiosk_certificate=lambda: cert),
                          static_key=load(store.data).x_key, baud=BAUD)
    row: dict[str, Any] = {"tool": "haven tech pull",
                           "case": "clean" if not corrupt else f"{corrupt:g}"}
    args = ["--rate", str(RATE), "--corrupt", str(corrupt), "--seed", str(seed)]
    seconds: float | None = None
    with emulator("serial", args, ctx.workdir / f"stats-{tag}.json") as emu:
        server = ConsoleServer(emu.endpoints["a"], env, haven=service)
        server.start()
        try:
            with TechClient(emu.endpoints["b"], cred, baud=BAUD, timeout=limit) as tech:
                t0 = time.monotonic()
                got = tech.pull("bundle.bin", root / "out")
                seconds = time.monotonic() - t0
            ok = (root / "out" / "bundle.bin").read_bytes() == data
            row["outcome"] = "ok" if ok and got["size"] == len(data) else "CORRUPT"
        except Exception as exc:  # a timeout, a refusal: the row says which
            row["outcome"] = f"FAILED {type(exc).__name__}: {exc}"[:80]
        finally:
            server.stop()
            service.stop()
            store.close()
    line_figures(row, len(data), seconds, emu.stats)
    return row


def line_figures(row: dict[str, Any], size: int, seconds: float | None,
                 stats: dict[str, Any]) -> None:
    """A pull's rate (``size`` bytes in ``seconds``) against the line's, and the console's
    bytes on the line per byte (the emulator's ``stats``), into ``row``."""
    if seconds is not None:
        rate = size / seconds
        row.update(seconds=round(seconds, 1), rate=round(rate),
                   of_line_rate=round(rate / RATE, 3))
    ab = stats.get("ab", {})  # a is the console: its bytes to the tool
    row["wire_per_byte"] = round(ab.get("bytes_in", 0) / size, 3)


@benchmark("tech", "haven tech pull vs smpclient and smpmgr at 115200 baud, clean and 1e-4")
def tech(ctx: Context) -> Result:
    size = (128 if ctx.quick else 1024) * 1024
    limit = max(60.0, 6 * size / RATE)
    data = random.Random(2026).randbytes(size)
    rows: list[dict[str, Any]] = []
    seed = 0
    for corrupt in (0.0, 1e-4):
        for tool in ("haven", "smpclient", "smpmgr"):
            seed += 1
            ctx.log(f"tech {tool} corrupt={corrupt:g} ({size:,} B, limit {limit:.0f} s)")
            if tool == "haven":
                row = pull_case(ctx, data, corrupt, seed, limit)
            else:
                with _reasons() as why:
                    row = smp_case(ctx, tool, data, corrupt, 100 + seed, limit)
                row.pop("of_framing_limit", None)
                if row["outcome"].startswith("FAILED") and why:
                    row["outcome"] = f"{row['outcome']}: {why[-1]}"[:100]
            ctx.log(str(row))
            rows.append(row)
    for case in ("clean", "0.0001"):
        ours = next((r for r in rows if r["tool"] == "haven tech pull"
                     and r["case"] == case and "rate" in r), None)
        for r in rows:
            if r["case"] == case and ours is not None and "rate" in r:
                r["haven_speedup"] = round(ours["rate"] / r["rate"], 2)
    notes = [f"{size:,}-byte random file, {RATE:,} B/s each way (115200 baud 8N1), clean "
             "and with 1e-4 of the bytes' bits flipped (tools/linkemu.py). haven tech pull: "
             "an authenticated Haven session (Noise XX, a technician credential) and the "
             "transfer protocol; smpclient and smpmgr: SMP FS download from the same "
             "console. haven_speedup: haven tech pull's rate over the row's. "
             "Goals: 0.95 of line rate clean, 0.85 at 1e-4, 1.25 times smpclient.",
             "At 1e-4, smpclient stops at the first damaged exchange instead of asking "
             "again, and smpmgr, built on it, exits with an error: their rows say FAILED "
             "with the exception (or smpmgr's last line), and wire_per_byte how far they "
             "got.",
             "seconds: the pull or download alone (haven: after the session is "
             "authenticated; smpmgr: including its start). wire_per_byte: console-to-tool "
             "bytes on the line per file byte."]
    columns = ["tool", "case", "outcome", "seconds", "rate", "of_line_rate", "haven_speedup",
               "wire_per_byte"]
    return Result(rows, columns, notes, {"file_bytes": size, "rate": RATE})
