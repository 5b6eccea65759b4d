"""Convergence under faults: three kiosks and a hub, one kiosk on a noisy serial line.

The hub is the real ``haven hub serve``, on TCP for kiosks A and B and on one
pty of the link emulator (byte errors, an outage) for kiosk C. Each kiosk
makes check-ins offline, and A and C edit the same prescription
concurrently. All three run ``haven-kiosk sync --once`` at once; each of
them and the hub are killed with SIGKILL at random (seeded) instants, the hub
is started again at once, and each kiosk runs again until a run succeeds.
At the end the three kiosks' dumps and the hub's are identical, every
check-in is on the hub exactly once, and the prescription is held on every
replica until ``haven review resolve``, after which all agree.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from device.store import Store
from host.hub.hub import Hub
from tools.benchmarks._link import emulator

from .test_sync_serial import checkins, enrolled, free_port
from .test_sync_serial_helpers import (
    DEADLINE,
    Lines,
    finish,
    hub_serving,
    kiosk_sync,
    start,
    stop,
)

ROOT = Path(__file__).resolve().parents[1]


def once(data: Path, url: str) -> subprocess.Popen[bytes]:
    return kiosk_sync(data, url, "--once", "--timeout", str(DEADLINE), "--json",
                      *(("--baud", "115200") if not url.startswith("tcp:") else ()))


def sync_all(kiosks: list[tuple[Path, str]]) -> None:
    procs = [once(d, u) for d, u in kiosks]
    for p in procs:
        rc, _, err = finish(p)
        assert rc == 0, err


def run_again(kiosks: list[tuple[Path, str]]) -> None:
    """Each kiosk once more, until a run succeeds (one that meets a dead hub session or the
    outage gives up at its timeout; the next starts afresh)."""
    for data, url in kiosks:
        for _ in range(3):
            rc, _, err = finish(once(data, url))
            if rc == 0:
                break
        assert rc == 0, err


def run_faults(tmp: Path, seed: int, per_kiosk: int) -> None:
    rng = random.Random(seed)
    hub_dir, dirs = enrolled(tmp, ["a", "b", "c"])
    port = free_port()
    tcp = f"tcp://127.0.0.1:{port}"
    emu_args = ["--rate", "11520", "--corrupt", "1e-4", "--outage", "6:2",
                "--seed", str(seed)]
    with emulator("serial", emu_args, tmp / "emu.json") as emu, \
            hub_serving(hub_dir, serial=[emu.endpoints["a"]], listen=[tcp]) as first_hub:
        serve = ["-m", "host.cli", "hub", "serve", "--data", str(hub_dir), "--baud", "115200",
                 "--serial", emu.endpoints["a"], "--listen", tcp]
        hubs = [first_hub]
        kiosks = [(dirs[0], tcp), (dirs[1], tcp), (dirs[2], emu.endpoints["b"])]
        # A prescription that every kiosk has before the concurrent edit.
        with Store(dirs[0]) as a:
            rx = a.put("prescription", values={"medication": "amoxicillin", "status": "active"})
        sync_all(kiosks)
        made: set[str] = set()
        for (data, _), tag in zip(kiosks, ("FA", "FB", "FC"), strict=True):
            made |= checkins(data, per_kiosk, tag)
        with Store(dirs[0]) as a:
            a.put("prescription", rx, {"dosageInstruction": "500 mg twice daily"})
        with Store(dirs[2]) as c:
            c.put("prescription", rx, {"dosageInstruction": "250 mg three times daily"})

        # All three at once; each kiosk and the hub are killed at random instants; the
        # hub is started again at once, the kiosks run again.
        procs = [once(d, u) for d, u in kiosks]
        kill_at = [rng.uniform(0.3, 3.0) for _ in range(4)]  # kiosks A, B, C, the hub
        t0 = time.monotonic()
        try:
            for i in sorted(range(4), key=lambda j: kill_at[j]):
                time.sleep(max(0.0, t0 + kill_at[i] - time.monotonic()))
                if i < 3:
                    stop(procs[i], signal.SIGKILL)
                    continue
                stop(hubs[-1], signal.SIGKILL)
                hubs.append(start(serve))
                Lines(hubs[-1].stdout).wait_for("ready")
            run_again(kiosks)
            sync_all(kiosks)  # every push is in: this round pulls the rest
            check_held_then_resolved(kiosks, hub_dir, rx, made, per_kiosk)
        finally:
            for proc in [*procs, *hubs[1:]]:
                stop(proc)


def check_held_then_resolved(kiosks: list[tuple[Path, str]], hub_dir: Path, rx: str,
                             made: set[str], per_kiosk: int) -> None:
    with Hub(hub_dir) as hub:
        ops = [(o.rid, o.stamp, o.node) for o in hub.store.all_ops()]
        held = [c for c in hub.conflicts() if c["severity"] == "hold"]
        hub_dump = hub.dump()
    # Per kiosk: a patient and a check-in per check-in; the prescription and two edits.
    assert len(ops) == len(set(ops)) == 3 * 2 * per_kiosk + 3
    records = json.loads(hub_dump)["records"]
    checkin_ids = [r["id"] for r in records if r["type"] == "checkin"]
    assert sorted(checkin_ids) == sorted(made)
    assert len(held) == 1 and held[0]["record_id"] == rx
    dumps = []
    for data, _ in kiosks:
        with Store(data) as store:
            view = store.view(rx)
            assert view is not None and view.held
            dumps.append(store.dump())
    assert dumps == [hub_dump] * 3

    listed = subprocess.run(
        [*_haven(), "review", "list", "--data", str(hub_dir), "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=DEADLINE, check=True)
    conflict = json.loads(listed.stdout)[0]
    subprocess.run([*_haven(), "review", "resolve", "--data", str(hub_dir),
                    conflict["id"], "--keep", conflict["versions"][1]["id"]],
                   cwd=ROOT, capture_output=True, timeout=DEADLINE, check=True)
    sync_all(kiosks)
    with Hub(hub_dir) as hub:
        assert hub.conflicts() == []
        hub_dump = hub.dump()
    dumps = []
    for data, _ in kiosks:
        with Store(data) as store:
            view = store.view(rx)
            assert view is not None and not view.held
            dumps.append(store.dump())
    assert dumps == [hub_dump] * 3
    kept = next(r for r in json.loads(hub_dump)["records"] if r["id"] == rx)
    assert kept["fields"]["dosageInstruction"] in (
        "500 mg twice daily", "250 mg three times daily")


def _haven() -> list[str]:
    return [sys.executable, "-m", "host.cli"]


def test_three_kiosks_converge_under_kills_noise_and_an_outage(tmp_path: Path) -> None:
    run_faults(tmp_path, seed=11, per_kiosk=150)


@pytest.mark.long
@pytest.mark.parametrize("seed", [21, 22, 23])
def test_three_kiosks_converge_more_seeds(tmp_path: Path, seed: int) -> None:
    run_faults(tmp_path, seed=seed, per_kiosk=400)
