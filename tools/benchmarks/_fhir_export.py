"""The FHIR export of a hub holding ``count`` records: timed, then every resource validated.

``measure`` makes a hub (SQLite, on the work directory's disk) and writes its records
as two kiosks would, through ``HubStore.commit_batch`` in batches of ``BATCH`` (the
current records kept as they go: that rate is reported too): one in seven patients, then
check-ins (two in seven), prescriptions (one in fifty changed apart by the two kiosks: held for
review), lab results, appointments and documents (one in ten held whole and small:
inline; the rest references). It then runs ``host.hub.fhir.export`` and times it, wall
and CPU, with nothing else in the timing; then reads every line back and validates each
resource with fhir.resources' R4 models (``tests/fhir_r4.py``), untimed.

Run alone: ``python -m tools.benchmarks._fhir_export DIR COUNT`` prints the figures as
JSON.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from host.hub.document_inbox import DOCUMENTS_DIR
from host.hub.fhir import export
from host.hub.hub import Hub, init_hub
from host.hub.sealed_documents import SealedChunks
from protocol.chunking import chunk_id
from protocol.crdt import schema
from protocol.crdt.delta import Delta, encode
from protocol.crdt.schema import TypeSpec
from protocol.crdt.writes import build_put

BATCH = 500  #: deltas a batch
T0 = 1_790_000_000_000
KIOSK_A, KIOSK_B = 0x1001, 0x2003


def _values(spec: TypeSpec, i: int, patient: str) -> dict[str, Any]:
    day = f"2026-{1 + i % 12:02d}-{1 + i % 28:02d}"
    if spec is schema.PATIENT:
        return {"name": f"Patient {i}", "birthDate": f"{1940 + i % 70}-0{1 + i % 9}-1{i % 10}",
                "gender": ("female", "male", "other")[i % 3], "telecom": f"+254 700 {i:06d}"}
    if spec is schema.CHECKIN:
        return {"subject": patient, "status": "arrived", "reasonCode": "fever",
                "periodStart": f"{day}T08:{i % 60:02d}:00Z", "location": f"Site {i % 40}",
                "queueNumber": f"A{i % 1000:03d}", "identity": "match"}
    if spec is schema.PRESCRIPTION:
        return {"subject": patient, "status": "active", "medication": "amoxicillin 500 mg",
                "dosageInstruction": "one capsule three times daily", "quantity": 21,
                "authoredOn": f"{day}T09:00:00Z"}
    if spec is schema.LAB_RESULT:
        return {"subject": patient, "status": "final", "code": "718-7", "value": 10 + i % 7,
                "unit": "g/dL", "effectiveDateTime": f"{day}T10:00:00Z"}
    if spec is schema.APPOINTMENT:
        return {"subject": patient, "status": "booked", "start": f"{day}T11:00:00Z",
                "minutesDuration": 15, "serviceType": "follow-up"}
    return {"subject": patient, "status": "current", "title": f"scan {i}.pdf",
            "contentType": "application/pdf", "size": 900 if i % 10 == 0 else 2_000_000,
            "hash": hashlib.sha256(str(i).encode()).hexdigest(),
            "creation": f"{day}T12:00:00Z"}


def _writes(count: int) -> tuple[list[Delta], list[bytes]]:
    """The kiosks' deltas for ``count`` records, and the small documents' record ids."""
    kinds = [schema.PATIENT, schema.CHECKIN, schema.CHECKIN, schema.PRESCRIPTION,
             schema.LAB_RESULT, schema.APPOINTMENT, schema.DOCUMENT]
    stamp = T0 << 16
    out: list[Delta] = []
    patients: list[str] = []
    inline: list[bytes] = []
    for i in range(count):
        spec = kinds[i % len(kinds)] if patients else schema.PATIENT
        rid = uuid.UUID(int=(i + 1) << 64 | 0x4000_8000_0000_0000).bytes
        stamp += 1
        node = KIOSK_A if i % 2 else KIOSK_B
        out.append(build_put(None, rid, spec, node, stamp,
                             _values(spec, i, patients[-1] if patients else "")))
        if spec is schema.PATIENT:
            patients.append(str(uuid.UUID(bytes=rid)))
        if spec is schema.DOCUMENT and i % 10 == 0:
            inline.append(rid)
        if spec is schema.PRESCRIPTION and i % 50 == 3:  # both kiosks change it apart: held
            first = out[-1].dot
            for n, dose in ((KIOSK_A, "twice daily"), (KIOSK_B, "three times daily")):
                stamp += 1
                out.append(Delta(rid, spec.number, n, stamp, set={4: dose},
                                 ctx=(first,) if first.node != n else ()))
    return out, inline


def measure(where: Path, count: int) -> dict[str, Any]:
    init_hub(where / "hub")
    deltas, inline = _writes(count)
    with Hub(where / "hub") as hub:
        chunks = SealedChunks(hub.data / DOCUMENTS_DIR, hub.store.sealer)
        for rid in inline:
            content = b"%PDF-1.4 " + hashlib.sha256(rid).digest() * 28
            chunks.begin(hashlib.sha256(content).digest(), rid.hex(), len(content))
            chunks.put(chunk_id(content), content)
            chunks.add_layout(0, chunk_id(content), len(content).to_bytes(4, "big"))
            chunks.finish()
        t0, c0 = time.perf_counter(), time.process_time()
        for seq, at in enumerate(range(0, len(deltas), BATCH), 1):
            part = deltas[at:at + BATCH]
            hub.store.commit_batch("bench", seq, seq.to_bytes(32, "big"),
                                   [(d, encode(d)) for d in part], [], seq, [])
        fill_wall, fill_cpu = time.perf_counter() - t0, time.process_time() - c0
        out = where / "export"
        t0, c0 = time.perf_counter(), time.process_time()
        manifest = export(hub, out)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    exported = sum(item["count"] for item in manifest["output"])
    from tests.fhir_r4 import validate  # untimed from here

    checked, held = 0, 0
    t0 = time.perf_counter()
    for item in manifest["output"]:
        with open(out / item["url"], encoding="utf-8") as lines:
            for line in lines:
                resource = json.loads(line)
                validate(resource)
                checked += 1
                held += "meta" in resource
    return {"records": count, "deltas": len(deltas), "resources": exported,
            "held": held, "validated": checked, "export_wall_s": wall, "export_cpu_s": cpu,
            "fill_wall_s": fill_wall, "fill_cpu_s": fill_cpu,
            "validate_s": time.perf_counter() - t0,
            "bytes": sum(p.stat().st_size for p in out.iterdir()),
            "files": {item["type"]: item["count"] for item in manifest["output"]}}


def main() -> None:
    where, count = Path(sys.argv[1]), int(sys.argv[2])
    where.mkdir(parents=True, exist_ok=True)
    print(json.dumps(measure(where, count)))
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
