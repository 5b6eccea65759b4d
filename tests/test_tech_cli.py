"""``haven tech`` on the command line: results as text or JSON, the technician's own log,
and a technician's mistakes as one line with the exit codes of ``host.errors``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from host import tech_log
from host.cli import main
from protocol.sync import credential as c

from .console_helpers import Cable
from .tech_helpers import T0, tech_kiosk


def _write(path: Path, cred: c.CredentialFile) -> Path:
    path.write_bytes(c.dump_file(cred))
    return path


def test_status_and_pull_as_json_and_in_the_technicians_log(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "tech.log"
    monkeypatch.setenv(tech_log.ENV, str(log))
    with tech_kiosk(tmp_path) as k:
        cred = _write(tmp_path / "amina.cred", k.credential())
        (k.env.console.export_dir / "bundle.bin").write_bytes(b"x" * 5000)
        base = ["--credential", str(cred), "--timeout", "5"]
        assert main(["tech", "status", k.port, *base, "--json"]) == 0
        status = json.loads(capsys.readouterr().out)
        assert main(["tech", "status", k.port, *base]) == 0
        text = capsys.readouterr().out
        assert main(["tech", "pull", k.port, "bundle.bin", "--out", str(tmp_path / "o"),
                     *base]) == 0
        capsys.readouterr()
    assert status["version"] == "0.1.0" and status["sync"]["state"] == "synced"
    assert text.startswith("version 0.1.0, up ")
    assert (tmp_path / "o" / "bundle.bin").read_bytes() == b"x" * 5000
    entries = tech_log.read(log).entries
    assert [(e["action"], e["result"]) for e in entries] == [
        ("status", "ok"), ("status", "ok"), ("pull", "ok")]
    assert entries[0]["kiosk"] and entries[0]["serial"] >= 1
    assert entries[2]["detail"] == {"file": "bundle.bin", "size": 5000}


def test_a_technicians_mistakes_are_one_line(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(tech_log.ENV, str(tmp_path / "tech.log"))
    with tech_kiosk(tmp_path) as k:
        good = _write(tmp_path / "good.cred", k.credential())
        south = _write(tmp_path / "south.cred", k.credential(sites=["South"]))
        old = _write(tmp_path / "old.cred", k.credential(hours=1, now_ms=T0 - 7200_000))
        (tmp_path / "junk.cred").write_bytes(b"not a credential")
        quiet = Cable()  # nothing on its other end
        try:
            cases = {
                "wrong port": (["status", str(tmp_path / "ttyNONE"), "--credential",
                                str(good)], 2),
                "no kiosk": (["status", quiet.b, "--credential", str(good),
                              "--timeout", "0.5"], 3),
                "another site": (["status", k.port, "--credential", str(south)], 4),
                "expired": (["status", k.port, "--credential", str(old)], 4),
                "not a credential": (["status", k.port, "--credential",
                                      str(tmp_path / "junk.cred")], 2),
                "bad value": (["config", k.port, "set", "interval", "-1", "--credential",
                               str(good)], 1),
            }
            errors = {}
            for name, (argv, code) in cases.items():
                assert main(["tech", *argv[:1], *argv[1:], "--timeout",
                             argv[argv.index("--timeout") + 1] if "--timeout" in argv
                             else "5"]) == code, name
                err = capsys.readouterr().err
                errors[name] = err
        finally:
            quiet.close()
    for name, err in errors.items():
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in err, (name, err)
    assert "not for site 'North'" in errors["another site"]
    assert "expired" in errors["expired"]
    assert "no kiosk answers" in errors["no kiosk"]
    assert "must be positive" in errors["bad value"]
