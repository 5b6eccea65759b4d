"""The hub refuses forged, replayed, tampered and out-of-chain batches, revoked kiosks and
borrowed certificates, logs each, and keeps serving the other kiosks."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from device import enrol
from device.sync.engine import Round, SyncRefused, run_round, wall_ms
from host.hub.peer import HubPeer
from protocol import messages
from protocol.sync import batches as sync

from .test_sync_helpers import Kiosk, served_hub

pytestmark = pytest.mark.usefixtures("hub_backend")


def _peer(hub: object, k: Kiosk) -> HubPeer:
    from host.hub.hub import Hub

    assert isinstance(hub, Hub)
    peer = HubPeer(hub.store, hub.ed_public, k.ident.cert.x25519, wall_ms)
    (_, hello), = Round(k.store, k.state, k.ident).hello()
    *_, (_, welcome) = peer.on_message(hello)  # after an alert, if any
    assert messages.decode(welcome).name == "sync-welcome"
    return peer


def _send(peer: HubPeer, b: sync.Batch) -> messages.Message:
    msg = messages.make("sync-batch", seq=b.seq, payload=b.payload, sig=b.sig)
    *_, (_, reply) = peer.on_message(messages.encode(msg))  # after an alert, if any
    return messages.decode(reply)


def test_bad_batches_are_refused_and_others_keep_syncing(tmp_path: Path) -> None:
    with served_hub(tmp_path) as (hub, url):
        evil, good = Kiosk(tmp_path, "e", hub, "E"), Kiosk(tmp_path, "g", hub, "G")
        evil.store.checkin(name="Eve")
        deltas = [e.data for e in evil.store.outbox_batch()]
        peer = _peer(hub, evil)
        dev = evil.device
        key = evil.ident.ed_key
        first = sync.make_batch(key, dev, 1, sync.GENESIS, deltas[:1])
        # Forged: signed by a key that is not the kiosk's.
        forged = sync.make_batch(Ed25519PrivateKey.generate(), dev, 1, sync.GENESIS, deltas)
        assert _send(peer, forged).get("reason") == "forged"
        # Tampered: a real batch with its payload changed.
        tampered = sync.Batch(1, sync.GENESIS, sync.pack(deltas), first.sig)
        assert _send(peer, tampered).get("reason") == "forged"
        # Out of chain: a gap, and a sequence before the first.
        assert _send(peer, sync.make_batch(key, dev, 3, sync.GENESIS, deltas)).get(
            "reason") == "out-of-chain"
        assert _send(peer, sync.make_batch(key, dev, 0, sync.GENESIS, deltas)).get(
            "reason") == "out-of-chain"
        # Signed by the kiosk, but on another chain: the hub hashes with its own previous
        # hash (it is not on the wire), so the signature does not verify.
        assert _send(peer, sync.make_batch(key, dev, 1, b"\x01" * 32, deltas)).get(
            "reason") == "forged"
        assert _send(peer, first).name == "sync-ack"
        # Replayed: the same batch again is acknowledged and applied once; another batch
        # under a used sequence number, signed by the kiosk, is held, not applied: two
        # kiosks run with one identity (SPEC.md "Clones").
        assert _send(peer, first).name == "sync-ack"
        assert _send(peer, sync.make_batch(key, dev, 1, sync.GENESIS, deltas[1:])).get(
            "reason") == "held"
        peer = _peer(hub, evil)  # that session holds all it gets from now on: a new one
        # A delta written by another node inside this kiosk's batch is quarantined.
        good.store.checkin(name="Gil")
        foreign = [e.data for e in good.store.outbox_batch()]
        second = sync.make_batch(key, dev, 2, first.hash, foreign + deltas[1:])
        ack = _send(peer, second)
        assert ack.name == "sync-ack" and ack.get("quarantined") == list(range(len(foreign)))
        assert ack.get("seq") == 2
        # Older batches sent again are recognised from the hub's own chain: acknowledged
        # (with their quarantine list), applied no more; batch 2 on a wrong link is not.
        assert _send(peer, first).get("seq") == 1
        assert _send(peer, second).get("quarantined") == list(range(len(foreign)))
        assert _send(peer, sync.make_batch(key, dev, 2, sync.GENESIS, deltas)).get(
            "reason") == "forged"
        assert _send(peer, sync.make_batch(key, dev, 2, first.hash, deltas)).get(
            "reason") == "held"
        assert len(list(hub.store.all_ops())) == len(deltas)
        codes = {e["code"] for e in hub.store.events()}
        assert {"forged", "out-of-chain", "held", "suspected-clone", "duplicate",
                "quarantined"} <= codes
        assert good.sync(url).pushed == len(foreign)
        evil.close()
        good.close()


def test_revoked_and_borrowed_certificates_are_refused(tmp_path: Path) -> None:
    with served_hub(tmp_path) as (hub, url):
        a, b, c = (Kiosk(tmp_path, n, hub, n.upper()) for n in "abc")
        for k in (a, b, c):
            k.store.checkin(name="X")
        hub.revoke(b.device)
        with pytest.raises(SyncRefused, match="revoked"):
            b.sync(url)
        # c presents a's certificate with its own key.
        borrowed = enrol.Identity(c.ident.x_key, c.ident.ed_key, a.ident.cert)
        with pytest.raises(SyncRefused, match="wrong-certificate"):
            run_round(c.store, c.state, borrowed, url, limit=10)
        assert a.sync(url).pushed == 2
        assert c.sync(url).pushed == 2
        codes = [e["code"] for e in hub.store.events()]
        assert "revoked" in codes and "wrong-certificate" in codes
        for k in (a, b, c):
            k.close()


def test_hub_quarantines_deltas_stamped_too_far_ahead(tmp_path: Path) -> None:
    with served_hub(tmp_path) as (hub, url):
        k = Kiosk(tmp_path, "k", hub, "A")
        k.store.put("note", values={}, now_ms=wall_ms() + 3600_000)  # an hour ahead
        s = k.sync(url)
        assert (s.pushed, s.quarantined) == (0, 1)
        assert [q["code"] for q in hub.store.quarantined()] == ["clock-ahead"]
        # The kiosk, told the hub's time, issued the write again (tests/test_quarantine_clocks.py).
        assert s.reissued == 1 and k.store.status()["outbox"]["quarantined"] == []
        k.close()


def test_an_ack_for_another_batch_removes_nothing(tmp_path: Path) -> None:
    with served_hub(tmp_path) as (hub, _):
        k = Kiosk(tmp_path, "k", hub, "A")
        k.store.checkin(name="Ada")
        peer = HubPeer(hub.store, hub.ed_public, k.ident.cert.x25519, wall_ms)
        rnd = Round(k.store, k.state, k.ident)
        (_, hello), = rnd.hello()
        (_, welcome), = peer.on_message(hello)
        sent = [d for _, d in rnd.on_message(welcome) if messages.decode(d).name == "sync-batch"]
        seq = messages.decode(sent[0]).get("seq")
        for other in (seq - 1, seq + 1):
            stale = messages.encode(messages.make("sync-ack", seq=other))
            assert rnd.on_message(stale) == []
            assert len(k.store.outbox_batch()) == 2 and len(k.state.pending()) == 1
        (_, ack), = peer.on_message(sent[0])
        rnd.on_message(ack)
        assert k.store.outbox_batch() == [] and k.state.pending() == []
        assert rnd.summary.pushed == 2
        k.close()


def test_a_session_revoked_after_its_hello_is_served_nothing_more(tmp_path: Path) -> None:
    """The hub reads the kiosk's record before every message after the hello: a pull
    or a document's transfer message after a revocation gets nothing (not even what
    another kiosk wrote since), and the session is closed with reason ``revoked``."""
    from host.hub.document_inbox import DOCUMENTS_DIR, DocumentInbox

    with served_hub(tmp_path) as (hub, url):
        k, other = Kiosk(tmp_path, "k", hub, "K"), Kiosk(tmp_path, "o", hub, "O")
        inbox = DocumentInbox(hub.data / DOCUMENTS_DIR, hub.store, wall_ms)
        peers = []
        for _ in range(2):
            peer = HubPeer(hub.store, hub.ed_public, k.ident.cert.x25519, wall_ms,
                           documents=inbox)
            (_, hello), = Round(k.store, k.state, k.ident).hello()
            assert messages.decode(peer.on_message(hello)[-1][1]).name == "sync-welcome"
            peers.append(peer)
        hub.revoke(k.device)
        other.store.checkin(name="Written after the revocation")
        assert other.sync(url).pushed == 2
        offer = messages.make("xfer-offer", xfer=0, object=b"\x00" * 32, size=1,
                              filename="0" * 32, count=1)
        for peer, msg in zip(peers, (messages.make("sync-pull", cursor=0), offer),
                             strict=True):
            assert peer.on_message(messages.encode(msg)) == []
            assert peer.sync.close is not None and peer.sync.close[0] == "revoked"
            assert peer.on_message(messages.encode(msg)) == []
        k.close()
        other.close()
