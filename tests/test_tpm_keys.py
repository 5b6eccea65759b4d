"""Keys in a TPM 2.0 (swtpm, started here): the store key sealed to it, the fleet key an
HMAC key in it. Ids through the TPM equal the file provider's; the card alone, or the
card in another TPM's machine, reads nothing; a cleared TPM loses what was not synced."""

from __future__ import annotations

import json
import os
import shutil
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from device import enrol
from device.store import Store, init_store
from device.store.exc import KeyMismatch
from device.store.fleet import FleetSecret
from device.store.providers import open_keys
from device.store.tpm_key import TpmFleetKeeper, TpmFleetKey, TpmKey
from device.wipe import WIPED, destroy_keys
from protocol.driver.tpm import Tpm, TpmAbsent, TpmKeyGone, TpmToolsMissing
from tests.swtpm_helpers import SoftTpm, free_pair, soft_tpm
from tests.test_identity_before_fleet_key import sync
from tests.test_sync_helpers import served_hub

VECTORS = Path(__file__).parent.parent / "protocol" / "vectors"
PASSPORT, NAME = "ZA 4471-0923", "Thandiwe Okonkwo-Mbeki"
GONE = "cleared, or this is another TPM"


def vectors(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((VECTORS / f"{name}.json").read_text())
    return doc


@pytest.fixture(scope="module")
def tpm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoftTpm]:
    with soft_tpm(tmp_path_factory.mktemp("swtpm")) as t:
        yield t


@pytest.fixture(scope="module")
def fleet_in_tpm(tpm: SoftTpm, tmp_path_factory: pytest.TempPathFactory,
                 ) -> tuple[FleetSecret, TpmFleetKey]:
    key = os.urandom(32)
    keeper = TpmFleetKeeper(tmp_path_factory.mktemp("fleet"), tpm.tcti)
    return FleetSecret(key), keeper.install(key, "Riverside")


def test_ids_through_the_tpm_equal_the_vectors(tpm: SoftTpm, tmp_path: Path) -> None:
    scope, codes, sealed = vectors("scope"), vectors("short_code"), vectors("sealed_identity")
    assert scope["fleet_key"] == codes["fleet_key"] == sealed["fleet_key"]
    key = bytes.fromhex(scope["fleet_key"])
    keeper = TpmFleetKeeper(tmp_path, tpm.tcti)
    held = Tpm(tpm.tcti).persistent_handles()
    for site in dict.fromkeys(v["site"] for v in scope["verifiers"]):
        fleet = keeper.install(key, site)  # a new site: both keys imported again
        for v in (v for v in scope["verifiers"] if v["site"] == site):
            pid = bytes.fromhex(v["pid"])
            assert fleet.verifier_record_id(site, pid).hex() == v["record_id"], v
            assert fleet.year_verifier(site, pid, v["year"]) == v["verifier"], v
    # the old site's keys were evicted: two handles held, not two per install
    assert len(Tpm(tpm.tcti).persistent_handles() - held) == 2
    fleet = keeper.load()
    for v in codes["codes"]:
        assert str(fleet.code_patient_id(v["code"])) == v["patient_id"], v
    for v in sealed["sealed"]:
        made = (fleet.patient_id if v["kind"] == "passport" else fleet.code_patient_id)(
            v["value"])
        assert str(made) == v["patient_id"], v
    assert fleet.fingerprint() == FleetSecret(key).fingerprint()
    with pytest.raises(KeyMismatch, match="site key of"):
        fleet.year_verifier("North", bytes(16), "1980")  # not this kiosk's site


@settings(max_examples=12, deadline=None)
@given(passport=st.from_regex(r"[A-Z]{0,2}[0-9]{4,9}", fullmatch=True),
       pid=st.binary(min_size=16, max_size=16), year=st.integers(1900, 2030))
def test_ids_through_the_tpm_equal_the_file_providers(
        fleet_in_tpm: tuple[FleetSecret, TpmFleetKey], passport: str, pid: bytes,
        year: int) -> None:
    clear, held = fleet_in_tpm
    assert held.patient_id(passport) == clear.patient_id(passport)
    assert held.verifier_record_id("Riverside", pid) == clear.verifier_record_id("Riverside",
                                                                                  pid)
    born = f"{year:04d}"
    assert held.year_verifier("Riverside", pid, born) == clear.year_verifier("Riverside",
                                                                              pid, born)


def _card(data: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(data.rglob("*")) if p.is_file())


def test_the_card_holds_no_key_and_opens_only_with_its_tpm(
        tpm: SoftTpm, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from device.cli import main as kiosk_main

    data, fleet_file = tmp_path / "kiosk", tmp_path / "fleet.key"
    fleet_file.write_bytes(os.urandom(32))
    assert kiosk_main(["init", "--data", str(data), "--site", "Riverside", "--letter", "A",
                       "--key-provider", "tpm", "--tpm-tcti", tpm.tcti,
                       "--fleet-key", str(fleet_file)]) == 0
    assert not (data / "store.key").exists() and not (data / "fleet.key").exists()
    for name in ("store.tpm", "fleet.tpm"):
        assert stat.S_IMODE((data / name).stat().st_mode) == 0o600
    with Store(data) as store:
        done = store.checkin(passport=PASSPORT, name=NAME, birth_year=1987)
        assert done.patient_id == str(FleetSecret(fleet_file.read_bytes()).patient_id(PASSPORT))
    store_key = TpmKey(data, "store").key()
    card = _card(data)
    for secret in (NAME.encode(), b"ZA44710923", fleet_file.read_bytes(), store_key,
                   store_key.hex().encode()):
        assert secret not in card
    with Store(data) as store:  # opened again on its own TPM
        view = store.view(done.record_id)
        assert view is not None and NAME in view.fields.values()

    # init again keeps the store's provider; another is refused, and so is a new site,
    # whose key the TPM cannot derive without the fleet key in the clear.
    assert kiosk_main(["init", "--data", str(data), "--site", "Riverside", "--letter", "B"]) == 0
    capsys.readouterr()
    assert kiosk_main(["init", "--data", str(data), "--site", "Riverside",
                       "--key-provider", "file"]) == 1
    assert "holds keys of the tpm key provider" in capsys.readouterr().err
    with pytest.raises(KeyMismatch, match="held for site 'Riverside'"):
        init_store(data, "Hillside", "B").close()

    # The card in another machine: another TPM, or none.
    copy = tmp_path / "copy"
    shutil.copytree(data, copy)
    with soft_tpm(tmp_path / "other") as other:
        with pytest.raises(TpmKeyGone, match=GONE):
            key, keeper = open_keys(copy, other.tcti)
            Store(copy, key, fleet=keeper)
        with pytest.raises(TpmKeyGone, match=GONE):
            TpmFleetKeeper(copy, other.tcti).load()
    with pytest.raises(TpmAbsent, match="no TPM answers"):
        TpmKey(copy, "store", f"swtpm:host=127.0.0.1,port={free_pair()}").key()
    with pytest.raises(TpmAbsent, match="no TPM answers at device:/dev/nonexistent"):
        TpmKey(copy, "store", "device:/dev/nonexistent").key()

    # A wipe evicts the fleet and site keys from the TPM and destroys the sealed blobs.
    handles = TpmFleetKeeper(data).load().handles
    assert set(handles) <= Tpm(tpm.tcti).persistent_handles()
    assert set(destroy_keys(data, WIPED)) >= {"store.tpm", "fleet.tpm"}
    assert not set(handles) & Tpm(tpm.tcti).persistent_handles()


def test_tpm_tools_missing_name_their_package(monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(TpmToolsMissing, match="apt-get install tpm2-tools"):
        Tpm("swtpm:host=127.0.0.1,port=1").hmac(0x81000100, b"x")


def test_a_cleared_tpm_loses_only_what_was_not_synced(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from device.cli import main as kiosk_main

    with soft_tpm(tmp_path / "swtpm") as tpm, served_hub(tmp_path) as (hub, url):
        store = init_store(tmp_path / "k", "Riverside", None, provider="tpm", tcti=tpm.tcti)
        try:
            enrol.install(store, hub.enroll(enrol.write_request(store).read_bytes()))
            assert store.fleet.fingerprint() == FleetSecret(hub.fleet_key).fingerprint()
            synced = store.checkin(passport=PASSPORT, name=NAME, birth_year=1987)
            sync(store, url)
            unsynced = store.checkin(passport="ZB99887766", name="Nomvula Dlamini")
        finally:
            store.close()

        tpm.reset()  # cleared: a new owner seed, no persistent key left
        with pytest.raises(TpmKeyGone, match=GONE):
            Store(tmp_path / "k")
        capsys.readouterr()
        assert kiosk_main(["status", "--data", str(tmp_path / "k")]) == 1
        err = capsys.readouterr().err
        assert GONE in err and "Traceback" not in err, err

        # What was synced is on the hub; the unsynced check-in died with the key.
        rids = {v.record_id for v in hub.views()}
        assert uuid.UUID(synced.record_id).bytes in rids
        assert uuid.UUID(unsynced.record_id).bytes not in rids

        # The kiosk made again on its cleared TPM gets back what was synced.
        again = init_store(tmp_path / "k2", "Riverside", None, provider="tpm", tcti=tpm.tcti)
        try:
            request = enrol.write_request(again, hub_letter=True)  # A is the lost kiosk's
            enrol.install(again, hub.enroll(request.read_bytes()))
            sync(again, url)
            view = again.view(synced.record_id)
            assert view is not None and NAME in view.fields.values()
            assert again.fleet.patient_id(PASSPORT) == uuid.UUID(synced.patient_id)
        finally:
            again.close()
