"""Enrolment: request, certificate, sealed fleet key, letters, revocation."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from device import enrol
from device.store import Store, StoreError, init_store
from host.errors import HavenError
from host.hub.hub import Hub, init_hub
from protocol.errors import ProtocolError
from protocol.sync import certificate as sync_cert

pytestmark = pytest.mark.usefixtures("hub_backend")


def test_sealed_fleet_key_opens_only_for_its_kiosk() -> None:
    key = X25519PrivateKey.generate()
    sealed = sync_cert.seal(b"fleet", key.public_key().public_bytes_raw())
    assert len(sealed) == 32 + len(b"fleet") + 16  # HPKE: enc, then AES-GCM with its tag
    assert sync_cert.open_sealed(sealed, key) == b"fleet"
    tampered = sealed[:-1] + bytes([sealed[-1] ^ 1])
    for bad, opener in ((sealed, X25519PrivateKey.generate()), (tampered, key),
                        (sealed[:40], key)):
        with pytest.raises(ProtocolError):
            sync_cert.open_sealed(bad, opener)
    with pytest.raises(ProtocolError):  # sealed for another purpose
        sync_cert.open_sealed(sync_cert.seal(b"fleet", key.public_key().public_bytes_raw(),
                                             b"other"), key)


def test_request_signature_is_checked() -> None:
    doc = sync_cert.make_request(7, "North", "A", X25519PrivateKey.generate(),
                                 Ed25519PrivateKey.generate())
    assert sync_cert.read_request(doc).device_id == "00000007"
    tampered = doc.replace(b"North", b"South")
    with pytest.raises(ProtocolError):
        sync_cert.read_request(tampered)


def kiosk(tmp: Path, name: str, letter: str) -> Store:
    store = init_store(tmp / name, "North", letter)
    enrol.write_request(store)
    return store


def test_enrol_installs_fleet_key_and_letters_are_unique(tmp_path: Path) -> None:
    init_hub(tmp_path / "hub")
    a, b = kiosk(tmp_path, "a", "A"), kiosk(tmp_path, "b", "A")
    with Hub(tmp_path / "hub") as hub:
        cert_a = hub.enroll((a.data / enrol.REQUEST).read_bytes())
        with pytest.raises(HavenError, match="letter A is taken"):
            hub.enroll((b.data / enrol.REQUEST).read_bytes())
        fleet = hub.fleet_key
    with pytest.raises(StoreError, match="another kiosk"):
        enrol.install(b, cert_a)
    cert = enrol.install(a, cert_a)
    assert cert.letter == "A" and a.fleet_key == fleet
    assert enrol.load(a.data).cert.device_id == f"{a.node:08x}"
    forged = cert_a[:-5] + bytes(5)
    with pytest.raises(ProtocolError):
        sync_cert.read_certificate(forged)
    a.close()
    b.close()


def test_cli_init_writes_request(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from device.cli import main as kiosk_main
    from host.cli import main as hub_main

    assert hub_main(["hub", "init", "--data", str(tmp_path / "hub")]) == 0
    assert kiosk_main(["init", "--data", str(tmp_path / "k"), "--site", "S"]) == 0
    req = tmp_path / "k" / "enrolment.req"
    assert req.exists()
    cert = tmp_path / "k.cert"
    assert hub_main(["hub", "enroll", "--data", str(tmp_path / "hub"), str(req),
                     "--out", str(cert)]) == 0
    assert kiosk_main(["enroll", "--data", str(tmp_path / "k"), str(cert)]) == 0
    node = sync_cert.read_certificate(cert.read_bytes()).device_id
    assert hub_main(["hub", "revoke", "--data", str(tmp_path / "hub"), node]) == 0
    assert hub_main(["hub", "revoke", "--data", str(tmp_path / "hub"), "nope"]) == 2
    assert "revoked" in capsys.readouterr().out
