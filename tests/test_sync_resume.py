"""A kiosk that dies after sending a batch, before its checkpoint, resumes without a
duplicate and without a forked chain; several hub URLs are tried in order."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pytest

from device.cli import cmd_sync
from device.sync.engine import Round, wall_ms
from host.hub.peer import HubPeer
from protocol import messages

from .test_sync_helpers import Kiosk, served_hub

pytestmark = pytest.mark.usefixtures("hub_backend")


def test_crash_after_send_before_checkpoint(tmp_path: Path) -> None:
    with served_hub(tmp_path) as (hub, url):
        k = Kiosk(tmp_path, "k", hub, "A")
        for i in range(5):
            k.store.checkin(name=f"N{i}")
        # The batch is saved, sent and committed by the hub; the ack never comes back.
        rnd = Round(k.store, k.state, k.ident)
        peer = HubPeer(hub.store, hub.ed_public, k.ident.cert.x25519, wall_ms)
        (_, hello), = rnd.hello()
        (_, welcome), = peer.on_message(hello)
        replies = rnd.on_message(welcome)
        batch = [data for lane, data in replies if messages.decode(data).name == "sync-batch"]
        (_, ack), = peer.on_message(batch[0])
        assert messages.decode(ack).name == "sync-ack"
        assert len(k.state.pending()) == 1 and k.store.outbox_batch()
        head = k.state.head()
        # Restarted: the same batch goes again, is acknowledged, applied once.
        k.store.checkin(name="after")
        s = k.sync(url)
        assert s.batches == 2 and k.state.pending() == [] and not k.store.outbox_batch()
        ops = list(hub.store.all_ops())
        assert len(ops) == len({(o.rid, o.stamp, o.node) for o in ops}) == 12
        dev = hub.store.device(k.device)
        assert dev is not None and dev.last_seq == head[0] + 1
        assert hub.store.batch_hash(k.device, head[0]) == head[1]  # no fork
        assert k.store.dump() == hub.dump()
        assert "duplicate" in {e["code"] for e in hub.store.events()}
        k.close()


def test_a_power_cut_that_loses_the_saved_batch_forks_nothing(tmp_path: Path) -> None:
    """The batch is saved without an fsync: a power cut after the hub committed it can
    take it from sync.db. The welcome's checkpoint becomes the kiosk's chain head, and
    the batch's writes, still queued, go once more and are kept once."""
    with served_hub(tmp_path) as (hub, url):
        k = Kiosk(tmp_path, "k", hub, "A")
        for i in range(3):
            k.store.checkin(name=f"N{i}")
        rnd = Round(k.store, k.state, k.ident)
        peer = HubPeer(hub.store, hub.ed_public, k.ident.cert.x25519, wall_ms)
        (_, hello), = rnd.hello()
        (_, welcome), = peer.on_message(hello)
        batch = [data for _, data in rnd.on_message(welcome)
                 if messages.decode(data).name == "sync-batch"]
        (_, ack), = peer.on_message(batch[0])
        assert messages.decode(ack).name == "sync-ack"
        committed = hub.store.batch_hash(k.device, 1)
        k.state.db.execute("DELETE FROM batches")  # what the power cut took
        k.store.checkin(name="after")
        s = k.sync(url)
        assert s.batches == 1 and not k.store.outbox_batch()
        assert k.state.head()[0] == 2 and hub.store.batch_hash(k.device, 1) == committed
        ops = list(hub.store.all_ops())
        assert len(ops) == len({(o.rid, o.stamp, o.node) for o in ops}) == 8
        assert k.store.dump() == hub.dump()
        k.close()


def test_urls_tried_in_order_and_once_waits_for_acks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with served_hub(tmp_path) as (hub, url):
        k = Kiosk(tmp_path, "k", hub, "A")
        k.store.checkin(name="Ada")
        data = k.store.data
        k.close()
        dead = ["tcp://127.0.0.1:1", "/nonexistent/tty"]
        args = argparse.Namespace(data=data, hub=[*dead, url],
                                  once=True, baud=None, timeout=20.0, interval=1.0, json=True,
                                  link_interval=1.0, keepalive=120.0)
        assert cmd_sync(args) == 0
        assert len(list(hub.store.all_ops())) == 2
    out, err = capsys.readouterr()
    # The two dead URLs failed once each, in the order given, before the hub's.
    failures = [line for line in err.splitlines() if line.startswith("haven-kiosk sync: ")]
    assert len(failures) == 1, err
    tried = re.findall(r"(?:^haven-kiosk sync: |; )([^\s;]+): ", failures[0])
    assert tried == dead, failures[0]
    assert json.loads(out.strip().splitlines()[-1])["url"] == url
