"""A kiosk's store key rotated while check-ins go on: check-in p99 during the re-seal.

A file-provider kiosk store holds ``patients`` check-ins (each a new patient: two
records, their fields and write log, some 20 sealed values). Check-ins are timed at
rest, then while ``device.store.rotation`` re-seals every value under a new key in
another thread (``rotation.start`` then ``rotation.run``: two passes, BULK slices on the
writer, the swap), one every ``gap`` seconds, with the store benchmark's
``latency_beside``: the two p99s come from the same run, their ratio is the figure.
The rotation's bytes written are ``write_bytes`` of ``/proc/self/io`` over it, the
check-ins beside it included, and less what as many check-ins write at rest.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from device.store import Store, init_store, rotation

from . import Context, Result, benchmark
from ._store_workload import T0, latency_beside

GOAL = 2.0


def _written() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    return 0


def _files_mib(data: Path) -> float:
    return sum(p.stat().st_size for p in data.iterdir() if p.is_file()) / 2**20


def measure(data: Path, patients: int, rest: int, gap: float) -> dict[str, Any]:
    with init_store(data, "Bench", "R") as store:
        for i in range(patients):
            store.checkin(name=f"Patient {i}", reason="cough", now_ms=T0 + i)
    size = _files_mib(data)  # closed: the WAL checkpointed and gone
    store = Store(data)
    try:
        took: dict[str, float] = {}

        def rotate() -> None:
            before, t = _written(), time.perf_counter()
            took["at_rest"] = before - at_rest  # the check-ins timed at rest wrote it
            rotation.start(store)
            rotation.run(store)
            took.update(seconds=time.perf_counter() - t, written=_written() - before)

        at_rest = _written()
        r = latency_beside(store, rotate, rest, gap_s=gap)
        values = rotation.opening(data, store.cipher)[0]
        assert not rotation.under_way(store)
    finally:
        store.close()
    per_checkin = took["at_rest"] / rest
    rotation_bytes = took["written"] - per_checkin * r["checkins_busy"]
    return {**r, **took, "values": values, "files_mib": size, "per_checkin": per_checkin,
            "rotation_bytes": rotation_bytes}


@benchmark("key_rotation", "Kiosk store key rotation: check-in p99 during the re-seal")
def key_rotation(ctx: Context) -> Result:
    patients, rest, gap = (2_000, 100, 0.02) if ctx.quick else (20_000, 300, 0.02)
    r = measure(ctx.workdir / "kiosk", patients, rest, gap)
    ctx.log(f"p99 at rest {r['p99_ms_at_rest']:.2f} ms, during {r['p99_ms_busy']:.2f} ms, "
            f"ratio {r['p99_ratio']}")
    row = {
        "store": f"{patients:,} new patients checked in, {r['values']:,} sealed values, "
                 f"{r['files_mib']:.1f} MiB",
        "p99 at rest ms": round(r["p99_ms_at_rest"], 3),
        "p99 during ms": round(r["p99_ms_busy"], 3),
        "ratio": r["p99_ratio"],
        "p50 at rest ms": round(r["p50_ms_at_rest"], 3),
        "p50 during ms": round(r["p50_ms_busy"], 3),
        "check-ins during": r["checkins_busy"],
        "re-seal s": round(r["seconds"], 2),
        "written MiB": round(r["written"] / 2**20, 1),
        "of it the rotation's MiB": round(r["rotation_bytes"] / 2**20, 1),
        "goal": f"<= {GOAL:g}x",
        "met": "yes" if r["p99_ratio"] <= GOAL else "NO",
    }
    return Result([row], list(row), notes=[
        f"A file-provider kiosk store with {patients:,} check-ins of new patients; "
        f"{rest} check-ins timed at rest, then one every {gap * 1000:g} ms for as long as "
        "the rotation runs in another thread (`rotation.start`, then `rotation.run`: every "
        "sealed value of store.db, documents.db and sync.db re-sealed in BULK slices on "
        "the writer, a second pass checking each opens under the new key, then the swap "
        "and the old key destroyed), 20 at least (the store benchmark's `latency_beside`: "
        "both p99s from the same run, wall time per check-in, commit included). Written: "
        "write_bytes of /proc/self/io over the rotation, the check-ins beside it included; "
        "the rotation's part: that less what as many check-ins wrote at rest (those "
        "timed at rest, checkpoints included); "
        "a kiosk at rest writes nothing more for rotations (the runtime looks for a next "
        "key with a stat every 5 s)."], params={"patients": patients, "rest": rest,
                                                 "gap_s": gap})
