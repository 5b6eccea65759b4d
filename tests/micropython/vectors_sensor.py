"""protocol/vectors/sensor.json: a sensor node's messages, good and bad with their error codes."""

from check import done, equal, hexed, raises, vectors

from protocol import messages, sensor

V = vectors("sensor")

for v in V["messages"]:
    data = hexed(v["cbor"])
    msg = sensor.decode(data)
    equal(msg.type, v["type"], v["name"])
    equal(msg.name, v["name"], v["name"])
    equal(msg.fields, {int(k): x for k, x in v["fields"].items()}, v["name"])
    equal(messages.encode(msg), data, v["name"])
    # Built from its fields by name, checked as the peer checks it: the same bytes.
    spec = messages.REGISTRY[v["type"]]
    named = {}
    for fields in (spec.required, spec.optional):
        for key, (name, _) in fields.items():
            if str(key) in v["fields"]:
                named[name] = v["fields"][str(key)]
    equal(sensor.encode(spec, **named), data, v["name"])

for v in V["bad_messages"]:
    raises(v["error"], sensor.decode, hexed(v["cbor"]))

done()
