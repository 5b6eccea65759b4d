"""protocol/vectors/short_code.json: codes, their display and patient ids, what a patient
may type, the codes refused with their reasons, a code told from a passport number, and
the kiosk numbers and counters encode refuses."""

from check import done, equal, hexed, raises, true, vectors

from protocol.crdt import short_code
from protocol.crdt.ids import code_patient_id

V = vectors("short_code")
KEY = hexed(V["fleet_key"])

for v in V["codes"]:
    equal(short_code.encode(v["kiosk"], v["counter"]), v["code"], "encode")
    equal(short_code.display(v["code"]), v["display"], "display")
    equal(short_code.split(v["display"]), (v["kiosk"], v["counter"]), "split")
    equal(str(code_patient_id(KEY, v["display"])), v["patient_id"], "patient id")
    true(short_code.is_code(v["display"]) and not short_code.is_code(v["code"]), "is_code")

for v in V["parse"]:
    equal(short_code.parse(v["text"]), v["code"], v["text"])

for v in V["bad"]:
    raises(v["code"], short_code.parse, v["text"])

for v in V["range"]:
    raises("code-range", short_code.encode, v["kiosk"], v["counter"])

for v in V["shape"]:
    equal(short_code.is_code(v["text"]), v["is_code"], v["text"])

done()
