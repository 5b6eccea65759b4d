"""The fridge node compiled to .mpy (tools/build_node_mpy.py) imports and runs under the
real interpreter from that tree alone, within its heap goal.

MICROPYPATH names only the built ``lib`` and the interpreter starts outside the
repository, so no .py of ours can be found: the node, protocol/ and the stdlib
stand-ins load as .mpy. tools/benchmarks/_node_heap.py then opens a Noise IK
session from the node to a responder with 1,000 readings queued, takes the
welcome, and sends the first batches; the node's data heap is measured as
BENCHMARKS.md reports it (issue 18's goal: 48 KB, on this 64-bit build).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests import micropython_port
from tools import build_node_mpy

SCRIPT = micropython_port.ROOT / "tools/benchmarks/_node_heap.py"
HEAP_GOAL = 48 * 1024


def test_the_node_runs_from_its_mpy_tree_alone(tmp_path: Path) -> None:
    board = tmp_path / "board"
    written = build_node_mpy.build(board)
    lib = board / "lib"
    assert sorted(p.suffix for p in lib.rglob("*") if p.is_file()) == [".mpy"] * len(written)
    assert {"protocol/session/noise.mpy", "protocol/portable/x25519.mpy", "dataclasses.mpy",
            "device/fridge_node/node.mpy"} <= {str(p.relative_to(lib)) for p in written}
    assert (board / "main.py").exists()
    data = tmp_path / "data"
    data.mkdir()
    done = subprocess.run(
        [micropython_port.interpreter(), "-X", "heapsize=2M", str(SCRIPT), str(data), "1000"],
        cwd=tmp_path, env=dict(os.environ, MICROPYPATH=str(lib)), capture_output=True,
        text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout.splitlines()[0])
    assert result["loaded_from"] == str(lib / "device/fridge_node/node.mpy")
    assert result["connected"] and result["state"] == "open"
    assert result["ring"] == 1000
    assert result["received"] == [[0, 120, 500, 500], [120, 120, 500, 500]]  # 5.00 °C
    heap = result["heap"]
    assert heap["node_open"] - heap["imported"] <= HEAP_GOAL, heap


def test_the_build_refuses_to_replace_a_folder_it_did_not_write(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(SystemExit, match="not replacing it"):
        build_node_mpy.build(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "keep me"
