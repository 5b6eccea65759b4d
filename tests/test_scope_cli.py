"""The hub's role commands refuse what would change nothing or the wrong thing: an empty
--role (not the default role), and a role or decommission for a kiosk already gone."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from host.cli import main as haven_main
from host.hub.hub import Hub, init_hub

from .test_sync_helpers import Kiosk


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Hub]:
    init_hub(tmp_path / "hub")
    with Hub(tmp_path / "hub") as h:
        yield h


def _unchanged(hub: Hub, device: str) -> tuple[object, ...]:
    return hub.store.device(device), hub.store.events(1000)


def test_empty_role_is_refused_not_taken_for_full(hub: Hub, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    door = Kiosk(tmp_path, "d", hub, "D", role="door")
    request = tmp_path / "d" / "enrolment.req"
    try:
        before = _unchanged(hub, door.device)
        for role in ("", "  "):
            assert haven_main(["hub", "enroll", "--data", str(hub.data), str(request),
                               "--out", str(tmp_path / "x.cert"), "--role", role]) == 2
            assert haven_main(["hub", "approve", "--data", str(hub.data), "--site", "North",
                               "--count", "1", "--hours", "24", "--out",
                               str(tmp_path / "x.approvals"), "--role", role]) == 2
        assert capsys.readouterr().err.count("--role is empty: door, clinician or full") == 4
        assert _unchanged(hub, door.device) == before
        assert hub.store.device(door.device).role == "door"  # type: ignore[union-attr]
        assert not (tmp_path / "x.cert").exists() and not (tmp_path / "x.approvals").exists()
    finally:
        door.close()


def test_a_decommissioned_kiosk_gets_no_role_and_no_second_decommission(
        hub: Hub, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    kiosk = Kiosk(tmp_path, "k", hub, "A", role="clinician")
    try:
        data = str(hub.data)
        assert haven_main(["hub", "decommission", "--data", data, kiosk.device]) == 0
        capsys.readouterr()
        before = _unchanged(hub, kiosk.device)
        assert haven_main(["hub", "decommission", "--data", data, kiosk.device]) == 2
        assert haven_main(["hub", "role", "--data", data, kiosk.device, "door"]) == 2
        err = capsys.readouterr().err.splitlines()
        assert err == [f"haven hub: kiosk {kiosk.device} is decommissioned already: "
                       "decommissioning it changes nothing",
                       f"haven hub: kiosk {kiosk.device} is decommissioned already: "
                       "a role changes nothing"]
        assert _unchanged(hub, kiosk.device) == before
    finally:
        kiosk.close()
