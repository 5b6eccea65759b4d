"""What the tests share: ``require``, used instead of ``pytest.skip``, and fixtures.

Theory of operation
-------------------
Some tests need something a machine may lack: ``strace``, a tmpfs mount,
network namespaces, Chromium. Such a test calls ``require(have, what, reason)``
first. When ``have`` is false it skips with ``reason`` on an ordinary account,
where the missing thing cannot be had. Where the suite runs as root, what a
skip waits for can be installed or enabled, so there a missing thing is a
failure: otherwise a power-cut claim could vanish from the count behind one
skip line.

A machine that cannot have something even as root (a container without the
capability to mount) names it in ``HAVEN_MAY_LACK`` (comma-separated, e.g.
``HAVEN_MAY_LACK=tmpfs,netns``); those tests then skip, and their reason says
that the variable allowed it.

PostgreSQL is such a thing (``postgresql``): ``postgres`` starts one cluster
per test process (per xdist worker) for the session, and ``pg_database`` gives
a test a fresh database in it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.postgres_cluster import Cluster, postgres_available, server_root, start_cluster

MAY_LACK = "HAVEN_MAY_LACK"


def may_lack() -> set[str]:
    """The things ``HAVEN_MAY_LACK`` allows to be missing even as root."""
    return {w.strip() for w in os.environ.get(MAY_LACK, "").split(",") if w.strip()}


def require(have: object, what: str, reason: str, *, allow_module_level: bool = False) -> None:
    """Go on if ``have`` is true; else skip with ``reason``, or fail as root (see above).

    ``what`` names the missing thing (``strace``, ``tmpfs``, ``netns``,
    ``chromium``, ``playwright``, ``descriptors``, ``micropython``): the name
    ``HAVEN_MAY_LACK`` takes."""
    if have:
        return
    if os.geteuid() == 0:
        if what not in may_lack():
            pytest.fail(f"{what} is missing where the suite runs as root, so it can be had: "
                        f"{reason} (on a machine that cannot have it, set {MAY_LACK}={what})",
                        pytrace=False)
        reason = f"{reason} ({MAY_LACK} allows it)"
    pytest.skip(reason, allow_module_level=allow_module_level)


@pytest.fixture
def strace() -> str:
    """The path of ``strace``, for tests that trace system calls (see ``require``)."""
    path = shutil.which("strace")
    require(path, "strace", "needs strace (./tools/test installs it)")
    assert path is not None
    return path


@contextmanager
def small_disk(where: Path, size: str = "4m") -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``where``, unmounted after: a real disk that fills."""
    where.mkdir()
    require(os.geteuid() == 0, "tmpfs", "mounting a small tmpfs for the full-disk test needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs",
                        str(where)], capture_output=True, text=True, timeout=20.0)
    require(r.returncode == 0, "tmpfs", f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "--lazy", str(where)], timeout=20.0, check=True)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Cluster]:
    """A PostgreSQL cluster for this test process, stopped and removed at the end."""
    reason = postgres_available()
    require(reason is None, "postgresql", f"needs PostgreSQL: {reason}")
    with server_root("haven-pg-") as root, start_cluster(root) as cluster:
        yield cluster


@pytest.fixture
def pg_database(postgres: Cluster) -> Iterator[str]:
    """The URL of a fresh, empty database for this test, dropped after it."""
    name = f"test_{uuid.uuid4().hex[:16]}"
    url = postgres.create_database(name)
    try:
        yield url
    finally:
        postgres.drop_database(name)


#: The hub's two backends: a hub test module runs on both with
#: ``pytestmark = pytest.mark.usefixtures("hub_backend")``; a test of the SQLite file
#: itself (read or altered behind the hub's back, backed up) is marked ``sqlite_only``.
HUB_BACKENDS = ("sqlite", "postgresql")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "hub_backend" in metafunc.fixturenames:
        only = metafunc.definition.get_closest_marker("sqlite_only") is not None
        metafunc.parametrize("hub_backend", HUB_BACKENDS[:1] if only else HUB_BACKENDS,
                             indirect=True)


@pytest.fixture
def hub_backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The backend the test's hubs are made on: for ``postgresql``, a fresh database
    that ``haven hub init`` (and ``init_hub``) takes by ``HAVEN_HUB_DATABASE``."""
    if request.param == "postgresql":
        from host.hub.hub import DATABASE_ENV
        monkeypatch.setenv(DATABASE_ENV, request.getfixturevalue("pg_database"))
    else:
        monkeypatch.delenv("HAVEN_HUB_DATABASE", raising=False)
    return str(request.param)
