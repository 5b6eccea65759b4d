"""Technicians' revocations and the hub's time reach a kiosk with sync, over TCP."""

from __future__ import annotations

from pathlib import Path

import pytest

from device.tech.revocations import RevocationList
from device.tech.trusted_time import SYNC, TrustedClock
from host.hub import technician
from protocol import messages
from protocol.sync import credential as c
from protocol.sync.conversation import HubSync

from .test_sync_helpers import Kiosk, served_hub

pytestmark = pytest.mark.usefixtures("hub_backend")


def test_a_revocation_reaches_the_kiosk_at_its_next_sync_once(tmp_path: Path) -> None:
    with served_hub(tmp_path) as (hub, url):
        kiosk = Kiosk(tmp_path, "a", hub, "A")
        try:
            held = RevocationList(kiosk.store.data, hub.ed_public)
            kiosk.sync(url)  # no list at the hub yet: none is sent
            assert held.current() is None
            now = TrustedClock(kiosk.store.data).now()
            assert now is not None and now.source == SYNC and now.exact

            _, doc = technician.issue(hub, name="Amina", sites=["North"])
            serial = c.read_technician(c.load_file(doc).certificate, hub.ed_public).serial
            technician.revoke(hub, serial)
            kiosk.sync(url)
            assert held.number == 2 and held.serials == {serial}

            # the hello now names list 2: the welcome carries no list
            role = HubSync(hub.store, hub.ed_public, kiosk.ident.cert.x25519)
            hello = messages.make("sync-hello", cert=kiosk.cert, vv={}, cursor=0, seq=0,
                                  hash=bytes(32), revs=held.number)
            welcome = [messages.decode(m) for _, m in role.receive(hello, 1)
                       if messages.decode(m).name == "sync-welcome"]
            assert len(welcome) == 1 and welcome[0].get("revs") is None
        finally:
            kiosk.close()
