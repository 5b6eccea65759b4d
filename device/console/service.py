"""SMP requests in, SMP responses out: header and CBOR checks, access, the handler.

``SmpService.handle(packet, port)`` never raises on what a client sends. A packet
that is not a request (a response, a header too short) is dropped and counted; a
request whose body is not one bounded CBOR map (``protocol.strict_cbor``: depth,
item count and declared lengths checked before anything is built), or whose header
length lies, gets ``MGMT_ERR_EINVAL``; an unknown group or command
``MGMT_ERR_ENOTSUP``; a refused one ``MGMT_ERR_EACCESSDENIED``, before its handler
runs. A handler that fails unexpectedly answers ``MGMT_ERR_EUNKNOWN`` and is logged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import cbor2

from device.console import fs_group, log_group, os_group, shell_group, stat_group  # noqa: F401
from device.console.groups import (
    EACCESSDENIED,
    EINVAL,
    EMSGSIZE,
    EUNKNOWN,
    REGISTRY,
    Call,
    Port,
    Registry,
    SmpError,
    dispatch,
)
from device.tech import smp_group  # noqa: F401  (the Haven group, 64: credential and time)
from protocol import strict_cbor
from protocol.errors import ProtocolError
from protocol.smp import header as smp_header
from protocol.smp.console import DEFAULT_MAX_PACKET

log = logging.getLogger(__name__)


@dataclass
class ServiceStats:
    requests: int = 0  #: requests answered, errors included
    errors: int = 0  #: of which answered with an error
    refused: int = 0  #: of which refused for want of a credential
    bad_requests: int = 0  #: of which malformed (header length, CBOR)
    not_requests: int = 0  #: packets dropped: not a request at all


class SmpService:
    def __init__(self, env: Any, *, registry: Registry = REGISTRY,
                 max_packet: int = DEFAULT_MAX_PACKET) -> None:
        self.env = env
        self.registry = registry
        self.max_packet = max_packet
        self.stats = ServiceStats()

    def handle(self, packet: bytes, port: Port) -> tuple[bytes | None, list[Callable[[], None]]]:
        """The response packet (None: dropped) and what to run once it is written."""
        try:
            head = smp_header.decode(packet)
        except ProtocolError:
            self.stats.not_requests += 1
            return None, []
        if not head.is_request:
            self.stats.not_requests += 1
            return None, []
        self.stats.requests += 1
        v2 = head.version == smp_header.VERSION_2
        later: list[Callable[[], None]] = []
        try:
            body = self._body(packet)
            call = Call(head.group, head.command, "read" if head.op == smp_header.OP_READ
                        else "write", body, port, self.env, later)
            result: Mapping[str, Any] = dispatch(self.registry, call)
            out = self._encode(result)
        except SmpError as exc:
            later = []
            self.stats.errors += 1
            if exc.rc == EACCESSDENIED and exc.group is None:
                self.stats.refused += 1
            out = self._encode(exc.body(v2=v2))
        except Exception:
            log.exception("console: SMP group %d command %d failed", head.group, head.command)
            later = []
            self.stats.errors += 1
            out = self._encode(SmpError(EUNKNOWN).body())
        if len(out) + smp_header.SIZE > self.max_packet:
            self.stats.errors += 1
            out = self._encode(SmpError(EMSGSIZE).body())
        return smp_header.pack(head.response(len(out)), out), later

    def _body(self, packet: bytes) -> Mapping[str, Any]:
        try:
            _, raw = smp_header.split(packet)
            body = strict_cbor.loads(raw, max_size=self.max_packet) if raw else {}
        except ProtocolError as exc:
            self.stats.bad_requests += 1
            raise SmpError(EINVAL, str(exc)[:60]) from None
        if not isinstance(body, dict):
            self.stats.bad_requests += 1
            raise SmpError(EINVAL, "the body is a CBOR map")
        return body

    @staticmethod
    def _encode(result: Mapping[str, Any]) -> bytes:
        return cbor2.dumps(dict(result), canonical=True)
