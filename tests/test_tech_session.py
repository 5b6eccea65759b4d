"""``haven tech`` over an authenticated Haven session on the console, through a pty cable:
the technician's key is the session's, the certificate is checked with trusted time, and
refusals change nothing and are audited."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from device import audit, enrol
from device.store import init_store
from host.errors import HavenError, PeerRefused
from host.progress import Progress
from host.tech.client import CommandRefused, TechClient
from protocol.sync import credential as c

from .tech_helpers import T0, tech_kiosk

TIMEOUT = 5.0


def test_an_authenticated_session_runs_status(tmp_path: Path) -> None:
    with tech_kiosk(tmp_path) as k:
        cred = k.credential()
        with TechClient(k.port, cred, timeout=TIMEOUT) as tech:
            assert tech.welcome is not None and tech.welcome.name == "Amina"
            status = tech.call("status")
            with pytest.raises(CommandRefused, match="unknown-command"):
                tech.call("no-such-command")
        assert status["version"] == "0.1.0" and status["sync"]["state"] == "synced"
        assert status["uptime_s"] >= 0 and status["rss_kib"] > 0
        entries = [(e["what"], e["result"]) for e in audit.entries(k.store)]
        assert entries == [("tech.auth", "ok"), ("tech.status", "ok")]


@pytest.mark.parametrize("case", ["expired", "revoked", "out-of-scope", "key-mismatch"])
def test_a_session_without_a_valid_certificate_is_refused(tmp_path: Path, case: str) -> None:
    with tech_kiosk(tmp_path) as k:
        cred = k.credential()
        if case == "expired":
            cred = k.credential(hours=0.5, now_ms=T0 - 3600_000)
        elif case == "out-of-scope":
            cred = k.credential(sites=["South"])
        elif case == "revoked":
            from host.hub import technician

            serial = c.read_technician(cred.certificate, cred.hub_ed25519).serial
            listed = technician.revoke(k.hub, serial, now_ms=T0)
            cred = c.CredentialFile(cred.key, cred.certificate, cred.hub_ed25519, listed)
        elif case == "key-mismatch":  # a stolen certificate, another key
            cred = c.CredentialFile(Ed25519PrivateKey.generate(), cred.certificate,
                                    cred.hub_ed25519)
        config = tmp_path / "kiosk.toml"
        with pytest.raises(PeerRefused, match="refused the credential") as refused:
            TechClient(k.port, cred, timeout=TIMEOUT).connect()
        code = {"key-mismatch": "key-mismatch"}.get(case, case)
        assert f"({code})" in str(refused.value)
        assert not config.exists() and k.resets == [] and k.clock_set == []
        entries = [(e["what"], e["result"]) for e in audit.entries(k.store)]
        assert entries == [("tech.session", f"refused:{code}")]


def test_config_get_set_and_bad_values_refused_in_one_line(tmp_path: Path) -> None:
    config = tmp_path / "kiosk.toml"
    original = ('# the clinic\'s kiosk\n[kiosk]\ndata = "/var/lib/haven"\n'
                'hub = ["/dev/ttyUSB0"]\nlink_carrier = ["/dev/ttyUSB0"]\ninterval = 10.0\n')
    config.write_text(original)
    refusals = {}
    with tech_kiosk(tmp_path) as k:
        with TechClient(k.port, k.credential(), timeout=TIMEOUT) as t:
            got = t.call("config", {"op": "get", "key": "interval"})
            for key, value in (("interval", "-3"), ("interval", "soon"), ("intervall", "3"),
                               ("ui", "nowhere"), ("data", "/tmp"), ("hardware", "lasers"),
                               ("hub", "tcp://10.0.0.1:7400")):
                with pytest.raises(CommandRefused) as exc:
                    t.call("config", {"op": "set", "key": key, "value": value})
                refusals[key, value] = str(exc.value)
            assert config.read_text() == original and k.resets == []  # nothing changed
            live = t.call("config", {"op": "set", "key": "round_limit", "value": "30"})
            assert k.resets == []
            restart = t.call("config", {"op": "set", "key": "interval", "value": "25"})
        whats = [(e["what"], e["result"]) for e in audit.entries(k.store)]
        assert k.resets == [1]  # once the reply was acknowledged
    assert got["file"] == 10.0 and got["default"] == 10.0 and got["restart"] is True
    for text in refusals.values():
        assert "\n" not in text and text.startswith("config: refused by the kiosk (")
    assert "must be positive" in refusals["interval", "-3"]
    assert "did you mean 'interval'" in refusals["intervall", "3"]
    assert "(fixed-key)" in refusals["data", "/tmp"]
    assert "link_carrier" in refusals["hub", "tcp://10.0.0.1:7400"]  # across keys
    assert live["applied"] == "live" and restart["applied"] == "restarting the runtime"
    assert config.read_text() == original.replace("interval = 10.0", "interval = 25.0") \
        + "round_limit = 30.0\n"
    assert ("tech.config.set", "refused:bad-value") in whats
    assert whats[-1] == ("tech.config.set", "ok")


def test_time_restart_and_hardware_test(tmp_path: Path) -> None:
    with tech_kiosk(tmp_path) as k:
        notes: list[str] = []

        def note(text: str) -> None:
            notes.append(text)
            if text.startswith("press the service button"):
                threading.Thread(target=k.hardware.press, args=(0.05,), daemon=True).start()

        with TechClient(k.port, k.credential(), timeout=TIMEOUT, on_note=note) as t:
            read = t.call("time")
            moved = t.call("time", {"set": int(time.time() * 1000)})
            hw = t.call("hw", {"timeout": 5.0, "step": 0.0})
            assert k.resets == []
            t.call("restart")
        assert read["trusted"]["source"] == "sync" and read["trusted"]["exact"]
        # the kiosk's clock was a year behind; its trusted time (the hub's) beats the tool's
        assert moved["source"] == "sync" and k.clock_set == [moved["set_ms"] / 1000]
        assert abs(moved["set_ms"] - (T0 + 60_000)) < 60_000
        assert hw["button"] is True and hw["led"][0] == "synced" and hw["buzzer"]
        assert "press the service button (within 5 s)" in notes
        assert k.resets == [1]
        whats = [e["what"] for e in audit.entries(k.store)]
        assert whats == ["tech.auth", "tech.time", "tech.time.set", "tech.hw.test",
                         "tech.restart"]


def test_a_kiosk_without_trusted_time_takes_the_tools_clock_under_presence(
        tmp_path: Path) -> None:
    with tech_kiosk(tmp_path, trusted=False) as k:
        cred = k.credential()
        with pytest.raises(PeerRefused, match="presence-needed"):
            TechClient(k.port, cred, timeout=TIMEOUT).connect()
        pin = k.hardware.button.button.pin
        pin.drive_low()  # the service button held while the credential is presented
        try:
            time.sleep(0.3)
            with TechClient(k.port, cred, timeout=TIMEOUT) as t:
                assert t.welcome is not None and t.welcome.time == "presence"
                now = int(time.time() * 1000)
                moved = t.call("time", {"set": now})
        finally:
            pin.drive_high()
        assert moved["source"] == "tool" and k.clock_set == [now / 1000]
        results = [(e["who"], e["what"], e["result"]) for e in audit.entries(k.store)]
        assert results[0][1:] == ("tech.session", "refused:presence-needed")
        assert results[1][1:] == ("tech.auth", "ok:presence")


def test_pull_resumes_after_the_cable_is_pulled(tmp_path: Path) -> None:
    data = random.Random(7).randbytes(300_000)
    out = tmp_path / "out"
    with tech_kiosk(tmp_path) as k:
        (k.env.console.export_dir / "kiosk.log").write_bytes(data)
        cred = k.credential()
        client = TechClient(k.port, cred, timeout=TIMEOUT)

        class Cut(Progress):
            def update(self, label: str, done: int, total: int, *, force: bool = False
                       ) -> None:
                if done > 100_000 and client._link is not None:
                    client._link.close()  # the cable, pulled

        with pytest.raises(HavenError), client:
            client.pull("kiosk.log", out, Cut(enabled=False))
        assert not (out / "kiosk.log").exists()
        with TechClient(k.port, cred, timeout=TIMEOUT) as t:
            again = t.pull("kiosk.log", out)
            with pytest.raises(CommandRefused, match="bad-name"):
                t.pull("../kiosk.toml", out)
            with pytest.raises(CommandRefused, match="no-file"):
                t.pull("missing.log", out)
        results = [(e["what"], e["result"]) for e in audit.entries(k.store)]
    assert (out / "kiosk.log").read_bytes() == data
    assert again["size"] == len(data) and again["chunks_reused"] > 0
    assert again["chunks_moved"] + again["chunks_reused"] == again["chunks"]
    assert ("tech.pull", "refused:interrupted") in results
    assert results.count(("tech.pull", "ok")) == 1


def test_commands_beyond_the_certificates_actions_are_refused(tmp_path: Path) -> None:
    config = tmp_path / "kiosk.toml"
    config.write_text("interval = 10.0\n")
    with tech_kiosk(tmp_path) as k:
        with TechClient(k.port, k.credential(actions=["read"]), timeout=TIMEOUT) as t:
            t.call("status")
            refused = {}
            for name, args in (("restart", {}), ("hw", {"timeout": 1.0}),
                               ("config", {"op": "set", "key": "interval", "value": "5"}),
                               ("time", {"set": int(time.time() * 1000)})):
                with pytest.raises(CommandRefused) as exc:
                    t.call(name, args)
                refused[name] = exc.value.code
        results = [(e["what"], e["result"]) for e in audit.entries(k.store)]
        assert k.resets == [] and k.clock_set == []
    assert refused == {"restart": "not-allowed", "hw": "not-allowed",
                       "config": "not-allowed", "time": "not-allowed"}
    assert config.read_text() == "interval = 10.0\n"
    assert ("tech.restart", "refused:not-allowed") in results
    assert ("tech.config.set", "refused:not-allowed") in results


def test_the_tool_signs_nothing_for_a_device_that_is_not_a_kiosk_of_its_hub(
        tmp_path: Path) -> None:
    with tech_kiosk(tmp_path) as k:
        cred = k.credential()
        other = init_store(tmp_path / "other", "North", "B")  # the same hub's other kiosk
        try:
            enrol.install(other, k.hub.enroll(enrol.write_request(other).read_bytes(),
                                              now_ms=T0))
            theirs = (other.data / enrol.CERT).read_bytes()
        finally:
            other.close()
        errors = []
        for shown in (None, theirs, b"\x82\x40\x40"):
            k.env.kiosk_certificate = lambda shown=shown: shown  # type: ignore[misc]
            with pytest.raises(PeerRefused) as exc:
                TechClient(k.port, cred, timeout=TIMEOUT).connect()
            errors.append(str(exc.value))
        assert audit.entries(k.store) == []  # no hello ever reached the kiosk
    assert "shows no kiosk certificate" in errors[0]
    assert "not for this session's key" in errors[1]
    assert "is not a kiosk of this credential's hub" in errors[2]


def test_a_hub_signed_time_over_the_challenge_gives_a_fresh_kiosk_trusted_time(
        tmp_path: Path) -> None:
    from host.hub import technician

    with tech_kiosk(tmp_path, trusted=False) as k:
        cred = k.credential()
        old = technician.sign_time(k.hub, b"\x01" * 32, now_ms=T0)  # over another nonce
        with pytest.raises(PeerRefused, match="stale-time"):
            TechClient(k.port, cred, timeout=TIMEOUT, signed_time=lambda nonce: old).connect()
        assert k.techs.clock.now() is None  # the refusal changed nothing
        with TechClient(k.port, cred, timeout=TIMEOUT,
                        signed_time=lambda nonce: technician.sign_time(
                            k.hub, nonce, now_ms=T0 + 1000)) as t:
            assert t.welcome is not None and t.welcome.time == "signed time"
        now = k.techs.clock.now()
        assert now is not None and now.source == "signed" and now.ms >= T0 + 1000
