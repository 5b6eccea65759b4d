"""The hub gives each kiosk its queue letter at its site: the first free one when the
kiosk's request leaves it to the hub, the one asked for when it is free."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from device import enrol
from device.cli import main as kiosk_main
from device.store import Store
from host.cli import main as hub_main
from host.errors import HavenError, UsageError
from host.hub.hub import Hub, init_hub
from protocol.sync import certificate as sync_cert

pytestmark = pytest.mark.usefixtures("hub_backend")

_nodes = itertools.count(0x1001, 2)


def request(site: str, letter: str | None = None) -> bytes:
    return sync_cert.make_request(next(_nodes), site, letter, X25519PrivateKey.generate(),
                                  Ed25519PrivateKey.generate())


def letter_of(cert: bytes) -> str:
    return sync_cert.read_certificate(cert).letter


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Hub]:
    init_hub(tmp_path / "hub")
    h = Hub(tmp_path / "hub")
    yield h
    h.close()


def test_a_request_without_a_letter_carries_none() -> None:
    assert sync_cert.read_request(request("North")).letter is None
    assert sync_cert.read_request(request("North", "C")).letter == "C"


def test_letters_go_a_b_c_at_each_site_independently(hub: Hub) -> None:
    north = [letter_of(hub.enroll(request("North"))) for _ in range(3)]
    south = [letter_of(hub.enroll(request("South"))) for _ in range(2)]
    assert north == ["A", "B", "C"] and south == ["A", "B"]
    assert sorted((d.site, d.letter) for d in hub.store.devices()) == [
        ("North", "A"), ("North", "B"), ("North", "C"), ("South", "A"), ("South", "B")]


def test_a_letter_asked_for_is_honoured_and_passed_over_after(hub: Hub) -> None:
    assert letter_of(hub.enroll(request("North", "b"))) == "B"
    assert [letter_of(hub.enroll(request("North"))) for _ in range(2)] == ["A", "C"]


def test_a_taken_letter_is_refused_and_nothing_is_recorded(hub: Hub) -> None:
    first = sync_cert.read_certificate(hub.enroll(request("North", "A")))
    with pytest.raises(HavenError, match=f"letter A is taken at site 'North' by kiosk "
                                         f"{first.device_id}"):
        hub.enroll(request("North", "A"))
    assert letter_of(hub.enroll(request("South", "A"))) == "A"  # another site's A is free
    assert len(hub.store.devices()) == 2


def test_a_bad_letter_is_refused(hub: Hub) -> None:
    for bad in ("AB", "1", "", "É"):
        with pytest.raises(UsageError, match="one letter, A to Z"):
            hub.enroll(request("North", bad))
    assert hub.store.devices() == []


def test_a_kiosk_enrolling_again_keeps_its_letter(hub: Hub) -> None:
    x, ed = X25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    hub.enroll(request("North"))
    again = sync_cert.make_request(0x77, "North", None, x, ed)
    assert letter_of(hub.enroll(again)) == "B"
    assert letter_of(hub.enroll(again)) == "B"


def test_a_site_with_every_letter_taken_says_so(hub: Hub) -> None:
    assert "".join(letter_of(hub.enroll(request("North"))) for _ in range(26)) == \
        "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    with pytest.raises(HavenError, match="every letter A to Z is taken at site 'North'"):
        hub.enroll(request("North"))


def test_two_kiosks_initialised_without_a_letter_get_a_and_b(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The commands a technician types: no --letter anywhere, and the second kiosk is
    not refused with "letter A is taken"; its queue numbers follow its letter."""
    hub_dir = str(tmp_path / "hub")
    assert hub_main(["hub", "init", "--data", hub_dir]) == 0
    for name, letter in (("k1", "A"), ("k2", "B")):
        data = tmp_path / name
        assert kiosk_main(["init", "--data", str(data), "--site", "North"]) == 0
        assert "its letter given by the hub" in capsys.readouterr().out
        cert = tmp_path / f"{name}.cert"
        assert hub_main(["hub", "enroll", "--data", hub_dir, str(data / enrol.REQUEST),
                         "--out", str(cert)]) == 0
        assert f"letter {letter}, number" in capsys.readouterr().out
        assert kiosk_main(["enroll", "--data", str(data), str(cert)]) == 0
        assert f"letter {letter}" in capsys.readouterr().out
        with Store(data) as store:
            assert store.status()["letter"] == letter
            ticket = store.checkin(passport=f"P{letter}12345", name="A. Patient",
                                   birth_year=1990)
            assert ticket.queue_number == f"{letter}-001"
