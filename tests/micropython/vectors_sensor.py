"""protocol/vectors/sensor.json: a sensor node's messages, good and bad with their error codes."""

from check import done, equal, hexed, raises, vectors

from protocol import messages, sensor

V = vectors("sensor")

for v in V["messages"]:
    data, spec = hexed(v["cbor"]), messages.REGISTRY[v["type"]]
    msg = sensor.decode(data)
    fields = {int(k): x for k, x in v["fields"].items()}
    equal((msg.name, msg.fields, messages.encode(msg)), (v["name"], fields, data), v["name"])
    # Built from its fields by name, checked as the peer checks it: the same bytes.
    named = {}
    for declared in (spec.required, spec.optional):
        for key, (name, _) in declared.items():
            if key in fields:
                named[name] = fields[key]
    equal(sensor.encode(spec, **named), data, v["name"])

for v in V["bad_messages"]:
    raises(v["error"], sensor.decode, hexed(v["cbor"]))

done()
