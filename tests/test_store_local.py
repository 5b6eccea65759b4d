"""The store on its own: transactions, the writer's priorities, keys, at rest, outbox."""

from __future__ import annotations

import os
import random
import sqlite3
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from device.store import (
    BadRequest,
    CorruptData,
    KeyFileMissing,
    KeyFilePermissions,
    KeyMismatch,
    NotInitialised,
    Store,
    init_store,
)
from device.store.outbox import MAX_DELAY_MS, backoff_ms
from protocol.crdt.replica import Replica

T0 = 1_790_000_000_000
DAY = 86_400_000


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return tmp_path / "kiosk"


@pytest.fixture
def store(data: Path) -> Iterator[Store]:
    s = init_store(data, "Test Site", "B")
    yield s
    s.close()


def trace(store: Store) -> list[str]:
    statements: list[str] = []
    store.writer.call(lambda db: db.conn.set_trace_callback(statements.append))
    return statements


def test_checkin_is_one_immediate_transaction(store: Store) -> None:
    statements = trace(store)
    result = store.checkin(name="Ada", passport="AB123456", birth_year=1815, now_ms=T0)
    verbs = [s.split()[0].upper() for s in statements if s.strip()]
    assert verbs.count("BEGIN") == 1 and verbs.count("COMMIT") == 1
    assert "BEGIN IMMEDIATE" in statements
    assert result.queue_number == "B-001"
    lanes = store.status(now_ms=T0)["outbox"]["lanes"]
    assert lanes == {"2": {"entries": 2, "bytes": lanes["2"]["bytes"], "waiting_retry": 0}}


def test_queue_numbers_per_day(store: Store) -> None:
    numbers = [store.checkin(name=f"P{i}", now_ms=T0 + i).queue_number for i in range(3)]
    assert numbers == ["B-001", "B-002", "B-003"]
    assert store.checkin(name="Next", now_ms=T0 + DAY).queue_number == "B-001"


def test_same_passport_same_patient_across_kiosks(tmp_path: Path) -> None:
    key = tmp_path / "fleet.key"
    key.write_bytes(os.urandom(32))
    with init_store(tmp_path / "a", "A", "A", key) as a, init_store(tmp_path / "b", "B", "B",
                                                                    key) as b:
        ra = a.checkin(name="Ada", passport="ab 123456", now_ms=T0)
        rb = b.checkin(name="Ada", passport="AB123456", now_ms=T0 + 5)
        assert ra.patient_id == rb.patient_id
        a.merge([e.data for e in b.outbox_batch(now_ms=T0 + 9)], now_ms=T0 + 9)
        b.merge([e.data for e in a.outbox_batch(now_ms=T0 + 9)], now_ms=T0 + 9)
        assert a.dump() == b.dump()
        assert sum(v.type == 1 for v in a.views()) == 1


def test_a_different_fleet_key_is_refused_once_patients_exist(tmp_path: Path) -> None:
    k1, k2 = tmp_path / "k1", tmp_path / "k2"
    k1.write_bytes(os.urandom(32))
    k2.write_bytes(os.urandom(32))
    init_store(tmp_path / "d", "S", "A", k2).close()
    init_store(tmp_path / "d", "S", "A", k1).close()  # no patients yet: accepted
    with Store(tmp_path / "d") as s:
        s.checkin(name="Ada", passport="AB123456", now_ms=T0)
    with pytest.raises(KeyMismatch):
        init_store(tmp_path / "d", "S", "A", k2)
    init_store(tmp_path / "d", "Renamed", "C", k1).close()


def test_reopen_keeps_state_and_clock(data: Path) -> None:
    with init_store(data, "S", "A") as s:
        rid = s.put("note", values={"text": "hello"}, now_ms=T0 + 1000)
        before = s.dump()
    with Store(data) as s:
        assert s.dump() == before
        s.put("note", rid, {"text": "later"}, now_ms=T0)  # the wall clock went back
        view = s.view(rid)
        assert view is not None and view.fields[2] == "later"


def test_the_clock_survives_reopening_with_an_empty_outbox(data: Path) -> None:
    """Local writes save no clock row: the outbox and the acks carry it."""
    with init_store(data, "S", "A") as s:
        for i in range(3):
            s.checkin(name=f"P{i}", now_ms=T0 + 5000)
        last = s.hlc.last
    with Store(data) as s:
        assert s.hlc.last == last  # from the outbox
        s.outbox_ack(e.seq for e in s.outbox_batch(now_ms=T0))
        assert s.outbox_batch(now_ms=T0) == []
    with Store(data) as s:
        assert s.hlc.last == last  # saved by the ack
        remote = Replica(77).put(uuid.uuid4().bytes, "note", T0 + 9000, {"text": "x"})
        s.merge([remote], now_ms=T0 + 9000)
        observed = s.hlc.last
        assert observed > last
    with Store(data) as s:
        assert s.hlc.last == observed  # saved by the merge
        rid = s.put("note", values={"text": "y"}, now_ms=T0)
        assert s.view(rid) is not None and s.hlc.last > observed


def test_missing_store_and_keys(tmp_path: Path, data: Path) -> None:
    with pytest.raises(NotInitialised):
        Store(tmp_path / "nothing")
    init_store(data, "S", "A").close()
    (data / "store.key").chmod(0o644)
    with pytest.raises(KeyFilePermissions, match="chmod 600"):
        Store(data)
    (data / "store.key").unlink()
    with pytest.raises(KeyFileMissing):
        Store(data)


def test_corrupted_or_moved_ciphertext_is_refused(store: Store, data: Path) -> None:
    rid = store.put("patient", values={"name": "Ada", "telecom": "555"}, now_ms=T0)
    raw = uuid.UUID(rid).bytes
    conn = sqlite3.connect(data / "store.db")
    rows = conn.execute("SELECT field, sealed FROM field_values WHERE rid = ? ORDER BY field",
                        [raw]).fetchall()
    conn.execute("UPDATE field_values SET sealed = ? WHERE rid = ? AND field = ?",
                 [rows[1][1], raw, rows[0][0]])  # telecom's ciphertext moved into name
    conn.commit()
    with pytest.raises(CorruptData):
        store.dump()
    flipped = bytearray(rows[0][1])
    flipped[-1] ^= 1
    conn.execute("UPDATE field_values SET sealed = ? WHERE rid = ? AND field = ?",
                 [bytes(flipped), raw, rows[0][0]])
    conn.commit()
    conn.close()
    with pytest.raises(CorruptData):
        store.view(rid)


def test_nothing_distinctive_at_rest(store: Store, data: Path) -> None:
    secrets = ["Zebulon Quixotic-Farnsworth", "QX7731904", "Xanthoxylum allergy",
               "Periwinkle Mansions"]
    r = store.checkin(name=secrets[0], passport=secrets[1], reason="tremor", now_ms=T0)
    store.put("patient", r.patient_id, {"address": secrets[3]},
              add={"allergies": [secrets[2]]}, now_ms=T0 + 1)
    store.put("note", values={"subject": r.patient_id, "text": secrets[2] + " noted"},
              now_ms=T0 + 2)
    store.merge([b"garbage " + secrets[0].encode()], now_ms=T0 + 3)  # quarantined, sealed
    files = [p for p in data.rglob("*") if p.is_file()]
    assert any(p.name.endswith("-wal") for p in files)
    for path in files:
        blob = path.read_bytes()
        for s in [*secrets, "QX7731904".lower(), "Zebulon", "Quixotic", "Xanthoxylum"]:
            assert s.encode() not in blob, f"{s} in {path.name}"
            assert s.encode("utf-16-le") not in blob
    assert b"Zebulon" in store.dump()


def test_bad_requests_are_clear(store: Store) -> None:
    with pytest.raises(BadRequest, match="unknown record type"):
        store.put("spaceship", values={})
    with pytest.raises(BadRequest, match="birthDate"):
        store.put("patient", values={"birthDate": "soon"})
    with pytest.raises(BadRequest, match="no such record"):
        store.delete(str(uuid.uuid4()))
    with pytest.raises(BadRequest, match="passport"):
        store.checkin(name="X", passport="1")
    assert store.status()["records"] == 0


def test_checkins_go_before_waiting_merge_slices(store: Store) -> None:
    rep = Replica(3)
    deltas = [rep.put(uuid.uuid4().bytes, "note", T0, {"text": str(i)}) for i in range(200)]
    statements = trace(store)
    gate = threading.Event()
    store.writer.submit(lambda db: gate.wait(10))  # hold the writer while work queues up
    merger = threading.Thread(target=store.merge, args=(deltas,),
                              kwargs={"now_ms": T0, "slice_size": 20})
    merger.start()
    for _ in range(1000):  # bounded wait until every slice is queued
        if store.writer.pending() >= 10:
            break
        threading.Event().wait(0.005)
    assert store.writer.pending() >= 10
    done: list[str] = []
    checkin = threading.Thread(target=lambda: done.append(
        store.checkin(name="Ada", now_ms=T0).queue_number))
    checkin.start()
    for _ in range(1000):
        if store.writer.pending() >= 11:
            break
        threading.Event().wait(0.005)
    gate.set()
    checkin.join(10)
    merger.join(10)
    assert done == ["B-001"]
    transactions = [i for i, s in enumerate(statements) if s == "BEGIN IMMEDIATE"]
    queue = next(i for i, s in enumerate(statements) if "queue_numbers" in s)
    # The check-in, ten merge slices, and perhaps a closing commit that fsyncs them (when
    # the last slice skipped its fsync because a check-in had just run).
    closing = [s for s in statements if s.startswith("INSERT OR REPLACE INTO meta")]
    assert len(transactions) == 11 + (len(closing) - 10)
    assert transactions[0] < queue < transactions[1]  # the check-in went first
    assert len(store.views()) == 202


def test_outbox_ack_retry_reject(store: Store) -> None:
    rx = store.put("prescription", values={"medication": "m"}, now_ms=T0)
    store.put("note", values={"text": "n"}, now_ms=T0)
    store.put("lab_result", values={"code": "glucose", "value": 5.5}, now_ms=T0)
    batch = store.outbox_batch(now_ms=T0)
    assert [e.lane for e in batch] == [0, 1, 3]
    assert len(store.outbox_batch(now_ms=T0, max_bytes=1)) == 1  # always makes progress
    store.outbox_reject(batch[0].seq, "rejected-by-hub")
    store.outbox_retry([batch[1].seq], now_ms=T0)
    after = store.outbox_batch(now_ms=T0)
    assert [e.seq for e in after] == [batch[2].seq]  # the quarantined one blocks nothing
    later = store.outbox_batch(now_ms=T0 + MAX_DELAY_MS)
    assert [e.seq for e in later] == [batch[1].seq, batch[2].seq]
    assert store.outbox_ack([batch[2].seq]) == 1
    status = store.status(now_ms=T0)
    assert status["outbox"]["quarantined"][0]["error"] == "rejected-by-hub"
    assert status["outbox"]["lanes"]["1"]["waiting_retry"] == 1
    assert rx


def test_backoff_doubles_with_jitter_and_is_capped() -> None:
    rng = random.Random(1)
    for attempts in range(1, 30):
        ceiling = min(MAX_DELAY_MS, 2000 << (attempts - 1))
        delays = {backoff_ms(attempts, rng) for _ in range(20)}
        assert all(ceiling // 2 <= d <= ceiling for d in delays)
        assert len(delays) > 1


def test_set_changes_through_the_store(store: Store) -> None:
    pid = store.put("patient", values={"name": "Ada"}, add={"allergies": ["latex", "nuts"]},
                    now_ms=T0)
    store.put("patient", pid, values={"telecom": "1"}, now_ms=T0 + 1)  # clean: SQL path
    store.put("patient", pid, remove={"allergies": ["latex"]}, now_ms=T0 + 2)
    view = store.view(pid)
    assert view is not None and view.sets == {8: frozenset({"nuts"})}
    assert view.fields == {1: "Ada", 4: "1"}
    ref = Replica(4)
    for entry in store.outbox_batch(now_ms=T0 + 3):
        ref.receive(entry.data, T0 + 3)
    assert ref.dump() == store.dump()


def test_immediate_nests_with_savepoints(tmp_path: Path) -> None:
    from device.store.db import connect
    from protocol.driver.database import immediate

    db = connect(tmp_path / "x.db")
    db.execute("CREATE TABLE t (x INTEGER)")
    with immediate(db):
        db.execute("INSERT INTO t VALUES (1)")
        with pytest.raises(ZeroDivisionError), immediate(db):
            db.execute("INSERT INTO t VALUES (2)")
            raise ZeroDivisionError
        with immediate(db):
            db.execute("INSERT INTO t VALUES (3)")
    assert [r[0] for r in db.execute("SELECT x FROM t ORDER BY x")] == [1, 3]
    with pytest.raises(ZeroDivisionError), immediate(db):
        db.execute("INSERT INTO t VALUES (4)")
        raise ZeroDivisionError
    assert [r[0] for r in db.execute("SELECT x FROM t ORDER BY x")] == [1, 3]
    assert db.conn.in_transaction is False
    db.conn.close()


def test_a_merge_leaves_the_writer_fully_synchronous(store: Store) -> None:
    """Merge commits skip the fsync; nothing after the merge may inherit that."""
    rep = Replica(3)
    deltas = [rep.put(uuid.uuid4().bytes, "note", T0, {"text": str(i)}) for i in range(100)]
    assert store.merge(deltas, now_ms=T0, slice_size=30).applied == 100
    mode = store.writer.call(lambda db: db.conn.execute("PRAGMA synchronous").fetchone()[0])
    assert mode == 2  # FULL
    statements = trace(store)
    store.checkin(name="Ada", now_ms=T0)
    assert not any("synchronous" in s for s in statements)


def test_the_write_log_migrates_to_write_order_with_nothing_lost(data: Path) -> None:
    """A store from before m003 (the write log keyed by dot) opens with every write,
    the same dump and an outbox that still finds its deltas."""
    with init_store(data, "Test Site", "B") as store:
        for i in range(40):
            store.checkin(name=f"P{i}", passport=f"MG{i:06d}", birth_year=1970, now_ms=T0 + i)
        dump = store.dump()
        pending = [e.data for e in store.outbox_batch(now_ms=T0 + 99, max_bytes=1 << 20)]
    old = sqlite3.connect(data / "store.db", isolation_level=None)
    for sql in (  # back to the shape m001 made, rows in dot order, m003 not applied
        """CREATE TABLE ops_keyed (
            rid BLOB NOT NULL, stamp INTEGER NOT NULL, node INTEGER NOT NULL,
            type INTEGER NOT NULL, local INTEGER NOT NULL, sealed BLOB NOT NULL,
            PRIMARY KEY (rid, stamp, node)) WITHOUT ROWID""",
        "INSERT INTO ops_keyed SELECT rid, stamp, node, type, local, sealed FROM ops",
        "DROP TABLE ops",
        "ALTER TABLE ops_keyed RENAME TO ops",
        "DROP INDEX records_stale",  # and what m005 added
        "ALTER TABLE records DROP COLUMN stale",
        "ALTER TABLE records DROP COLUMN partial",
        "ALTER TABLE records DROP COLUMN seen",
        "ALTER TABLE records DROP COLUMN seen_at",
        "PRAGMA user_version = 2",
    ):
        old.execute(sql)
    old.close()
    with Store(data) as store:
        assert store.dump() == dump
        assert [e.data for e in store.outbox_batch(now_ms=T0 + 99, max_bytes=1 << 20)] == pending
        assert store.reader.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        ops = store.reader.execute("SELECT COUNT(*) FROM ops").fetchone()[0]
        assert ops == len(pending) == 80
        index = store.reader.execute("SELECT sql FROM sqlite_schema WHERE name = 'ops_dot'")
        assert "UNIQUE" in index.fetchone()[0]


def test_checkpoints_run_beside_the_writer(store: Store, data: Path) -> None:
    from device.store.store import CHECKPOINT_WEIGHT, LOCAL_WEIGHT

    for i in range(CHECKPOINT_WEIGHT // LOCAL_WEIGHT + 1):
        store.checkin(name=f"P{i}", now_ms=T0 + i)
    checkpointer = store.checkpointer
    assert checkpointer.is_running
    for _ in range(100):  # bounded: the checkpoint of a few hundred check-ins
        if checkpointer.runs:
            break
        threading.Event().wait(0.05)
    assert checkpointer.runs == 1
    store.close()
    assert not checkpointer.is_running
    with Store(data) as again:
        assert again.reader.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert again.dump().count(b'"queueNumber"') == CHECKPOINT_WEIGHT // LOCAL_WEIGHT + 1


def outbox_rows(data: Path) -> int:
    conn = sqlite3.connect(data / "store.db")
    try:
        return int(conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
    finally:
        conn.close()


def test_acknowledged_entries_leave_with_the_next_write(store: Store, data: Path) -> None:
    store.checkin(name="Ada", passport="AB123456", now_ms=T0)
    acked = store.outbox_batch(now_ms=T0)
    assert store.outbox_ack(e.seq for e in acked) == 2
    # gone for everyone who asks, though no commit of their own deleted them yet
    assert store.outbox_batch(now_ms=T0) == []
    assert store.status(now_ms=T0)["outbox"]["lanes"] == {}
    assert outbox_rows(data) == 2
    store.checkin(name="Bo", passport="BO123456", now_ms=T0 + 1)  # ... takes them along
    assert outbox_rows(data) == 2
    assert [e.seq for e in store.outbox_batch(now_ms=T0 + 1)] == [max(e.seq for e in acked) + 1,
                                                                  max(e.seq for e in acked) + 2]
    assert store.outbox_ack(e.seq for e in store.outbox_batch(now_ms=T0 + 1)) == 2
    store.close()  # ... or the close does
    assert outbox_rows(data) == 0
    with Store(data) as again:
        assert again.status()["outbox"]["lanes"] == {}


def test_acknowledgements_lost_in_a_crash_only_send_entries_again(data: Path) -> None:
    init_store(data, "Test Site", "B").close()
    code = (f"import os\nfrom device.store import Store\ns = Store({str(data)!r})\n"
            f"s.checkin(name='Ada', passport='AB123456', now_ms={T0})\n"
            f"print(s.outbox_ack(e.seq for e in s.outbox_batch(now_ms={T0})))\n"
            "os._exit(0)  # killed before any other write or the close")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert out.strip() == "2"
    with Store(data) as store:
        again = store.outbox_batch(now_ms=T0)
        assert len(again) == 2  # sent again; the hub keeps each write once
        assert store.dump().count(b'"queueNumber"') == 1


def test_a_backlog_acknowledged_batch_after_batch_leaves_at_once(store: Store,
                                                                 data: Path) -> None:
    from device.store.acks import MAX_NOTED

    for i in range(MAX_NOTED):
        store.checkin(name=f"P{i}", now_ms=T0 + i)
    batch = store.outbox_batch(now_ms=T0 + MAX_NOTED, max_bytes=1 << 20)
    assert len(batch) == 2 * MAX_NOTED
    store.outbox_ack(e.seq for e in batch[:MAX_NOTED])
    assert outbox_rows(data) == 2 * MAX_NOTED  # noted, for the next write to take
    store.outbox_ack(e.seq for e in batch[MAX_NOTED:])
    assert outbox_rows(data) == 0  # too many to note: deleted at once
    assert store.outbox_batch(now_ms=T0 + MAX_NOTED) == []
