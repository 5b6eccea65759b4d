"""Every vector file holds under the real MicroPython interpreter, byte for byte.

protocol/vectors/ is the contract a port is held to. Each file has a script in
tests/micropython/ that checks it; the script runs under MicroPython (the
unix port) and under CPython, and the two must print the same ``ok N``.
"""

from __future__ import annotations

import pytest

from tests import micropython_port

VECTOR_FILES = sorted(p.stem for p in (micropython_port.ROOT / "protocol/vectors").glob("*.json"))


@pytest.mark.parametrize("name", VECTOR_FILES)
def test_vector_file_passes_under_micropython(name: str) -> None:
    script = micropython_port.SCRIPTS / f"vectors_{name}.py"
    assert script.exists(), f"protocol/vectors/{name}.json has no MicroPython runner"
    on_cpython = micropython_port.run_cpython(script)
    assert on_cpython.returncode == 0, on_cpython.stderr
    on_micropython = micropython_port.run(script)
    assert on_micropython.returncode == 0, on_micropython.stdout + on_micropython.stderr
    assert on_micropython.stdout == on_cpython.stdout
    count = int(on_cpython.stdout.split()[-1])
    assert count > 0
