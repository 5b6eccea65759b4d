"""A write late to a deleted record whose history is larger than a page: the record's
older deltas, sent again with it, go over several pages of one session, in order, and
none is dropped; a session that ends inside them leaves the cursor before the group, and
the next one sends it whole. Over TCP, a real kiosk pulls such a record and holds the
merged record, as the hub does (before, the group went as one message past the
session's 1 MiB limit, and the kiosk's pull failed at the same cursor every time)."""

from __future__ import annotations

import json
import secrets
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from host.hub.hub import Hub, init_hub
from protocol import messages
from protocol.crdt.delta import DELETE, Delta, decode, encode
from protocol.crdt.record import RecordLog
from protocol.crdt.replica import Replica
from protocol.driver.wall_clock import wall_ms
from protocol.session.events import SessionConfig
from protocol.sync.hub_round import CHANGES_BYTES
from protocol.sync.paging import PageSplit, paged

from .test_hub_scopes import NAMES, YEARS, Session, visit
from .test_sync_helpers import Kiosk, served_hub

pytestmark = pytest.mark.usefixtures("hub_backend")

EDITS = 280  #: edits of 4 KiB of text each that does not compress: the record's history
#: is past 1 MiB even compressed


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Hub]:
    init_hub(tmp_path / "hub")
    with Hub(tmp_path / "hub") as h:
        yield h


def deleted_elsewhere(hub: Hub, x: Kiosk, y: Kiosk, now: int, edits: int = 0
                      ) -> list[bytes]:
    """X checks a patient in and edits the check-in ``edits`` times (4 KiB of text that
    does not compress each); Y, having it all, deletes it. Returns the check-in's deltas
    in the order they arrived."""
    _, visited = visit(Replica(x.store.node), now, "North", NAMES[0], YEARS[0],
                       clinical=False)
    checkin = decode(visited[1])
    changes = [encode(Delta(checkin.record_id, checkin.type, x.store.node,
                            checkin.stamp + 1 + n, set={3: secrets.token_urlsafe(3000)}))
               for n in range(edits)]  # by hand: a replica's write reads all before it
    Session(hub, x, now).push(visited + changes)
    last = decode(changes[-1]) if changes else checkin
    delete = encode(Delta(checkin.record_id, checkin.type, y.store.node, last.stamp + 1,
                          kind=DELETE, ctx=(last.dot,)))
    Session(hub, y, now).push([delete])
    return [visited[1], *changes, delete]


def late_edit(x: Kiosk, history: list[bytes]) -> bytes:
    """X's next edit of the record of ``history``, made without seeing its delete."""
    last = decode(history[-1])
    return encode(Delta(last.record_id, last.type, x.store.node, last.stamp + 1,
                        set={2: "in-progress"}))


def late_to_a_long_history(hub: Hub, x: Kiosk, y: Kiosk, now: int
                           ) -> tuple[int, list[bytes]]:
    """``deleted_elsewhere`` with ``EDITS`` edits, then X's ``late_edit``. Returns the
    hub's head before that late edit, and the check-in's deltas in the order they
    arrived."""
    history = deleted_elsewhere(hub, x, y, now, EDITS)
    cursor = hub.store.head()
    late = late_edit(x, history)
    Session(hub, x, now).push([late])
    return cursor, [*history, late]


def dots(deltas: list[bytes]) -> list[tuple[int, int]]:
    return [(d.stamp, d.node) for d in map(decode, deltas)]


@pytest.mark.parametrize("role", ["full", "door", "clinician"])
def test_a_late_writes_group_larger_than_a_page_comes_whole_over_pages(
        tmp_path: Path, hub: Hub, role: str) -> None:
    now = wall_ms()
    x, y, k = (Kiosk(tmp_path, n, hub, n.upper()) for n in "xyk")
    hub.set_role(k.device, role)
    try:
        cursor, history = late_to_a_long_history(hub, x, y, now)
        assert sum(map(len, history)) > SessionConfig().max_message  # past one message

        session = Session(hub, k, now, cursor=cursor)
        pages, last = session.pull(cursor)
        got = [d for page in pages for d in page]
        assert dots(got) == dots(history)  # whole, in order, each once
        assert len(pages) > 4 and last.get("cursor") == hub.store.head()
        largest = max(map(len, history))
        assert all(sum(map(len, p)) <= CHANGES_BYTES + largest for p in pages)
        if role == "door":
            assert all(7 not in d.set and 8 not in d.set for d in map(decode, got))
        merged = RecordLog(decode(history[0]).record_id)
        for d in got:
            merged.add(decode(d))
        assert [c.cls for c in merged.view().conflicts] == ["delete-update"]

        # a session that ends inside the group: the cursor stays before it, and the
        # next session sends it whole from its start
        broken = Session(hub, k, now, cursor=cursor)
        first = broken.one(_pull(cursor), "sync-changes")
        assert first.get("more") and first.get("cursor") == cursor
        again, _ = Session(hub, k, now, cursor=cursor).pull(cursor)
        assert dots([d for page in again for d in page]) == dots(history)

        # a pull that asks from elsewhere in the same session is not taken for the rest
        second = broken.one(_pull(0), "sync-changes")
        assert second.get("cursor") <= cursor
    finally:
        for kiosk in (x, y, k):
            kiosk.close()


def _pull(cursor: int) -> messages.Message:
    return messages.make("sync-pull", cursor=cursor)


def test_a_kiosk_pulls_a_record_whose_history_is_past_a_message_over_tcp(
        tmp_path: Path) -> None:
    with served_hub(tmp_path) as (hub, url):
        now = wall_ms()
        x, y, k = (Kiosk(tmp_path, n, hub, n.upper()) for n in "xyk")
        try:
            _, history = late_to_a_long_history(hub, x, y, now)
            summary = k.sync(url, limit=60.0)
            assert summary.pulled >= len(history)
            rid = str(uuid.UUID(bytes=decode(history[0]).record_id))
            view = k.store.view(rid)
            assert view is not None and [c.cls for c in view.conflicts] == ["delete-update"]
            ours = {r["id"]: r for r in json.loads(k.store.dump())["records"]}
            hubs = {r["id"]: r for r in json.loads(hub.dump())["records"]}
            assert ours[rid] == hubs[rid]
        finally:
            for kiosk in (x, y, k):
                kiosk.close()


def test_pages_split_only_a_group_larger_than_a_page() -> None:
    small, big = [b"a" * 10], [bytes([i]) * 40 for i in range(5)]
    groups = [(1, small), (2, []), (3, big), (4, small)]
    # a group that fits waits for the next page; without a split a big one goes whole
    assert paged(groups, 0, 0, 100) == (small, 2, True)
    assert paged(groups[2:], 2, 2, 100) == (big, 3, True)
    split = PageSplit()
    pages, cursor = [], 2
    for _ in range(10):
        page, cursor, more = paged(groups[2:], cursor, cursor, 100, split)
        pages.append((page, cursor))
        if not more:
            break
    assert pages == [(big[:2], 2), (big[2:4], 2), (big[4:] + small, 4)]
    assert split == PageSplit()  # forgotten once passed
    one = [b"z" * 300]  # a delta larger than a page goes alone
    assert paged([(5, one), (6, small)], 4, 4, 100, split) == (one, 4, True)
    assert paged([(5, one), (6, small)], 4, 4, 100, split) == (small, 6, False)


def test_a_group_that_changed_meanwhile_is_sent_whole_not_skipped() -> None:
    split = PageSplit()
    group = [bytes([i]) * 60 for i in range(4)]
    assert paged([(3, group)], 2, 2, 100, split)[0] == group[:1]
    other = [b"n" * 60, *group]  # the group at 3 now carries one more, first
    page, _, _ = paged([(3, other)], 2, 2, 100, split)
    assert page == other[:1]  # only what was sent is left out
