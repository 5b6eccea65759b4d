"""Technician credentials: protocol/vectors/credential.json, the hub's issue, revoke and
list (hub.db migration 4, from a released database too), and what a kiosk accepts."""

from __future__ import annotations

import json
import shutil
import stat
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from host import cli
from host.hub import technician
from host.hub.hub import Hub, init_hub
from host.hub.storage import MIGRATIONS as HUB_MIGRATIONS
from protocol.errors import LocalProtocolError
from protocol.sync import credential as c

ROOT = Path(__file__).resolve().parents[1]
VECTORS = json.loads((ROOT / "protocol/vectors/credential.json").read_text())
HUB = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(VECTORS["hub_seed"]))
HUB_PUB = HUB.public_key().public_bytes_raw()
TECH = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(VECTORS["technician_seed"]))
DAY = 24 * c.HOUR_MS


# The vectors ---------------------------------------------------------------------------

def test_the_certificate_is_the_vectors_byte_for_byte_and_reads_back() -> None:
    v = VECTORS["certificate"]
    doc = c.issue(HUB, name=v["name"], serial=v["serial"],
                  technician_ed25519=bytes.fromhex(v["technician_ed25519"]),
                  not_before=v["not_before"], expires=v["expires"], sites=v["sites"],
                  kiosks=v["kiosks"], actions=v["actions"])
    assert doc.hex() == v["bytes"]
    tech = c.read_technician(doc, HUB_PUB)
    assert (tech.name, tech.serial, list(tech.sites), list(tech.kiosks), list(tech.actions),
            tech.not_before, tech.expires, tech.ed25519.hex()) == (
        v["name"], v["serial"], v["sites"], v["kiosks"], v["actions"], v["not_before"],
        v["expires"], v["technician_ed25519"])


@pytest.mark.parametrize("case", VECTORS["checks"])
def test_checks_against_time_scope_and_revocation(case: dict[str, Any]) -> None:
    tech = c.read_technician(bytes.fromhex(VECTORS["certificate"]["bytes"]), HUB_PUB)
    args = dict(now=case["now"], site=case["site"], device_id=case["device"],
                revoked=frozenset(case["revoked"]), lower_bound=case["lower_bound"],
                action=case["action"])
    if case["code"] is None:
        c.check(tech, **args)
    else:
        with pytest.raises(c.CredentialError) as refused:
            c.check(tech, **args)
        assert refused.value.code == case["code"]


def test_auth_time_and_revocation_vectors() -> None:
    a = VECTORS["auth"]
    nonce, binding = bytes.fromhex(a["nonce"]), bytes.fromhex(a["binding"])
    assert c.auth_message(nonce, a["device"], binding).hex() == a["message"]
    assert c.sign_auth(TECH, nonce, a["device"], binding).hex() == a["signature"]
    tech = c.read_technician(bytes.fromhex(VECTORS["certificate"]["bytes"]), HUB_PUB)
    c.verify_auth(tech, bytes.fromhex(a["signature"]), nonce, a["device"], binding)
    for other in [(nonce, "00000012", binding), (nonce, a["device"], b"another port"),
                  (bytes(32), a["device"], binding)]:
        with pytest.raises(c.CredentialError) as refused:
            c.verify_auth(tech, bytes.fromhex(a["signature"]), *other)
        assert refused.value.code == "bad-proof"

    t = VECTORS["time"]
    assert c.sign_time(HUB, bytes.fromhex(t["nonce"]), t["time"]).hex() == t["bytes"]
    assert c.read_time(bytes.fromhex(t["bytes"]), HUB_PUB, bytes.fromhex(t["nonce"])) == t["time"]
    with pytest.raises(c.CredentialError) as refused:
        c.read_time(bytes.fromhex(t["bytes"]), HUB_PUB, bytes.fromhex(t["other_nonce"]))
    assert refused.value.code == t["other_code"]

    r = VECTORS["revocations"]
    assert c.sign_revocations(HUB, r["number"], r["issued"], r["serials"]).hex() == r["bytes"]
    got = c.read_revocations(bytes.fromhex(r["bytes"]), HUB_PUB)
    assert (got.number, got.issued, sorted(got.serials)) == (r["number"], r["issued"],
                                                              r["serials"])


@pytest.mark.parametrize("case", VECTORS["bad"], ids=[b["what"] for b in VECTORS["bad"]])
def test_bad_documents_are_refused_with_their_code(case: dict[str, Any]) -> None:
    doc = bytes.fromhex(case["bytes"])
    with pytest.raises(c.CredentialError) as refused:
        if case["reader"] == "technician":
            c.read_technician(doc, HUB_PUB)
        elif case["reader"] == "revocations":
            c.read_revocations(doc, HUB_PUB)
        else:
            c.read_time(doc, HUB_PUB, bytes(32))
    assert refused.value.code == case["code"]


def test_the_hub_never_signs_more_than_seven_days_or_an_empty_scope() -> None:
    pub = TECH.public_key().public_bytes_raw()
    c.issue(HUB, name="T", serial=1, technician_ed25519=pub, not_before=0,
            expires=c.MAX_VALIDITY_MS, sites=["North"])
    for extra in [dict(expires=c.MAX_VALIDITY_MS + 1, sites=["North"]),
                  dict(expires=DAY, sites=[]), dict(expires=DAY, sites=["N"], actions=["root"])]:
        with pytest.raises(LocalProtocolError):
            c.issue(HUB, name="T", serial=1, technician_ed25519=pub, not_before=0,
                    **extra)  # type: ignore[arg-type]


# The hub ---------------------------------------------------------------------------------

def run(argv: list[str]) -> int:
    return cli.main(argv)


def test_issue_revoke_and_list_from_the_command_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "hub"
    init_hub(data)
    out = tmp_path / "amina.cred"
    assert run(["hub", "technician", "issue", "--data", str(data), "--name", "Amina",
                "--sites", "North,South", "--out", str(out)]) == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    with Hub(data) as hub:
        cred = c.load_file(out.read_bytes())
        assert cred.hub_ed25519 == hub.ed_public
        tech = c.read_technician(cred.certificate, hub.ed_public)
        assert tech.sites == ("North", "South") and tech.expires - tech.not_before == DAY
        assert cred.revocations is not None
        assert c.read_revocations(cred.revocations, hub.ed_public).serials == frozenset()

    capsys.readouterr()
    assert run(["hub", "technician", "issue", "--data", str(data), "--name", "Amina",
                "--sites", "North", "--hours", "169", "--out", str(tmp_path / "x")]) != 0
    assert "168" in capsys.readouterr().err and not (tmp_path / "x").exists()
    assert run(["hub", "technician", "issue", "--data", str(data), "--name", "Amina",
                "--sites", "North", "--out", str(out)]) != 0  # never overwritten
    assert run(["hub", "technician", "revoke", "--data", str(data), str(tech.serial)]) == 0
    assert run(["hub", "technician", "revoke", "--data", str(data), "99"]) != 0
    capsys.readouterr()
    assert run(["hub", "technician", "list", "--data", str(data), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["serial"], r["name"], r["sites"], r["revoked_at"] is not None)
            for r in rows] == [(tech.serial, "Amina", ["North", "South"], True)]
    nonce = bytes(range(32))
    assert run(["hub", "technician", "time", "--data", str(data), nonce.hex(),
                "--out", str(tmp_path / "time")]) == 0
    assert run(["hub", "technician", "time", "--data", str(data), "beef",
                "--out", str(tmp_path / "short")]) != 0  # a nonce of 2 bytes
    assert run(["hub", "technician", "issue", "--data", str(data), "--name", "Nobody",
                "--out", str(tmp_path / "nowhere")]) != 0  # no site, no kiosk
    assert "--sites" in capsys.readouterr().err
    with Hub(data) as hub:
        assert c.read_time((tmp_path / "time").read_bytes(), hub.ed_public, nonce) > 0
        listed = c.read_revocations(technician.revocations(hub), hub.ed_public)
        assert listed.serials == {tech.serial} and listed.number == 2
        # a second credential carries the newer list
        _, doc = technician.issue(hub, name="Baraka", kiosks=["0000002a"], hours=168)
        assert c.load_file(doc).revocations == listed.raw


def test_a_released_hub_database_upgrades_and_takes_technicians(tmp_path: Path) -> None:
    release = sorted((ROOT / "tests/fixtures").glob("release-*"))[0]
    root = tmp_path / "copy"
    shutil.copytree(release / "hub", root, ignore=shutil.ignore_patterns("documents"))
    for path in [root, *root.rglob("*")]:  # git keeps no modes: keys must be owner-only
        path.chmod(0o700 if path.is_dir() else 0o600)
    with Hub(root) as hub:
        assert hub.store.technicians() == []
        devices = len(hub.store.devices())
        serial, _ = technician.issue(hub, name="Amina", sites=["North"], now_ms=1000)
        assert technician.revoke(hub, serial, now_ms=2000)
        assert hub.store.revoked_technicians() == [serial] and len(hub.store.devices()) == devices
        version = hub.store._q("PRAGMA user_version")[0][0]
    assert version == HUB_MIGRATIONS.latest >= 4
