"""The arrows run one way (ARCHITECTURE.md): a walk over every import.

Every ``.py`` file under ``protocol/``, ``device/`` and ``host/`` is parsed
with ``ast``, and every import in it is collected, at module level or inside
a function, absolute or relative. The rules:

* the core (``protocol/`` outside ``protocol/driver/``) never imports
  ``protocol.driver``;
* ``protocol`` imports neither ``device`` nor ``host``;
* ``device`` never imports ``host``, and ``host`` never imports ``device``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("protocol", "device", "host")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(source: str, module: str, is_package: bool = False) -> Iterator[tuple[int, str]]:
    """(line, module) for every import in ``source``, the text of ``module``, relative
    imports resolved; ``from a import b`` yields ``a`` and ``a.b`` (``b`` may be a module)."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            yield node.lineno, prefix
            for alias in node.names:
                yield node.lineno, f"{prefix}.{alias.name}"


def file_imports(path: Path) -> Iterator[tuple[int, str]]:
    return imports(path.read_text(), module_name(path), path.name == "__init__.py")


def under(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def broken_rule(importer: str, imported: str) -> str | None:
    if under(importer, "protocol") and not under(importer, "protocol.driver") \
            and under(imported, "protocol.driver"):
        return "the protocol core imports its driver"
    if under(importer, "protocol") and (under(imported, "device") or under(imported, "host")):
        return "protocol imports device or host"
    if under(importer, "device") and under(imported, "host"):
        return "device imports host"
    if under(importer, "host") and under(imported, "device"):
        return "host imports device"
    return None


def violations(root: Path = ROOT) -> list[str]:
    found = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            importer = module_name(path)
            for line, imported in file_imports(path):
                rule = broken_rule(importer, imported)
                if rule is not None:
                    found.append(f"{path.relative_to(root)}:{line}: {imported}: {rule}")
    return found


def test_the_import_graph_keeps_the_rules() -> None:
    assert violations() == []


def test_the_walk_sees_every_kind_of_import() -> None:
    """The walk finds what the rules are about, in every form an import takes, and
    the rules catch each: a file in the core that imports host, the driver (relative)
    and device (inside a function) breaks three."""
    seen = {name for package in PACKAGES for path in (ROOT / package).rglob("*.py")
            for _, name in file_imports(path)}
    assert "protocol.driver.session_driver" in seen  # device and host use the driver
    assert "protocol.session.core" in seen
    source = ("import host.cli\n"
              "from ..driver import link\n"
              "def f():\n"
              "    from device import store\n")
    found = list(imports(source, "protocol.session.probe"))
    assert found == [(1, "host.cli"), (2, "protocol.driver"), (2, "protocol.driver.link"),
                     (4, "device"), (4, "device.store")]
    rules = [broken_rule("protocol.session.probe", name) for _, name in found]
    assert rules == ["protocol imports device or host", "the protocol core imports its driver",
                     "the protocol core imports its driver", "protocol imports device or host",
                     "protocol imports device or host"]
    assert broken_rule("device.sync.engine", "host.hub.peer") == "device imports host"
    assert broken_rule("host.hub.serve", "device.store") == "host imports device"
    assert broken_rule("protocol.driver.link", "protocol.session.core") is None
    assert broken_rule("device.sync.engine", "protocol.driver.link") is None
    assert broken_rule("host.send", "protocol.driver.session_driver") is None
