"""Every benchmark module imports, and each registered benchmark's own imports resolve:
a module moved or renamed fails here, not an hour into ``./tools/bench``."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import pkgutil
from pathlib import Path

import tools.benchmarks

BENCH = Path(tools.benchmarks.__file__).parent


def test_every_benchmark_module_and_its_imports_resolve() -> None:
    names = [m.name for m in pkgutil.iter_modules([str(BENCH)])]
    assert "_store_workload" in names and "store" in names
    assert {"hub_load", "_swarm", "_hub_proc", "_idle_day"} <= set(names)
    for name in names:
        module = f"tools.benchmarks.{name}"
        importlib.import_module(module)
        # imports inside functions run only when the benchmark does: resolve them now
        for node in ast.walk(ast.parse((BENCH / f"{name}.py").read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                    and node.module.split(".")[0] in ("tools", "device", "host", "protocol"):
                target = importlib.import_module(node.module)
                for alias in node.names:
                    assert hasattr(target, alias.name) or importlib.util.find_spec(
                        f"{node.module}.{alias.name}") is not None, (module, node.module,
                                                                     alias.name)
