"""Two kiosks run from copies of one data folder, against a real hub over TCP on
127.0.0.1 (SPEC.md "Clones"; the role-level cases are in test_sync_roles).

Each copy is a real store, sync.db and identity, syncing with the engine's rounds
(a session per round, as a serial line or a kiosk whose session was replaced does),
in turn and at the same moment. The hub catches the copy, holds its batches, flags
the kiosk and tells both; from then on no queue number is handed out twice; and
after the copy is re-provisioned with init and enroll, every check-in of both
reaches the hub exactly once.
"""

from __future__ import annotations

import math
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from device import enrol
from device.cli import main as kiosk_main
from device.store import Store, init_store
from device.sync.engine import SyncFailed, run_round
from device.sync.loop import SyncLoop
from device.sync.state import SyncState, alert_of
from host.cli import main as haven_main
from host.hub.hub import Hub
from protocol.crdt.schema import CHECKIN

from .test_sync_helpers import Kiosk, served_hub

pytestmark = pytest.mark.usefixtures("hub_backend")

ROUNDS = 6  #: at most this many turns for each copy before the hub must have caught it


class Copy:
    """One running copy of a kiosk's data folder: its store, sync.db and identity."""

    def __init__(self, data: Path) -> None:
        self.data = data
        self.store = Store(data)
        self.state = SyncState(data)
        self.ident = enrol.load(data)
        self.numbers: list[str] = []  #: queue numbers handed out, in order
        self.told_at: int | None = None  #: len(numbers) when it was first told

    def checkin(self, name: str) -> str:
        result = self.store.checkin(name=name)
        self.numbers.append(result.queue_number)
        return result.record_id

    def sync(self, url: str) -> None:
        run_round(self.store, self.state, self.ident, url, limit=10.0)
        if self.told_at is None and self.state.alert is not None:
            self.told_at = len(self.numbers)

    def close(self) -> None:
        self.state.close()
        self.store.close()


@contextmanager
def two_copies(tmp: Path) -> Iterator[tuple[Hub, str, Copy, Copy, list[str]]]:
    """A kiosk that synced two check-ins, copied (folder and all) while stopped."""
    with served_hub(tmp) as (hub, url):
        k = Kiosk(tmp, "a", hub, "A")
        ids = [k.store.checkin(name=f"before {i}").record_id for i in range(2)]
        k.sync(url)
        k.close()
        shutil.copytree(tmp / "a", tmp / "b")
        a, b = Copy(tmp / "a"), Copy(tmp / "b")
        try:
            yield hub, url, a, b, ids
        finally:
            a.close()
            b.close()


def checkins_at_hub(hub: Hub) -> dict[str, str]:
    """Every check-in the hub holds: record id -> queue number."""
    number = CHECKIN.by_name["queueNumber"].number
    return {str(uuid.UUID(bytes=v.record_id)): v.fields[number]
            for v in hub.views() if v.type == CHECKIN.number}


def caught(hub: Hub) -> bool:
    return any(k["suspected_clone"] for k in hub.status()["kiosks"])


def test_copies_syncing_in_turn_are_caught_held_told_and_brought_back_by_re_provisioning(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with two_copies(tmp_path) as (hub, url, a, b, ids):
        device = a.ident.cert.device_id
        turn = 0
        while not caught(hub):
            assert turn < ROUNDS, "the hub never caught the copies"
            for copy in (a, b):
                ids.append(copy.checkin(f"{copy.data.name} {turn}"))
                copy.sync(url)
            turn += 1
        # Held, flagged, logged, shown; nothing of the held batches applied.
        status = hub.status()
        held = status["held_batches"]
        assert held and {h["device"] for h in held} == {device}
        assert any(w["type"] == "checkin" for h in held for w in h["writes"])
        assert any(e["code"] == "suspected-clone" for e in hub.store.events(200))
        at_hub = checkins_at_hub(hub)
        held_ids = {w["record"] for h in held for w in h["writes"] if w["type"] == "checkin"}
        assert not held_ids & set(at_hub)
        # Both are told at their next round (the copy that was caught already is).
        for copy in (a, b):
            copy.sync(url)
            assert copy.state.alert == "suspected-clone" and alert_of(copy.data)
        assert a.store.queue_label != b.store.queue_label
        # A technician sees which copy is held, and what the hub holds of it.
        capsys.readouterr()
        assert kiosk_main(["status", "--data", str(b.data)]) == 0
        assert "the hub holds this kiosk's batches" in capsys.readouterr().out
        assert kiosk_main(["status", "--data", str(a.data)]) == 0
        assert "its batches are on the hub's chain" in capsys.readouterr().out
        assert haven_main(["hub", "held", "--data", str(tmp_path / "hub")]) == 0
        listing = capsys.readouterr().out
        assert f"kiosk {device} branch 1" in listing and "checkin" in listing
        assert haven_main(["hub", "status", "--data", str(tmp_path / "hub")]) == 0
        assert "SUSPECTED-CLONE" in capsys.readouterr().out
        # From now on no queue number is handed out twice, whoever syncs when.
        for turn in range(3):
            for copy in (a, b):
                ids.append(copy.checkin(f"{copy.data.name} told {turn}"))
            threading_sync(url, a, b)
        after = [n for c in (a, b) for n in c.numbers[c.told_at:]]
        before = [n for c in (a, b) for n in c.numbers[:c.told_at]]
        assert len(after) == len(set(after)) and not set(after) & set(before)
        # Re-provision the copy whose batches are held (init and enroll, as new).
        listed = hub.held_batches()
        b.close()
        store = init_store(tmp_path / "b", "North", "C")
        try:
            assert enrol.start_as_new_kiosk(store) is not None
            cert = hub.enroll(enrol.write_request(store).read_bytes())
            enrol.install(store, cert)
        finally:
            store.close()
        b = Copy(tmp_path / "b")
        assert b.ident.cert.device_id != device and b.state.alert is None
        ids.append(b.checkin("as new"))
        for copy in (b, a, b):
            copy.sync(url)
        at_hub = checkins_at_hub(hub)
        assert sorted(at_hub) == sorted(set(ids)) and len(ids) == len(set(ids))
        assert held_ids <= set(at_hub)  # what was held came in, under the new identity
        assert hub.held_batches() == listed  # still listed for review, never dropped
        assert b.store.outbox_batch(now_ms=1 << 60) == []
        assert a.state.get_int("foreign_adopts") == 1  # it adopted the copy's batches once
        hub.clear_clone(device)
        a.sync(url)
        assert a.state.alert is None and a.state.get_int("foreign_adopts") == 0
        # Both kiosks hold every check-in too: the copy that kept the identity was sent
        # the other's writes under the node they shared, the new kiosk pulled from the
        # start.
        for copy in (a, b):
            assert all(copy.store.view(i) is not None for i in ids), copy.data.name
        b.close()


def threading_sync(url: str, *copies: Copy) -> None:
    """Every copy syncs at the same moment. One identity has one live session at the
    hub: a copy's session replaces the other's, whose round fails and runs again (as
    the runtime's loop runs it again)."""
    start = threading.Barrier(len(copies))
    errors: list[BaseException] = []

    def run(copy: Copy) -> None:
        try:
            start.wait(5)
            for attempt in range(8):
                try:
                    copy.sync(url)
                    return
                except SyncFailed:
                    if attempt == 7:
                        raise
                    time.sleep(0.05 * (attempt + 1))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(c,)) for c in copies]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert not errors, errors


def test_copies_syncing_at_the_same_moment_are_caught(tmp_path: Path) -> None:
    with two_copies(tmp_path) as (hub, url, a, b, ids):
        for turn in range(ROUNDS):
            if caught(hub):
                break
            for copy in (a, b):
                ids.append(copy.checkin(f"{copy.data.name} {turn}"))
            threading_sync(url, a, b)
        assert caught(hub) and hub.status()["held_batches"]
        threading_sync(url, a, b)
        assert a.state.alert == b.state.alert == "suspected-clone"
        assert a.store.queue_label != b.store.queue_label
        # Nothing lost: every check-in is at the hub or held there, for review.
        held = {w["record"] for h in hub.status()["held_batches"] for w in h["writes"]}
        assert set(ids) <= set(checkins_at_hub(hub)) | held


def test_init_gives_a_told_kiosk_a_new_identity_and_its_unacknowledged_writes_again(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``haven-kiosk init`` on a kiosk told it is a suspected clone, including one whose
    re-provisioning was cut short after its first step: a new node and keys, every
    write not acknowledged queued again as the new node's (once), the rest as before."""
    data = tmp_path / "k"
    store = init_store(data, "North", "A")
    ids = [store.checkin(name=f"P{i}").record_id for i in range(2)]
    old_node = store.node
    store.set_queue_label(3)
    assert store.checkin(name="P2").queue_number == "A3-003"
    state = SyncState(data)
    state.set_alert("suspected-clone")
    state.close()
    enrol.ensure_keys(data)
    keys = {n: (data / n).read_bytes() for n in (enrol.X_KEY, enrol.ED_KEY)}
    assert store.take_new_node() == 6  # cut short here: the alert still says to go on
    store.close()
    capsys.readouterr()
    args = ["init", "--data", str(data), "--site", "North", "--letter", "C"]
    assert kiosk_main(args) == 0
    assert "new identity, and 6 writes" in capsys.readouterr().out
    with Store(data) as store:
        assert store.node not in (old_node, 0) and store.queue_label is None
        entries = store.outbox_batch(now_ms=1 << 60, max_bytes=1 << 30)
        assert len(entries) == 6
        views = [store.view(i) for i in ids]
        assert all(v is not None and not v.deleted for v in views)
        assert store.checkin(name="P3").queue_number == "C-004"
    assert all((data / n).read_bytes() != k for n, k in keys.items())
    assert alert_of(data) is None and not (data / enrol.CERT).exists()
    assert kiosk_main(args) == 0  # again: an ordinary init, nothing more
    assert "new identity" not in capsys.readouterr().out


def not_a_clone(hub: Hub, *copies: Copy) -> bool:
    status = hub.status()
    return (status["held_batches"] == [] and not caught(hub)
            and all(c.state.alert is None and c.store.queue_label is None for c in copies))


def test_a_checkpoint_adopted_after_a_power_cut_is_not_a_clone(tmp_path: Path) -> None:
    """sync.db saves batches without an fsync: a power cut takes batch 2, which the hub
    committed, while the store keeps the check-ins (each one fsynced)."""
    with served_hub(tmp_path) as (hub, url):
        k = Kiosk(tmp_path, "k", hub, "K")
        k.store.checkin(name="before")
        k.sync(url)
        k.close()
        kept = {p.name: p.read_bytes() for p in (tmp_path / "k").glob("sync.db*")}
        copy = Copy(tmp_path / "k")
        ids = [copy.checkin(f"lost batch {i}") for i in range(2)]
        copy.sync(url)
        copy.close()
        for p in (tmp_path / "k").glob("sync.db*"):
            p.unlink()
        for name, data in kept.items():  # sync.db as the power cut left it
            (tmp_path / "k" / name).write_bytes(data)
        copy = Copy(tmp_path / "k")
        try:
            assert copy.state.head()[0] == 1
            ids.append(copy.checkin("after the power cut"))
            copy.sync(url)
            assert not_a_clone(hub, copy) and copy.state.get_int("foreign_adopts") == 0
            assert copy.state.head()[0] == 3 and set(ids) <= set(checkins_at_hub(hub))
        finally:
            copy.close()


def test_an_sd_card_restored_from_a_backup_is_not_a_clone(tmp_path: Path) -> None:
    """The card goes back to last night's copy of the whole folder; the kiosk had synced
    more since, and its card died."""
    with served_hub(tmp_path) as (hub, url):
        k = Kiosk(tmp_path, "k", hub, "K")
        k.store.checkin(name="before the backup")
        k.sync(url)
        k.close()
        shutil.copytree(tmp_path / "k", tmp_path / "backup")
        copy = Copy(tmp_path / "k")
        ids = [copy.checkin(f"after the backup {i}") for i in range(2)]
        copy.sync(url)
        copy.close()
        shutil.rmtree(tmp_path / "k")
        shutil.copytree(tmp_path / "backup", tmp_path / "k")
        copy = Copy(tmp_path / "k")
        try:
            ids.append(copy.checkin("after the restore"))
            copy.sync(url)
            copy.sync(url)
            assert not_a_clone(hub, copy) and set(ids) <= set(checkins_at_hub(hub))
        finally:
            copy.close()


def test_two_copies_with_kept_open_sessions_do_not_trade_the_session(tmp_path: Path) -> None:
    """A newer connection with the kiosk's key ends the older live session with reason
    ``superseded``; the copy that hears it does not connect again at once (it would
    end the other's session, and the two would trade it for ever)."""
    with two_copies(tmp_path) as (_hub, url, a, b, _ids):
        loops = [SyncLoop(c.store, c.state, c.ident, [url], keepalive=60.0, superseded_wait=0.5)
                 for c in (a, b)]
        wake = threading.Event()
        try:
            loops[0].round(lambda: 10.0)
            loops[1].round(lambda: 10.0)  # the hub gives b the key's session
            first = loops[0].conn
            assert first is not None
            assert first.idle(5.0, wake) is True  # a hears the end of its session...
            assert first.superseded and not first.open
            start = time.monotonic()
            assert loops[0].idle(math.inf, wake) is False  # ...and waits, not reconnects
            assert time.monotonic() - start >= 0.4
            assert loops[1].conn is not None and loops[1].conn.open  # b keeps it
            wake.set()  # a reason of a's own (a check-in): a's round takes it back
            a.checkin("after")
            loops[0].round(lambda: 10.0)
            assert loops[0].conn is not None and not loops[0].conn.superseded
            assert loops[1].conn is not None and loops[1].conn.idle(5.0, threading.Event())
            assert loops[1].conn.superseded
        finally:
            for loop in loops:
                loop.close()
