"""SMP's OS group (0): echo, task statistics, date and time, reset, MCUmgr params, info.

Formats as Zephyr's ``os_mgmt`` gives them, so smpclient's and smpmgr's models
accept them. Open without a credential: echo, params, info and reading the time.
"""

from __future__ import annotations

import datetime
import re
import threading
from collections.abc import Mapping
from typing import Any

from device.console.args import maybe, need
from device.console.groups import EINVAL, OS, Call, SmpError, register
from protocol.smp.console import DEFAULT_MAX_PACKET

ECHO, TASKSTAT, DATETIME, RESET, PARAMS, INFO = 0, 2, 4, 5, 6, 7
#: Zephyr's OS group codes (``OS_MGMT_ERR_*``).
OS_ERR_INVALID_FORMAT = 2
OS_ERR_RTC_COMMAND_FAILED = 5

INFO_ORDER = "snrvbmpio"
_DATETIME = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})?")


@register(OS, ECHO, op="write", open_=True)
def echo(call: Call) -> Mapping[str, Any]:
    return {"r": need(call.body, "d", str)}


@register(OS, PARAMS, op="read", open_=True)
def params(call: Call) -> Mapping[str, Any]:
    # smpclient's Auto mode sends messages up to buf_size - 4 bytes: fill our buffer.
    return {"buf_size": DEFAULT_MAX_PACKET, "buf_count": 1}


@register(OS, INFO, op="read", open_=True)
def info(call: Call) -> Mapping[str, Any]:
    fmt = maybe(call.body, "format", str, "s")
    if any(c not in INFO_ORDER + "a" for c in fmt):
        raise SmpError(OS_ERR_INVALID_FORMAT, "unknown format letter", group=OS)
    letters = INFO_ORDER if "a" in fmt else [c for c in INFO_ORDER if c in fmt]
    fields: dict[str, str] = call.env.info
    return {"output": " ".join(fields.get(c, "") for c in letters)}


@register(OS, DATETIME, op="read", open_=True)
def datetime_read(call: Call) -> Mapping[str, Any]:
    now = datetime.datetime.fromtimestamp(call.env.wall(), datetime.UTC)
    return {"datetime": now.strftime("%Y-%m-%dT%H:%M:%S")}


def parse_datetime(text: str) -> float:
    """Zephyr's ``yyyy-mm-ddThh:mm:ss[.ffffff]``, UTC unless an offset is given."""
    m = _DATETIME.fullmatch(text)
    if m is None:
        raise SmpError(EINVAL, "datetime is yyyy-mm-ddThh:mm:ss")
    try:
        when = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise SmpError(EINVAL, "no such date") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return when.timestamp()


@register(OS, DATETIME, op="write")
def datetime_write(call: Call) -> Mapping[str, Any]:
    when = parse_datetime(need(call.body, "datetime", str))
    if call.env.set_wall is None:
        raise SmpError(OS_ERR_RTC_COMMAND_FAILED, "this kiosk's clock cannot be set", group=OS)
    try:
        call.env.set_wall(when)
    except OSError as exc:  # no right to set the system clock, say
        raise SmpError(OS_ERR_RTC_COMMAND_FAILED, str(exc)[:60], group=OS) from None
    return {}


@register(OS, TASKSTAT, op="read")
def taskstat(call: Call) -> Mapping[str, Any]:
    threads: list[threading.Thread] = call.env.threads()
    tasks = {}
    for prio, t in enumerate(threads):
        tasks[t.name[:32]] = {"prio": prio, "tid": (t.native_id or 0) & 0xFFFFFFFF,
                              "state": 1 if t.is_alive() else 0, "stkuse": 0, "stksiz": 0,
                              "cswcnt": 0, "runtime": 0, "last_checkin": 0}
    return {"tasks": tasks}


@register(OS, RESET, op="write")
def reset(call: Call) -> Mapping[str, Any]:
    call.later.append(call.env.restart)
    return {}
