"""Sync over a noisy serial line, and no wedging when the hub is away.

A kiosk runs ``haven-kiosk sync`` on one pty of the link emulator and the hub
runs ``haven hub serve --serial`` on the other, with byte errors and an
outage: every check-in is on the hub exactly once and the dumps are equal.
Then the hub is down (nothing listening) and comes back: the sync loop
resumes by itself within its backoff cap, once over an hour of simulated
time in-process, and once as the real process with a short cap. No test
asserts a wall-clock time; every wait has a deadline.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import time
import types
from pathlib import Path

import pytest

import device.sync.loop as kiosk_sync_module
from device.cli import cmd_sync
from device.store import Store
from host.hub.hub import Hub, init_hub
from host.hub.serve import Server
from tools.benchmarks._link import emulator

from .test_sync_helpers import Kiosk
from .test_sync_serial_helpers import DEADLINE, Lines, finish, hub_serving, kiosk_sync, start, stop

pytestmark = pytest.mark.usefixtures("hub_backend")


def enrolled(tmp: Path, names: list[str]) -> tuple[Path, list[Path]]:
    init_hub(tmp / "hub")
    with Hub(tmp / "hub") as hub:
        kiosks = [Kiosk(tmp, name, hub, chr(ord("A") + i)) for i, name in enumerate(names)]
    dirs = [k.store.data for k in kiosks]
    for k in kiosks:
        k.close()
    return tmp / "hub", dirs


def checkins(data: Path, n: int, tag: str) -> set[str]:
    with Store(data) as store:
        return {store.checkin(name=f"{tag}{i}", passport=f"{tag}{i:06d}", reason="fever")
                .record_id for i in range(n)}


def hub_state(hub_dir: Path) -> tuple[bytes, list[tuple[bytes, int, int]]]:
    with Hub(hub_dir) as hub:
        return hub.dump(), [(o.rid, o.stamp, o.node) for o in hub.store.all_ops()]


def test_serial_sync_through_noise_and_outage_once(tmp_path: Path) -> None:
    hub_dir, (k,) = enrolled(tmp_path, ["k"])
    ids = checkins(k, 300, "PS")
    emu_args = ["--rate", "11520", "--corrupt", "1e-4", "--outage", "1.5:2", "--seed", "5"]
    with emulator("serial", emu_args, tmp_path / "emu.json") as emu, \
            hub_serving(hub_dir, serial=[emu.endpoints["a"]]):
        rc, out, err = finish(kiosk_sync(k, emu.endpoints["b"], "--baud", "115200", "--once",
                                         "--timeout", str(DEADLINE), "--json"))
        assert rc == 0, err
        summary = json.loads(out.splitlines()[-1])
        assert summary["pushed"] == 600 and summary["quarantined"] == 0
        # The outage and the errors cost frames, which the summary counts.
        assert summary["frames_lost"] >= 1 and summary["retransmitted_bytes"] > 0
        assert summary["frames_sent"] > summary["frames_lost"]
        # A second round has nothing to move.
        rc, out, err = finish(kiosk_sync(k, emu.endpoints["b"], "--baud", "115200", "--once",
                                         "--timeout", str(DEADLINE), "--json"))
        assert rc == 0, err
        again = json.loads(out.splitlines()[-1])
        assert (again["pushed"], again["pulled"]) == (0, 0)
    assert emu.stats["ab"]["corrupted"] + emu.stats["ba"]["corrupted"] > 0
    assert emu.stats["ab"]["outage_bytes"] + emu.stats["ba"]["outage_bytes"] > 0
    dump, ops = hub_state(hub_dir)
    assert len(ops) == len(set(ops)) == 600
    records = json.loads(dump)["records"]
    assert {r["id"] for r in records if r["type"] == "checkin"} == ids
    with Store(k) as store:
        assert store.dump() == dump
        assert store.status()["outbox"]["lanes"] == {}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_hub_down_for_an_hour_then_back_resumes_within_the_cap(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An hour of simulated time: the loop's waits and its clock are simulated (so the
    URL's circuit breaker cools down in simulated time too), the connects real."""
    hub_dir, (k,) = enrolled(tmp_path, ["k"])
    ids = checkins(k, 20, "HD")
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    waits: list[float] = []
    simulated = 0.0
    back_at: int | None = None  # how many waits there were when the hub came back
    hub = Hub(hub_dir)
    server = Server(hub, 5 * 60 * 1000)

    def sleep(seconds: float) -> None:
        nonlocal simulated, back_at
        waits.append(seconds)
        simulated += seconds
        if simulated >= 3600 and back_at is None:
            server.listen(url)  # the hub is back; no local write happens
            back_at = len(waits)

    # The sync loop's waits are simulated and its monotonic clock moves with them;
    # wall-clock stamps and connects are real.
    fake_time = types.SimpleNamespace(monotonic=lambda: time.monotonic() + simulated,
                                      time_ns=time.time_ns, time=time.time, sleep=sleep)
    monkeypatch.setattr(kiosk_sync_module, "time", fake_time)
    # The link monitor is off: the route to 127.0.0.1 never goes away, and its looks
    # would cut each wait into slices of a second.
    args = argparse.Namespace(data=k, hub=[url], once=True, baud=None, timeout=7200.0,
                              interval=10.0, json=True, link_interval=0.0, keepalive=120.0)
    try:
        assert cmd_sync(args) == 0
        ops = list(hub.store.all_ops())
    finally:
        server.shutdown()
        hub.close()
    assert back_at is not None
    assert max(waits) <= kiosk_sync_module.BACKOFF_CAP
    assert waits[-1] >= kiosk_sync_module.BACKOFF_CAP / 2  # the waits had reached the cap
    assert len(waits) == back_at  # the round right after the hub came back worked
    assert len(ops) == 40
    dump, _ = hub_state(hub_dir)
    assert {r["id"] for r in json.loads(dump)["records"] if r["type"] == "checkin"} == ids


CAPPED_SYNC = ("import sys, device.sync.loop as s; s.BACKOFF_CAP = 1.0; "
               "from device.cli import main; sys.exit(main(sys.argv[1:]))")


def test_sync_loop_process_resumes_when_the_hub_returns(tmp_path: Path) -> None:
    """The real ``haven-kiosk sync`` loop (no --once), with a 1 s backoff cap."""
    hub_dir, (k,) = enrolled(tmp_path, ["k"])
    checkins(k, 10, "LP")
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    proc = start(["-c", CAPPED_SYNC, "sync", "--data", str(k), "--hub", url,
                  "--interval", "0.5", "--json"])
    try:
        failures = Lines(proc.stderr).wait_for("cannot connect", count=6)
        assert len(failures) == 6  # down for several attempts, the waits at the cap
        with hub_serving(hub_dir, listen=[url]):
            summary = json.loads(Lines(proc.stdout).wait_for('"pushed": 20')[0])
            assert summary["url"] == url
    finally:
        stop(proc)
    _, ops = hub_state(hub_dir)
    assert len(ops) == len(set(ops)) == 20


def committed_batches(hub_dir: Path) -> int:
    with Hub(hub_dir) as hub:
        dev = hub.store.devices()[0]
        return int(dev.last_seq)


def test_hub_killed_mid_push_on_serial_kiosk_finishes_once(tmp_path: Path) -> None:
    """SIGKILL to the hub while a kiosk pushes over serial; a new hub on the same
    port: the kiosk's round gives up on the dead session and the next one finishes."""
    hub_dir, (k,) = enrolled(tmp_path, ["k"])
    ids = checkins(k, 1000, "HK")
    with emulator("serial", ["--rate", "11520", "--seed", "2"], tmp_path / "emu.json") as emu:
        serve = ["-m", "host.cli", "hub", "serve", "--data", str(hub_dir), "--serial",
                 emu.endpoints["a"], "--baud", "115200"]
        hub = start(serve)
        Lines(hub.stdout).wait_for("ready")
        proc = kiosk_sync(k, emu.endpoints["b"], "--baud", "115200", "--once", "--timeout",
                          str(2 * DEADLINE), "--json")
        try:
            end = time.monotonic() + DEADLINE
            while committed_batches(hub_dir) < 1 and time.monotonic() < end:
                time.sleep(0.05)
            assert committed_batches(hub_dir) >= 1
            stop(hub, signal.SIGKILL)  # mid-push: the kiosk has more batches to send
            hub = start(serve)
            Lines(hub.stdout).wait_for("ready")
            rc, out, err = finish(proc)
            assert rc == 0, err
            # The round on the dead session failed, or its kept-open session was replaced.
            assert "haven-kiosk sync: " in err or "; a fresh one" in err, err
        finally:
            stop(proc)
            stop(hub)
    dump, ops = hub_state(hub_dir)
    assert len(ops) == len(set(ops)) == 2000
    assert {r["id"] for r in json.loads(dump)["records"] if r["type"] == "checkin"} == ids
    with Store(k) as store:
        assert store.dump() == dump


def test_kiosk_killed_mid_push_on_serial_is_answered_at_once(tmp_path: Path) -> None:
    """SIGKILL to the kiosk's sync mid-push over serial: the hub's session is still open
    when the rerun's handshake arrives; the hub sees a new first handshake message and
    takes it over with a new session, instead of ignoring it until its dead timeout."""
    hub_dir, (k,) = enrolled(tmp_path, ["k"])
    ids = checkins(k, 1000, "KK")
    with emulator("serial", ["--rate", "11520", "--seed", "4"], tmp_path / "emu.json") as emu, \
            hub_serving(hub_dir, serial=[emu.endpoints["a"]]):
        proc = kiosk_sync(k, emu.endpoints["b"], "--baud", "115200", "--once", "--timeout",
                          str(DEADLINE), "--json")
        try:
            end = time.monotonic() + DEADLINE
            while committed_batches(hub_dir) < 1 and time.monotonic() < end:
                time.sleep(0.05)
            assert committed_batches(hub_dir) >= 1
        finally:
            stop(proc, signal.SIGKILL)
        # Well under the hub's minute of dead timeout: only the new session can finish.
        rc, out, err = finish(kiosk_sync(k, emu.endpoints["b"], "--baud", "115200", "--once",
                                         "--timeout", "30", "--json"))
        assert rc == 0, err
    with Hub(hub_dir) as hub:
        events = [e["detail"] for e in hub.store.events() if e["code"] == "takeover"]
    assert any("started over" in e for e in events)
    dump, ops = hub_state(hub_dir)
    assert len(ops) == len(set(ops)) == 2000
    assert {r["id"] for r in json.loads(dump)["records"] if r["type"] == "checkin"} == ids
