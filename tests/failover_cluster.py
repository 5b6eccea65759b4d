"""A pg_auto_failover formation on this machine: a monitor, a primary and a standby.

Theory of operation
-------------------
pg_auto_failover (Debian: postgresql-15-auto-failover, ``pg_autoctl``) does the
promotion and the fencing; this module only lays out three local clusters and
drives them like an operator would:

- the **monitor** (``pg_autoctl create monitor``): a PostgreSQL with the
  ``pgautofailover`` extension that health-checks the nodes and assigns each a
  goal state;
- the **primary** and the **standby** (``pg_autoctl create postgres``, one after
  the other): the first registered becomes ``single`` then ``primary``, the
  second is cloned with ``pg_basebackup`` and streams from it. With one standby
  that takes part in the replication quorum, the monitor sets the primary's
  ``synchronous_standby_names`` to ``ANY 1 (pgautofailover_standby_N)``, and
  ``synchronous_commit`` stays ``on``: a commit returns only once the standby
  has the WAL. When the standby is lost the monitor moves the primary to
  ``wait_primary`` and clears the list, so the primary keeps committing alone;
  it never promotes a standby that was not in sync.

Each node is a ``pg_autoctl`` keeper (``create ... --run``) running as the
unprivileged server user of ``tests/postgres_cluster.py``, in its own session so
that ``kill_primary`` can SIGKILL the keeper and everything it started, then the
postmaster itself: a machine dying, not a shutdown. Clusters are initialised by
us first (so they listen on 127.0.0.1 only, keep their sockets under ``root``,
and stay small: pg_autoctl would otherwise size ``shared_buffers`` to a quarter
of RAM); our settings go in ``postgresql.auto.conf``, which PostgreSQL reads
last and which ``pg_basebackup`` copies to the standby.

The monitor's clocks are shortened for tests (``SHORT_CLOCKS``; the benchmark
keeps pg_auto_failover's defaults, as in production); the fencing rule is
kept: the monitor waits ``primary_demote_timeout`` before the standby takes
writes, longer than the keeper's ``network_partition_timeout`` after which a
primary cut off from both monitor and standby stops itself.

Layout under ``root``::

    root/<name>.log        each keeper's output
    root/pg/               owned by the server's user
    root/pg/{monitor,node1,node2}/   data directories
    root/pg/run/           the sockets; root/pg/home: pg_autoctl's XDG dirs
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from tests.postgres_cluster import (
    SUPERUSER,
    ClusterError,
    ServerUser,
    free_port,
    log_tail,
    postgres_available,
    run_initdb,
    server_bin_dir,
    set_up,
    wait_until_ready,
)

DBNAME = "haven"
FORMATION = "default"
READY_TIMEOUT = 180.0
PROMOTION_TIMEOUT = 120.0
STOP_GRACE = 3.0
NETWORK_PARTITION_TIMEOUT = 3  # s, the keeper's; below primary_demote_timeout

NODE_SETTINGS: dict[str, object] = {
    "listen_addresses": "127.0.0.1",
    "shared_buffers": "32MB",
    "max_connections": 200,
    "max_wal_size": "256MB",
    # The test kills processes, never the machine: the page cache survives, so the
    # standby's copy of an acknowledged commit does too. synchronous_commit stays on.
    "fsync": "off",
    # pg_basebackup (the standby's clone) waits for a checkpoint: not a spread one.
    "checkpoint_completion_target": 0,
}
MONITOR_SETTINGS: dict[str, object] = {**NODE_SETTINGS, "max_connections": 100}
#: The monitor's clocks for tests, in ms (pg_auto_failover's defaults: a health check
#: every 5 s, unhealthy after 20 s, 30 s for the old primary to demote).
SHORT_CLOCKS: dict[str, object] = {
    "pgautofailover.health_check_period": 1000,
    "pgautofailover.health_check_timeout": 1000,
    "pgautofailover.health_check_retry_delay": 500,
    "pgautofailover.health_check_max_retries": 1,
    "pgautofailover.node_considered_unhealthy_timeout": 3000,
    "pgautofailover.primary_demote_timeout": 5000,
    "pgautofailover.startup_grace_period": 1000,
}


def failover_available() -> str | None:
    """None when a formation can be started here; else the reason."""
    reason = postgres_available()
    if reason is not None:
        return reason
    if not _pg_autoctl():
        return ("no pg_autoctl (apt package postgresql-15-auto-failover; "
                "./tools/test installs it as root)")
    return None


def _pg_autoctl() -> str | None:
    for d in (server_bin_dir(), Path("/usr/bin")):
        if d is not None and os.access(d / "pg_autoctl", os.X_OK):
            return str(d / "pg_autoctl")
    return None


@dataclass
class Node:
    """One pg_autoctl keeper and the cluster it manages."""

    name: str
    data: Path
    port: int
    log: Path
    keeper: subprocess.Popen[bytes] | None = field(repr=False, default=None)

    def url(self, dbname: str, *, writable: bool = False) -> str:
        url = f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{dbname}"
        return url + "?target_session_attrs=read-write" if writable else url

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def describe_failure(self) -> str:
        logs = sorted((self.data / "log").glob("*.log"))
        server = log_tail(logs[-1], 15) if logs else "(no server log)"
        return (f"--- {self.log}:\n{log_tail(self.log, 20)}\n"
                f"--- {self.name}'s server log:\n{server}")


@dataclass
class Formation:
    """The monitor and two nodes; ``url`` reaches whichever is primary."""

    root: Path
    user: ServerUser
    monitor: Node
    nodes: list[Node]
    env: dict[str, str] = field(repr=False)

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)
        return (f"postgresql://{SUPERUSER}@{hosts}/{DBNAME}"
                "?target_session_attrs=read-write&connect_timeout=2")

    @property
    def monitor_url(self) -> str:
        return self.monitor.url("pg_auto_failover")

    @property
    def keepers_monitor_url(self) -> str:
        """How the keepers reach the monitor (its role for them is ``autoctl_node``)."""
        return (f"postgresql://autoctl_node@127.0.0.1:{self.monitor.port}/pg_auto_failover"
                "?sslmode=disable")

    def states(self) -> dict[str, tuple[str, str]]:
        """Each node's (reported, goal) state, as the monitor has them."""
        with psycopg.connect(self.monitor_url, connect_timeout=5) as conn:
            rows = conn.execute("SELECT nodename, reportedstate::text, goalstate::text "
                                "FROM pgautofailover.node").fetchall()
        return {name: (reported, goal) for name, reported, goal in rows}

    def node_in(self, state: str) -> Node | None:
        for name, (reported, goal) in self.states().items():
            if reported == goal == state:
                return self._node(name)
        return None

    def _node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def wait_for_states(self, want: dict[str, str], timeout: float) -> None:
        """Until each named node reports (and is assigned) the state wanted."""
        deadline = time.monotonic() + timeout
        seen: dict[str, tuple[str, str]] = {}
        while time.monotonic() < deadline:
            try:
                seen = self.states()
            except psycopg.Error:
                seen = {}
            if all(seen.get(n) == (s, s) for n, s in want.items()):
                return
            self._check_keepers()
            time.sleep(0.2)
        raise ClusterError(f"the formation did not reach {want} within {timeout:.0f} s "
                           f"(monitor says {seen})\n{self._failures()}")

    def _check_keepers(self) -> None:
        for n in [self.monitor, *self.nodes]:
            if n.keeper is not None and n.keeper.poll() is not None:
                raise ClusterError(f"pg_autoctl for {n.name} exited with status "
                                   f"{n.keeper.returncode}\n{n.describe_failure()}")

    def _failures(self) -> str:
        return "\n".join(n.describe_failure() for n in [self.monitor, *self.nodes])

    def setting(self, node: Node, name: str) -> str:
        """A setting of the node's server as it is now (``synchronous_standby_names``...)."""
        with psycopg.connect(node.url(DBNAME), connect_timeout=5) as conn:
            row = conn.execute("SELECT current_setting(%s)", (name,)).fetchone()
        assert row is not None
        return str(row[0])

    def kill(self, node: Node) -> None:
        """SIGKILL the node's keeper (its whole session) and its postmaster."""
        pid = node.postmaster_pid()
        if node.keeper is not None:
            _kill_session(node.keeper)
            node.keeper = None
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def kill_primary(self) -> Node:
        """Kill the node that is primary now; return it."""
        primary = self.node_in("primary")
        if primary is None:
            raise ClusterError(f"no node is primary: {self.states()}")
        self.kill(primary)
        return primary

    def wait_for_promotion(self, old: Node, timeout: float = PROMOTION_TIMEOUT) -> Node:
        """Until another node than ``old`` takes writes; return it.

        A promoted standby stays read-only until the monitor has waited out the
        old primary's demotion (``stop_replication``): writable is what counts."""
        deadline = time.monotonic() + timeout
        others = [n for n in self.nodes if n is not old]
        last = ""
        while time.monotonic() < deadline:
            for n in others:
                try:
                    with psycopg.connect(n.url(DBNAME, writable=True), connect_timeout=2):
                        return n
                except psycopg.Error as e:
                    last = str(e).strip()
            self._check_keepers()
            time.sleep(0.1)
        raise ClusterError(f"no standby was promoted within {timeout:.0f} s ({last}); "
                           f"monitor: {self._safe_states()}\n{self._failures()}")

    def _safe_states(self) -> object:
        try:
            return self.states()
        except psycopg.Error as e:
            return f"unreachable: {e}"

    def start_node(self, node: Node) -> None:
        """(Re)start a node's keeper; a killed old primary rejoins as a standby."""
        node.keeper = _spawn(self, node, ["run", "--pgdata", str(node.data)])

    def stop(self) -> None:
        """Fast shutdown (SIGINT: pg_autoctl stops its postgres the fast way), the
        monitor first, then every node at once. A keeper sometimes takes ten seconds
        to act on it; the clusters are thrown away, so after ``STOP_GRACE`` s what is
        left gets SIGKILL, and postmasters SIGQUIT."""
        self._stop_keepers([self.monitor])
        self._stop_keepers(self.nodes)

    def _stop_keepers(self, nodes: list[Node]) -> None:
        running = [n for n in nodes if n.keeper is not None]
        for n in running:
            assert n.keeper is not None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(n.keeper.pid, signal.SIGINT)
        deadline = time.monotonic() + STOP_GRACE
        for n in running:
            keeper, n.keeper = n.keeper, None
            assert keeper is not None
            try:
                keeper.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _kill_session(keeper)
            pid = n.postmaster_pid()
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGQUIT)

    def __enter__(self) -> Formation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _kill_session(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10.0)


def _spawn(f: Formation, node: Node, args: list[str]) -> subprocess.Popen[bytes]:
    pg_autoctl = _pg_autoctl()
    assert pg_autoctl is not None
    with open(node.log, "ab") as log:
        return subprocess.Popen(
            [pg_autoctl, *args], cwd=f.root / "pg", env=f.env, stdin=subprocess.DEVNULL,
            stdout=log, stderr=log, start_new_session=True, **f.user.popen_args())


def _write_settings(data: Path, settings: dict[str, object]) -> None:
    lines = "".join(f"{k} = '{v}'\n" for k, v in settings.items())
    with open(data / "postgresql.auto.conf", "a") as f:
        f.write(lines)


def _prepare(home: Path, name: str, bin_dir: Path, user: ServerUser,
             settings: dict[str, object] | None) -> Node:
    data = home / name
    if settings is not None:
        run_initdb(data, bin_dir, user)
        _write_settings(data, {**settings, "unix_socket_directories": str(home / "run")})
    return Node(name, data, free_port(), home.parent / f"{name}.log")


def start_formation(root: Path, timeout: float = READY_TIMEOUT,
                    short_clocks: bool = True) -> Formation:
    """Start the monitor, a primary and a standby in sync; bounded by ``timeout``.
    ``short_clocks``: the monitor's and keepers' timeouts shortened (see above)."""
    setup = set_up(root, failover_available())
    bin_dir, user, home = setup.bin_dir, setup.user, setup.home
    root = home.parent
    for sub in ("run", "home"):
        setup.subdir(sub)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(home / "home"),
           "XDG_CONFIG_HOME": str(home / "home" / "config"),
           "XDG_DATA_HOME": str(home / "home" / "data"),
           "XDG_RUNTIME_DIR": str(home / "run"), "TMPDIR": str(home / "run"),
           "PGHOST": str(home / "run"), "PGUSER": SUPERUSER, "LANG": "C.UTF-8"}
    monitor = _prepare(home, "monitor", bin_dir, user,
                       {**MONITOR_SETTINGS, **(SHORT_CLOCKS if short_clocks else {})})
    # The standby is cloned from the primary (pg_basebackup), settings and all.
    nodes = [_prepare(home, "node1", bin_dir, user, NODE_SETTINGS),
             _prepare(home, "node2", bin_dir, user, None)]
    f = Formation(root, user, monitor, nodes, env)
    common = ["--hostname", "127.0.0.1", "--auth", "trust", "--no-ssl",
              "--pgctl", str(bin_dir / "pg_ctl"), "--run"]
    deadline = time.monotonic() + timeout
    try:
        monitor.keeper = _spawn(f, monitor, ["create", "monitor", "--pgdata", str(monitor.data),
                                             "--pgport", str(monitor.port), *common])
        error = wait_until_ready(f.monitor_url, deadline - time.monotonic())
        if error is not None:
            raise ClusterError(f"the monitor did not come up: {error}\n"
                               f"{monitor.describe_failure()}")
        for i, node in enumerate(nodes):
            node.keeper = _spawn(f, node, [
                "create", "postgres", "--pgdata", str(node.data), "--pgport", str(node.port),
                "--listen", "127.0.0.1", "--name", node.name, "--username", SUPERUSER,
                "--dbname", DBNAME, "--monitor", f.keepers_monitor_url, *common])
            f.wait_for_states({node.name: "single" if i == 0 else "secondary"},
                              deadline - time.monotonic())
        f.wait_for_states({nodes[0].name: "primary", nodes[1].name: "secondary"},
                          deadline - time.monotonic())
        if short_clocks:
            _shorten_keeper_timeouts(f)
    except BaseException:
        f.stop()
        raise
    return f


def _shorten_keeper_timeouts(f: Formation) -> None:
    """The keeper's partition timeout, shortened like the monitor's clocks (see above)."""
    pg_autoctl = _pg_autoctl()
    assert pg_autoctl is not None
    for node in f.nodes:
        subprocess.run([pg_autoctl, "config", "set", "--pgdata", str(node.data),
                        "timeout.network_partition_timeout", str(NETWORK_PARTITION_TIMEOUT)],
                       cwd=f.root / "pg", env=f.env, capture_output=True, timeout=30.0,
                       check=True, **f.user.popen_args())
