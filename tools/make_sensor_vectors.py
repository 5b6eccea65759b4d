"""Write protocol/vectors/sensor.json from protocol/sensor.py (python tools/make_sensor_vectors.py).

Good messages: a sensor node's and its kiosk's, each as its fields and its CBOR
bytes. Bad messages: bytes a port must refuse, with the error code it must give
(``sensor.decode``). tests/test_vectors_sensor.py checks the file against
protocol/sensor.py on CPython; tests/micropython/vectors_sensor.py runs it under
both interpreters.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from protocol import sensor, strict_cbor
from protocol.errors import ProtocolError

OUT = Path(__file__).resolve().parent.parent / "protocol" / "vectors" / "sensor.json"
DAY = 1_800_000_000

GOOD: list[tuple[str, dict[str, Any]]] = [
    ("sensor-hello", {"device": "fridge-1", "model": "haven-fridge-node/1", "next": 0, "boot": 1}),
    ("sensor-hello", {"device": "é" * 64, "model": "", "next": 1 << 40, "boot": 70000}),
    ("sensor-welcome", {"time": DAY, "acked": 1440, "alarms_acked": 3}),
    ("readings", {"first": 0, "readings": [[DAY, 450], [DAY + 60, -1013], [None, 12500]]}),
    ("readings", {"first": 41, "readings": [[DAY, f] for f in sensor.FAULTS] + [[0, -5500]]}),
    ("readings", {"first": 7, "readings": [[DAY + 60 * i, 400 + i] for i in range(120)]}),
    ("readings-ack", {"upto": 161}),
    ("alarm", {"seq": 0, "kind": "high", "state": "raised", "since": DAY, "minutes": 30,
               "extreme": 950}),
    ("alarm", {"seq": 1, "kind": "low", "state": "cleared", "since": DAY, "minutes": 45,
               "extreme": -150}),
    ("alarm", {"seq": 2, "kind": "sensor", "state": "raised", "since": 0, "minutes": 30}),
    ("alarm-ack", {"upto": 3}),
]


def raw(number: int, **fields: Any) -> bytes:
    """A message's bytes as a careless peer would make them: no checks."""
    return strict_cbor.dumps({0: number, **{int(k): v for k, v in fields.items()}})


R, A = sensor.READINGS.number, sensor.ALARM.number
BAD: list[tuple[str, bytes, str]] = [
    ("an empty device name", raw(120, **{"1": "", "2": "m", "3": 0, "4": 0}), "field-value"),
    ("a device name of 65 characters", raw(120, **{"1": "x" * 65, "2": "m", "3": 0, "4": 0}),
     "field-value"),
    ("a negative next", raw(120, **{"1": "f", "2": "m", "3": -1, "4": 0}), "field-value"),
    ("a hello without its boot", raw(120, **{"1": "f", "2": "m", "3": 0}), "missing-field"),
    ("a welcome whose time is text", raw(121, **{"1": "now", "2": 0, "3": 0}), "field-type"),
    ("a welcome whose acked is true", raw(121, **{"1": 0, "2": True, "3": 0}), "field-type"),
    ("no readings", raw(R, **{"1": 0, "2": []}), "field-value"),
    ("121 readings", raw(R, **{"1": 0, "2": [[DAY, 400]] * 121}), "field-value"),
    ("a reading of three items", raw(R, **{"1": 0, "2": [[DAY, 400, 1]]}), "field-value"),
    ("a reading that is a map", raw(R, **{"1": 0, "2": [{DAY: 400}]}), "field-value"),
    ("a reading with a negative time", raw(R, **{"1": 0, "2": [[-1, 400]]}), "field-value"),
    ("a reading with a text time", raw(R, **{"1": 0, "2": [["noon", 400]]}), "field-value"),
    ("125.01 °C: more than a DS18B20 reads", raw(R, **{"1": 0, "2": [[DAY, 12501]]}),
     "field-value"),
    ("-55.01 °C", raw(R, **{"1": 0, "2": [[DAY, -5501]]}), "field-value"),
    ("an unknown fault code", raw(R, **{"1": 0, "2": [[DAY, "smoke"]]}), "field-value"),
    ("a temperature as a float", raw(R, **{"1": 0, "2": [[DAY, 4.5]]}), "field-value"),
    ("a temperature as true", raw(R, **{"1": 0, "2": [[DAY, True]]}), "field-value"),
    ("readings that are not a list", raw(R, **{"1": 0, "2": {"a": 1}}), "field-type"),
    ("a negative first", raw(R, **{"1": -3, "2": [[DAY, 400]]}), "field-value"),
    ("an alarm of an unknown kind", raw(A, **{"1": 0, "2": "hot", "3": "raised", "4": DAY,
                                              "5": 30}), "field-value"),
    ("an alarm in an unknown state", raw(A, **{"1": 0, "2": "high", "3": "gone", "4": DAY,
                                               "5": 30}), "field-value"),
    ("an alarm with negative minutes", raw(A, **{"1": 0, "2": "high", "3": "raised", "4": DAY,
                                                 "5": -30}), "field-value"),
    ("an alarm whose extreme is text", raw(A, **{"1": 0, "2": "high", "3": "raised", "4": DAY,
                                                 "5": 30, "6": "hot"}), "field-type"),
    ("an acknowledgement up to -1", raw(123, **{"1": -1}), "field-value"),
    ("an alarm acknowledgement up to 2^63", raw(125, **{"1": 1 << 63}), "field-value"),
    # {0: 125, 1: 2^64}: tag 2 over 9 bytes (our encoder refuses to write it)
    ("an alarm acknowledgement up to 2^64: a bignum",
     bytes.fromhex("a200187d01c249010000000000000000"), "tag"),
    ("a ping is not a sensor message", raw(1, **{"1": 7}), "unexpected"),
    ("a message type no one knows", raw(126, **{"1": 7}), "unexpected"),
]


def main() -> None:
    good = []
    for name, fields in GOOD:
        spec = next(s for s in (sensor.HELLO, sensor.WELCOME, sensor.READINGS,
                                sensor.READINGS_ACK, sensor.ALARM, sensor.ALARM_ACK)
                    if s.name == name)
        data = sensor.encode(spec, **fields)
        msg = sensor.decode(data)
        good.append({"name": name, "type": spec.number, "cbor": data.hex(),
                     "fields": {str(k): v for k, v in sorted(msg.fields.items())}})
    bad = []
    for description, data, error in BAD:
        try:
            sensor.decode(data)
        except ProtocolError as exc:
            assert exc.code == error, (description, exc.code)
        else:
            raise AssertionError(f"{description}: decodes")
        bad.append({"description": description, "cbor": data.hex(), "error": error})
    doc = {"description": "Sensor node messages (protocol/sensor.py): good ones with their "
                          "fields and bytes, bad ones with the error code sensor.decode gives",
           "messages": good, "bad_messages": bad}
    OUT.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
