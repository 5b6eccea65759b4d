"""The hub's store and CLI: init, dump (same bytes as a kiosk's), status, review."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from device.store import init_store
from host.cli import main
from host.hub.hub import Hub
from protocol.crdt.delta import decode


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().out


def test_init_dump_status(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    hub_dir = str(tmp_path / "hub")
    assert run(capsys, "hub", "init", "--data", hub_dir)[0] == 0
    assert run(capsys, "hub", "init", "--data", hub_dir)[0] == 2  # keys never overwritten
    assert (tmp_path / "hub" / "fleet.key").stat().st_mode & 0o077 == 0
    code, out = run(capsys, "hub", "status", "--data", hub_dir, "--json")
    assert code == 0 and json.loads(out)["kiosks"] == []
    kiosk = init_store(tmp_path / "kiosk", "North", "A")
    kiosk.checkin(name="Ada", passport="P1234567", now_ms=1_700_000_000_000)
    kiosk.put("prescription", values={"medication": "x"}, now_ms=1_700_000_001_000)
    deltas = kiosk.deltas_since({})
    with Hub(Path(hub_dir)) as hub:
        good = [(decode(data), data) for data in deltas]
        hub.store.commit_batch("k", 1, b"h" * 32, good + good[:1], [], 0, [])
        assert hub.dump() == kiosk.dump()
        assert len(list(hub.store.all_ops())) == len(deltas)
    kiosk.close()
    code, out = run(capsys, "hub", "dump", "--data", hub_dir)
    assert code == 0 and json.loads(out)["records"]
    assert run(capsys, "review", "list", "--data", hub_dir)[1].startswith("0 conflicts")


def test_every_hub_command_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["hub", "init"], ["hub", "enroll"], ["hub", "revoke"], ["hub", "serve"],
                 ["hub", "dump"], ["hub", "status"], ["review", "list"], ["review", "resolve"]):
        with pytest.raises(SystemExit) as exit_:
            main([*argv, "--help"])
        assert exit_.value.code == 0
        assert "--data" in capsys.readouterr().out
