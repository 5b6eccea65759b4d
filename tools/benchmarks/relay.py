"""Relay bundles: a round trip of check-ins by stick against live TCP sync of the same.

A hub and an enrolled kiosk holding ``n`` check-ins (new patients) are made once and
copied: one copy syncs by stick (``relay export``, the hub's ``relay import``, the
kiosk's ``relay import``, on a folder), the other in one live round over TCP on
127.0.0.1 to the hub served in this process (``run_round``: handshake, hello, batches,
acks, pull). Both hubs must end with every check-in once and the same dump. Bytes:
the stick's, each file less its padding (the padding reported apart), against the
live round's session bytes both ways (``Summary.bytes_sent`` + ``bytes_received``:
the Noise framing and handshake included). CPU seconds (``process_time``) of each in
the same run; the live round's include the hub's threads, which run in this process.
"""

from __future__ import annotations

import random
import shutil
import string
import time
from pathlib import Path
from typing import Any

from . import Context, Result, benchmark

GOAL = 1.2
T0 = 1_780_000_000_000
REASONS = ["cough", "fever", "injury", "prescription", "follow-up"]


def _make(work: Path, n: int) -> None:
    from device import enrol
    from device.store import init_store
    from host.hub.hub import Hub, init_hub

    init_hub(work / "hub")
    with init_store(work / "kiosk", "Riverside", "A") as store:
        with Hub(work / "hub") as hub:
            cert = hub.enroll(enrol.write_request(store).read_bytes())
        enrol.install(store, cert)
        rng = random.Random(1)  # names and passports that do not compress away
        for i in range(n):
            name = " ".join("".join(rng.choices(string.ascii_letters, k=8)) for _ in "ab")
            store.checkin(name=name, passport=f"{rng.randrange(10**9):09d}",
                          reason=rng.choice(REASONS), now_ms=T0 + i)


def _opened(work: Path) -> tuple[Any, Any, Any, Any]:
    from device import enrol
    from device.store import Store
    from device.sync.state import SyncState
    from host.hub.hub import Hub

    store = Store(work / "kiosk")
    return Hub(work / "hub"), store, SyncState(store.data), enrol.load(store.data)


def _checked(hub: Any, n: int) -> bytes:
    ops = list(hub.store.all_ops())
    assert len(ops) == len({(o.rid, o.stamp, o.node) for o in ops}) == 2 * n, len(ops)
    out: bytes = hub.dump()
    return out


def by_stick(work: Path, n: int) -> dict[str, Any]:
    from device.relay.answers import import_answers
    from device.relay.export import export
    from host.hub.relay import import_dir

    hub, store, state, ident = _opened(work)
    stick = work / "stick"
    stick.mkdir()
    try:
        cpu = time.process_time()
        up = export(store, state, ident, stick)
        down = import_dir(hub, stick)
        got = import_answers(store, state, ident, stick)
        cpu = time.process_time() - cpu
        assert not got.problems and not down.problems and got.acked == up.batches
        assert store.status()["outbox"]["lanes"] == {}
        dump = _checked(hub, n)
    finally:
        state.close()
        store.close()
        hub.close()
    return {"up": up.bytes - up.padding, "down": down.bytes - down.padding,
            "padding": up.padding + down.padding, "files": len(up.files) + len(down.answers),
            "batches": up.batches, "cpu": cpu, "dump": dump}


def live(work: Path, n: int) -> dict[str, Any]:
    from device.sync.engine import run_round
    from host.hub.serve import Server

    hub, store, state, ident = _opened(work)
    server = Server(hub, 5 * 60 * 1000)
    host, port = server.listen("tcp://127.0.0.1:0")
    try:
        cpu = time.process_time()
        s = run_round(store, state, ident, f"tcp://{host}:{port}", limit=120.0)
        cpu = time.process_time() - cpu
        assert s.pushed == 2 * n
        dump = _checked(hub, n)
    finally:
        server.shutdown()
        state.close()
        store.close()
        hub.close()
    return {"up": s.bytes_sent, "down": s.bytes_received, "batches": s.batches, "cpu": cpu,
            "dump": dump}


@benchmark("relay", "Relay by stick: a round trip of check-ins against live TCP sync")
def relay_benchmark(ctx: Context) -> Result:
    n = 200 if ctx.quick else 1000
    base = ctx.workdir / "base"
    _make(base, n)
    shutil.copytree(base, ctx.workdir / "stick-case")
    shutil.copytree(base, ctx.workdir / "live-case")
    r = by_stick(ctx.workdir / "stick-case", n)
    w = live(ctx.workdir / "live-case", n)
    assert r["dump"] == w["dump"], "the hubs differ"
    assert r["batches"] == w["batches"]
    ratio = (r["up"] + r["down"]) / (w["up"] + w["down"])
    ctx.log(f"stick {r['up'] + r['down']} B (+{r['padding']} B padding), live "
            f"{w['up'] + w['down']} B: {ratio:.3f}x")
    row = {
        "check-ins": n,
        "every record once": "yes",
        "batches": r["batches"],
        "stick B up": r["up"],
        "stick B down": r["down"],
        "padding B": r["padding"],
        "files": r["files"],
        "live B up": w["up"],
        "live B down": w["down"],
        "bytes ratio": round(ratio, 3),
        "CPU s stick": round(r["cpu"], 3),
        "CPU s live": round(w["cpu"], 3),
        "goal": f"<= {GOAL:g}x",
        "met": "yes" if ratio <= GOAL else "NO",
    }
    return Result([row], list(row), notes=[
        f"One kiosk holding {n:,} check-ins of new patients (two records each; random "
        "names and passport numbers, so they do not compress away) and its "
        "hub, made once and copied. By stick: haven-kiosk relay export, haven hub relay "
        "import, haven-kiosk relay import (the library calls, on a folder); stick bytes "
        "are each file's less its padding (Padmé buckets, 4 KiB at least), the padding "
        "apart. Live: one round over TCP on 127.0.0.1 to the hub served in this process, "
        "session bytes both ways, the Noise handshake and framing included. Both hubs end "
        "with every check-in once and the same dump. CPU: process_time of each, the live "
        "one's including the hub's threads."], params={"checkins": n})
