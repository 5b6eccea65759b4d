"""Arrival numbers and checkpoints with several writers on one hub database.

A kiosk's pull cursor is an arrival number: it must never pass a delta whose
transaction commits after a greater number became visible (the outbox's
classic pitfall). The hub gives numbers under a counter locked until commit
(``storage.next_hseq``); the first test holds one batch's transaction open
while another writer commits and a reader pulls, on both backends. The second
shows the same test catching the pitfall when numbers are handed out as a
database sequence hands them out (at once, outside the transaction).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest

from device.store import init_store
from host.hub import scopes, storage
from host.hub.at_rest import default_provider
from host.hub.hub import DATABASE_ENV, database_of, init_hub
from host.hub.storage import HubStore
from protocol.crdt.delta import Delta, decode
from protocol.sync.hub_round import CheckpointMoved

NOW = 1_700_000_000_000
WAIT = 20.0  # a bound on every wait, never reached when things work


def batch_of(tmp: Path, name: str, count: int) -> list[tuple[Delta, bytes]]:
    kiosk = init_store(tmp / name, "North", name[0].upper())
    try:
        for i in range(count):
            kiosk.checkin(name=f"{name} {i}", passport=f"P{i:07d}", now_ms=NOW + i)
        return [(decode(d), d) for d in kiosk.deltas_since({})]
    finally:
        kiosk.close()


@contextmanager
def stores(data: Path, count: int) -> Iterator[list[HubStore]]:
    """``count`` stores on the hub's database: a connection each, as processes have."""
    opened = [HubStore(database_of(data), default_provider(data)) for _ in range(count)]
    try:
        yield opened
    finally:
        for store in opened:
            store.close()


class Late:
    """Holds the transaction of the batch committed by the thread named ``late`` open
    after its deltas are written, until released."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.inside, self.release = threading.Event(), threading.Event()
        real = scopes.note_commit

        def note_commit(db: Any, added: list[tuple[int, Delta]]) -> None:
            real(db, added)
            if threading.current_thread().name == "late":
                self.inside.set()
                assert self.release.wait(WAIT)
        monkeypatch.setattr(scopes, "note_commit", note_commit)


def thread(name: str, fn: Callable[[], Any], errors: list[BaseException]) -> threading.Thread:
    def run() -> None:
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)
    t = threading.Thread(target=run, name=name, daemon=True)
    t.start()
    return t


def pull_around_a_late_commit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                              ) -> tuple[set[tuple[bytes, int, int]], list[int]]:
    """Kiosk a's batch commits late, b's in the meantime; a reader pulls while a's is in
    flight, then from its cursor after both. Returns what the hub holds (record,
    stamp, node) and the arrival numbers the reader was given, in order."""
    data = tmp_path / "hub"
    init_hub(data)
    late_batch, other_batch = batch_of(tmp_path, "a", 2), batch_of(tmp_path, "b", 2)
    late = Late(monkeypatch)
    errors: list[BaseException] = []
    with stores(data, 3) as (a, b, reader):
        t1 = thread("late", lambda: a.commit_batch("kiosk-a", 1, b"a" * 32, late_batch, [],
                                                   NOW, []), errors)
        assert late.inside.wait(WAIT), errors
        t2 = thread("other", lambda: b.commit_batch("kiosk-b", 1, b"b" * 32, other_batch, [],
                                                    NOW, []), errors)
        t2.join(0.5)  # committed, or waiting for the late one's numbers: either may be
        pulled = reader.arrived_after(0, 1000)
        cursor = max((hseq for hseq, *_ in pulled), default=0)
        late.release.set()
        for t in (t1, t2):
            t.join(WAIT)
            assert not t.is_alive()
        assert errors == []
        pulled += reader.arrived_after(cursor, 1000)
        held = {(op.rid, op.stamp, op.node) for op in reader.all_ops()}
        got = [(rid, stamp, node) for _, rid, stamp, node in pulled]
        assert len(held) == len(late_batch) + len(other_batch)
        assert len(got) == len(set(got))  # nothing twice
        return held - set(got), [hseq for hseq, *_ in pulled]


def test_a_pull_never_passes_a_batch_that_commits_late(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hub_backend: str) -> None:
    missed, numbers = pull_around_a_late_commit(tmp_path, monkeypatch)
    assert missed == set()
    assert numbers == sorted(numbers)


def test_numbers_given_outside_the_transaction_let_a_pull_skip_a_late_batch(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pg_database: str) -> None:
    """What the lock prevents: numbers handed out at once, as a sequence does."""
    monkeypatch.setenv(DATABASE_ENV, pg_database)
    with psycopg.connect(pg_database, autocommit=True) as counter:
        counter.execute("CREATE SEQUENCE arrivals")

        def sequence_like(db: Any) -> int:
            (first,), = counter.execute("SELECT setval('arrivals', nextval('arrivals') + 99)"
                                        ).fetchall()
            return int(first) - 99
        monkeypatch.setattr(storage, "next_hseq", sequence_like)
        monkeypatch.setattr(storage, "used_hseq", lambda db, last: None)
        missed, _ = pull_around_a_late_commit(tmp_path, monkeypatch)
    assert len(missed) == 4  # the late batch's two check-ins (patient and visit each)


def test_a_batch_whose_checkpoint_moved_under_it_writes_nothing(
        tmp_path: Path, hub_backend: str) -> None:
    data = tmp_path / "hub"
    init_hub(data)
    good = batch_of(tmp_path, "a", 1)
    with stores(data, 2) as (one, two):
        with one.writing() as (db, _):
            db.execute("INSERT INTO devices (device_id, node, site, letter, x25519, ed25519,"
                       " state, enrolled_at, last_hash, kiosk_number) VALUES"
                       " ('kiosk', 7, 'North', 'A', ?, ?, 'approved', 0, ?, 1)",
                       [b"x" * 32, b"e" * 32, b"0" * 32])
        assert two.commit_batch("kiosk", 1, b"1" * 32, good, [], NOW, [],
                                follows=b"0" * 32) is not None
        with pytest.raises(CheckpointMoved):  # the other process's round saw batch 0
            one.commit_batch("kiosk", 1, b"9" * 32, good, [], NOW, [], follows=b"0" * 32)
        assert one.batch_hash("kiosk", 1) == b"1" * 32
        assert len(list(one.all_ops())) == len(good)


def test_the_hubs_own_writes_are_one_pass_at_a_time_across_processes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pg_database: str) -> None:
    """Two passes at once would give two of the hub's writes one stamp."""
    monkeypatch.setenv(DATABASE_ENV, pg_database)
    data = tmp_path / "hub"
    init_hub(data)
    order: list[str] = []
    inside = threading.Event()
    errors: list[BaseException] = []
    with stores(data, 2) as (one, two):
        def first() -> None:
            with one.own_writes():
                order.append("first in")
                inside.set()
                two_waiting.join(0.3)  # the other process is kept out meanwhile
                order.append("first out")

        def second() -> None:
            assert inside.wait(WAIT)
            with two.own_writes():
                order.append("second in")
        two_waiting = thread("second", second, errors)
        t1 = thread("first", first, errors)
        for t in (t1, two_waiting):
            t.join(WAIT)
            assert not t.is_alive()
    assert errors == []
    assert order == ["first in", "first out", "second in"]
