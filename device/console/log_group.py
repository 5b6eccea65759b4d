"""Mynewt's Log group (4): ``show`` with a minimum index, so a client pulls what is new.

Mynewt's ``log_nmgr`` show request: ``{"log_name": str?, "index": int?, "ts": int?}``
(mcumgr's ``log show [NAME] [MIN-INDEX] [MIN-TIMESTAMP]``; ``min_index`` is taken as
a synonym of ``index``). The answer: ``{"next_index": N, "logs": [{"name", "type",
"entries": [{"msg", "ts", "level", "index", "module"}]}]}``, cut to fit one response;
a client asks again from ``next_index``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from device.console.args import maybe
from device.console.groups import LOG, Call, SmpError, register
from device.console.logsource import LogSource

SHOW, LIST = 0, 5
LOG_TYPE_MEMORY = 1  #: Mynewt's LOG_TYPE_MEMORY
#: Response body bytes the entries may take (a response stays within our buffer).
BUDGET = 3000
ENOENT_LOG = 5  #: MGMT_ERR_ENOENT: no log of that name


@register(LOG, SHOW, op="read")
def show(call: Call) -> Mapping[str, Any]:
    source: LogSource = call.env.log
    name = maybe(call.body, "log_name", str, "")
    if name and name != source.name:
        raise SmpError(ENOENT_LOG, f"no log {name}")
    start = maybe(call.body, "index", int, maybe(call.body, "min_index", int, 0))
    min_ts = maybe(call.body, "ts", int, 0)
    entries: list[dict[str, Any]] = []
    used = 0
    next_index = start
    for e in source.entries(start):
        if e.ts_us < min_ts:
            next_index = e.index + 1
            continue
        cost = len(e.msg.encode()) + 40
        if entries and used + cost > BUDGET:
            break
        entries.append({"msg": e.msg[:BUDGET], "ts": e.ts_us, "level": e.level,
                        "index": e.index, "module": e.module})
        used += cost
        next_index = e.index + 1
    return {"next_index": next_index,
            "logs": [{"name": source.name, "type": getattr(source, "log_type", LOG_TYPE_MEMORY),
                      "entries": entries}]}


@register(LOG, LIST, op="read")
def list_logs(call: Call) -> Mapping[str, Any]:
    return {"log_list": [call.env.log.name]}
