"""A software TPM (Debian's swtpm) for the tests: started on ports of its own on
127.0.0.1, its state in a directory of its own; ``reset`` wipes that state, as a
cleared TPM (or another one in its place) would look."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.conftest import require


def require_swtpm() -> None:
    have = shutil.which("swtpm") and shutil.which("tpm2_createprimary")
    require(have, "swtpm", "needs swtpm and tpm2-tools (./tools/test installs swtpm, "
            "swtpm-tools and tpm2-tools)")


def free_pair() -> int:
    """A free port whose next is free too: the swtpm TCTI finds the control port at
    the TPM's port + 1."""
    for _ in range(100):
        with socket.socket() as a, socket.socket() as b:
            a.bind(("127.0.0.1", 0))
            port = int(a.getsockname()[1])
            try:
                b.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return port
    raise AssertionError("no two free ports side by side")


class SoftTpm:
    def __init__(self, state: Path) -> None:
        self.state = state
        self.port = free_pair()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def tcti(self) -> str:
        return f"swtpm:host=127.0.0.1,port={self.port}"

    def start(self) -> None:
        self.state.mkdir(parents=True, exist_ok=True)
        ctrl = self.port + 1
        self.proc = subprocess.Popen(
            ["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={self.state}",
             "--server", f"type=tcp,port={self.port},bindaddr=127.0.0.1",
             "--ctrl", f"type=tcp,port={ctrl},bindaddr=127.0.0.1",
             "--flags", "not-need-init,startup-clear"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.proc.stderr.read() if self.proc.stderr else ""
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.02)
        raise AssertionError(f"swtpm did not listen on {self.port} within 10 s")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            if self.proc.stderr is not None:
                self.proc.stderr.close()
            self.proc = None

    def reset(self) -> None:
        """Stop, wipe the state (a new owner seed: every sealed blob is gone), start."""
        self.stop()
        shutil.rmtree(self.state)
        self.start()


@contextmanager
def soft_tpm(state: Path) -> Iterator[SoftTpm]:
    require_swtpm()
    tpm = SoftTpm(state)
    tpm.start()
    try:
        yield tpm
    finally:
        tpm.stop()
