"""What keeps protocol/ portable that no single vector shows.

* No CPython path imports ``protocol.portable``: the home-made primitives are
  for MicroPython only. Every module of protocol/, device/ and host/ is imported
  in a fresh CPython and ``sys.modules`` read.
* A dataclass that names its fields in ``__match_args__`` (MicroPython's
  ``dataclasses`` stand-in builds the class from that tuple) names exactly
  ``dataclasses.fields``, in order, but for fields kept out of ``__init__``
  (``init=False``, as CPython's own ``__match_args__`` leaves them out); and
  every dataclass in a module MicroPython loads (the node's modules, and the
  protocol modules the vector scripts import) names them, as the stand-in needs.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import json
import subprocess
import sys
from pathlib import Path

from tests import micropython_port

ROOT = micropython_port.ROOT
NODE = ROOT / "device/fridge_node"
# Modules a board has and the unix port or CPython lacks: the node's hardware entry uses them.
HARDWARE_ONLY = {"machine", "onewire", "ds18x20", "micropython", "rp2", "network"}

_IMPORT_EVERYTHING = """
import importlib, json, sys
missing = {}
for name in json.loads(sys.argv[1]):
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as exc:
        missing[name] = exc.name
print(json.dumps({"portable": sorted(m for m in sys.modules if m.startswith("protocol.portable")),
                  "missing": missing}))
"""


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules(*packages: str) -> list[Path]:
    return sorted(p for package in packages for p in (ROOT / package).rglob("*.py")
                  if "__pycache__" not in p.parts)


def test_no_cpython_path_imports_the_portable_primitives() -> None:
    names = [_module_name(p) for p in _modules("protocol", "device", "host")
             if not _module_name(p).startswith("protocol.portable")]
    done = subprocess.run([sys.executable, "-c", _IMPORT_EVERYTHING, json.dumps(names)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    # only the node's board entry may miss a module, and only one a board has
    assert set(result["missing"].values()) <= HARDWARE_ONLY, result["missing"]
    assert all(name.startswith("device.fridge_node.") for name in result["missing"])
    assert result["portable"] == []


def _dataclasses(tree: ast.Module) -> list[ast.ClassDef]:
    def is_dataclass(decorator: ast.expr) -> bool:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        return (isinstance(target, ast.Name) and target.id == "dataclass"
                or isinstance(target, ast.Attribute) and target.attr == "dataclass")

    return [node for node in ast.walk(tree) if isinstance(node, ast.ClassDef)
            and any(is_dataclass(d) for d in node.decorator_list)]


def _names_match_args(cls: ast.ClassDef) -> bool:
    return any(isinstance(s, ast.Assign | ast.AnnAssign)
               and "__match_args__" in ast.unparse(s.targets[0] if isinstance(s, ast.Assign)
                                                   else s.target)
               for s in cls.body)


def test_match_args_name_the_dataclass_fields_in_order() -> None:
    checked = 0
    for path in _modules("protocol") + _modules("device/fridge_node"):
        classes = [c for c in _dataclasses(ast.parse(path.read_text())) if _names_match_args(c)]
        if not classes:
            continue
        try:
            module = importlib.import_module(_module_name(path))
        except ModuleNotFoundError as exc:
            assert exc.name in HARDWARE_ONLY, exc
            continue
        for node in classes:
            cls = getattr(module, node.name, None)
            if cls is None:  # nested or conditional: not reachable by name
                continue
            fields = tuple(f.name for f in dataclasses.fields(cls) if f.init and not f.kw_only)
            assert cls.__match_args__ == fields, f"{path.relative_to(ROOT)}: {node.name}"
            checked += 1
    assert checked > 10


def _loaded_under_micropython() -> dict[str, str]:
    roots = [_module_name(p) for p in _modules("device/fridge_node")]
    for script in micropython_port.SCRIPTS.glob("*.py"):
        for node in ast.walk(ast.parse(script.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("protocol"):
                roots.append(node.module or "")
            elif isinstance(node, ast.Import):
                roots += [a.name for a in node.names if a.name.startswith("protocol")]
    done = micropython_port.run(micropython_port.SCRIPTS / "modules_loaded.py",
                                *sorted(set(roots)))
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    failed = [line for line in lines if line.startswith("failed ")]
    # only the board's entry, for want of a board's module
    assert all(line.startswith("failed device.fridge_node.main: ImportError")
               and any(repr(m) in line for m in HARDWARE_ONLY) for line in failed), failed
    return dict(line.split(" ", 1) for line in lines if not line.startswith("failed "))


def test_every_dataclass_micropython_loads_names_its_fields() -> None:
    loaded = _loaded_under_micropython()
    assert "protocol.session.core" in loaded and "device.fridge_node.node" in loaded
    lacking = []
    for name, file in loaded.items():
        path = ROOT / file
        if not file.endswith(".py") or not path.is_relative_to(ROOT / "protocol") and \
                not path.is_relative_to(NODE) or "stdlib" in path.parts:
            continue
        for cls in _dataclasses(ast.parse(path.read_text())):
            if not _names_match_args(cls):
                lacking.append(f"{name}.{cls.name}")
    assert lacking == []


def test_the_stdlib_stand_ins_answer_as_cpythons_modules() -> None:
    """base64, uuid, unicodedata (ASCII), hmac.compare_digest and dataclasses under
    MicroPython print what CPython's own modules print for the same cases."""
    script = micropython_port.SCRIPTS / "stdlib_cases.py"
    on_cpython = micropython_port.run_cpython(script)
    on_micropython = micropython_port.run(script)
    assert on_cpython.returncode == 0, on_cpython.stderr
    assert on_micropython.returncode == 0, on_micropython.stdout + on_micropython.stderr
    assert on_micropython.stdout == on_cpython.stdout
    assert on_cpython.stdout.count("\n") > 40
