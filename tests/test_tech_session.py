"""``haven tech`` over an authenticated Haven session on the console, through a pty cable:
the technician's key is the session's, the certificate is checked with trusted time, and
refusals change nothing and are audited."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from device import audit
from host.errors import PeerRefused
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
