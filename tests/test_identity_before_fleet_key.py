"""A kiosk provisioned offline checks patients in before its first sync brings the fleet
key (SPEC.md "Identity before the fleet key"): their passports and codes are sealed to
the hub under provisional subjects, never kept in the clear; the first sync installs the
key; the hub completes each check-in with the real patient id, the same an enrolled
kiosk derives. A real kiosk store, a real hub served on 127.0.0.1, real sync rounds."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from device import enrol
from device.store import BadRequest, KeyMismatch, Store, init_store
from device.sync.engine import run_round
from device.sync.state import SyncState
from host.hub.hub import Hub, init_hub
from host.hub.storage import Op
from protocol import strict_cbor
from protocol.crdt import schema, short_code
from protocol.crdt.delta import decode
from protocol.crdt.ids import code_patient_id, patient_id
from protocol.driver.wall_clock import wall_ms
from protocol.errors import ProtocolError
from protocol.sync.sealed_identity import (
    INFO,
    SealedIdentityError,
    open_identity,
    seal_identity,
)

from .test_sync_helpers import Kiosk, served_hub

C = {f.name: f.number for f in schema.CHECKIN.fields}
PASSPORT, TYPED = "ZA1234567", "za 123-4567"  # one passport, normalised and as typed


def hub_checkin(hub: Hub, checkin_id: str) -> dict[int, object]:
    rid = uuid.UUID(checkin_id).bytes
    (view,) = [v for v in hub.views() if v.record_id == rid]
    return dict(view.fields)


def subject(fields: dict[int, object]) -> str:
    value = fields[C["subject"]]
    return str(uuid.UUID(bytes=value)) if isinstance(value, bytes) else str(value)


def sync(store: Store, url: str) -> None:
    state = SyncState(store.data)
    try:
        assert run_round(store, state, enrol.load(store.data), url, limit=15.0) is not None
    finally:
        state.close()


def store_bytes(store: Store) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(store.data.glob("store.db*")))


def test_check_ins_before_the_first_sync_are_completed_by_the_hub(tmp_path: Path) -> None:
    with served_hub(tmp_path) as (hub, url):
        enrolled = Kiosk(tmp_path, "a", hub, "A")
        k = init_store(tmp_path / "k", "Unset")
        try:
            # An enrolled kiosk: the passport's patient, and a new patient with a code.
            there = enrolled.store.checkin(passport=PASSPORT, name="Amina Yusuf",
                                           birth_year=1990)
            coded = enrolled.store.checkin(name="Baraka Njoroge", birth_year=2001)
            assert coded.code is not None
            enrolled.sync(url)
            hub.promote_claims()
            # A fresh kiosk provisioned offline: no fleet key, patients check in anyway.
            enrol.install_approval(k, hub.approve("North", 1, 24, wall_ms())[0],
                                   hub.ed_public, wall_ms())
            assert k.fleet_pending and k.fleet_key != hub.fleet_key
            first = k.checkin(passport=TYPED, name="Amina Yusuf", birth_year=1990)
            again = k.checkin(passport=PASSPORT, name="amina  yusuf")
            new = k.checkin(name="Chausiku Wanjiru", birth_year=1975)
            back = k.checkin(code=coded.code, name="Baraka Njoroge")
            fresh = k.checkin(passport="QQ445566", name="Zawadi Otieno", birth_year=1985)
            sealed = (first, again, back, fresh)
            assert [r.identity for r in sealed] == ["unknown"] * 4
            assert new.identity == "new" and new.code is None  # no code before the key
            assert len({r.patient_id for r in sealed}) == 4  # provisional, each its own
            assert there.patient_id not in {r.patient_id for r in sealed}
            raw = store_bytes(k)
            canonical = short_code.parse(coded.code)
            for secret in (PASSPORT, TYPED, "QQ445566", canonical, coded.code):
                assert secret.encode() not in raw, secret
            # The first sync installs the certificate and its fleet key; later rounds work.
            sync(k, url)
            assert k.fleet_key == hub.fleet_key and not k.fleet_pending
            sync(k, url)
            # The hub completes the check-ins, then settles their claims, in one pass.
            done = hub.promote_claims()
            assert sorted(d["completed"] for d in done if "completed" in d) == [
                "code", "passport", "passport", "passport"]
            real = {first: there.patient_id, again: there.patient_id,
                    back: coded.patient_id,
                    fresh: str(patient_id(hub.fleet_key, "QQ445566"))}
            assert coded.patient_id == str(code_patient_id(hub.fleet_key, canonical))
            verdicts = {first: "match", again: "match", back: "match", fresh: "promoted"}
            for r in sealed:
                fields = hub_checkin(hub, r.record_id)
                assert subject(fields) == real[r], r
                assert fields.get(C["sealedIdentity"]) is None
                assert fields[C["identity"]] == verdicts[r]
            assert subject(hub_checkin(hub, new.record_id)) == new.patient_id
            assert hub.promote_claims() == []  # done once
            # The kiosk pulls the hub's writes; enrolled now, it derives ids itself.
            sync(k, url)
            for r in sealed:
                view = k.view(r.record_id)
                assert view is not None and subject(dict(view.fields)) == real[r]
                assert view.fields.get(C["sealedIdentity"]) is None
            later = k.checkin(passport=PASSPORT, name="Amina Yusuf", birth_year=1990)
            assert (later.patient_id, later.identity) == (there.patient_id, "match")
            assert k.checkin(name="Dalia Hassan").code is not None
            k.truncate_wal()
            raw = store_bytes(k)
            for secret in (PASSPORT, TYPED, "QQ445566", canonical, coded.code):
                assert secret.encode() not in raw, secret
        finally:
            k.close()
            enrolled.close()


def test_the_fleet_key_is_refused_once_patients_exist_unless_it_was_awaited(
        tmp_path: Path) -> None:
    key = os.urandom(32)
    with init_store(tmp_path / "enrolled", "North", "B") as store:
        store.checkin(passport=PASSPORT, name="Amina Yusuf")
        with pytest.raises(KeyMismatch):
            store.configure("North", "B", key)
    with init_store(tmp_path / "awaiting", "North", "B") as store:
        hub_x = X25519PrivateKey.generate()
        store.await_fleet_key(hub_x.public_key().public_bytes_raw())
        made = store.checkin(passport=PASSPORT, name="Amina Yusuf")
        store.checkin(name="New Patient")
        store.configure("North", "B", key)
        assert store.fleet_key == key and not store.fleet_pending
        view = store.view(made.record_id)
        assert view is not None
        text = view.fields[C["sealedIdentity"]]
        assert isinstance(text, str)
        cid = uuid.UUID(made.record_id).bytes
        assert open_identity(text, cid, hub_x) == ("passport", PASSPORT)


def test_staff_cannot_attach_or_correct_before_the_fleet_key(tmp_path: Path) -> None:
    """Attach and correct would land on a provisional subject or a placeholder key's id:
    both wait for the first sync, and nothing is written; confirm works at once."""
    with init_store(tmp_path / "awaiting", "North", "B") as store:
        store.await_fleet_key(X25519PrivateKey.generate().public_key().public_bytes_raw())
        made = store.checkin(passport=PASSPORT, name="Amina Yusuf")
        before = store.dump()
        for action, kw in (("attach", {"subject": str(uuid.uuid4())}),
                           ("correct", {"name": "Amina Yusuf"})):
            with pytest.raises(BadRequest) as refused:
                store.settle_identity(made.record_id, action, **kw)  # type: ignore[arg-type]
            assert refused.value.code == "fleet-pending"
        assert store.dump() == before
        store.settle_identity(made.record_id, "confirm")
        store.configure("North", "B", os.urandom(32))
        store.settle_identity(made.record_id, "correct", name="Amina Yusuf")


def to_hub(hub: Hub, store: Store) -> None:
    """The kiosk's deltas to the hub, as a sync round carries them."""
    for data in store.deltas_since({}):
        d = decode(data)
        hub.store.add_local(Op(d.record_id, d.stamp, d.node, data))


def test_haven_hub_promote_completes_and_reports_what_does_not_open(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from host.cli import main as hub_main

    init_hub(tmp_path / "hub")
    with Hub(tmp_path / "hub") as hub, init_store(tmp_path / "k", "North", "B") as store:
        store.await_fleet_key(hub.x_public)
        made = store.checkin(passport=PASSPORT, name="Amina Yusuf")
        store.await_fleet_key(X25519PrivateKey.generate().public_key().public_bytes_raw())
        astray = store.checkin(passport="QQ445566", name="Zawadi Otieno")
        to_hub(hub, store)
        real = str(patient_id(hub.fleet_key, PASSPORT))
    assert hub_main(["hub", "promote", "--data", str(tmp_path / "hub")]) == 0
    out = capsys.readouterr().out
    assert f"{made.record_id} patient {real}: completed from its sealed passport" in out
    assert f"{made.record_id} patient {real}: promoted" in out
    assert f"{astray.record_id} left as it is: a sealed identity does not open" in out
    with Hub(tmp_path / "hub") as hub:
        fields = hub_checkin(hub, astray.record_id)
        assert isinstance(fields[C["sealedIdentity"]], str)  # kept: nothing lost
        assert fields[C["identity"]] == "unknown"


def test_a_sealed_identity_opens_only_for_its_hub_and_its_check_in() -> None:
    hub_x = X25519PrivateKey.generate()
    cid = os.urandom(16)
    text = seal_identity(cid, "code", "ABCD2345", hub_x.public_key().public_bytes_raw())
    assert open_identity(text, cid, hub_x) == ("code", "ABCD2345")
    for bad_text, bad_cid, key in ((text, os.urandom(16), hub_x),
                                   (text, cid, X25519PrivateKey.generate()),
                                   ("not base64!", cid, hub_x), ("", cid, hub_x),
                                   ("QUJD" * 200, cid, hub_x)):
        with pytest.raises(ProtocolError):
            open_identity(bad_text, bad_cid, key)


def test_the_sealed_identity_vectors() -> None:
    v = json.loads((Path(__file__).parent.parent / "protocol/vectors/sealed_identity.json")
                   .read_text())
    hub_x = X25519PrivateKey.from_private_bytes(bytes.fromhex(v["hub_x25519_private"]))
    assert hub_x.public_key().public_bytes_raw().hex() == v["hub_x25519"]
    assert v["info"].encode() == INFO and C["sealedIdentity"] == 10
    cid, fleet = bytes.fromhex(v["checkin"]), bytes.fromhex(v["fleet_key"])
    for case in v["sealed"]:
        kind, value = open_identity(case["text"], cid, hub_x)
        assert (kind, value) == (case["kind"], case["value"])
        assert strict_cbor.dumps([cid, kind, value]).hex() == case["plain"]
        derive = patient_id if kind == "passport" else code_patient_id
        assert str(derive(fleet, value)) == case["patient_id"]
    for bad in v["bad"]:
        with pytest.raises(SealedIdentityError):
            open_identity(bad["text"], cid, hub_x)
