"""The hub's database given wrong: a clear error at once, and nothing left behind; a
migration cut short by a crash resumed at the next start (both backends)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest

from host.cli import main
from host.hub import storage
from host.hub.hub import DATABASE_URL, Hub, init_hub
from tests.hub_db import hub_db


def refused(capsys: pytest.CaptureFixture[str], data: Path, url: str) -> str:
    assert main(["hub", "init", "--data", str(data), "--db", url]) == 2
    assert not data.exists()  # no keys, no folder: nothing to clean up
    return capsys.readouterr().err


def test_a_wrong_unreachable_or_read_only_database_is_refused_at_init(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], pg_database: str) -> None:
    data = tmp_path / "hub"
    host = pg_database.rsplit("/", 1)[0]
    assert "not valid" in refused(capsys, data, "postgresql://%zz@/x")
    assert "takes a postgresql:// URL" in refused(capsys, data, "mysql://x/y")
    said = refused(capsys, data, f"{host}/no_such_database")
    assert "cannot reach" in said and "no_such_database" in said
    name = pg_database.rsplit("/", 1)[1]
    with psycopg.connect(f"{host}/postgres", autocommit=True) as conn:
        conn.execute(f"ALTER DATABASE {name} SET default_transaction_read_only = on")
        assert "takes no writes" in refused(capsys, data, pg_database)
        conn.execute(f"ALTER DATABASE {name} RESET default_transaction_read_only")
    assert main(["hub", "init", "--data", str(data), "--db", pg_database]) == 0
    assert "holds a hub already" in refused(capsys, tmp_path / "second", pg_database)


def test_a_hub_whose_database_went_away_says_so(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], pg_database: str) -> None:
    data = tmp_path / "hub"
    init_hub(data, database=pg_database)
    (data / DATABASE_URL).write_text(pg_database.rsplit("/", 1)[0] + "/gone")
    assert main(["hub", "status", "--data", str(data)]) == 2
    assert "cannot reach the hub's database" in capsys.readouterr().err


@pytest.mark.usefixtures("hub_backend")
def test_a_migration_cut_short_is_resumed_at_the_next_start(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "hub"
    steps = storage.MIGRATIONS.steps
    step = steps[4]  # 5: the approvals

    def crash(db: Any) -> None:
        step(db)
        raise KeyboardInterrupt  # the power went mid-migration

    monkeypatch.setattr(storage.MIGRATIONS, "steps", [*steps[:4], crash, *steps[5:]])
    with pytest.raises(KeyboardInterrupt):
        init_hub(data)
    with hub_db(data) as db, pytest.raises(Exception, match="approvals"):
        db.execute("SELECT COUNT(*) FROM approvals")  # migration 5 rolled back whole
    monkeypatch.setattr(storage.MIGRATIONS, "steps", steps)
    with Hub(data) as hub:  # the next start migrates from 5 on
        assert hub.store.reserve_approvals("North", 1, 0, 1, iter(range(2, 9)))
        assert hub.dump() == b'{"records":[]}\n'
