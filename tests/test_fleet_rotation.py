"""Fleet key rotation (SPEC.md "Fleet key rotation"): chained patient ids, the hub's
migration of patient ids to a new generation, and kiosks taking the new key at their
next sync."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from host.cli import main as haven
from protocol.crdt import ids

from .test_sync_helpers import Kiosk, served_hub

PASSPORT, OTHER = "XO1971555", "ZQ1990777"

VECTORS = json.loads((Path(__file__).parent.parent / "protocol/vectors/fleet_rotation.json")
                     .read_text())


def test_chained_ids_are_the_vectors() -> None:
    keys = [bytes.fromhex(k) for k in VECTORS["keys"]]
    for case in VECTORS["cases"]:
        first = (ids.patient_id if case["kind"] == "passport" else ids.code_patient_id)(
            keys[0], case["given"])
        expected = [uuid.UUID(i) for i in case["ids"]]
        assert first == expected[0]
        for g in range(1, len(keys)):
            assert ids.rotated_id(keys[g], expected[g - 1].bytes) == expected[g]
            assert ids.chained_id(first, [ids.hmac_of(k) for k in keys[1:g + 1]]) == expected[g]


def run(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str]:
    capsys.readouterr()
    code = haven([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out + out.err


def live(dump: bytes) -> dict[str, dict[str, Any]]:
    """The live records of a dump, by id."""
    return {r["id"]: r for r in json.loads(dump)["records"] if not r["deleted"]}


def test_a_rotation_migrates_every_id_and_kiosks_follow_over_tcp(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with served_hub(tmp_path) as (hub, url):
        a, b, c = (Kiosk(tmp_path, n, hub, n.upper()) for n in "abc")
        door = Kiosk(tmp_path, "door", hub, "D", role="door")
        try:
            first = hub.fleet_key
            x = a.store.checkin(name="Xavier Ortolan", passport=PASSPORT, birth_year=1971)
            y = a.store.checkin(name="Yolande Pimprenelle", birth_year=1980)  # gets a code
            assert y.code is not None
            a.store.put("prescription", values={"subject": x.patient_id, "medication": "M1"})
            for kiosk in (a, b, c, door):
                kiosk.sync(url)
            assert run(capsys, "hub", "promote", "--data", hub.data)[0] == 0
            for kiosk in (a, b, c, door):
                kiosk.sync(url)
            old_verifier = ids.verifier_record_id(first, "North", uuid.UUID(x.patient_id).bytes)
            assert str(uuid.UUID(bytes=old_verifier)) in live(hub.dump())

            # c is offline from here; the hub rotates the fleet key
            code, out = run(capsys, "hub", "keys", "rotate-fleet", "--data", hub.data)
            assert code == 0, out
            assert "generation 2" in out and "2 patients migrated" in out, out
            second = (hub.data / "fleet.2.key").read_bytes()
            assert (hub.data / "fleet.2.key").stat().st_mode & 0o077 == 0
            new_x = ids.rotated_id(second, uuid.UUID(x.patient_id).bytes)
            new_y = ids.rotated_id(second, uuid.UUID(y.patient_id).bytes)
            # c, still on the first key, sees X again and a new patient Z
            again = c.store.checkin(name="Xavier Ortolan", passport=PASSPORT, birth_year=1971)
            assert again.patient_id == x.patient_id and again.identity == "match"
            z = c.store.checkin(name="Zoe Quenouille", passport=OTHER, birth_year=1990)
            c.store.put("note", values={"subject": z.patient_id, "text": "offline note"})

            for kiosk in (a, b, door, c, a, b, door, c):
                kiosk.sync(url)
            for kiosk in (a, b, c, door):
                assert kiosk.store.fleet.generation == 2
            # a returning patient at a rotated kiosk: by passport and by short code
            found = b.store.checkin(name="Xavier Ortolan", passport=PASSPORT, birth_year=1971)
            assert (found.patient_id, found.identity) == (str(new_x), "match")
            coded = b.store.checkin(code=y.code, name="Yolande Pimprenelle", birth_year=1980)
            assert (coded.patient_id, coded.identity) == (str(new_y), "match")
            at_door = door.store.checkin(passport=PASSPORT, birth_year=1971)
            assert (at_door.patient_id, at_door.identity) == (str(new_x), "match")
            assert run(capsys, "hub", "promote", "--data", hub.data)[0] == 0  # Z's claim
            for kiosk in (a, b, c, door, a, b, c):
                kiosk.sync(url)

            dump = hub.dump()
            records = live(dump)
            new_z = ids.rotated_id(second, ids.patient_id(first, OTHER).bytes)
            patients = {i for i, r in records.items() if r["type"] == "patient"}
            assert patients == {str(new_x), str(new_y), str(new_z)}
            assert records[str(new_x)]["fields"]["name"] == "Xavier Ortolan"
            assert records[str(new_z)]["fields"]["name"] == "Zoe Quenouille"
            subjects = [r["fields"]["subject"] for r in records.values()
                        if "subject" in r["fields"]]
            assert len(subjects) >= 9 and set(subjects) <= patients
            # the first key alone finds nobody in the new data
            gone = {str(ids.patient_id(first, PASSPORT)), str(ids.patient_id(first, OTHER)),
                    str(ids.code_patient_id(first, y.code))}
            assert not gone & set(records) and not gone & set(subjects)
            # door verifiers: the old one deleted, the new one under the new key
            assert str(uuid.UUID(bytes=old_verifier)) not in records
            assert str(uuid.UUID(bytes=ids.verifier_record_id(
                second, "North", new_x.bytes))) in records
            assert a.store.dump() == b.store.dump() == c.store.dump() == dump
            assert hub.status()["fleet_rotation"] == {"generation": 2, "patients": 2,
                                                       "done": True}
        finally:
            for kiosk in (a, b, c, door):
                kiosk.close()
