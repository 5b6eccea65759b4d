"""Fleet key rotation (SPEC.md "Fleet key rotation"): chained patient ids, the hub's
migration of patient ids to a new generation, and kiosks taking the new key at their
next sync."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from protocol.crdt import ids

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
