"""A kiosk's store key rotated while check-ins go on: check-in p99 during the re-seal.

A file-provider kiosk store holds ``patients`` check-ins (each a new patient: two
records, their fields and write log, some 12 sealed values). Check-ins go on, one every
``gap`` seconds, while ``device.store.rotation`` re-seals every value under a new key in
another thread (``rotation.start``, then ``rotation.run``: two passes of BULK slices on
the writer, the swap), run in windows of ``WINDOW_S`` with as long a pause between
them (``run`` stops between two slices and resumes). Each check-in is timed and
counted as during the re-seal or at rest by the window it began in, the first
``SETTLE_S`` of each pause left out (what the rotation wrote is still being written out
then). So both p99s come from the same minutes, under the same load from whatever else
the machine runs, and their ratio is the figure. The rotation's bytes written are
``write_bytes`` of ``/proc/self/io`` over a second rotation right after, alone, and the
checkpoint after it.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from device.store import Store, init_store, rotation

from . import Context, Result, benchmark
from ._store_workload import T0, _q

GOAL = 2.0
WINDOW_S = 2.0
SETTLE_S = 0.5


def _written() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    return 0


def _files_mib(data: Path) -> float:
    return sum(p.stat().st_size for p in data.iterdir() if p.is_file()) / 2**20


class _Windows:
    """The rotation walked in windows (a thread of its own), paused between them."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.stop = threading.Event()
        self.walking = False
        self.finished = False
        self.paused_at = 0.0
        self.walked_s = 0.0
        self._thread = threading.Thread(target=self._loop)

    def start(self) -> None:
        rotation.start(self.store)
        self._thread.start()

    def _loop(self) -> None:
        while not self.finished:
            self.stop.clear()
            self.walking = True
            timer = threading.Timer(WINDOW_S, self.stop.set)
            timer.start()
            t = time.perf_counter()
            self.finished = rotation.run(self.store, self.stop)
            self.walked_s += time.perf_counter() - t
            timer.cancel()
            self.walking = False
            self.paused_at = time.perf_counter()
            if not self.finished:
                time.sleep(WINDOW_S)

    def alive(self) -> bool:
        return self._thread.is_alive()

    def join(self) -> None:
        self._thread.join()


def measure(data: Path, patients: int, gap: float) -> dict[str, Any]:
    with init_store(data, "Bench", "R") as store:
        for i in range(patients):
            store.checkin(name=f"Patient {i}", reason="cough", now_ms=T0 + i)
    size = _files_mib(data)  # closed: the WAL checkpointed and gone
    store = Store(data)
    busy: list[float] = []
    rest: list[float] = []
    try:
        windows = _Windows(store)
        windows.start()
        while windows.alive() and not windows.finished or len(rest) < 20:
            time.sleep(gap)
            walking = windows.walking
            settled = time.perf_counter() - windows.paused_at > SETTLE_S
            t = time.perf_counter()
            store.checkin(name="Walk In", reason="fever", now_ms=T0 + 10**6)
            took = time.perf_counter() - t
            if walking and windows.walking:
                busy.append(took)
            elif not walking and not windows.walking and settled:
                rest.append(took)
        windows.join()
        values = rotation.opening(data, store.cipher)[0]
        assert not rotation.under_way(store)
        store.truncate_wal()
        before = _written()  # a second rotation, alone, its checkpoint included
        rotation.start(store)
        rotation.run(store)
        store.truncate_wal()
        alone = _written() - before
    finally:
        store.close()
    return {"p99_rest": _q(rest, .99), "p99_busy": _q(busy, .99), "p50_rest": _q(rest, .5),
            "p50_busy": _q(busy, .5), "n_rest": len(rest), "n_busy": len(busy),
            "ratio": round(_q(busy, .99) / max(_q(rest, .99), 1e-6), 2),
            "walked_s": windows.walked_s, "values": values, "files_mib": size,
            "rotation_bytes": alone}


@benchmark("key_rotation", "Kiosk store key rotation: check-in p99 during the re-seal")
def key_rotation(ctx: Context) -> Result:
    patients, gap = (2_000, 0.02) if ctx.quick else (20_000, 0.02)
    r = measure(ctx.workdir / "kiosk", patients, gap)
    rotation_mib = r["rotation_bytes"] / 2**20
    ctx.log(f"p99 at rest {r['p99_rest']:.2f} ms, during {r['p99_busy']:.2f} ms, "
            f"ratio {r['ratio']}")
    row = {
        "store": f"{patients:,} new patients checked in, {r['values']:,} sealed values, "
                 f"{r['files_mib']:.1f} MiB",
        "p99 at rest ms": r["p99_rest"],
        "p99 during ms": r["p99_busy"],
        "ratio": r["ratio"],
        "p50 at rest ms": r["p50_rest"],
        "p50 during ms": r["p50_busy"],
        "check-ins at rest / during": f"{r['n_rest']:,} / {r['n_busy']:,}",
        "re-seal s": round(r["walked_s"], 1),
        "rotation's MiB written": round(rotation_mib, 1),
        "goal": f"<= {GOAL:g}x",
        "met": "yes" if r["ratio"] <= GOAL else "NO",
    }
    return Result([row], list(row), notes=[
        f"A file-provider kiosk store with {patients:,} check-ins of new patients; one "
        f"check-in every {gap * 1000:g} ms while the rotation (`rotation.start`, then "
        "`rotation.run`: every sealed value of store.db, documents.db and sync.db "
        "re-sealed in BULK slices on the writer, a second pass checking each opens under "
        "the new key, then the swap and the old key destroyed) runs in another thread in "
        f"windows of {WINDOW_S:g} s with {WINDOW_S:g} s pauses between them; each check-in "
        "(wall time, commit included) counts as during or at rest by the window it began "
        f"and ended in, the first {SETTLE_S:g} s of each pause left out: both p99s from the "
        "same minutes, under the same load from the rest of the machine. re-seal s: the "
        "windows' time, the pauses left out (at 50 check-ins a second the walk rests 20 ms "
        "after each 4 ms slice). The rotation's bytes: write_bytes of /proc/self/io over a "
        "second rotation of the same store right after, with no check-in, and the WAL "
        "checkpoint after it; a kiosk at rest writes "
        "nothing more for rotations (the runtime looks for a next key with a stat every "
        "5 s)."], params={"patients": patients, "gap_s": gap, "window_s": WINDOW_S})
