"""protocol/vectors/telemetry.json: telemetry record ids, their node's range, and a
record's fields read back as plain data (junk reads as absent)."""

from check import done, equal, raises, true, vectors

from protocol.sync import telemetry

V = vectors("telemetry")

for v in V["ids"]:
    rid = telemetry.telemetry_id(v["node"], v["minute"])
    equal(rid.hex(), v["rid"], "telemetry id")
    true(telemetry.is_telemetry_id(rid), "is a telemetry id")
    low, high = telemetry.id_range(v["node"])
    true(low <= rid <= high, "within its node's range")
    low, high = telemetry.id_range()
    true(low <= rid <= high, "within every kiosk's range")

true(not telemetry.is_telemetry_id(bytes(16)), "not a telemetry id")
for node, minute in ((-1, 0), (1 << 32, 0), (0, 1 << 32)):
    try:
        telemetry.telemetry_id(node, minute)
        raise AssertionError("out of range accepted")
    except ValueError:
        pass
    true(True, "out of range refused")

equal(telemetry.from_fields({1: 5, 3: 7, 8: "not json", 9: '{"usage": {}}'}),
      {"start": 5, "summary": {"usage": {}}}, "from_fields")
equal(telemetry.from_fields({1: 5, 2: 9, 4: 12.5, 8: '{"a": 1}', 9: "[1]", 30: "x"}),
      {"start": 5, "end": 9, "diskFreeMiB": 12.5, "devices": {"a": 1}}, "from_fields")
equal(telemetry.from_fields({9: "[" * 100000 + "]" * 100000}), {}, "nested past json's depth")
raises(None, telemetry.TELEMETRY.by_name["start"].check_wire, "not an integer")
done()
