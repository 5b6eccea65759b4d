"""What the kiosk keeps of its fridge nodes: their enrolments, and how far each one's
readings and alarms are stored.

Theory of operation
-------------------
Everything lives in the kiosk's store, so it is sealed, backed up and
rolled back with the rest, and a node's records and its cursor commit in one
transaction (``Store.put_many``):

* ``meta`` ``fridges``: the enrolments, JSON: slot, name, the node's X25519
  public key (hex), model, location. Public keys only: a node's private key
  never touches the kiosk's disk (``device.fridges.command``);
* ``meta`` ``fridge.<slot>``: JSON ``acked`` (every reading number below it
  is stored), ``alarms_acked`` (the same for alarms), ``raised`` (the
  node's alarms raised and not yet cleared, by kind) and ``hour`` (the
  latest hour written and its slots), written with the records they count.

``meta`` is not sealed (a store key rotation walks sealed rows only): what it
holds here is public (keys, names, counts). Whoever can write the card could
add a node's key there, as they could edit the configuration.

Both are read from the store at each use (a handshake, a message), so an
enrolment made by ``haven-kiosk fridge add`` while the runtime runs counts at
once. A reading below ``acked`` is stored already and is not written again:
a resent batch costs no write.

A reading goes in its minute's slot of its hour's record
(``protocol.sync.sensor_records``): a batch's readings are merged into the
slots each hour's record holds and each hour touched is written once, its
whole ``data``. A record the hub acknowledged is collected from the kiosk
(out of its scope), possibly before its hour is over, and the hub keeps the
last ``data`` written: so the hour's slots are read from the store, or for
the latest hour written from the cursor's copy (``hour``), which outlives
the record. An older hour the store no longer holds may be on the hub with
slots the kiosk has forgotten: a reading for it (the node's clock stepped
back) is a single-reading record, as is a reading whose time is unknown or
whose slot is taken. Every reading is so in one place, once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hmac
import json
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from device.exc import DeviceError
from protocol import sensor
from protocol.crdt.schema import DEVICE, TEMPERATURE, TEMPERATURE_ALARM
from protocol.messages import Message
from protocol.sync import sensor_records as ids

ENROLMENTS = "fridges"
MAX_NAME = sensor.MAX_DEVICE


class EnrolmentError(DeviceError, ValueError):
    """An enrolment refused: a name or key that does not fit, or is taken."""

    code = "fridge-enrolment"


@dataclass(frozen=True)
class Enrolment:
    slot: int
    name: str
    key: bytes  #: the node's X25519 public key
    model: str = ""
    location: str = ""
    node: int = 0  #: the kiosk's node when it enrolled the fridge (its records' ids)
    active: bool = True  #: False: removed; its slot is never given again

    @property
    def device(self) -> bytes:
        """The device record's id."""
        return ids.device_id(self.node, self.slot)

    def to_json(self) -> dict[str, Any]:
        return {"slot": self.slot, "name": self.name, "key": self.key.hex(),
                "model": self.model, "location": self.location, "node": self.node,
                "active": self.active}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Enrolment:
        return cls(obj["slot"], obj["name"], bytes.fromhex(obj["key"]), obj.get("model", ""),
                   obj.get("location", ""), obj.get("node", 0), obj.get("active", True))


@dataclass
class Cursor:
    """How far one node's messages are stored (``meta`` ``fridge.<slot>``)."""

    acked: int = 0
    alarms_acked: int = 0
    raised: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: the latest hour written: its index and its slots (``{"<slot>": value}``)
    hour: list[Any] | None = None

    def to_text(self) -> str:
        return json.dumps({"acked": self.acked, "alarms_acked": self.alarms_acked,
                           "raised": self.raised, "hour": self.hour},
                          sort_keys=True, separators=(",", ":"))

    def latest_hour(self) -> tuple[int, dict[int, int | str]]:
        """The latest hour written and its slots (-1 and none: no hour yet)."""
        if self.hour is None:
            return -1, {}
        return self.hour[0], {int(n): v for n, v in self.hour[1].items()}


def _cursor_key(slot: int) -> str:
    return f"fridge.{slot}"


class FridgeRecords:
    """The store's side of the fridge nodes. ``store`` is a ``device.store.Store``;
    ``clock()`` Unix seconds (an alarm's ``issued``)."""

    def __init__(self, store: Any, clock: Callable[[], float]) -> None:
        self.store = store
        self.clock = clock
        # A cursor is read, then written with the records: one line's thread at a time
        # (two lines could carry one key: a copied node, or a mistake).
        self._lock = threading.Lock()

    # -- enrolments --------------------------------------------------------------

    def enrolments(self, removed: bool = False) -> list[Enrolment]:
        """The nodes served (and with ``removed`` those no longer served)."""
        text = self.store.setting(ENROLMENTS)
        held = [Enrolment.from_json(e) for e in json.loads(text)] if text else []
        return held if removed else [e for e in held if e.active]

    def by_key(self, key: bytes) -> Enrolment | None:
        return next((e for e in self.enrolments() if hmac.compare_digest(e.key, key)), None)

    def enrol(self, name: str, key: bytes, model: str = "", location: str = "") -> Enrolment:
        """Enrol a node under ``name``: its device record and the enrolment, together."""
        name = name.strip()
        if not 0 < len(name) <= MAX_NAME:
            raise EnrolmentError(f"a fridge's name is 1 to {MAX_NAME} characters")
        if len(key) != 32:
            raise EnrolmentError("a node's public key is 32 bytes (64 hex digits)")
        if not self.store.node:
            raise EnrolmentError("this kiosk has no identity yet: enrol it with its hub "
                                 "first (its fridges' records are named by it)")
        held = self.enrolments(removed=True)
        for e in held:
            if e.active and (e.name == name or e.key == key):
                raise EnrolmentError(f"fridge {e.name!r} (slot {e.slot}) has that "
                                     f"{'name' if e.name == name else 'key'} already: "
                                     "remove it first")
        # A slot is never given twice: its records' ids are the old node's.
        slot = max((e.slot for e in held), default=-1) + 1
        if slot > ids.MAX_SLOT:
            raise EnrolmentError(f"this kiosk has enrolled {ids.MAX_SLOT + 1} fridges, "
                                 "all it can")
        new = Enrolment(slot, name, key, model, location, self.store.node)
        self._write_device(new, "active", [*held, new])
        return new

    def remove(self, name: str) -> Enrolment:
        """Stop serving the node ``name`` (its device record says ``inactive``)."""
        held = self.enrolments(removed=True)
        gone = next((e for e in held if e.active and e.name == name), None)
        if gone is None:
            raise EnrolmentError(f"no fridge named {name!r}")
        gone = dataclasses.replace(gone, active=False)
        self._write_device(gone, "inactive", [gone if e.slot == gone.slot else e for e in held])
        return gone

    def _write_device(self, e: Enrolment, status: str, held: Sequence[Enrolment]) -> None:
        values = ids.device_values(e.name, e.model, e.key, e.location, status)
        self.store.put_many(
            [(DEVICE.name, e.device, values)],
            {ENROLMENTS: json.dumps([x.to_json() for x in held], sort_keys=True),
             _cursor_key(e.slot): Cursor().to_text()})

    # -- what a node sends -------------------------------------------------------

    def cursor(self, e: Enrolment) -> Cursor:
        text = self.store.setting(_cursor_key(e.slot))
        return Cursor(**json.loads(text)) if text else Cursor()

    def store_readings(self, e: Enrolment, first: int, readings: list[Any]
                       ) -> tuple[int, int]:
        """Store a checked ``readings`` message's readings not stored yet, in their hours'
        slots (each hour touched written once) or on records of their own, with the
        cursor, in one transaction; the new ``acked`` and how many were new.
        ``ValueError`` for numbers past 32 bits."""
        with self._lock:
            cur = self.cursor(e)
            end = first + len(readings)
            if end <= cur.acked:
                return cur.acked, 0
            start = max(first, cur.acked)
            hours: dict[int, dict[int, int | str] | None] = {}
            touched: set[int] = set()
            puts = []
            for seq in range(start, end):
                time, value = sensor.check_reading(readings[seq - first])
                if time is not None:
                    hour, slot = ids.hour_slot(time)
                    if hour not in hours:
                        hours[hour] = self._held_slots(e, hour, cur)
                    slots = hours[hour]
                    if slots is not None and slot not in slots:
                        slots[slot] = value
                        touched.add(hour)
                        continue
                puts.append((TEMPERATURE.name, ids.reading_id(e.device, seq),
                             ids.reading_values(e.device, seq, time, value)))
            for hour in sorted(touched):
                slots = hours[hour] or {}
                puts.append((TEMPERATURE.name, ids.hour_id(e.device, hour),
                             ids.hour_values(e.device, hour, slots)))
                if hour >= cur.latest_hour()[0]:
                    cur.hour = [hour, {str(n): v for n, v in sorted(slots.items())}]
            cur.acked = end
            self.store.put_many(puts, {_cursor_key(e.slot): cur.to_text()})
            return end, end - start

    def _held_slots(self, e: Enrolment, hour: int, cur: Cursor
                    ) -> dict[int, int | str] | None:
        """The slots of ``hour`` already written, or None if they may not all be held
        (an hour before the latest written, collected since)."""
        latest, slots = cur.latest_hour()
        if hour > latest:
            return {}
        view = self.store.view(str(uuid.UUID(bytes=ids.hour_id(e.device, hour))))
        if view is not None and not view.deleted:
            f = [view.fields.get(TEMPERATURE.field(n).number)
                 for n in ("data", "received", "faults")]
            with contextlib.suppress(ValueError):
                return ids.hour_slots(*f)
            return None  # not an hour's record as this kiosk writes them: left as it is
        return slots if hour == latest else None

    def store_alarm(self, e: Enrolment, alarm: Message) -> tuple[int, bool]:
        """Store a checked ``alarm`` message unless it is stored; the new
        ``alarms_acked``, and whether it was new."""
        with self._lock:
            cur = self.cursor(e)
            seq = alarm.get("seq")
            if seq < cur.alarms_acked:
                return cur.alarms_acked, False
            kind = alarm.get("kind")
            if alarm.get("state") == "raised":
                cur.raised[kind] = {"since": alarm.get("since"),
                                    "minutes": alarm.get("minutes"),
                                    "extreme": alarm.get("extreme"), "seq": seq}
            else:
                cur.raised.pop(kind, None)
            cur.alarms_acked = seq + 1
            self.store.put_many(
                [(TEMPERATURE_ALARM.name, ids.alarm_id(e.device, seq),
                  ids.alarm_values(e.device, alarm, self.clock()))],
                {_cursor_key(e.slot): cur.to_text()})
            return seq + 1, True

    def raised(self) -> list[dict[str, Any]]:
        """Every enrolled node's alarms raised and not cleared, for the staff screen."""
        out = []
        for e in self.enrolments():
            for kind, alarm in sorted(self.cursor(e).raised.items()):
                out.append({"fridge": e.name, "location": e.location, "kind": kind, **alarm})
        return out
