"""Telemetry records: a kiosk's aggregates of one period, sent on the telemetry lane
(SPEC.md "Telemetry").

Theory of operation
-------------------
A kiosk condenses what it measured over a period (sync rounds, health each
minute, usage of the page) into one put of record type ``telemetry`` (11,
lane 5) on the record ``telemetry_id(node, minute)``: the kiosk's node and
the period's first minute since 1970, so one kiosk's records are one range
of ids (``id_range``) and a period written twice is one record. As audit
entries, no kiosk's scope holds one: the hub never sends them to a kiosk
and leaves them out of every scope checksum, by their id's first 8 bytes
(``is_telemetry_id``); the kiosk drops each once the hub acknowledged it.

The hub reads a kiosk's records by the writer its session authenticated
(``ops.node``), never by the id alone, so a kiosk cannot speak for another.
``from_fields`` turns one back into plain data, refusing nothing: a field
of the wrong kind reads as absent.

Everything here is pure.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from protocol import MICROPYTHON
from protocol.crdt.schema import TELEMETRY

if TYPE_CHECKING:
    from collections.abc import Mapping

#: The record id's first 8 bytes; then node (u32) and the period's first minute (u32).
ID_PREFIX = b"hAvTel\x80\x00"
MAX_MINUTE = (1 << 32) - 1
#: The JSON text fields' limit (a field's, ``schema.MAX_TEXT``).
MAX_JSON = 4096


def telemetry_id(node: int, minute: int) -> bytes:
    """The record of ``node``'s period starting at ``minute`` (minutes since 1970)."""
    if not (0 <= node < 1 << 32 and 0 <= minute <= MAX_MINUTE):
        raise ValueError("a telemetry id is a 32-bit node and a 32-bit minute")
    return ID_PREFIX + node.to_bytes(4, "big") + minute.to_bytes(4, "big")


def id_range(node: int | None = None) -> tuple[bytes, bytes]:
    """The first and last record id of ``node``'s records (of every kiosk's: None)."""
    if node is None:
        return ID_PREFIX + b"\x00" * 8, ID_PREFIX + b"\xff" * 8
    return telemetry_id(node, 0), telemetry_id(node, MAX_MINUTE)


def is_telemetry_id(rid: bytes) -> bool:
    return rid[:8] == ID_PREFIX


def compact_json(value: Mapping[str, Any]) -> str:
    """``value`` as the short JSON text a field carries; ``ValueError`` past ``MAX_JSON``."""
    if MICROPYTHON:
        from protocol.portable import sorted_json

        text = sorted_json.dumps(dict(value))
    else:
        text = json.dumps(dict(value), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    if len(text) > MAX_JSON:
        raise ValueError(f"telemetry JSON of {len(text)} characters (at most {MAX_JSON})")
    return text


def from_fields(fields: Mapping[int, Any]) -> dict[str, Any]:
    """A telemetry record's fields by number (wire form) as plain data by name; the JSON
    fields parsed (a field that does not parse, or a value of the wrong kind: absent)."""
    out: dict[str, Any] = {}
    for number, spec in TELEMETRY.by_number.items():
        value = fields.get(number)
        if value is None:
            continue
        try:
            spec.check_wire(value)
        except Exception:  # noqa: BLE001 - another writer's junk reads as absent
            continue
        if spec.name in ("devices", "summary"):
            try:
                value = json.loads(value)
            except (ValueError, RuntimeError):  # nested past json's depth (RecursionError)
                continue
            if not isinstance(value, dict):
                continue
        out[spec.name] = value
    return out
