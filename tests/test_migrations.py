"""Every database a released version made upgrades with nothing lost; a newer one is refused.

The fixtures (``tests/fixtures/release-*``) were made by that release's own
code (``tests/fixtures/make_fixtures.py``): a kiosk (``store.db``,
``sync.db``, ``documents.db``) and a hub (``hub.db``, the documents'
transfer index). Each test works on a copy.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlite_utils

from device import enrol
from device.store import Store, init_store
from device.store.keys import FieldCipher, KeyFile
from device.store.tables import MIGRATIONS as STORE_MIGRATIONS
from device.sync.document_store import MIGRATIONS as DOCUMENT_MIGRATIONS
from device.sync.document_store import DocumentStore
from device.sync.state import MIGRATIONS as SYNC_MIGRATIONS
from device.sync.state import SyncState
from host.hub.hub import Hub
from host.hub.storage import MIGRATIONS as HUB_MIGRATIONS
from host.hub.storage import HubStore
from host.transfer_store import MIGRATIONS as INDEX_MIGRATIONS
from host.transfer_store import DirStore
from protocol.driver.database import DatabaseTooNew, Migrations, open_database
from protocol.driver.errors import DriverError
from protocol.sync import batches as sync
from protocol.sync import certificate as sync_cert

FIXTURES = Path(__file__).parent / "fixtures"
RELEASES = sorted(p for p in FIXTURES.glob("release-*") if (p / "expected.json").exists())
INDEX = Path("hub") / "documents" / ".haven" / "index.db"

#: Each database: its path in a release's copy, its migrations, how the code opens it.
DATABASES: dict[str, tuple[Path, Migrations, Callable[[Path], Any]]] = {
    "store.db": (Path("kiosk/store.db"), STORE_MIGRATIONS, lambda root: Store(root / "kiosk")),
    "sync.db": (Path("kiosk/sync.db"), SYNC_MIGRATIONS, lambda root: SyncState(root / "kiosk")),
    "documents.db": (Path("kiosk/documents.db"), DOCUMENT_MIGRATIONS,
                     lambda root: DocumentStore(root / "kiosk", cipher_of(root))),
    "hub.db": (Path("hub/hub.db"), HUB_MIGRATIONS,
               lambda root: HubStore(root / "hub" / "hub.db")),
    "index.db": (INDEX, INDEX_MIGRATIONS, lambda root: DirStore(root / "hub" / "documents")),
}


def cipher_of(root: Path) -> FieldCipher:
    return FieldCipher(KeyFile(root / "kiosk" / "store.key").key())


@pytest.fixture(params=RELEASES, ids=[p.name for p in RELEASES])
def release(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Path, Any]]:
    root = tmp_path / "copy"
    shutil.copytree(request.param, root)
    for path in [root, *root.rglob("*")]:  # git keeps no modes: keys must be owner-only
        path.chmod(0o700 if path.is_dir() else 0o600)
    yield root, json.loads((root / "expected.json").read_text())


def user_version(path: Path) -> int:
    conn = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True)  # no -shm beside it
    try:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])
    finally:
        conn.close()


def test_fixtures_exist_and_are_from_before_the_numbered_migrations() -> None:
    assert RELEASES, "no fixture databases"
    for release in RELEASES:
        for rel, _, _ in DATABASES.values():
            if release.name == "release-c3497bc":
                assert user_version(release / rel) == 0, rel  # versions came after it
            else:  # a later release: numbered, and behind this one's latest
                assert user_version(release / rel) >= 1, (release.name, rel)


def test_the_kiosk_upgrades_with_nothing_lost(release: tuple[Path, Any]) -> None:
    root, expected = release
    want = expected["kiosk"]
    with Store(root / "kiosk") as store:
        assert store.node == want["node"]
        assert hashlib.sha256(store.dump()).hexdigest() == want["dump_sha256"]
        assert len(store.views()) == want["records"]
        outbox = [{"seq": e.seq, "lane": e.lane, "data": e.data.hex()}
                  for e in store.outbox_batch(now_ms=1 << 60, max_bytes=1 << 30)]
        assert outbox == want["outbox"]
        assert store.reader.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        tables = {r[0] for r in store.reader.execute("SELECT name FROM sqlite_schema")}
        assert "_migrations" not in tables  # its names became the file's version

        state = SyncState(store.data)
        try:
            assert list(state.head()) == [want["chain_head"][0],
                                          bytes.fromhex(want["chain_head"][1])]
            assert state.acked_head() == want["acked_head"]
            assert state.cursor == want["cursor"]
        finally:
            state.close()

        docs = DocumentStore(store.data, store.cipher)
        try:
            doc = want["document"]
            rid = bytes.fromhex(doc["record_id"].replace("-", ""))
            manifest = docs.manifest(rid)
            assert (manifest.size, manifest.count) == (doc["size"], doc["chunks"])
            read = docs.reader(manifest)
            content, offset = b"", 0
            for _, length in manifest.entries():
                content += read(offset, length)
                offset += length
            assert hashlib.sha256(content).hexdigest() == doc["sha256"]
            assert docs.summary() == want["document_state"]
        finally:
            docs.close()
        record = store.view(doc["record_id"])
        assert record is not None and not record.deleted
        # and the store goes on: a new check-in joins the outbox behind the old entries
        store.checkin(name="After Upgrade", passport="UP000001")
        assert len(store.outbox_batch(now_ms=1 << 60, max_bytes=1 << 30)) == len(outbox) + 2
    for name in ("store.db", "sync.db", "documents.db"):
        rel, migrations, _ = DATABASES[name]
        assert user_version(root / rel) == migrations.latest > 0, name


def test_the_hub_upgrades_with_nothing_lost(release: tuple[Path, Any]) -> None:
    root, expected = release
    want = expected["hub"]
    hub = Hub(root / "hub")
    try:
        devices = [[d.device_id, d.node, d.site, d.letter, d.state, d.last_seq,
                    d.last_hash.hex()] for d in hub.store.devices()]
        assert devices == want["devices"]
        for device_id, seq, digest in want["batches"]:
            assert hub.store.batch_hash(device_id, seq) == bytes.fromhex(digest)
        ops = sorted([op.rid.hex(), op.stamp, op.node, op.data.hex()]
                     for op in hub.store.all_ops())
        assert ops == sorted(want["ops"]) and hub.store.count() == len(want["ops"])
        # Migration 2 (clones): every kiosk kept, none flagged, no label given, nothing
        # held; the new table takes a held batch beside the old rows.
        assert [(d.suspected_clone, d.clone_labels, d.clone_mark)
                for d in hub.store.devices()] == [(0, 0, 0)] * len(want["devices"])
        assert hub.status()["held_batches"] == []
        device_id, seq, digest = want["batches"][-1]
        held = sync.Batch(seq, bytes.fromhex(digest), sync.pack([]), b"\x00" * 64)
        assert hub.store.hold_batch(device_id, held, 1) == (1, True, True)
        assert hub.store.is_held(device_id, held.hash)
        assert hub.store.batch_hash(device_id, seq) == bytes.fromhex(digest)
        # Migration 3 (kiosk numbers): the kiosks enrolled before are numbered 1, 2... in
        # the order they enrolled, each once; the next enrolment takes the next number.
        numbers = {d.device_id: d.kiosk_number for d in hub.store.devices()}
        kiosk = init_store(root / "new-kiosk", "North", "Z")
        cert = hub.enroll(enrol.write_request(kiosk).read_bytes())
        kiosk.close()
        assert sync_cert.read_certificate(cert).kiosk_number == len(numbers) + 1
    finally:
        hub.close()
    document = root / "hub" / want["document_file"]
    assert hashlib.sha256(document.read_bytes()).hexdigest() == want["document_sha256"]
    index = DirStore(root / "hub" / "documents")
    try:
        files = [[r[0], r[1].hex(), r[2]] for r in index.db.execute(
            "SELECT name, object, size FROM files")]
        assert files == want["index_files"]
        for digest, path, offset, length in want["index_chunks"]:
            assert path == want["document_file"].split("/", 1)[1]
            chunk = index.get(bytes.fromhex(digest))  # read back and checked by its hash
            assert chunk == document.read_bytes()[offset:offset + length]
    finally:
        index.close()
    for name in ("hub.db", "index.db"):
        rel, migrations, _ = DATABASES[name]
        assert user_version(root / rel) == migrations.latest > 0, name
    conn = sqlite3.connect(root / "hub" / "hub.db")
    try:
        enrolled = [r[0] for r in conn.execute(
            "SELECT device_id FROM devices ORDER BY enrolled_at, device_id")]
        assert [numbers[d] for d in enrolled[:len(numbers)]] == list(range(1, len(numbers) + 1))
        with pytest.raises(sqlite3.IntegrityError):  # never two kiosks under one number
            conn.execute("UPDATE devices SET kiosk_number = 1")
    finally:
        conn.close()


def test_an_upgraded_database_opens_again_without_a_write(release: tuple[Path, Any]) -> None:
    root, _ = release
    for name, (rel, migrations, _) in DATABASES.items():
        open_database(root / rel, migrations).close()
        before = (root / rel).read_bytes()
        db = open_database(root / rel, migrations)
        try:
            wal = root / rel.parent / f"{rel.name}-wal"
            assert not wal.exists() or wal.stat().st_size == 0, name
        finally:
            db.close()
        assert (root / rel).read_bytes() == before, name


@pytest.mark.parametrize("name", list(DATABASES))
def test_a_database_from_a_newer_release_is_refused_and_left_as_it_was(
        release: tuple[Path, Any], name: str) -> None:
    root, _ = release
    rel, migrations, opener = DATABASES[name]
    path = root / rel
    newer = sqlite3.connect(path, isolation_level=None)
    # A newer release may journal differently too: opening must not turn this file to WAL.
    newer.execute("PRAGMA journal_mode = DELETE")
    newer.execute(f"PRAGMA user_version = {migrations.latest + 1}")
    newer.close()
    before = path.read_bytes()
    with pytest.raises(DatabaseTooNew) as refused:
        opener(root)
    assert isinstance(refused.value, DriverError) and isinstance(refused.value, RuntimeError)
    assert "newer release" in str(refused.value) and str(migrations.latest + 1) in str(
        refused.value)
    assert path.read_bytes() == before
    assert user_version(path) == migrations.latest + 1


def test_migrations_are_numbered_in_order_and_each_is_all_or_nothing(tmp_path: Path) -> None:
    steps = Migrations("test.db")

    @steps(1)
    def m001(db: sqlite_utils.Database) -> None:
        db.execute("CREATE TABLE t (x INTEGER)")

    with pytest.raises(ValueError):
        steps(3)(m001)

    @steps(2)
    def m002(db: sqlite_utils.Database) -> None:
        db.execute("INSERT INTO t VALUES (1)")
        raise OSError("power cut")

    with pytest.raises(OSError):
        open_database(tmp_path / "test.db", steps)
    db = open_database(tmp_path / "test.db")
    try:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 1
        assert db.execute("SELECT COUNT(*) FROM t").fetchone()[0] == 0
    finally:
        db.close()
    steps.steps[1] = lambda db: db.execute("INSERT INTO t VALUES (2)") and None
    db = open_database(tmp_path / "test.db", steps)
    try:
        assert db.execute("SELECT x FROM t").fetchall() == [(2,)]
        assert steps.apply(db) == []  # already there: nothing to do
    finally:
        db.close()
    assert user_version(tmp_path / "test.db") == 2


def test_the_clis_refuse_a_newer_database_with_a_message(
        release: tuple[Path, Any], capsys: pytest.CaptureFixture[str]) -> None:
    from device.cli import main as kiosk_main
    from host.cli import main as haven_main

    root, _ = release
    for rel in (Path("kiosk/store.db"), Path("hub/hub.db")):
        newer = sqlite3.connect(root / rel, isolation_level=None)
        newer.execute("PRAGMA user_version = 999")
        newer.close()
    capsys.readouterr()
    assert kiosk_main(["status", "--data", str(root / "kiosk")]) == 1
    assert haven_main(["hub", "status", "--data", str(root / "hub")]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all("version 999, made by a newer release" in e for e in err), err


def test_two_processes_opening_a_new_database_at_once_migrate_it_once(tmp_path: Path) -> None:
    """Each migration re-reads the version under the write lock (``BEGIN IMMEDIATE``)."""
    import threading

    steps = Migrations("race.db")
    steps.sql(1, "CREATE TABLE t (x INTEGER)")  # no IF NOT EXISTS: a second run would fail
    steps.sql(2, "INSERT INTO t VALUES (1)")
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def open_one() -> None:
        try:
            start.wait(10)
            open_database(tmp_path / "race.db", steps).close()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    db = open_database(tmp_path / "race.db")
    try:
        assert db.execute("SELECT COUNT(*) FROM t").fetchone()[0] == 1
    finally:
        db.close()
    assert user_version(tmp_path / "race.db") == 2


def test_hub_migration_9_fills_the_current_records_from_the_deltas(tmp_path: Path) -> None:
    """A hub at migration 8 (``fixtures/hub-307eacd``, ``make_hub_fixture.py``: held and
    field conflicts, deletes, an erased patient, a type from a newer schema) opens with
    its current records filled, each value sealed, and ``dump`` (read from them) is what
    that release printed by replaying every delta."""
    from protocol.crdt.delta import decode
    from protocol.crdt.record import RecordLog, canonical_json

    root = tmp_path / "hub"
    shutil.copytree(FIXTURES / "hub-307eacd", root)
    for path in [root, *root.rglob("*")]:
        path.chmod(0o700 if path.is_dir() else 0o600)
    want = json.loads((root / "expected.json").read_text())
    assert user_version(root / "hub.db") == 8
    with Hub(root) as hub:
        assert hub.dump().decode() == want["dump"]
        logs: dict[bytes, RecordLog] = {}
        for op in hub.store.all_ops():
            logs.setdefault(op.rid, RecordLog(op.rid)).add(decode(op.data))
        assert hub.views() == sorted((log.view() for log in logs.values()),
                                     key=lambda v: v.record_id)
        assert canonical_json(hub.views()) == hub.dump()
        assert len(hub.views()) == want["records"]
        assert sorted(c["severity"] for c in hub.conflicts()) == ["hold", "info"]
        values = hub.store._q("SELECT value FROM record_fields")
        assert values and all(bytes(v)[0] == hub.store.sealer.current for (v,) in values)
    assert user_version(root / "hub.db") == HUB_MIGRATIONS.latest >= 9
