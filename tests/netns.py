"""Two network namespaces joined by a veth pair: a kiosk's and a hub's, for tests that
cut, drop or count what crosses a real network (needs root and iproute2)."""

from __future__ import annotations

import ctypes
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from tests.conftest import require

BOUND = 20.0  #: the longest one ip command may take
CLONE_NEWNET = 0x40000000


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=BOUND)


def enter_netns(name: str) -> None:
    """Move the calling thread (and the threads it starts later) into netns ``name``."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {name}")
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Pair:
    kiosk_ns: str
    hub_ns: str
    veth: str  #: the kiosk's end of the veth (the hub's is ``hub0``)
    subnet: str  #: e.g. ``10.77.0``: the hub is ``.1``, the kiosk ``.2``

    @property
    def hub_addr(self) -> str:
        return f"{self.subnet}.1"


@contextmanager
def namespace_pair(tag: str, subnet: str) -> Iterator[Pair]:
    """A kiosk namespace (``subnet.2``) and a hub namespace (``subnet.1``) joined by a
    veth; ``tag`` (two letters) keeps names apart between tests. Skips off root, or
    where namespaces cannot be made, as ``conftest.require`` does."""
    require(os.geteuid() == 0, "netns", "needs root for network namespaces")
    pid = os.getpid()
    pair = Pair(f"{tag}k{pid}", f"{tag}h{pid}", f"v{tag}{pid}", subnet)
    try:
        ip("netns", "add", pair.kiosk_ns)
        ip("netns", "add", pair.hub_ns)
        ip("-n", pair.kiosk_ns, "link", "add", pair.veth, "type", "veth", "peer", "name",
           "hub0", "netns", pair.hub_ns)
        for ns, dev, host in ((pair.kiosk_ns, pair.veth, 2), (pair.hub_ns, "hub0", 1)):
            ip("-n", ns, "addr", "add", f"{subnet}.{host}/24", "dev", dev)
            ip("-n", ns, "link", "set", dev, "up")
            ip("-n", ns, "link", "set", "lo", "up")
    except (OSError, subprocess.CalledProcessError) as exc:
        _delete(pair)
        require(False, "netns", f"cannot create network namespaces here: {exc}")
    try:
        yield pair
    finally:
        _delete(pair)


def _delete(pair: Pair) -> None:
    for ns in (pair.kiosk_ns, pair.hub_ns):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=BOUND)
