"""Debug bundles: ``haven tech bundle`` over a kiosk's console (a pty cable), ``haven
bundle verify`` and ``haven report --json``; no patient value in any of them; a corrupt,
tampered, forged, replayed, other-hub or revoked kiosk's bundle refused in one line."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import zipfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from device.bundle.build import build
from device.tech.trusted_time import SYNC
from host import tech_log
from host.cli import main
from host.hub.hub import Hub, init_hub
from protocol import debug_bundle as fmt
from protocol.driver.secret_files import new_key_file
from protocol.sync import credential as c

from .bundle_helpers import fill, leaks
from .tech_helpers import T0, tech_kiosk


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def test_a_bundle_pulled_verified_and_reported_holds_no_patient_value(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(tech_log.ENV, str(tmp_path / "tech.log"))
    team = tmp_path / "team.key"
    new_key_file(team)
    with tech_kiosk(tmp_path) as k:
        k.env.extra["bundle"] = src = fill(k.store, tmp_path / "kiosk" / "logs")
        k.env.status = src.status  # what haven tech status shows, a patient's name in it
        k.techs.clock.note(SYNC, T0 + 3 * 3600_000)  # the hub's time, learnt at a sync
        cred = tmp_path / "amina.cred"
        cred.write_bytes(c.dump_file(k.credential()))
        base = [k.port, "--credential", str(cred), "--timeout", "5"]
        plain, hub_sealed, team_sealed = (tmp_path / n for n in ("b.zip", "h.sealed",
                                                                  "t.sealed"))
        assert main(["tech", "bundle", *base, "--out", str(plain)]) == 0
        assert main(["tech", "bundle", *base, "--out", str(hub_sealed), "--seal-to",
                     "hub"]) == 0
        assert main(["tech", "bundle", *base, "--out", str(team_sealed), "--seal-to",
                     str(team) + ".pub"]) == 0
        capsys.readouterr()
        assert main(["tech", "bundle", *base, "--out", str(tmp_path / "no" / "b.zip")]) == 2
        assert "no directory" in _one_line(capsys.readouterr().err)
        hub_dir = k.hub.data
    assert [e["action"] for e in tech_log.read(tmp_path / "tech.log").entries] == ["bundle"] * 3
    data = plain.read_bytes()
    assert leaks(data) == [] and leaks(hub_sealed.read_bytes()) == []
    assert not fmt.is_sealed(data) and fmt.is_sealed(hub_sealed.read_bytes())
    names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    assert not any(n.endswith((".db", ".key")) for n in names)

    assert main(["bundle", "verify", str(plain), "--credential", str(cred), "--json"]) == 0
    good = json.loads(capsys.readouterr().out)
    assert good["ok"] and good["logs"]["entries"] == 6 and not good["sealed"]
    assert main(["bundle", "verify", str(hub_sealed), "--hub", str(hub_dir)]) == 0
    assert "good: kiosk" in capsys.readouterr().out
    assert main(["bundle", "verify", str(team_sealed), "--credential", str(cred), "--key",
                 str(team)]) == 0
    capsys.readouterr()

    assert main(["report", str(hub_sealed), "--hub", str(hub_dir), "--json"]) == 0
    out = capsys.readouterr().out
    assert leaks(out.encode()) == []
    report = json.loads(out)
    assert report["summary"][0] == (
        "Last synced 1 hour ago (01 Jan 01:50 UTC): 6 rounds failed since (6 offline); the "
        "link has been failing since 01 Jan 02:00 UTC; the logs since say most often "
        "\u201ccheck-in refused for %s (passport %s, born %d)\u201d (haven.test-bundle, 1\u00d7, "
        "from 01 Jan 02:30 UTC).")
    assert "The kiosk's clock is 525780 minutes behind the hub's." in report["summary"]
    assert {e["ev"] for e in report["errors"]} >= {"hub unreachable", "rogue entry"}
    assert report["languages"] == {"en": 3, "other": 3}
    assert report["abandoned"] == {"s-year": 3, "other": 3}
    assert report["crashes"][0]["exc"] == "RuntimeError"
    assert main(["report", str(plain), "--html", str(tmp_path / "r.html")]) == 0
    assert leaks((tmp_path / "r.html").read_bytes()) == []
    redaction = fmt.read_bundle(data).section("redaction.json")
    assert {"logs.name", "logs.passport", "status.sync.detail"} <= set(redaction["dropped"])
    assert {f["field"] for f in redaction["log_fields"]} >= {"ev", "code", "tb"}


def test_bad_bundles_are_refused_in_one_line(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    from device import enrol
    from device.store import init_store

    init_hub(tmp_path / "hub")
    init_hub(tmp_path / "other")
    with Hub(tmp_path / "hub") as hub:
        store = init_store(tmp_path / "kiosk", "North", "A")
        try:
            enrol.install(store, hub.enroll(enrol.write_request(store).read_bytes(),
                                            now_ms=1_767_225_600_000))
            src = fill(store, tmp_path / "kiosk" / "logs", hours=1)
            good = tmp_path / "good.zip"
            with good.open("w+b") as f:
                build(f, src, nonce="ab" * 16)
            with (tmp_path / "hub.sealed").open("w+b") as f:
                build(f, src, nonce="ab" * 16, seal_to=hub.x_key.public_key().public_bytes_raw())
        finally:
            store.close()
        other_key = tmp_path / "other.key"
        new_key_file(other_key)
        data = good.read_bytes()
        members = {n: zipfile.ZipFile(io.BytesIO(data)).read(n)
                   for n in zipfile.ZipFile(io.BytesIO(data)).namelist()}
        cert = tmp_path / "kiosk.cert"
        cert.write_bytes(members[fmt.CERT])

        def rezip(name: str, changed: dict[str, bytes]) -> Path:
            out = io.BytesIO()
            with zipfile.ZipFile(out, "w") as zf:
                for n, body in {**members, **changed}.items():
                    zf.writestr(n, body)
            (tmp_path / name).write_bytes(out.getvalue())
            return tmp_path / name

        logs = members[fmt.LOGS].replace(b"hub unreachable", b"all is fine!!!!")
        index = json.loads(members[fmt.INDEX])
        index["members"][fmt.LOGS]["sha256"] = hashlib.sha256(logs).hexdigest()
        new_index = fmt.dumps(index)
        forged_sig = Ed25519PrivateKey.generate().sign(fmt.LABEL + new_index).hex().encode()
        (tmp_path / "cut.zip").write_bytes(data[: len(data) // 2])
        sealed = (tmp_path / "hub.sealed").read_bytes()
        hub_dir, other_dir = str(tmp_path / "hub"), str(tmp_path / "other")
        cases = {
            "corrupt": (["cut.zip", "--hub", hub_dir], "corrupt or truncated"),
            "tampered": ([rezip("t.zip", {fmt.LOGS: logs}).name, "--hub", hub_dir],
                         "logs.jsonl does not match its signed hash"),
            "forged": ([rezip("f.zip", {fmt.LOGS: logs, fmt.INDEX: new_index,
                                        fmt.SIGNATURE: forged_sig}).name, "--hub", hub_dir],
                       "bad signature"),
            "replayed": (["good.zip", "--hub", hub_dir, "--nonce", "cd" * 16], "replayed"),
            "other hub": (["good.zip", "--hub", other_dir], "of another hub"),
            "sealed, no key": (["hub.sealed", "--kiosk-cert", str(cert)], "give the key"),
            "sealed to another": (["hub.sealed", "--kiosk-cert", str(cert), "--key",
                                   str(other_key)], "sealed to another key"),
            "sealed corrupt": ([_write(tmp_path / "x.sealed", sealed[:-5] + b"12345"),
                                "--hub", hub_dir], "does not open"),
        }
    capsys.readouterr()  # what making the kiosk's content wrote
    for what, (argv, words) in cases.items():
        assert main(["bundle", "verify", str(tmp_path / argv[0]), *argv[1:]]) == 1, what
        line = _one_line(capsys.readouterr().err)
        assert "refused" in line and words in line, (what, line)
    # Any byte changed: refused, or (a ZIP header's date, say) the same signed members.
    original = fmt.read_bundle(data).members
    for at in range(0, len(data), max(1, len(data) // 200)):
        bad = bytearray(data)
        bad[at] ^= 0x5A
        with contextlib.suppress(fmt.BundleError):
            assert fmt.read_bundle(bytes(bad)).members == original, at
    assert main(["bundle", "verify", str(good)]) == 2  # nothing to check it against
    assert "--hub DIR" in _one_line(capsys.readouterr().err)
    assert main(["bundle", "verify", str(good), "--kiosk-cert", str(cert)]) == 0
    with Hub(tmp_path / "hub") as hub:
        hub.revoke(fmt.read_bundle(data).certificate.device_id)
    assert main(["bundle", "verify", str(good), "--hub", hub_dir]) == 1
    assert "is revoked" in _one_line(capsys.readouterr().err)


def _write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return path.name


def test_a_signed_bundle_of_values_no_kiosk_writes_is_refused_in_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Signed is not sound: a hostile (or broken) kiosk signs what it likes. Its strings
    where numbers go, lists where maps go, a time past any calendar and a manifest that is
    not an object: one line from verify and report, never a traceback."""
    from device import enrol
    from device.store import init_store

    init_hub(tmp_path / "hub")
    with Hub(tmp_path / "hub") as hub:
        store = init_store(tmp_path / "kiosk", "North", "A")
        enrol.install(store, hub.enroll(enrol.write_request(store).read_bytes(),
                                        now_ms=1_767_225_600_000))
        store.close()
    ident = enrol.load(tmp_path / "kiosk")
    good = {"format": 1, "kiosk": ident.cert.device_id, "made_ms": 1_767_225_600_000}

    def signed(name: str, manifest: object, sections: dict[str, object]) -> str:
        with (tmp_path / name).open("wb") as f:
            w = fmt.BundleWriter(f)
            for member, value in sections.items():
                w.add(member, fmt.dumps(value))
            w.add(fmt.MANIFEST, manifest if isinstance(manifest, bytes) else fmt.dumps(manifest))
            w.finish(ident.ed_key, ident.cert.raw)
        return str(tmp_path / name)

    hostile = {
        "strings": signed("s.zip", good, {"metrics.json": {"hours": [
            {"start_ms": "x", "health": [{"t_ms": 5, "disk_free_mib": "full"}]}]}}),
        "lists": signed("l.zip", {**good, "logs": [1]}, {"status.json": [3],
                                                         "audit.json": {"gaps": 5}}),
        "far": signed("f.zip", good, {"metrics.json": {"rounds": [
            {"t_ms": 10**30, "outcome": "synced"}]}}),
    }
    capsys.readouterr()
    for what, path in hostile.items():
        for how in (["--json"], ["--html", str(tmp_path / "r.html")]):
            assert main(["report", path, *how]) == 1, what
            assert "values no kiosk writes" in _one_line(capsys.readouterr().err), what
    assert main(["bundle", "verify", hostile["lists"], "--hub", str(tmp_path / "hub")]) == 0
    assert "log entries None" in capsys.readouterr().out
    deep = b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}"  # past the parser's depth
    for manifest in (fmt.dumps([["kiosk", "x"]]), deep):
        path = signed("m.zip", manifest, {})
        assert main(["bundle", "verify", path, "--hub", str(tmp_path / "hub")]) == 1
        assert "manifest is not a JSON object" in _one_line(capsys.readouterr().err)


def test_a_command_that_fails_on_the_kiosk_sends_no_exception_message(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An exception's message may quote a patient's value: the technician's tool (its
    stderr and its log on the laptop) gets the command and the exception's type only."""
    from device.bundle.build import Sources

    from .bundle_helpers import NAME, PASSPORT

    monkeypatch.setenv(tech_log.ENV, str(tmp_path / "tech.log"))

    def store() -> None:
        raise ValueError(f"bad claim {NAME} {PASSPORT}")

    with tech_kiosk(tmp_path) as k:
        k.env.extra["bundle"] = Sources(data=k.store.data, store=store)
        cred = tmp_path / "amina.cred"
        cred.write_bytes(c.dump_file(k.credential()))
        capsys.readouterr()
        assert main(["tech", "bundle", k.port, "--credential", str(cred), "--timeout", "5",
                     "--out", str(tmp_path / "b.zip")]) != 0
    err = capsys.readouterr().err
    assert "bundle failed on the kiosk" in err and "ValueError" in err
    assert leaks(err.encode()) == [] and leaks((tmp_path / "tech.log").read_bytes()) == []
