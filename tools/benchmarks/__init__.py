"""Benchmarks: a registry of functions, each returning rows for one table.

Theory of operation
-------------------
A benchmark is a function decorated with ``@benchmark(name, title)`` in any
module of this package; ``load_all()`` imports every module, so adding a
benchmark is adding a file (or a function). It receives a ``Context``
(``quick`` for smaller sizes, a scratch directory, a logger) and returns a
``Result``: rows of plain values, the columns to show, and notes. The
runner (``__main__``) writes every result to ``bench-out/results.json`` and
renders ``BENCHMARKS.md`` from it (``report.py``).

Peers a benchmark needs are installed by ``tools/bench`` (``haven_setup``
with apt packages) before Python starts; a benchmark checks that its peer is
there and says so in its notes if it is not.
"""

from __future__ import annotations

import importlib
import pkgutil
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Context:
    quick: bool
    workdir: Path  #: scratch space, removed after the run

    def log(self, message: str) -> None:
        print(f"  {message}", file=sys.stderr, flush=True)


@dataclass
class Result:
    rows: list[dict[str, Any]]
    columns: list[str]  #: keys of ``rows`` shown in BENCHMARKS.md, in order
    notes: list[str] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class Benchmark:
    name: str
    title: str
    func: Callable[[Context], Result]


REGISTRY: dict[str, Benchmark] = {}


def benchmark(name: str, title: str) -> Callable[[Callable[[Context], Result]],
                                                 Callable[[Context], Result]]:
    """Register ``func`` under ``name`` (the name used on the command line)."""

    def register(func: Callable[[Context], Result]) -> Callable[[Context], Result]:
        if name in REGISTRY:
            raise ValueError(f"benchmark {name!r} registered twice")
        REGISTRY[name] = Benchmark(name, title, func)
        return func

    return register


def load_all() -> dict[str, Benchmark]:
    """Import every module of this package, so their benchmarks register."""
    for mod in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if not mod.name.startswith("_") and mod.name != "report":
            importlib.import_module(f"{__name__}.{mod.name}")
    return REGISTRY


def archived(ctx: Context, commit: str, *children: Path) -> Path:
    """The tree of ``commit`` (``git archive``) in the work directory, with ``children``
    (benchmark modules of this tree that use nothing that commit lacks) copied in."""
    root = Path(__file__).resolve().parents[2]
    tree = ctx.workdir / f"release-{commit}"
    tree.mkdir()
    archive = subprocess.run(["git", "-C", str(root), "archive", commit], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    for child in children:
        shutil.copy(child, tree / "tools" / "benchmarks" / child.name)
    return tree
