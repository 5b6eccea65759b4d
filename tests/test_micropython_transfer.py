"""A whole transfer (protocol/transfer.py: offer, manifest, needs, data, done) under the
real MicroPython interpreter, first, resumed and with a damaged chunk, ending as it ends
under CPython (tests/micropython/transfer_roundtrip.py prints what each end saw)."""

from __future__ import annotations

from tests import micropython_port


def test_a_transfer_runs_under_micropython_as_under_cpython() -> None:
    script = micropython_port.SCRIPTS / "transfer_roundtrip.py"
    on_cpython = micropython_port.run_cpython(script)
    assert on_cpython.returncode == 0, on_cpython.stderr
    lines = on_cpython.stdout.splitlines()
    assert len(lines) == 3 and all(line.startswith("done done chunks") for line in lines)
    assert " reused 0 " not in lines[1] and " rejected 1 " in lines[2]
    on_micropython = micropython_port.run(script)
    assert on_micropython.returncode == 0, on_micropython.stdout + on_micropython.stderr
    assert on_micropython.stdout == on_cpython.stdout
