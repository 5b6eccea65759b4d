"""A sensor node's messages to its kiosk: readings, alarms and their acknowledgements.

Theory of operation
-------------------
SPEC.md "Sensor nodes". A sensor node (a vaccine fridge's temperature node,
MicroPython on a microcontroller) opens a Haven session (Noise ``IK``: it
knows the kiosk's static key) over a serial line to its kiosk, with the
static key a technician provisioned. The kiosk refuses any static key it was
not given (``accept_static``: ``unknown-key``). Then:

    node                                        kiosk
    sensor-hello (device, model, next, boot) ->
                                            <- sensor-welcome (time, acked, alarms_acked)
    readings (first, [[time, value], ...])   ->   session lane READINGS_LANE
                                            <- readings-ack (upto)
    alarm (seq, kind, state, since, ...)     ->   session lane ALARM_LANE
                                            <- alarm-ack (upto)

Every reading has a sequence number (``first`` + its index), every alarm
one of its own, counted by the node across reboots. The kiosk stores each
under a record id made from the device and the number, so a reading sent
twice (the link dropped before its acknowledgement came) is one record, and
acknowledges ``upto``: every number below it is stored. The node drops what
is acknowledged and sends the rest again in its next session. That is how
each reading reaches the kiosk exactly once.

A reading's ``time`` is Unix seconds by the node's clock, which the welcome
sets; ``None`` when the node took it before its clock was set and restarted
before it could tell the time (power cut, then no link). Its ``value`` is
an integer in hundredths of a degree Celsius, or a text fault code
(``FAULTS``): a sensor that answers nothing, fails its CRC or gives the
DS18B20's power-on value of 85 °C is a fault, never a temperature.

An alarm's ``kind`` is ``high`` or ``low`` (an excursion outside the fridge's
range for longer than its configured time) or ``sensor`` (readings failing
that long); ``state`` is ``raised`` or ``cleared``; ``since`` the time the
excursion began, ``extreme`` the furthest value seen (hundredths of °C, or
``None`` for a sensor alarm), ``minutes`` its length so far.

Everything here is pure and runs under MicroPython as under CPython.
"""

from __future__ import annotations

from typing import Any

from protocol import messages
from protocol.errors import RemoteProtocolError
from protocol.messages import Message, MessageSpec, register

ALARM_LANE = 0  #: alarms, hello, welcome and every acknowledgement: the most urgent
READINGS_LANE = 1  #: readings, behind alarms
LANES = 2
MAX_DEVICE = 64  #: characters of a device name
MAX_BATCH = 120  #: readings in one message (two hours at one a minute)
#: Fault codes a reading may carry instead of a temperature.
FAULTS = ("no-sensor", "crc", "reset-value", "out-of-range")
KINDS = ("high", "low", "sensor")
STATES = ("raised", "cleared")
#: What a DS18B20 can measure, in hundredths of °C; anything outside is a fault.
MIN_CENTI, MAX_CENTI = -5500, 12500
RESET_CENTI = 8500  #: a DS18B20's power-on register value: not a measurement

HELLO = register(MessageSpec(120, "sensor-hello", {
    1: ("device", str), 2: ("model", str), 3: ("next", int), 4: ("boot", int)}))
WELCOME = register(MessageSpec(121, "sensor-welcome", {
    1: ("time", int), 2: ("acked", int), 3: ("alarms_acked", int)}))
READINGS = register(MessageSpec(122, "readings", {1: ("first", int), 2: ("readings", list)}))
READINGS_ACK = register(MessageSpec(123, "readings-ack", {1: ("upto", int)}))
ALARM = register(MessageSpec(124, "alarm", {
    1: ("seq", int), 2: ("kind", str), 3: ("state", str), 4: ("since", int),
    5: ("minutes", int)}, {6: ("extreme", int)}))
ALARM_ACK = register(MessageSpec(125, "alarm-ack", {1: ("upto", int)}))


def _uint(value: Any, what: str) -> int:
    if type(value) is not int or value < 0 or value >= 1 << 63:
        raise RemoteProtocolError(f"{what} must be an unsigned integer", "field-value")
    return value


def check_reading(reading: Any) -> tuple[int | None, int | str]:
    """``(time, value)`` of one received reading; ``RemoteProtocolError`` if malformed."""
    if not isinstance(reading, list) or len(reading) != 2:
        raise RemoteProtocolError("a reading is [time, value]", "field-value")
    time, value = reading
    if time is not None:
        _uint(time, "a reading's time")
    if type(value) is int:
        if not MIN_CENTI <= value <= MAX_CENTI:
            raise RemoteProtocolError("a temperature outside what a sensor reads",
                                      "field-value")
    elif value not in FAULTS:
        raise RemoteProtocolError("a reading's value is hundredths of °C or a fault code",
                                  "field-value")
    return time, value


def check(msg: Message) -> Message:
    """Refuse a sensor message whose values do not fit (types are the registry's)."""
    if msg.type == HELLO.number:
        device = msg.get("device")
        if not 0 < len(device) <= MAX_DEVICE:
            raise RemoteProtocolError("a device name is 1 to 64 characters", "field-value")
        _uint(msg.get("next"), "next")
        _uint(msg.get("boot"), "boot")
    elif msg.type == READINGS.number:
        _uint(msg.get("first"), "first")
        readings = msg.get("readings")
        if not 0 < len(readings) <= MAX_BATCH:
            raise RemoteProtocolError(f"a readings message holds 1 to {MAX_BATCH}",
                                      "field-value")
        for reading in readings:
            check_reading(reading)
    elif msg.type == ALARM.number:
        _uint(msg.get("seq"), "seq")
        _uint(msg.get("since"), "since")
        _uint(msg.get("minutes"), "minutes")
        if msg.get("kind") not in KINDS or msg.get("state") not in STATES:
            raise RemoteProtocolError("an alarm's kind or state is unknown", "field-value")
    elif msg.type in (READINGS_ACK.number, ALARM_ACK.number):
        _uint(msg.get("upto"), "upto")
    elif msg.type == WELCOME.number:
        for name in ("time", "acked", "alarms_acked"):
            _uint(msg.get(name), name)
    return msg


def decode(data: bytes) -> Message:
    """One sensor message, decoded and checked."""
    msg = messages.decode(data)
    if msg.type < HELLO.number or msg.type > ALARM_ACK.number:
        raise RemoteProtocolError(f"{msg.name} is not a sensor message", "unexpected")
    return check(msg)


def encode(spec: MessageSpec, **values: Any) -> bytes:
    """A sensor message's bytes, checked as the peer will check them."""
    data = messages.encode(messages.make(spec.name, **values))
    decode(data)
    return data
