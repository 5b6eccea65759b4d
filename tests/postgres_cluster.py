"""A real PostgreSQL cluster for tests and benchmarks, started and stopped here.

Theory of operation
-------------------
Debian keeps the server's programs off PATH, under
``/usr/lib/postgresql/<major>/bin``; the newest major there is used (then PATH).
``initdb`` and ``postgres`` refuse to run as root, so as root they run as a
dedicated unprivileged system user, ``haven-pg``, made here when missing
(``useradd --system --no-create-home``); ``subprocess`` drops to it (``user=``,
``group=``, ``extra_groups=[]``), so no sudo or runuser is needed. As any other
user they run as that user.

Under the given root directory (which, with its parents, must be traversable by
that user: ``o+x`` is added where root owns a directory that lacks it)::

    root/postgres.log    the server's output (read back when it fails to start)
    root/pg/             owned by the server's user, 0700
    root/pg/data/        the cluster (initdb)
    root/pg/run/         the unix socket directory

The server listens on 127.0.0.1 only, trusts local connections, and runs
without durability (``fsync=off`` and friends): a test cluster is thrown away.
The bootstrap superuser is ``haven``; ``Cluster.url`` names it and the
``postgres`` database.

``postgres`` is this process's own child (not daemonised by ``pg_ctl``), so
``stop`` can wait for it, and a parent-death signal (SIGQUIT: immediate
shutdown) ends it if the test process dies without stopping it. Starting is
bounded in time; a server that does not come up is killed and the error quotes
the tail of its log. When no port is given a free one is picked, and picked
again if another process takes it first.
"""

from __future__ import annotations

import ctypes
import glob
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SERVER_USER = "haven-pg"
SUPERUSER = "haven"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
INITDB_TIMEOUT = 120.0
DEBIAN_BIN_DIRS = "/usr/lib/postgresql/*/bin"
# A unix socket's path is at most 107 bytes; past that the server listens on TCP only.
MAX_SOCKET_PATH = 100

# For tests: nothing here must survive a crash, and many hub processes may connect.
TEST_SETTINGS: dict[str, object] = {
    "listen_addresses": "127.0.0.1",
    "fsync": False,
    "synchronous_commit": False,
    "full_page_writes": False,
    "shared_buffers": "32MB",
    "max_connections": 300,
    "max_wal_size": "256MB",
    "checkpoint_timeout": "30min",
    "max_parallel_workers_per_gather": 0,
    "log_min_messages": "warning",
    "log_line_prefix": "%m [%p] ",
}

_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_PR_SET_PDEATHSIG = 1


class ClusterError(RuntimeError):
    """PostgreSQL could not be set up, started or stopped; the message says why."""


@dataclass(frozen=True)
class ServerUser:
    """Who the server runs as: ``None`` fields mean this process's own user."""

    name: str
    uid: int | None = None
    gid: int | None = None

    def popen_args(self) -> dict[str, Any]:
        if self.uid is None:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}

    def own(self, path: Path) -> None:
        if self.uid is not None:
            os.chown(path, self.uid, self.gid if self.gid is not None else -1)


def server_bin_dir() -> Path | None:
    """The directory of the newest ``initdb`` and ``postgres``, or None."""
    found = [Path(p) for p in _glob_sorted(DEBIAN_BIN_DIRS)]
    for d in found:
        if _has_server(d):
            return d
    for entry in os.environ.get("PATH", "").split(os.pathsep):
        if entry and _has_server(Path(entry)):
            return Path(entry)
    return None


def _glob_sorted(pattern: str) -> list[str]:
    """Debian's versioned bin dirs, newest major first (15 before 9)."""
    def major(p: str) -> tuple[int, str]:
        ver = Path(p).parent.name
        return (int(ver) if ver.isdigit() else -1, ver)

    return sorted(glob.glob(pattern), key=major, reverse=True)


def _has_server(d: Path) -> bool:
    return all(os.access(d / prog, os.X_OK) for prog in ("initdb", "postgres"))


def postgres_available() -> str | None:
    """None when a cluster can be started here; else the reason it cannot."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install 'psycopg[binary]>=3.1')"
    if server_bin_dir() is None:
        return (f"no PostgreSQL server programs (initdb, postgres) under {DEBIAN_BIN_DIRS} "
                "or on PATH (apt package postgresql; ./tools/test installs it as root)")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SERVER_USER)
        except KeyError:
            if not _which("useradd"):
                return (f"running as root, where initdb refuses to run, and there is no "
                        f"user {SERVER_USER} nor useradd to make one")
    return None


def _which(prog: str) -> str | None:
    return shutil.which(prog) or shutil.which(prog, path="/usr/sbin:/sbin")


def server_user() -> ServerUser:
    """As root, the unprivileged ``haven-pg`` (made if missing); else this user."""
    if os.geteuid() != 0:
        return ServerUser(pwd.getpwuid(os.geteuid()).pw_name)
    deadline = time.monotonic() + 30.0
    while True:
        try:
            entry = pwd.getpwnam(SERVER_USER)
            return ServerUser(SERVER_USER, entry.pw_uid, entry.pw_gid)
        except KeyError:
            pass
        useradd = _which("useradd")
        if useradd is None:
            raise ClusterError(f"no user {SERVER_USER} and no useradd to make one")
        r = subprocess.run([useradd, "--system", "--no-create-home", "--user-group",
                            "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin",
                            SERVER_USER], capture_output=True, text=True, timeout=30.0)
        # Another test process may be making it at the same moment (/etc/passwd locked).
        if r.returncode != 0 and time.monotonic() > deadline:
            raise ClusterError(f"useradd {SERVER_USER} failed: {r.stderr.strip()}")
        if r.returncode != 0:
            time.sleep(0.2)


def make_traversable(path: Path) -> None:
    """Let another user reach ``path``: add o+x to each ancestor we own that lacks it."""
    for d in [path, *path.parents]:
        st = d.stat()
        if st.st_mode & 0o001:
            continue
        if st.st_uid != os.geteuid():
            raise ClusterError(f"{d} is not traversable by the server's user "
                               f"(mode {st.st_mode & 0o777:o}, not ours to change)")
        d.chmod(st.st_mode & 0o7777 | 0o001)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listened on a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _setting(value: object) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def _die_with_parent() -> None:
    """In the server's child process: SIGQUIT (immediate shutdown) when we die."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGQUIT, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def log_tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise ValueError(f"database name {name!r} is not a plain lower-case identifier")
    return name


@dataclass
class Cluster:
    """A running test cluster; ``url`` reaches its ``postgres`` database as ``haven``."""

    root: Path
    port: int
    bin_dir: Path
    user: ServerUser
    process: subprocess.Popen[bytes] | None = field(repr=False, default=None)

    @property
    def data_dir(self) -> Path:
        return self.root / "pg" / "data"

    @property
    def log_path(self) -> Path:
        return self.root / "postgres.log"

    @property
    def url(self) -> str:
        return self.database_url("postgres")

    def database_url(self, name: str) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{name}"

    def create_database(self, name: str, template: str | None = None) -> str:
        """Create database ``name`` (from ``template`` if given); return its URL."""
        sql = f'CREATE DATABASE "{check_name(name)}"'
        if template is not None:
            sql += f' TEMPLATE "{check_name(template)}"'
        if self.bin_dir.parent.name.isdigit() and int(self.bin_dir.parent.name) >= 15:
            # Copy the files, not their WAL: with fsync off its checkpoint is cheap, and
            # a test's database is made two to three times faster.
            sql += " STRATEGY FILE_COPY"
        self._admin(sql)
        return self.database_url(name)

    def drop_database(self, name: str) -> None:
        """Drop database ``name`` if it exists, disconnecting whoever is still in it."""
        self._admin(f'DROP DATABASE IF EXISTS "{check_name(name)}" WITH (FORCE)')

    def _admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(self.url, autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql.encode())

    @property
    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        """Fast shutdown (SIGINT), bounded; then immediate (SIGQUIT), then SIGKILL."""
        proc, self.process = self.process, None
        if proc is None:
            return
        for sig, wait in ((signal.SIGINT, STOP_TIMEOUT), (signal.SIGQUIT, 10.0),
                          (signal.SIGKILL, 10.0)):
            if proc.poll() is not None:
                return
            proc.send_signal(sig)
            try:
                proc.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def server_home(root: Path, user: ServerUser) -> Path:
    """``root/pg``, made and owned by the server's user, with ``root`` reachable."""
    root.mkdir(parents=True, exist_ok=True)
    if user.uid is not None:
        make_traversable(root)
    home = root / "pg"
    home.mkdir(mode=0o700, exist_ok=True)
    user.own(home)
    return home


def run_initdb(data: Path, bin_dir: Path, user: ServerUser) -> None:
    """initdb ``data`` (once) as ``user``, with ``haven`` as its trusted superuser."""
    if (data / "PG_VERSION").exists():
        return
    r = subprocess.run(
        [str(bin_dir / "initdb"), "-D", str(data), "-U", SUPERUSER, "--auth=trust",
         "--encoding=UTF8", "--locale=C", "--no-sync"],
        cwd=data.parent, capture_output=True, text=True, timeout=INITDB_TIMEOUT,
        **user.popen_args())
    if r.returncode != 0:
        raise ClusterError(f"initdb failed (exit {r.returncode}) as {user.name} in {data}:\n"
                           f"{(r.stdout + r.stderr).strip()[-2000:]}")


def server_command(bin_dir: Path, data: Path, port: int, socket_dir: Path,
                   settings: dict[str, object]) -> list[str]:
    merged = {**TEST_SETTINGS, **settings, "port": port}
    sock = socket_dir / f".s.PGSQL.{port}"
    merged.setdefault("unix_socket_directories",
                      str(socket_dir) if len(str(sock)) <= MAX_SOCKET_PATH else "")
    cmd = [str(bin_dir / "postgres"), "-D", str(data)]
    for key, value in merged.items():
        cmd += ["-c", f"{key}={_setting(value)}"]
    return cmd


def _port_taken(log: Path) -> bool:
    text = log_tail(log, 40)
    return "could not bind" in text or "Address already in use" in text


def wait_until_ready(url: str, timeout: float,
                     process: subprocess.Popen[bytes] | None = None) -> str | None:
    """Connect to ``url`` until it answers (None) or ``timeout``; return the last error.

    If ``process`` (the server) exits meanwhile, the wait ends at once."""
    import psycopg

    deadline = time.monotonic() + timeout
    last = "no attempt"
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            return f"the server exited with status {process.returncode}"
        try:
            with psycopg.connect(url, connect_timeout=2) as conn:
                conn.execute("SELECT 1")
            return None
        except psycopg.OperationalError as e:
            last = str(e).strip()
        time.sleep(0.1)
    return f"not ready after {timeout:.0f} s: {last}"


@contextmanager
def server_root(prefix: str) -> Iterator[Path]:
    """A fresh directory for servers run as another user, removed after. Not under
    pytest's base temp: that stays 0700 (pytest resets it), out of that user's reach."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@dataclass(frozen=True)
class Setup:
    """Where the server's programs are, who runs them, and their home under root."""

    bin_dir: Path
    user: ServerUser
    home: Path

    def subdir(self, name: str) -> Path:
        """``home/name``, made and owned by the server's user."""
        path = self.home / name
        path.mkdir(mode=0o700, exist_ok=True)
        self.user.own(path)
        return path


def set_up(root: Path, reason: str | None) -> Setup:
    """The programs, the user and ``root/pg``; ``reason``: why it cannot be had here."""
    if reason is not None:
        raise ClusterError(reason)
    bin_dir = server_bin_dir()
    assert bin_dir is not None
    user = server_user()
    return Setup(bin_dir, user, server_home(root.resolve(), user))


def start_cluster(root: Path, port: int | None = None, *, timeout: float = START_TIMEOUT,
                  **settings: object) -> Cluster:
    """initdb (first time) and start a server under ``root``; ``settings`` are GUCs.

    Raises ``ClusterError`` with the server's log tail if it does not come up within
    ``timeout`` seconds."""
    setup = set_up(root, postgres_available())
    bin_dir, user, root = setup.bin_dir, setup.user, setup.home.parent
    data = setup.home / "data"
    run_initdb(data, bin_dir, user)
    socket_dir = setup.subdir("run")
    attempts = 1 if port is not None else 3
    for attempt in range(attempts):
        cluster = Cluster(root, port if port is not None else free_port(), bin_dir, user)
        cmd = server_command(bin_dir, data, cluster.port, socket_dir, settings)
        with open(cluster.log_path, "ab") as log:
            cluster.process = subprocess.Popen(
                cmd, cwd=data, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                preexec_fn=_die_with_parent, **user.popen_args())
        error = wait_until_ready(cluster.url, timeout, cluster.process)
        if error is None:
            return cluster
        cluster.stop()
        if attempt + 1 < attempts and _port_taken(cluster.log_path):
            continue
        raise ClusterError(f"PostgreSQL did not start on 127.0.0.1:{cluster.port} "
                           f"({error}); the end of {cluster.log_path}:\n"
                           f"{log_tail(cluster.log_path)}")
    raise AssertionError("unreachable")
