"""The console's SMP command registry, and the access rule consulted before any handler.

Theory of operation: a handler is a function of one ``Call`` (the request's
group, command, op and CBOR body, plus the port it came in on) that returns the
response's CBOR map, or raises ``SmpError`` to answer with SMP's own error
codes. Handlers register themselves with ``register(group, command, op=...,
open_=...)``; the server looks a request up with ``lookup``. An open command
runs for anyone; every other command runs only if the port's ``Access`` permits
it, and a refusal answers ``MGMT_ERR_EACCESSDENIED`` before the handler is
called, so a refused request changes nothing.

Until the technician credential is checked, a port's access is ``OpenOnly``:
it permits nothing beyond the open commands. A credential handler (the Haven
group, 64 and up) binds a port by replacing ``call.port.access``; the server
puts ``OpenOnly`` back when the port closes or idles (``Port.unbind``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from device.exc import DeviceError

Op = Literal["read", "write"]

# SMP's general error codes (MGMT_ERR_* in Zephyr's mgmt/mcumgr/mgmt/mgmt_defines.h;
# the same numbers as smp.error.MGMT_ERR).
EOK = 0
EUNKNOWN = 1
ENOMEM = 2
EINVAL = 3
ETIMEOUT = 4
ENOENT = 5
EBADSTATE = 6
EMSGSIZE = 7
ENOTSUP = 8
ECORRUPT = 9
EBUSY = 10
EACCESSDENIED = 11

# SMP's group numbers (smp.header.GroupId); 64 and up are user groups (Haven's).
OS = 0
STAT = 2
LOG = 4
FS = 8
SHELL = 9
HAVEN = 64


class SmpError(DeviceError):
    """Answer the request with an SMP error instead of a result.

    ``group=None`` gives the general form ``{"rc": rc}`` (MGMT_ERR_* codes);
    with a group it is SMP version 2's ``{"err": {"group": group, "rc": rc}}``,
    whose ``rc`` is that group's own code (e.g. FS_MGMT_ERR_FILE_TOO_LARGE).
    """

    def __init__(self, rc: int, reason: str = "", *, group: int | None = None) -> None:
        super().__init__(reason or f"rc {rc}")
        self.rc = rc
        self.reason = reason
        self.group = group

    def body(self, *, v2: bool = True) -> dict[str, Any]:
        """The response map: v2 group errors need a v2 request; v1 gets the bare rc."""
        if self.group is not None and v2:
            return {"err": {"group": self.group, "rc": self.rc}}
        out: dict[str, Any] = {"rc": self.rc}
        if self.reason:
            out["rsn"] = self.reason
        return out


class Access(Protocol):
    """Who may run which non-open command on one port."""

    def permits(self, group: int, command: int, op: str) -> bool: ...


class OpenOnly:
    """The default: no credential, so nothing beyond the open commands."""

    def permits(self, group: int, command: int, op: str) -> bool:
        return False


@dataclass
class Port:
    """One console port's state across requests: its access binding and each group's
    own per-port state (an FS transfer's open file, say), keyed by the group's name."""

    access: Access = field(default_factory=OpenOnly)
    state: dict[str, Any] = field(default_factory=dict)

    def unbind(self) -> None:
        """The port closed or idled: drop the credential's binding and open transfers."""
        self.access = OpenOnly()
        for value in self.state.values():
            close = getattr(value, "close", None)
            if callable(close):
                close()
        self.state.clear()


@dataclass
class Call:
    """One SMP request as a handler sees it. ``env`` is the console's services (the
    runtime's facade, directories, restart hook: ``device.console.env.ConsoleEnv``)."""

    group: int
    command: int
    op: Op
    body: Mapping[str, Any]
    port: Port
    env: Any
    #: Run after the response is on the wire (a reset answers first, then restarts).
    later: list[Callable[[], None]] = field(default_factory=list)


Handler = Callable[[Call], Mapping[str, Any]]


@dataclass(frozen=True)
class Command:
    group: int
    command: int
    op: Op
    open_: bool
    handler: Handler


class Registry:
    """A table of (group, command, op) -> Command."""

    def __init__(self) -> None:
        self._table: dict[tuple[int, int, str], Command] = {}

    def register(self, group: int, command: int, *, op: Op, open_: bool = False
                 ) -> Callable[[Handler], Handler]:
        if op not in ("read", "write"):
            raise ValueError(f"op must be 'read' or 'write', not {op!r}")

        def add(handler: Handler) -> Handler:
            key = (group, command, op)
            if key in self._table and self._table[key].handler is not handler:
                raise ValueError(f"SMP group {group} command {command} {op} is registered twice")
            self._table[key] = Command(group, command, op, open_, handler)
            return handler
        return add

    def lookup(self, group: int, command: int, op: Op) -> Command | None:
        return self._table.get((group, command, op))

    def knows_group(self, group: int) -> bool:
        return any(g == group for g, _, _ in self._table)

    def commands(self) -> list[Command]:
        return sorted(self._table.values(), key=lambda c: (c.group, c.command, c.op))


#: The console's registry: group modules register into it when imported.
REGISTRY = Registry()
register = REGISTRY.register


def dispatch(registry: Registry, call: Call) -> Mapping[str, Any]:
    """Run ``call``'s handler after the access check; every refusal is an ``SmpError``."""
    cmd = registry.lookup(call.group, call.command, call.op)
    if cmd is None:
        # Zephyr answers an unknown group and an unknown command alike: not supported.
        raise SmpError(ENOTSUP, "no such command")
    if not cmd.open_ and not call.port.access.permits(call.group, call.command, call.op):
        raise SmpError(EACCESSDENIED, "needs a technician credential")
    return cmd.handler(call)
