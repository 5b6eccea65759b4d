"""SMP's Stat group (2): the kiosk's sync, link, store and health counters. Open."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from device.console.args import need
from device.console.groups import STAT, Call, SmpError, register

GROUP_DATA, LIST_GROUPS = 0, 1
STAT_ERR_INVALID_GROUP = 2  #: Zephyr's ``STAT_MGMT_ERR_INVALID_GROUP``


def _ints(fields: Mapping[str, Any]) -> dict[str, int]:
    return {str(k): int(v) for k, v in fields.items() if isinstance(v, int | float)}


@register(STAT, GROUP_DATA, op="read", open_=True)
def group_data(call: Call) -> Mapping[str, Any]:
    name = need(call.body, "name", str)
    groups = call.env.stats()
    if name not in groups:
        raise SmpError(STAT_ERR_INVALID_GROUP, f"no stat group {name}", group=STAT)
    return {"name": name, "fields": _ints(groups[name])}


@register(STAT, LIST_GROUPS, op="read", open_=True)
def list_groups(call: Call) -> Mapping[str, Any]:
    return {"stat_list": sorted(call.env.stats())}
