"""SMP FS downloads from the technician's console, through the emulated serial line.

smpclient (the peer technicians use) downloads a random file from the console's
export directory across the link emulator at 11,520 B/s (115200 baud 8N1), and
smpmgr (its command line) the same file. The console server runs in this process
with a port that permits every command (the credential is another benchmark's
concern). The figure beside each rate is the framing limit: the file bytes per
second if the line carried nothing but base64 in 128-byte console lines (3/4 of
124 of every 127 bytes: 8,436 B/s), so a ratio of 1 would be a line never idle and
no SMP header or CBOR. The issue's goal is 0.8 of that limit.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from device.console.env import ConsoleEnv
from device.console.server import ConsoleServer

from . import Context, Result, benchmark
from ._link import emulator

RATE = 11520
LINE = 128
FRAMING_LIMIT = RATE * 3 / 4 * (LINE - 4) / (LINE - 1)


class Everyone:
    def permits(self, group: int, command: int, op: str) -> bool:
        return True


def _smpclient(port: str, name: str, limit: float) -> bytes:
    from smpclient import SMPClient
    from smpclient.transport.serial import SMPSerialTransport

    async def run() -> bytes:
        client = SMPClient(SMPSerialTransport(), port, timeout_s=10.0)
        await client.connect()
        try:
            return await asyncio.wait_for(client.download_file(name), limit)
        finally:
            await client.disconnect()
    return asyncio.run(run())


def _smpmgr(port: str, name: str, out: Path, limit: float) -> None:
    smpmgr = shutil.which("smpmgr") or str(Path(sys.executable).with_name("smpmgr"))
    subprocess.run([smpmgr, "--port", port, "--timeout", "10", "file", "download", name,
                    str(out)], check=True, capture_output=True, timeout=limit)


def run_case(ctx: Context, tool: str, data: bytes, corrupt: float, seed: int,
             limit: float) -> dict[str, Any]:
    tag = f"{tool}-{seed}"
    export = ctx.workdir / f"export-{tag}"
    export.mkdir()
    (export / "bundle.bin").write_bytes(data)
    env = ConsoleEnv(export_dir=export, import_dir=ctx.workdir / f"import-{tag}",
                     stats=dict, restart=lambda: None)
    row: dict[str, Any] = {"tool": tool, "case": "clean" if not corrupt else f"{corrupt:g}"}
    args = ["--rate", str(RATE), "--corrupt", str(corrupt), "--seed", str(seed)]
    with emulator("serial", args, ctx.workdir / f"stats-{tag}.json") as emu:
        server = ConsoleServer(emu.endpoints["a"], env)
        server.port.access = Everyone()
        server.start()
        try:
            t0 = time.monotonic()
            if tool == "smpclient":
                got = _smpclient(emu.endpoints["b"], "bundle.bin", limit)
            else:
                out = ctx.workdir / f"got-{tag}"
                _smpmgr(emu.endpoints["b"], "bundle.bin", out, limit)
                got = out.read_bytes()
            seconds = time.monotonic() - t0
            row["outcome"] = "ok" if got == data else "CORRUPT"
        except Exception as exc:  # a timeout, a refusal: the row says which
            seconds = None
            row["outcome"] = f"FAILED {type(exc).__name__}"
        finally:
            server.stop()
    if seconds is not None:
        rate = len(data) / seconds
        row.update(seconds=round(seconds, 1), rate=round(rate),
                   of_framing_limit=round(rate / FRAMING_LIMIT, 3),
                   of_line_rate=round(rate / RATE, 3))
    ab = emu.stats.get("ab", {})  # a is the console: its bytes to the tool
    row["wire_per_byte"] = round(ab.get("bytes_in", 0) / len(data), 3)
    return row


@benchmark("console", "SMP FS download (smpclient, smpmgr) from the console at 115200 baud")
def console(ctx: Context) -> Result:
    size = (64 if ctx.quick else 1024) * 1024
    limit = max(60.0, 4 * size / FRAMING_LIMIT)
    data = random.Random(2026).randbytes(size)
    rows = []
    for seed, tool in enumerate(("smpclient", "smpmgr"), start=1):
        ctx.log(f"console {tool} ({size:,} B, limit {limit:.0f} s)")
        row = run_case(ctx, tool, data, 0.0, seed, limit)
        ctx.log(str(row))
        rows.append(row)
    notes = [f"{size:,}-byte random file, {RATE:,} B/s each way, clean line; framing limit "
             f"{FRAMING_LIMIT:,.0f} B/s (base64 in {LINE}-byte lines); goal 0.8 of it. "
             "wire_per_byte: console-to-tool bytes per file byte. smpmgr's time includes "
             "its start (about a second of Python imports).",
             f"pid {os.getpid()}: server and smpclient in one process, on 2 cores."]
    columns = ["tool", "case", "outcome", "seconds", "rate", "of_framing_limit",
               "of_line_rate", "wire_per_byte"]
    return Result(rows, columns, notes, {"file_bytes": size, "rate": RATE,
                                         "framing_limit": round(FRAMING_LIMIT)})
