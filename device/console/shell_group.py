"""SMP's Shell group (9): an allowlist of read-only commands, never a general shell.

``argv[0]`` names one of the environment's shell commands (``status``, ``version``);
anything else answers ret 127 and a line listing what is allowed, and runs nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from device.console.args import need
from device.console.groups import EINVAL, SHELL, Call, SmpError, register

EXECUTE = 0
NOT_FOUND = 127


@register(SHELL, EXECUTE, op="write")
def execute(call: Call) -> Mapping[str, Any]:
    argv = need(call.body, "argv", list)
    if not argv or not all(isinstance(a, str) for a in argv):
        raise SmpError(EINVAL, "argv is a list of strings")
    commands = call.env.shell
    run = commands.get(argv[0]) if len(argv) == 1 else None
    if run is None:
        allowed = ", ".join(sorted(commands))
        return {"o": f"not allowed: {' '.join(argv)[:80]} (the console runs: {allowed})\n",
                "ret": NOT_FOUND}
    return {"o": run(), "ret": 0}
