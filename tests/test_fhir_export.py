"""``haven hub export --fhir``: Bulk Data NDJSON, every resource valid FHIR R4.

The hub holds a record of every exported type from two kiosks, a prescription
they changed apart (held for review), a deleted check-in, a small document held
whole (inline) and a large one (a reference). Every resource written is
validated by fhir.resources' R4 models (``tests/fhir_r4.py``), one by one.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Any

import pytest

from host.cli import main as haven_main
from host.hub.document_inbox import DOCUMENTS_DIR
from host.hub.hub import Hub, init_hub
from host.hub.sealed_documents import SealedChunks
from host.hub.storage import Op
from protocol.chunking import chunk_id
from protocol.crdt.delta import decode
from protocol.crdt.replica import Replica

from .fhir_r4 import fhir_version, validate

pytestmark = pytest.mark.usefixtures("hub_backend")

T = 1_790_000_000_000
RESOURCE_FILES = ("Patient", "Encounter", "MedicationRequest", "Observation", "Appointment",
                  "DocumentReference")


class Fleet:
    """Two kiosks writing, their deltas handed to the hub as its own writes."""

    def __init__(self, hub: Hub) -> None:
        self.hub, self.a, self.b, self.t = hub, Replica(0x11), Replica(0x13), T

    def put(self, kiosk: Replica, rid: bytes, kind: str, values: dict[str, Any],
            **sets: Any) -> bytes:
        self.t += 1000
        data = kiosk.put(rid, kind, self.t, values, **sets)
        self.give(data)
        return data

    def give(self, *items: bytes) -> None:
        self.hub.store.add_local(*(Op(d.record_id, d.stamp, d.node, data)
                                   for data in items for d in [decode(data)]))

    def share(self, data: bytes, *to: Replica) -> None:
        for kiosk in to:
            kiosk.receive(data, self.t + 5000)


def put_document(hub: Hub, rid: bytes, content: bytes) -> None:
    chunks = SealedChunks(hub.data / DOCUMENTS_DIR, hub.store.sealer)
    chunks.begin(hashlib.sha256(content).digest(), rid.hex(), len(content))
    hash_ = chunk_id(content)
    chunks.put(hash_, content)
    chunks.add_layout(0, hash_, len(content).to_bytes(4, "big"))
    chunks.finish()


def read_export(folder: Path) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    manifest = json.loads((folder / "manifest.json").read_text())
    out = {}
    for item in manifest["output"] + manifest["deleted"]:
        lines = (folder / item["url"]).read_text().splitlines()
        out[item["type"]] = [json.loads(line) for line in lines]
        assert len(out[item["type"]]) == (item["count"] if item["type"] != "Bundle" else 1)
    return manifest, out


@pytest.fixture
def hub(tmp_path: Path) -> Any:
    init_hub(tmp_path / "hub")
    with Hub(tmp_path / "hub") as opened:
        yield opened


def fill(hub: Hub) -> dict[str, bytes]:
    fleet = Fleet(hub)
    a, b = fleet.a, fleet.b
    ids = {name: uuid.uuid4().bytes for name in (
        "patient", "checkin", "gone", "rx", "lab", "appointment", "small", "large", "note",
        "odd")}
    pid = str(uuid.UUID(bytes=ids["patient"]))
    fleet.put(a, ids["patient"], "patient", {"name": "Ada Lovelace", "birthDate": "1970-03-01",
                                             "gender": "female", "telecom": "+44 20 0000",
                                             "communication": "en"}, add={"allergies": ["latex"]})
    fleet.put(a, ids["checkin"], "checkin", {"subject": pid, "status": "arrived",
                                             "reasonCode": "cough",
                                             "periodStart": "2026-12-01T09:00:00Z",
                                             "location": "North", "queueNumber": "A001",
                                             "identity": "match"})
    fleet.put(a, ids["gone"], "checkin", {"subject": pid, "status": "arrived"})
    fleet.t += 1000
    fleet.give(a.delete(ids["gone"], fleet.t))
    first = fleet.put(a, ids["rx"], "prescription", {"subject": pid, "status": "active",
                                                     "medication": "amoxicillin"})
    fleet.share(first, b)
    fleet.put(a, ids["rx"], "prescription", {"dosageInstruction": "500 mg twice daily"})
    fleet.put(b, ids["rx"], "prescription", {"dosageInstruction": "250 mg three times"})
    fleet.put(a, ids["lab"], "lab_result", {"subject": pid, "status": "final", "code": "Hb",
                                            "value": 13.5, "unit": "g/dL",
                                            "effectiveDateTime": "2026-12-01T10:00:00Z"})
    fleet.put(b, ids["appointment"], "appointment", {"subject": pid, "status": "booked",
                                                     "start": "2026-12-08T09:00:00Z",
                                                     "minutesDuration": 15})
    small, large = b"%PDF small scan", os.urandom(70_000)
    for name, content in (("small", small), ("large", large)):
        fleet.put(a, ids[name], "document", {"subject": pid, "status": "current",
                                             "title": f"{name}.pdf", "size": len(content),
                                             "contentType": "application/pdf",
                                             "hash": hashlib.sha256(content).hexdigest()})
        put_document(hub, ids[name], content)
    fleet.put(a, ids["note"], "note", {"subject": pid, "text": "not exported"})
    fleet.put(b, ids["odd"], "checkin", {"subject": pid, "status": "called"})  # no R4 code
    return ids


def test_every_type_exports_valid_r4_and_a_held_conflict_once(hub: Hub, tmp_path: Path,
                                                             capsys: Any) -> None:
    assert fhir_version() == "4.0.1"
    ids = fill(hub)
    name = {k: str(uuid.UUID(bytes=v)) for k, v in ids.items()}
    hub.close()
    out = tmp_path / "export"
    assert haven_main(["hub", "export", "--data", str(hub.data), "--fhir", str(out)]) == 0
    assert "next time: --since" in capsys.readouterr().out
    manifest, found = read_export(out)
    assert sorted(found) == sorted(RESOURCE_FILES) and manifest["deleted"] == []
    for kind in RESOURCE_FILES:
        for res in found[kind]:
            validate(res)  # resource by resource
    every = [r["id"] for kind in RESOURCE_FILES for r in found[kind]]
    assert len(every) == len(set(every)) == 8  # once each; the deleted one and the note not
    assert name["gone"] not in every and name["note"] not in every
    patient, = found["Patient"]
    assert patient["identifier"][0] == {"system": manifest["extension"]["patientSystem"],
                                        "value": name["patient"]}
    assert manifest["extension"]["patientSystem"].startswith("urn:haven:")
    rx, = found["MedicationRequest"]
    assert rx["meta"]["tag"][0]["code"] == "unconfirmed" and rx["status"] == "on-hold"
    conflict, = [e for e in rx["extension"] if e["url"] == "urn:haven:fhir:conflict"]
    parts = {p["url"]: p for p in conflict["extension"]}
    assert parts["severity"]["valueCode"] == "hold" and parts["recordedStatus"][
        "valueString"] == "active"
    versions = [json.loads(p["valueString"]) for p in conflict["extension"]
                if p["url"] == "version"]
    assert sorted(v["fields"]["dosageInstruction"] for v in versions) == [
        "250 mg three times", "500 mg twice daily"]
    docs = {d["id"]: d["content"][0]["attachment"] for d in found["DocumentReference"]}
    small = docs[name["small"]]
    assert base64.b64decode(small["data"]) == b"%PDF small scan" and small["hash"] == (
        base64.b64encode(hashlib.sha1(b"%PDF small scan").digest()).decode())
    large = docs[name["large"]]
    assert "data" not in large and large["url"].endswith(name["large"]) and large[
        "size"] == 70_000
    assert found["Observation"][0]["valueQuantity"]["value"] == 13.5
    odd, = [e for e in found["Encounter"] if e["id"] == name["odd"]]
    assert odd["status"] == "unknown" and odd["extension"] == [
        {"url": "urn:haven:fhir:recorded-status", "valueString": "called"}]
    assert b"Ada Lovelace" not in b"".join(p.read_bytes() for p in (tmp_path / "hub").rglob(
        "*") if p.is_file())  # the export is where the plaintext is, not the hub's files


def test_an_incremental_export_misses_nothing_and_repeats_nothing(hub: Hub,
                                                                  tmp_path: Path) -> None:
    ids = fill(hub)
    first = tmp_path / "one"
    manifest = _export(hub, first)
    cursor = manifest["extension"]["cursor"]
    fleet = Fleet(hub)
    pid = str(uuid.UUID(bytes=ids["patient"]))
    fleet.t = T + 10**6
    fleet.a.receive(hub.store.record_ops(ids["lab"])[0].data, fleet.t)
    fleet.put(fleet.a, ids["lab"], "lab_result", {"value": 14.0})  # changed
    new_patient = uuid.uuid4().bytes
    fleet.put(fleet.b, new_patient, "patient", {"name": "Bea"})  # new
    for op in hub.store.record_ops(ids["appointment"]):
        fleet.a.receive(op.data, fleet.t)
    fleet.t += 1000
    fleet.give(fleet.a.delete(ids["appointment"], fleet.t))  # deleted
    second = tmp_path / "two"
    again = _export(hub, second, cursor)
    _, found = read_export(second)
    changed = sorted(r["id"] for kind in RESOURCE_FILES for r in found.get(kind, []))
    assert changed == sorted([str(uuid.UUID(bytes=ids["lab"])), str(uuid.UUID(
        bytes=new_patient))])
    assert found["Observation"][0]["valueQuantity"]["value"] == 14.0
    bundle, = found["Bundle"]
    validate(bundle)
    assert [e["request"] for e in bundle["entry"]] == [
        {"method": "DELETE", "url": f"Appointment/{uuid.UUID(bytes=ids['appointment'])}"}]
    for kind in RESOURCE_FILES:
        for res in found.get(kind, []):
            validate(res)
    # nothing since: an empty export, the cursor where it was
    third = _export(hub, tmp_path / "three", again["extension"]["cursor"])
    assert third["output"] == [] and third["deleted"] == []
    assert third["extension"]["cursor"] == again["extension"]["cursor"]
    assert pid


def _export(hub: Hub, folder: Path, since: str | None = None) -> dict[str, Any]:
    from host.hub.fhir import export
    return export(hub, folder, since)


def test_bad_input_is_refused_and_nothing_is_half_written(hub: Hub, tmp_path: Path,
                                                         capsys: Any) -> None:
    fill(hub)
    data = str(hub.data)
    hub.close()
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    cases = {
        "not empty": ["--fhir", str(busy)],
        # root writes anywhere but in /proc
        "unwritable": ["--fhir", "/proc/haven-export" if os.geteuid() == 0 else str(
            locked / "out")],
        "in a file": ["--fhir", str(busy / "keep.txt" / "out")],
        "garbage cursor": ["--fhir", str(tmp_path / "g"), "--since", "yesterday"],
        "another hub's cursor": ["--fhir", str(tmp_path / "o"), "--since", "0123456789abcdef.5"],
        "future cursor": ["--fhir", str(tmp_path / "f"), "--since", "x.1"],
    }
    capsys.readouterr()
    for case, argv in cases.items():
        assert haven_main(["hub", "export", "--data", data, *argv]) == 2, case
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "Traceback" not in err[0], (case, err)
    assert [p.name for p in busy.iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy", "hub", "locked"]
    with Hub(Path(data)) as reopened:
        tag = reopened.store.get_meta("hub_id")[:16]
        head = reopened.store.head()
    assert haven_main(["hub", "export", "--data", data, "--fhir", str(tmp_path / "f"),
                       "--since", f"{tag}.{head + 1}"]) == 2
    assert "past everything" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert haven_main(["hub", "export", "--data", data, "--fhir", str(empty)]) == 0
    assert (empty / "manifest.json").exists()
