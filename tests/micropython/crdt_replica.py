"""Replicas merging the same writes in different orders, under either interpreter: prints
their canonical JSON, the conflicts found, a held record refused and resolved, and
telemetry's compact JSON. tests/test_micropython_crdt.py requires the same text from
MicroPython as from CPython."""

from protocol.crdt.replica import Replica
from protocol.errors import ProtocolError
from protocol.sync import telemetry

T = 1_790_000_000_000


def rid(n):
    return bytes([n]) * 16


def sync(log, *replicas):
    for rep in replicas:
        for data in log:
            rep.receive(data, T + 60_000)


a, b, c = Replica(1), Replica(2), Replica(3)
log = [
    a.put(rid(1), "prescription", T, {"medication": "amoxicillin", "dosageInstruction": "500"}),
    a.put(rid(2), "patient", T, {"name": "Zoë Ndiaye 😀", "birthDate": "1815"},
          add={"allergies": ["latex", "peanut"]}),
    a.put(rid(3), "patient", T, {"name": "A"}),
]
sync(log, b, c)
log += [
    a.put(rid(1), "prescription", T + 1, {"dosageInstruction": "250 mg"}),
    b.put(rid(1), "prescription", T + 2, {"status": "stopped", "quantity": 7.25}),
    c.put(rid(1), "prescription", T + 3, {"quantity": 20}),
    b.put(rid(2), "patient", T + 1, remove={"allergies": ["latex", "peanut"]}),
    a.put(rid(2), "patient", T + 2, add={"allergies": ["latex"]}),
    a.delete(rid(3), T + 1),
    b.put(rid(3), "patient", T + 2, {"telecom": "555\n0100\t\"x\"\\"}),
    c.put(rid(4), "lab_result", T + 4, {"value": 98.6, "unit": "mmol/L",
                                         "subject": "02020202-0202-0202-0202-020202020202"}),
]
sync(log, a, b)
sync(reversed(log), c)
dumps = [r.dump() for r in (a, b, c)]
print(dumps[0] == dumps[1] == dumps[2])
print(dumps[0].decode())
for view in sorted(a.views(), key=lambda v: v.record_id):
    for conflict in view.conflicts:
        print(view.record_id.hex(), conflict.id, conflict.cls, conflict.severity,
              conflict.field, sorted(v.id for v in conflict.versions))
held = a.view(rid(1)).conflicts[0]
keep = [v for v in held.versions if v.fields.get(4) == "250 mg"][0]
try:
    b.put(rid(1), "prescription", T + 5, {"note": "x"})
except ProtocolError as exc:
    print("refused", exc.code)
log.append(b.resolve(held.id, T + 5, keep=keep.id))
sync(log, a, b, c)
print(a.dump() == b.dump() == c.dump(), a.view(rid(1)).held)
print(telemetry.compact_json({"b": [1, 2.5, None, True], "a": {"é": "\x01\x7f"}}))
