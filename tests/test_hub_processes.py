"""Several ``haven hub serve`` processes over one PostgreSQL database, on one port.

Real processes (``haven hub serve --reuse-port``: ``SO_REUSEPORT``, the
kernel gives each new connection to one of them), each also listening on a
port of its own, so that a test can choose the process. The kiosks are real
stores syncing over TCP on 127.0.0.1; the test's own ``Hub`` (one more
process on the same database) enrols them and revokes. Which process served
a session is read from the processes' health reports (each its own socket,
``serve-PID.sock``): the one whose count of accepted connections moved.

The processes run with a backstop of a minute (``--watch-backstop``): a
revocation or a push that reaches another process's session within the
tests' bounds came by ``NOTIFY``, not by the slow poll. The tests on two
processes share one hub (a process starts in about a second): each uses
kiosks of its own.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from device.sync.connection import HubConnection
from host.cli import main as haven_main
from host.hub.health import read_health
from host.hub.hub import DATABASE_ENV, Hub, init_hub
from host.hub.serve import sole_server
from protocol import messages
from protocol.crdt.schema import CHECKIN

from .postgres_cluster import Cluster
from .test_clones import Copy
from .test_sync_helpers import Kiosk

BOUND = 20.0  #: seconds any one wait may take before the test fails
TURNS = 12  #: at most this many turns for a kiosk's sessions to land on two processes


def wait_until(cond: Callable[[], Any], what: str, bound: float = BOUND) -> Any:
    end = time.monotonic() + bound
    while not (got := cond()):
        assert time.monotonic() < end, f"not within {bound} s: {what}"
        time.sleep(0.02)
    return got


class HubProcess:
    """One ``haven hub serve`` process: the shared port and one of its own."""

    def __init__(self, data: Path, port: int, log: Path) -> None:
        self.data = data
        self.lines: list[str] = []
        self.ready = threading.Event()
        self.stderr = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "host.cli", "hub", "serve", "--data", str(data),
             "--reuse-port", "--listen", f"tcp://127.0.0.1:{port}",
             "--listen", "tcp://127.0.0.1:0", "--watch-backstop", "60"],
            stdout=subprocess.PIPE, stderr=self.stderr, text=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.strip())
            if line.endswith("ready\n"):
                self.ready.set()

    @property
    def own_url(self) -> str:
        """The address only this process listens on (its second ``--listen``)."""
        return [x for x in self.lines if x.startswith("listening on ")][1].split()[-1]

    def health(self) -> dict[str, Any]:
        report = read_health(self.data, name=f"serve-{self.proc.pid}.sock")
        assert report is not None, f"process {self.proc.pid} gave no health report"
        return report

    def listening(self) -> bool:
        return bool((self.health()["store_feed"] or {}).get("listening"))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(BOUND)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(BOUND)
        self.reader.join(BOUND)
        self.stderr.close()


class Served:
    """A hub on a PostgreSQL database, served by processes sharing one port."""

    def __init__(self, tmp: Path, url: str) -> None:
        self.tmp = tmp
        init_hub(tmp / "hub", database=url)
        self.hub = Hub(tmp / "hub")  # the test's own view of it, one more process
        # The shared port: held (bound, not listening: it takes no connection) until
        # processes listen on it, so that they all start at once and nothing takes it.
        self.hold = socket.socket()
        self.hold.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        self.hold.bind(("127.0.0.1", 0))
        self.url = f"tcp://127.0.0.1:{self.hold.getsockname()[1]}"
        self.procs: list[HubProcess] = []

    @contextmanager
    def more(self, n: int) -> Iterator[list[HubProcess]]:
        """``n`` more processes while in the context; every process, in it."""
        port = int(self.url.rpartition(":")[2])
        new = [HubProcess(self.tmp / "hub", port, self.tmp / f"serve-{len(self.procs) + i}.err")
               for i in range(n)]
        try:
            for p in new:
                assert p.ready.wait(BOUND), (p.lines, p.stderr.name)
            self.hold.close()
            own = {p.own_url for p in new}
            assert len(own) == n and self.url not in own
            for p in new:  # each hears the store's changes before the test makes any
                wait_until(p.listening, f"process {p.proc.pid} listening for changes")
            self.procs += new
            yield self.procs
        finally:
            for p in new:
                p.stop()
            self.procs = [p for p in self.procs if p not in new]

    def close(self) -> None:
        self.hold.close()
        self.hub.close()


@pytest.fixture(scope="module")
def pair(postgres: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A hub served by two processes on one port, for the module's tests."""
    name = f"test_{uuid.uuid4().hex[:16]}"
    served = Served(tmp_path_factory.mktemp("pair"), postgres.create_database(name))
    try:
        with served.more(2):
            yield served
    finally:
        served.close()
        postgres.drop_database(name)


def accepted(procs: list[HubProcess]) -> list[int]:
    return [p.health()["connections"]["accepted"] for p in procs]


def served_by(procs: list[HubProcess], sync: Callable[[], object]) -> int:
    """Run ``sync`` (one session on one connection); the index of the process that
    accepted it."""
    before = accepted(procs)
    sync()
    moved = [i for i, (a, b) in enumerate(zip(before, accepted(procs), strict=True)) if b > a]
    assert len(moved) == 1, (before, moved)
    return moved[0]


def flagged(hub: Hub, device: str) -> bool:
    dev = hub.store.device(device)
    return dev is not None and bool(dev.suspected_clone)


def checkins_at_hub(hub: Hub) -> list[bytes]:
    return [v.record_id for v in hub.views() if v.type == CHECKIN.number]


def test_three_kiosks_behind_one_port_of_two_processes_converge(
        tmp_path: Path, pair: Served) -> None:
    converge(tmp_path, pair.hub, pair.procs, pair.url)


def test_three_kiosks_behind_one_port_of_four_processes_converge(
        tmp_path: Path, pair: Served) -> None:
    gone = pair.hub.data / "serve-4194305.sock"  # past any pid: a process that is gone
    gone.touch()
    with pair.more(2) as procs:
        assert len(procs) == 4 and not gone.exists()  # a new process swept it
        converge(tmp_path, pair.hub, procs, pair.url)


def converge(tmp_path: Path, hub: Hub, procs: list[HubProcess], url: str) -> None:
    """Three kiosks check in and sync in turn through the shared port until the first
    one's sessions landed on two processes; then all converge."""
    kiosks = [Kiosk(tmp_path, name, hub, name.upper(), site=f"Site {len(procs)}")
              for name in "abc"]
    ids: list[bytes] = []
    served: list[int] = []  #: the process each of the first kiosk's sessions was on
    for turn in range(TURNS):
        for k in kiosks:
            ids.append(uuid.UUID(k.store.checkin(name=f"{k.device} {turn}").record_id
                                 ).bytes)
            where = served_by(procs, functools.partial(k.sync, url))
            if k is kiosks[0]:
                served.append(where)
        if len(set(served)) > 1:
            break
    # Its sessions landed on two processes (one after the other), and its chain
    # and checkpoint stayed one: every batch committed, none held, no clone.
    assert len(set(served)) > 1, served
    dev = hub.store.device(kiosks[0].device)
    assert dev is not None and dev.last_seq == len(served) and not dev.suspected_clone
    assert not [h for h in hub.store.held_batches() if h["device"] == dev.device_id]
    for k in kiosks:  # each pulls what the others pushed
        k.sync(url)
    nodes = {k.store.node for k in kiosks}
    at_hub = checkins_at_hub(hub)
    assert set(ids) <= set(at_hub)  # every check-in there
    ops = [o for o in hub.store.all_ops() if o.node in nodes]
    assert len(ops) == len({(o.rid, o.stamp, o.node) for o in ops}) == 2 * len(ids)
    for k in kiosks:
        assert k.store.dump() == hub.dump()
        k.close()


def test_a_kept_open_session_hears_of_a_batch_and_a_revocation_through_another_process(
        tmp_path: Path, pair: Served, record_property: Callable[[str, object], None],
        ) -> None:
    hub, (a, b) = pair.hub, pair.procs[:2]
    k, other = Kiosk(tmp_path, "k", hub, "K"), Kiosk(tmp_path, "o", hub, "O")
    conn = HubConnection(a.own_url, k.ident, keepalive=120.0)
    wake = threading.Event()
    try:
        conn.round(k.store, k.state, limit=BOUND)  # kept open, on process a
        assert a.health()["connections"]["tcp"]["authenticated"] == 1
        # A check-in committed through process b: process a pushes sync-notify.
        other.store.checkin(name="Someone")
        assert other.sync(b.own_url).pushed == 2
        assert conn.idle(BOUND, wake) and conn.pending, "no push within the bound"
        assert [messages.decode(m).name for m in conn.pending] == ["sync-notify"]
        assert conn.round(k.store, k.state, limit=BOUND).pulled == 2
        # Revoked by another process (here, the test's): process a ends the session.
        start = time.monotonic()
        hub.revoke(k.device)
        assert conn.idle(BOUND, wake), "the session outlived the bound"
        took_ms = (time.monotonic() - start) * 1000
        assert conn.refused is not None and conn.refused.reason == "revoked"
        record_property("revocation_to_close_ms", round(took_ms, 1))
        print(f"revocation to the session's end on another process: {took_ms:.0f} ms")
    finally:
        conn.close()
        k.close()
        other.close()


def test_copies_of_a_kiosk_on_two_processes_are_caught(
        tmp_path: Path, pair: Served) -> None:
    hub, (a, b) = pair.hub, pair.procs[:2]
    first = Kiosk(tmp_path, "x", hub, "X")
    first.store.checkin(name="before")
    first.sync(a.own_url)
    first.close()
    shutil.copytree(tmp_path / "x", tmp_path / "y")
    copies = [(Copy(tmp_path / "x"), a), (Copy(tmp_path / "y"), b)]
    try:
        device = copies[0][0].ident.cert.device_id
        for turn in range(6):
            if flagged(hub, device):
                break
            for copy, proc in copies:
                copy.checkin(f"{copy.data.name} {turn}")
                copy.sync(proc.own_url)
        # The second batch under one sequence, through the other process, is held
        # and the kiosk flagged, as on one process.
        assert flagged(hub, device)
        assert [h for h in hub.store.held_batches() if h["device"] == device]
        assert any(e["code"] == "suspected-clone" and e["device"] == device
                   for e in hub.store.events(200))
    finally:
        for copy, _ in copies:
            copy.close()


def test_status_reports_each_process_and_one_runs_the_background_walks(
        pair: Served, capsys: pytest.CaptureFixture[str]) -> None:
    assert [p.health()["store_feed"]["leads"] for p in pair.procs].count(True) == 1
    assert haven_main(["hub", "status", "--data", str(pair.hub.data)]) == 0
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("server (pid ")]
    assert sorted(int(x.split()[2].rstrip("):")) for x in lines) == sorted(
        p.proc.pid for p in pair.procs)


def test_an_sqlite_hub_takes_one_serving_process(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv(DATABASE_ENV, raising=False)
    init_hub(tmp_path / "hub")
    serve = ["hub", "serve", "--data", str(tmp_path / "hub"), "--listen", "tcp://127.0.0.1:0"]
    assert haven_main([*serve, "--reuse-port"]) == 2
    err = capsys.readouterr().err.strip()
    assert "SQLite file" in err and "PostgreSQL" in err and len(err.splitlines()) == 1
    with Hub(tmp_path / "hub") as hub, sole_server(hub):
        assert haven_main(serve) == 2  # a second server, while this one holds the hub
        err = capsys.readouterr().err.strip()
        assert f"another haven hub serve (pid {os.getpid()})" in err, err
        assert len(err.splitlines()) == 1


def test_a_data_key_rotated_elsewhere_is_taken_by_every_process(
        tmp_path: Path, pair: Served) -> None:
    """What one process seals under the new key, another opens for a kiosk's pull."""
    hub, (a, b) = pair.hub, pair.procs[:2]
    writer, reader = Kiosk(tmp_path, "w", hub, "W"), Kiosk(tmp_path, "r", hub, "R")
    try:
        reader.sync(b.own_url)
        version = hub.rotate_key()
        wait_until(lambda: all(p.health()["data_key"] == version for p in (a, b)),
                   f"every process on data key {version}")
        rid = uuid.UUID(writer.store.checkin(name="Sealed anew").record_id).bytes
        assert writer.sync(a.own_url).pushed == 2
        assert reader.sync(b.own_url).pulled >= 2
        assert rid in {v.record_id for v in reader.store.views()}
    finally:
        writer.close()
        reader.close()
