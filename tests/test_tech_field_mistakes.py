"""A technician's slips and a device on the cable, against ``haven tech``'s kiosk: a
configuration that would move the console, two tools on one port, a flood of refused
sessions."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from device import audit
from device.tech import service
from host.errors import PeerRefused, UsageError
from host.tech.client import CommandRefused, TechClient

from .tech_helpers import tech_kiosk

TIMEOUT = 5.0


def test_config_set_of_the_console_itself_is_refused(tmp_path: Path) -> None:
    with tech_kiosk(tmp_path) as k:
        with TechClient(k.port, k.credential(), timeout=TIMEOUT) as t:
            for key, value in (("console", "/dev/null"), ("console", ""),
                               ("console_baud", "12345678901234"),
                               ("hardware", "simulated"), ("hub_key", "ab" * 32),
                               ("provision_hold", "0.001"), ("provision_window", "1e8")):
                with pytest.raises(CommandRefused, match=r"\(fixed-key\)"):
                    t.call("config", {"op": "set", "key": key, "value": value})
            assert t.call("status")["version"] == "0.1.0"  # the port still answers
        assert k.resets == [] and not (tmp_path / "kiosk.toml").exists()


def test_a_second_tool_on_the_same_port_is_refused_in_one_line(tmp_path: Path) -> None:
    with tech_kiosk(tmp_path) as k:
        cred = k.credential()
        with TechClient(k.port, cred, timeout=TIMEOUT) as first:
            with pytest.raises(UsageError, match="in use by another program") as second:
                TechClient(k.port, cred, timeout=TIMEOUT).connect()
            assert "\n" not in str(second.value)
            assert first.call("status")["version"] == "0.1.0"  # undisturbed


def test_a_flood_of_refused_sessions_is_audited_within_a_bound(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service, "REFUSALS_AUDITED", 2)
    with tech_kiosk(tmp_path) as k:
        later = [0.0]
        k.service.refusal_budget.clock = lambda: time.monotonic() + later[0]
        rogue = k.credential(sites=["South"])
        for i in range(5):
            if i == 4:
                later[0] = service.REFUSAL_WINDOW + 1  # the window has passed
            with pytest.raises(PeerRefused, match="out-of-scope"):
                TechClient(k.port, rogue, timeout=TIMEOUT).connect()
        entries = audit.entries(k.store)
    assert [(e["what"], e["result"]) for e in entries] == [
        ("tech.session", "refused:out-of-scope")] * 3
    assert entries[1].get("detail") is None and entries[2]["detail"] == {"unaudited": 2}
    assert k.service.refusals == 5


def test_a_command_from_the_command_line_is_one_session(tmp_path: Path) -> None:
    from host.cli import main
    from protocol.sync import credential as c

    with tech_kiosk(tmp_path) as k:
        cred = tmp_path / "amina.cred"
        cred.write_bytes(c.dump_file(k.credential()))
        assert main(["tech", "status", k.port, "--credential", str(cred),
                     "--timeout", str(TIMEOUT)]) == 0
        entries = [(e["what"], e["result"]) for e in audit.entries(k.store)]
    assert entries == [("tech.auth", "ok"), ("tech.status", "ok")]  # one handshake


@pytest.mark.parametrize("name", ["\u202egpj.exe", "a\u2028b", "a\x85b", "con\u200bfig.toml",
                                  "a\u2029b"])
def test_smp_fs_names_with_invisible_or_line_breaking_characters_are_refused(
        tmp_path: Path, name: str) -> None:
    from device.console.fs_group import check_name
    from device.console.groups import SmpError

    with pytest.raises(SmpError):
        check_name(name)
    assert check_name("logs/2026-12-05 été.txt") == ["logs", "2026-12-05 été.txt"]


def test_a_flood_of_provisioning_requests_on_a_provisioned_kiosk_is_audited_within_a_bound(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from device.tech import provision as dprov
    from host.tech.provision import ProvisionClient

    monkeypatch.setattr(service, "REFUSALS_AUDITED", 3)
    with tech_kiosk(tmp_path) as k:  # an enrolled kiosk: provisioned already
        k.env.extra[dprov.EXTRA] = dprov.Provisioner(k.store, pressed=None)
        rogue = ProvisionClient(k.port, k.credential(), timeout=TIMEOUT)
        try:
            rogue.open_session()
            for _ in range(20):  # one session, request after request
                with pytest.raises(CommandRefused, match="already-provisioned"):
                    rogue.call("provision-begin", {})
        finally:
            rogue.close()
        entries = [(e["what"], e["result"]) for e in audit.entries(k.store)]
    assert entries == [("provision.begin", "refused:already-provisioned")] * 3


def test_a_line_speed_past_the_drivers_is_one_line(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from host.cli import main
    from protocol.driver.errors import LinkError
    from protocol.driver.link import SerialLink

    from .console_helpers import Cable

    cable = Cable()
    try:
        with pytest.raises(LinkError, match="cannot open port"):
            SerialLink(cable.b, 12345678901234)
        for bad in (["--baud", "12345678901234"], ["--baud", "0"], ["--timeout", "nan"],
                    ["--timeout", "-1"]):
            with pytest.raises(SystemExit) as exit_:
                main(["tech", "status", cable.b, "--credential", str(tmp_path / "c"), *bad])
            assert exit_.value.code == 2
            err = capsys.readouterr().err
            assert "Traceback" not in err and ("must be" in err or "line speed" in err)
    finally:
        cable.close()


@pytest.mark.parametrize("args, says", [
    (["--name", "A. Yusuf\nREVOKED 3", "--sites", "North"], "printable"),
    (["--name", "A. Yusuf", "--sites", "North", "--actions", ""], "at least one action"),
    (["--name", "A. Yusuf", "--sites", "No\nrth"], "printable"),
])
def test_haven_hub_technician_issue_refuses_a_multiline_name_or_no_action(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str],
        says: str) -> None:
    from host.cli import main
    from host.hub.hub import init_hub

    init_hub(tmp_path / "hub")
    out = tmp_path / "a.cred"
    assert main(["hub", "technician", "issue", "--data", str(tmp_path / "hub"), *args,
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1 and not out.exists()


def test_config_get_never_shows_the_staff_pins_hash(tmp_path: Path) -> None:
    pin_hash = "scrypt$16384$8$1$c2FsdA$aGFzaGhhc2g"
    (tmp_path / "kiosk.toml").write_text(f'[kiosk]\nstaff_pin = "{pin_hash}"\n')
    with tech_kiosk(tmp_path) as k, \
            TechClient(k.port, k.credential(actions=["read"]), timeout=TIMEOUT) as t:
        got = t.call("config", {"op": "get", "key": "staff_pin"})
        unset = t.call("config", {"op": "get", "key": "hub_key"})
    assert pin_hash not in repr(got) and got["file"] == "(set, not shown)"
    assert unset["file"] is None


def test_config_set_of_a_hub_url_without_a_port_is_refused(tmp_path: Path) -> None:
    with tech_kiosk(tmp_path) as k, TechClient(k.port, k.credential(), timeout=TIMEOUT) as t:
        with pytest.raises(CommandRefused, match="must be tcp://HOST:PORT"):
            t.call("config", {"op": "set", "key": "hub", "value": "tcp://hub.example"})
        set_ = t.call("config", {"op": "set", "key": "hub",
                                 "value": "tcp://hub.example:7400,/dev/ttyUSB0"})
    assert set_["value"] == ["tcp://hub.example:7400", "/dev/ttyUSB0"]
