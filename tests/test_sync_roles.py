"""The kiosk's and the hub's roles of a sync round (protocol.sync.conversation), driven
against each other in memory: no socket, no SQLite, no clock. Each side's storage is a
small dictionary-backed fake of the role's storage interface; the keys, certificates,
signatures, hashes and deltas are real. The real storage paths are covered by
test_sync_security, test_sync_resume and test_sync_restore."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import os
from collections.abc import Mapping
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from protocol import messages
from protocol.crdt.clock import DEFAULT_MAX_AHEAD_MS, pack
from protocol.crdt.delta import Delta, encode
from protocol.crdt.replica import Replica
from protocol.errors import RemoteProtocolError
from protocol.sync import batches as sync
from protocol.sync import certificate as cert_mod
from protocol.sync import conversation, hub_round
from protocol.sync.checks import check_remote_delta, check_remote_deltas
from protocol.sync.conversation import BatchRefused, HubSync, KioskSync, Reply

NOW = 1_790_000_000_000  #: the one time both sides are given (ms since 1970)
NOTE = 6  #: the note type; its field 2 is free text
HUB_NODE = 0x48554221  #: the node the hub's own writes would carry


# Storage fakes -----------------------------------------------------------------------

class KioskMemory:
    """``KioskStorage`` in dictionaries: a chain, an outbox and what was merged."""

    def __init__(self, node: int) -> None:
        self.replica = Replica(node)
        self.written: dict[int, tuple[int, bytes]] = {}  #: entry -> (lane, delta), forever
        self.outbox: dict[int, tuple[int, bytes]] = {}
        self.refused: set[int] = set()
        self.chain: dict[int, bytes] = {}  #: seq -> hash, saved or adopted
        self.unacked: dict[int, tuple[sync.Batch, list[int]]] = {}
        self.acked_seqs: set[int] = set()
        self.merged: list[bytes] = []
        self.cursor_ = 0
        self.offset = 0
        self.held = 0  #: our last batch the hub holds
        self.foreign = 0
        self.kiosk_number: int | None = None
        self.alert: str | None = None
        self.label: int | None = None
        self.arrived: dict[int, int | None] = {}  #: batch seq -> the ack's ``arrived``
        # Scopes (tests/test_sync_scopes.py drives them)
        self.scope: Any = None
        self.stable: int | None = None
        self.sum: bytes | None = None  #: what the hello says we hold
        self.owed = False
        self.partial: tuple[int, int, list[bytes]] | None = None
        self.snapshots: list[tuple[list[bytes], int, int]] = []  #: (deltas, upto, version)
        self.stale: list[bytes] = []
        self.replaced: list[tuple[list[bytes], list[bytes]]] = []

    def write(self, text: str, lane: int = 3) -> int:
        entry = len(self.written) + 1
        data = self.replica.put(os.urandom(16), "note", NOW, values={"text": text})
        self.written[entry] = self.outbox[entry] = (lane, data)
        return entry

    def queue_raw(self, data: bytes, lane: int = 3) -> int:
        entry = len(self.written) + 1
        self.written[entry] = self.outbox[entry] = (lane, data)
        return entry

    # KioskStorage
    def head(self) -> tuple[int, bytes]:
        if not self.chain:
            return 0, sync.GENESIS
        seq = max(self.chain)
        return seq, self.chain[seq]

    def acked_head(self) -> int:
        return max(self.acked_seqs, default=0)

    def saved_hash(self, seq: int) -> bytes | None:
        return self.chain.get(seq)

    def cursor(self) -> int:
        return self.cursor_

    def version_vector(self) -> dict[int, int]:
        return self.replica.seen.to_wire()

    def unacked_batch(self) -> tuple[sync.Batch, list[int]] | None:
        return self.unacked[min(self.unacked)] if self.unacked else None

    def next_writes(self) -> list[tuple[int, int, bytes]]:
        return [(e, lane, data) for e, (lane, data) in sorted(self.outbox.items())][:50]

    def save_batch(self, batch: sync.Batch, entries: list[int]) -> None:
        assert self.head() == (batch.seq - 1, batch.prev), "the chain moved under this batch"
        self.chain[batch.seq] = batch.hash
        self.unacked[batch.seq] = (batch, entries)

    def adopt(self, seq: int, hash_: bytes) -> None:
        self.chain[seq] = hash_
        self.acked_seqs.add(seq)

    def rewind(self, seq: int, acked: int) -> None:
        for s in [s for s in self.chain if s > seq]:
            self.chain.pop(s)
            self.unacked.pop(s, None)
            self.acked_seqs.discard(s)
        for entry, item in self.written.items():  # every write not queued, again
            if entry not in self.outbox and entry not in self.refused:
                self.outbox[entry] = item

    def acked(self, seq: int, kept: list[int], quarantined: list[int],
              arrived: int | None) -> None:
        self.arrived[seq] = arrived
        for entry in kept + quarantined:
            self.outbox.pop(entry, None)
        self.refused.update(quarantined)
        self.unacked.pop(seq, None)
        self.acked_seqs.add(seq)

    def merge(self, deltas: list[bytes], cursor: int) -> None:
        self.merged.extend(deltas)
        self.cursor_ = cursor

    def note_clock_offset(self, offset_ms: int) -> None:
        self.offset = offset_ms

    def unacked_batches(self) -> list[tuple[sync.Batch, list[int]]]:
        return [self.unacked[seq] for seq in sorted(self.unacked)]

    def next_writes_besides(self, skip: set[int]) -> list[tuple[int, int, bytes]]:
        return [(e, lane, data) for e, (lane, data) in sorted(self.outbox.items())
                if e not in skip][:50]

    def held_upto(self) -> int:
        return self.held

    def note_held(self, seq: int) -> None:
        self.held = max(self.held, seq)
        self.alert = self.alert or "suspected-clone"

    def note_alert(self, code: str, label: int | None, held: bool) -> None:
        self.alert = None if code == "clone-cleared" else code
        self.label = self.label if label is None else label

    def queue_label(self) -> int | None:
        return self.label if self.alert else None

    def note_kiosk_number(self, number: int) -> None:
        self.kiosk_number = number if self.kiosk_number is None else self.kiosk_number

    def revocations_number(self) -> int:
        return 0  # technicians' revocation lists: tests/test_technician_sync.py

    def note_revocations(self, doc: bytes) -> None:
        pass

    def owns(self, writes: list[tuple[bytes, int]]) -> bool:
        mine = set()
        for _, data in self.written.values():
            with contextlib.suppress(RemoteProtocolError):
                d = check_remote_delta(data, NOW)
                mine.add((d.record_id, d.stamp))
        return all(w in mine for w in writes)

    def note_foreign_adopt(self) -> int:
        self.foreign += 1
        return self.foreign

    def scope_checksum(self) -> bytes | None:
        return None if self.outbox or self.scope is None else self.sum

    def note_scope(self, scope: Any, stable: int | None) -> None:
        self.scope, self.stable = scope, stable

    def note_stable(self, stable: int) -> None:
        if self.scope is not None:
            self.stable = stable

    def rebase_owed(self) -> bool:
        return self.owed

    def partial_snapshot(self) -> tuple[int, int, list[bytes]] | None:
        return self.partial

    def keep_partial(self, partial: tuple[int, int, list[bytes]] | None) -> None:
        self.partial = partial

    def note_rebase(self) -> None:
        self.owed = True

    def rebase(self, deltas: list[bytes], upto: int, hub_sum: bytes, version: int = 2,
               lost: int | None = None) -> None:
        if hub_sum != self.sum_of(deltas, version):
            raise conversation.SnapshotRefused("the snapshot's checksum disagrees")
        self.snapshots.append((deltas, upto, version))
        self.cursor_, self.owed = upto, False

    @staticmethod
    def sum_of(deltas: list[bytes], version: int = 2) -> bytes:
        """A stand-in for the scope's checksum (``version`` 1: the one kiosks before it
        send): the store's is tests/test_store_*."""
        return hashlib.sha256(bytes([version]) + b"".join(sorted(deltas))).digest()

    def stale_records(self) -> list[bytes]:
        return list(self.stale)

    def replace_records(self, deltas: list[bytes], rids: list[bytes], upto: int | None,
                        ) -> None:
        self.replaced.append((deltas, rids))
        self.stale = [rid for rid in self.stale if rid not in rids]


@dataclasses.dataclass(frozen=True)
class Record:
    device_id: str
    node: int
    x25519: bytes
    ed25519: bytes
    state: str = "approved"
    last_seq: int = 0
    last_hash: bytes = sync.GENESIS
    suspected_clone: int = 0
    clone_labels: int = 0
    clone_mark: int = 0
    kiosk_number: int | None = None
    site: str = "North"
    role: str = "full"
    window_days: int = 30
    role_since: int | None = None
    last_seen: int | None = None


class HubMemory:
    """``HubStorage`` in dictionaries: kiosks, committed batches, deltas by arrival."""

    def __init__(self) -> None:
        self.devices: dict[str, Record] = {}
        self.batches: dict[tuple[str, int], tuple[bytes, list[int]]] = {}
        #: (node, stamp, record) -> (arrival, delta): each write once, as the hub keeps it
        self.ops: dict[tuple[int, int, bytes], tuple[int, bytes]] = {}
        self.quarantine: list[tuple[str, int, str]] = []  #: device, seq, code
        self.commits = 0
        self.events: list[tuple[str | None, str]] = []
        self.pulls: list[int] = []
        self.held: dict[bytes, tuple[str, int, sync.Batch]] = {}  #: hash -> device, branch
        self.batch_writes: dict[tuple[str, int], list[tuple[bytes, int, int]]] = {}
        self.arrivals: dict[tuple[str, int], int | None] = {}  #: batch -> its ack's arrived
        self.acked: dict[str, int] = {}  #: kiosk -> the greatest cursor it said it holds

    def add_local(self, data: bytes) -> None:
        """A delta written elsewhere (another kiosk, the hub's own)."""
        delta = check_remote_delta(data, NOW)
        self.ops.setdefault((delta.node, delta.stamp, delta.record_id), (len(self.ops) + 1, data))

    def codes(self) -> list[str]:
        return [code for _, code in self.events]

    # HubStorage
    def device(self, device_id: str) -> Record | None:
        return self.devices.get(device_id)

    def batch_hash(self, device_id: str, seq: int) -> bytes | None:
        got = self.batches.get((device_id, seq))
        return got[0] if got else None

    def batch_quarantined(self, device_id: str, seq: int) -> list[int]:
        return list(self.batches[(device_id, seq)][1])

    def commit_batch(self, device_id: str, seq: int, hash_: bytes,
                     good: list[tuple[Delta, bytes]], bad: list[tuple[str, str, bytes]],
                     now: int, quarantined: list[int], follows: bytes | None = None,
                     ) -> int | None:
        self.commits += 1
        self.batch_writes[(device_id, seq)] = [(d.record_id, d.stamp, d.node) for d, _ in good
                                               if (d.node, d.stamp, d.record_id) not in self.ops]
        before = len(self.ops)
        for delta, data in good:
            self.ops.setdefault((delta.node, delta.stamp, delta.record_id),
                                (len(self.ops) + 1, data))
        self.arrivals[(device_id, seq)] = len(self.ops) if len(self.ops) > before else None
        self.quarantine += [(device_id, seq, code) for code, _, _ in bad]
        self.batches[(device_id, seq)] = (hash_, list(quarantined))
        self.devices[device_id] = dataclasses.replace(
            self.devices[device_id], last_seq=seq, last_hash=hash_)
        return self.arrivals[(device_id, seq)]

    def batch_arrived(self, device_id: str, seq: int) -> int | None:
        return self.arrivals.get((device_id, seq))

    def erasure_records(self, rids: list[bytes]) -> set[bytes]:
        return set()

    def head(self) -> int:
        return len(self.ops)

    def own_node(self) -> int:
        return HUB_NODE

    def _upto(self, cursor: int, node: int | None = None) -> list[tuple[int, bytes, bytes]]:
        """(arrival, record, delta) arrived by ``cursor`` or written by ``node``."""
        return sorted((arrival, rid, data) for (n, _, rid), (arrival, data) in self.ops.items()
                      if arrival <= cursor or n == node)

    def snapshot(self, scope: Any, cursor: int, upto: int, rids: list[bytes] | None,
                 max_bytes: int) -> tuple[list[bytes], int, bool]:
        """Every scope is the whole fleet's here (scopes: tests/test_hub_scopes.py)."""
        out: list[bytes] = []
        last = cursor
        for arrival, rid, data in self._upto(upto):
            if arrival <= cursor or rids is not None and rid not in rids:
                continue
            if out and sum(map(len, out)) + len(data) > max_bytes:
                return out, last, True
            out.append(data)
            last = arrival
        return out, upto, False

    def scope_sums(self, scope: Any, cursor: int, node: int | None = None,
                   versions: tuple[int, ...] = (2, 1)) -> dict[int, bytes]:
        """``KioskMemory.sum_of`` the deltas held by ``cursor`` and ``node``'s."""
        held = [data for _, _, data in self._upto(cursor, node)]
        return {v: KioskMemory.sum_of(held, v) for v in versions}

    def stable_point(self, role: str, site: str) -> int:
        return min(self.acked.values(), default=0)

    def changes_since(self, cursor: int, exclude_node: int | None, max_bytes: int,
                      scope: Any = None, split: Any = None) -> tuple[list[bytes], int, bool]:
        self.pulls.append(cursor)
        out: list[bytes] = []
        size, last = 0, cursor
        for (node, _, _), (arrival, data) in sorted(self.ops.items(), key=lambda kv: kv[1][0]):
            if arrival <= cursor:
                continue
            if node != exclude_node:
                if out and size + len(data) > max_bytes:
                    return out, last, True
                out.append(data)
                size += len(data)
            last = arrival
        return out, last, False

    def version_vector(self) -> dict[int, int]:
        vv: dict[int, int] = {}
        for node, stamp, _ in self.ops:
            vv[node] = max(vv.get(node, 0), stamp)
        return vv

    def seen(self, device_id: str, now: int, cursor: int | None = None,
             vv: Mapping[Any, Any] | None = None) -> None:
        if cursor is not None:
            self.acked[device_id] = max(self.acked.get(device_id, 0), cursor)

    def log(self, device_id: str | None, code: str, detail: str, now: int) -> None:
        self.events.append((device_id, code))

    def is_held(self, device_id: str, hash_: bytes) -> bool:
        return self.held.get(hash_, ("",))[0] == device_id

    def held_hashes(self, device_id: str, seq: int) -> list[bytes]:
        return [h for h, (d, _, b) in self.held.items() if d == device_id and b.seq == seq]

    def hold_batch(self, device_id: str, batch: sync.Batch, now: int,
                   ) -> tuple[int, bool, bool]:
        if batch.hash in self.held:
            return self.held[batch.hash][1], False, False
        mine = [(br, b) for d, br, b in self.held.values() if d == device_id]
        follows = self.held[batch.prev][1] if batch.prev in self.held else None
        if follows is not None and any(br == follows and b.seq == batch.seq
                                       for br, b in mine):
            follows = None  # that branch has a batch under this sequence: another copy
        branch = follows or 1 + max((br for br, _ in mine), default=0)
        self.held[batch.hash] = (device_id, branch, batch)
        return branch, True, follows is None

    def suspect_clone(self, device_id: str, detail: str, now: int) -> None:
        dev = self.devices[device_id]
        self.devices[device_id] = dataclasses.replace(dev, suspected_clone=1,
                                                      clone_mark=dev.clone_labels)
        self.events.append((device_id, "suspected-clone"))

    def writes_since_batch(self, device_id: str, seq: int, node: int, limit: int,
                           ) -> list[tuple[bytes, int]]:
        if (device_id, seq) not in self.batch_writes:
            return []
        later = [w for (d, s), ws in sorted(self.batch_writes.items()) if d == device_id
                 and s >= seq for w in ws]
        return [(rid, stamp) for rid, stamp, n in later if n == node][-limit:]

    def technician_revocations(self) -> tuple[int, bytes] | None:
        return None

    def issue_label(self, device_id: str) -> int:
        dev = self.devices[device_id]
        self.devices[device_id] = dataclasses.replace(dev, clone_labels=dev.clone_labels + 1)
        return dev.clone_labels + 1


# A fleet of one hub and its kiosks -----------------------------------------------------

class Fleet:
    def __init__(self) -> None:
        self.hub_ed = Ed25519PrivateKey.generate()
        self.hub_x = X25519PrivateKey.generate().public_key().public_bytes_raw()
        self.hub = HubMemory()

    def enrol(self, node: int) -> Kiosk:
        x_key, ed_key = X25519PrivateKey.generate(), Ed25519PrivateKey.generate()
        req = cert_mod.read_request(cert_mod.make_request(node, "North", "A", x_key, ed_key))
        raw = cert_mod.issue(req, self.hub_ed, self.hub_x, os.urandom(32), "A", NOW, node)
        kiosk = Kiosk(self, node, raw, x_key.public_key().public_bytes_raw(), ed_key)
        self.hub.devices[kiosk.device] = Record(kiosk.device, node, kiosk.x25519,
                                                ed_key.public_key().public_bytes_raw())
        return kiosk

    def hub_role(self, kiosk: Kiosk, hub: HubMemory | None = None,
                 remote: bytes | None = None) -> HubSync:
        return HubSync(hub or self.hub, self.hub_ed.public_key().public_bytes_raw(),
                       kiosk.x25519 if remote is None else remote)


@dataclasses.dataclass
class Kiosk:
    fleet: Fleet
    node: int
    cert: bytes
    x25519: bytes
    key: Ed25519PrivateKey
    storage: KioskMemory = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.storage = KioskMemory(self.node)

    @property
    def device(self) -> str:
        return cert_mod.device_id(self.node)

    def role(self, storage: KioskMemory | None = None) -> KioskSync:
        return KioskSync(storage or self.storage, cert=self.cert, device=self.device,
                         key=self.key)


def names(replies: list[Reply]) -> list[str]:
    return [messages.decode(data).name for _, data in replies]


def converse(kiosk: KioskSync, hub: HubSync, *, drop: frozenset[str] = frozenset(),
             limit: int = 10_000) -> list[tuple[str, str]]:
    """Run a round to its end in memory: every message each side sends is delivered
    to the other, in order, except those named in ``drop`` (lost on the way to the
    kiosk). Returns the transcript: (direction, message name)."""
    seen: list[tuple[str, str]] = []
    to_hub = [data for _, data in kiosk.hello(NOW)]
    steps = 0
    while to_hub:
        steps += 1
        assert steps < limit, "the round does not end"
        data = to_hub.pop(0)
        seen.append((">", messages.decode(data).name))
        for _, reply in hub.receive_data(data, NOW):
            name = messages.decode(reply).name
            seen.append(("<", name))
            if name not in drop:
                to_hub += [d for _, d in kiosk.receive_data(reply, NOW)]
    return seen


def batch_msg(b: sync.Batch) -> bytes:
    return messages.encode(messages.make("sync-batch", seq=b.seq, payload=b.payload, sig=b.sig))


def welcomed(fleet: Fleet, kiosk: Kiosk) -> HubSync:
    hub = fleet.hub_role(kiosk)
    (_, welcome), = hub.receive_data(kiosk.role().hello(NOW)[0][1], NOW)
    assert messages.decode(welcome).name == "sync-welcome"
    return hub


def reply_of(hub: HubSync, data: bytes) -> messages.Message:
    (_, reply), = hub.receive_data(data, NOW)
    return messages.decode(reply)


# The round -----------------------------------------------------------------------------

def test_a_round_pushes_batch_by_batch_and_pulls_page_by_page(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hub_round, "CHANGES_BYTES", 1024)  # pages of at most 1 KiB
    fleet = Fleet()
    k, other = fleet.enrol(1), fleet.enrol(2)
    for i in range(120):
        k.storage.write(f"ours {i}")
    theirs = [other.storage.replica.put(os.urandom(16), "note", NOW, values={"text": f"t{i}"})
              for i in range(150)]
    for data in theirs:
        fleet.hub.add_local(data)
    role = k.role()
    seen = converse(role, fleet.hub_role(k))
    assert role.done and role.in_flight is None
    assert k.storage.outbox == {} and k.storage.head()[0] == 3  # 50 + 50 + 20
    assert seen.count((">", "sync-batch")) == seen.count(("<", "sync-ack")) == 3
    # Every page but the last said more, and the next pull started at its cursor.
    assert len(fleet.hub.pulls) > 2 and fleet.hub.pulls == sorted(set(fleet.hub.pulls))
    assert sorted(k.storage.merged) == sorted(theirs)  # theirs, once; never our own back
    assert k.storage.cursor_ == len(fleet.hub.ops)
    assert fleet.hub.devices[k.device].last_seq == 3
    assert len(fleet.hub.ops) == 270


def test_lost_checkpoints_adopt_the_hubs_and_the_chain_goes_on() -> None:
    """The batch is saved without an fsync: a power cut after the hub committed it
    takes it from the kiosk. The welcome's checkpoint becomes the head."""
    fleet = Fleet()
    k = fleet.enrol(1)
    for i in range(3):
        k.storage.write(f"n{i}")
    seen = converse(k.role(), fleet.hub_role(k), drop=frozenset({"sync-ack"}))
    assert (">", "sync-batch") in seen and k.storage.unacked  # committed, never acked
    committed = fleet.hub.devices[k.device].last_hash
    k.storage.chain.clear()  # what the power cut took
    k.storage.unacked.clear()
    k.storage.write("after")
    role = k.role()
    converse(role, fleet.hub_role(k))
    assert role.done and k.storage.outbox == {}
    assert k.storage.chain[1] == committed and k.storage.head()[0] == 2
    assert fleet.hub.devices[k.device].last_seq == 2
    assert fleet.hub.batch_hash(k.device, 1) == committed
    assert len(fleet.hub.ops) == 4  # the 3 sent twice are kept once


def test_a_hub_restored_from_a_backup_gets_back_what_it_lost() -> None:
    fleet = Fleet()
    k = fleet.enrol(1)
    k.storage.write("before the backup")
    converse(k.role(), fleet.hub_role(k))
    backup = copy.deepcopy(fleet.hub)
    k.storage.write("after the backup")
    converse(k.role(), fleet.hub_role(k))
    assert k.storage.acked_head() == 2 and len(fleet.hub.ops) == 2
    fleet.hub = backup  # the disk is replaced by the night's backup: batch 2 is gone
    k.storage.write("after the restore")
    role = k.role()
    seen = converse(role, fleet.hub_role(k))
    assert role.done and ("<", "sync-reject") not in seen
    assert len(fleet.hub.ops) == 3  # what it lost came back, once
    assert fleet.hub.devices[k.device].last_seq == 2  # the chain went on from seq 1
    assert k.storage.head() == (2, fleet.hub.devices[k.device].last_hash)


# The hub's checks of a batch -----------------------------------------------------------

def test_a_duplicate_batch_is_acked_again_and_not_applied() -> None:
    fleet = Fleet()
    k = fleet.enrol(1)
    k.storage.write("once")
    k.storage.queue_raw(b"\xff")  # quarantined, so the ack carries a list
    converse(k.role(), fleet.hub_role(k), drop=frozenset({"sync-ack"}))
    assert fleet.hub.commits == 1 and k.storage.unacked
    role = k.role()
    seen = converse(role, fleet.hub_role(k))  # the same bytes again
    assert role.done and ("<", "sync-ack") in seen and ("<", "sync-reject") not in seen
    assert fleet.hub.commits == 1 and len(fleet.hub.ops) == 1
    assert fleet.hub.codes().count("duplicate") == 1
    assert k.storage.refused == {2} and k.storage.outbox == {}  # the list came again


def test_a_second_batch_under_a_committed_sequence_is_held_not_applied() -> None:
    """Signed by the kiosk over the hub's own chain, yet not the batch committed under
    that number: the kiosk's key signed two batches 1. Held, and the kiosk flagged."""
    fleet = Fleet()
    k = fleet.enrol(1)
    k.storage.write("one")
    converse(k.role(), fleet.hub_role(k))
    hub = welcomed(fleet, k)
    other = sync.make_batch(k.key, k.device, 1, sync.GENESIS,
                            [k.storage.replica.put(os.urandom(16), "note", NOW)])
    (_, alert), (_, reply) = hub.receive_data(batch_msg(other), NOW)
    reply_msg = messages.decode(reply)
    assert reply_msg.name == "sync-reject" and reply_msg.get("reason") == "held"
    assert messages.decode(alert).get("held") is True
    assert fleet.hub.commits == 1 and len(fleet.hub.ops) == 1
    assert [b.seq for _, _, b in fleet.hub.held.values()] == [1]
    assert fleet.hub.codes().count("suspected-clone") == 1


@pytest.mark.parametrize("how", ["another key", "changed payload", "another chain"])
def test_a_forged_batch_is_refused(how: str) -> None:
    fleet = Fleet()
    k = fleet.enrol(1)
    hub = welcomed(fleet, k)
    deltas = [k.storage.replica.put(os.urandom(16), "note", NOW)]
    good = sync.make_batch(k.key, k.device, 1, sync.GENESIS, deltas)
    forged = {
        "another key": sync.make_batch(Ed25519PrivateKey.generate(), k.device, 1,
                                       sync.GENESIS, deltas),
        "changed payload": sync.Batch(1, sync.GENESIS, sync.pack(deltas * 2), good.sig),
        "another chain": sync.make_batch(k.key, k.device, 1, b"\x01" * 32, deltas),
    }[how]
    reply = reply_of(hub, batch_msg(forged))
    assert (reply.name, reply.get("reason")) == ("sync-reject", "forged")
    assert fleet.hub.commits == 0 and fleet.hub.ops == {}
    assert reply_of(hub, batch_msg(good)).name == "sync-ack"


def test_a_batch_out_of_the_chain_is_refused() -> None:
    fleet = Fleet()
    k = fleet.enrol(1)
    hub = welcomed(fleet, k)
    deltas = [k.storage.replica.put(os.urandom(16), "note", NOW)]
    for seq in (0, 2):
        reply = reply_of(hub, batch_msg(sync.make_batch(k.key, k.device, seq, sync.GENESIS,
                                                        deltas)))
        assert (reply.name, reply.get("reason")) == ("sync-reject", "out-of-chain")
    assert fleet.hub.commits == 0


def test_bad_deltas_are_quarantined_and_the_rest_committed() -> None:
    fleet = Fleet()
    k, stranger = fleet.enrol(1), fleet.enrol(2)
    good = k.storage.write("good")
    k.storage.queue_raw(stranger.storage.replica.put(os.urandom(16), "note", NOW))
    ahead = pack(NOW + DEFAULT_MAX_AHEAD_MS + 1)
    k.storage.queue_raw(encode(Delta(os.urandom(16), NOTE, k.node, ahead, set={2: "late"})))
    k.storage.queue_raw(encode(Delta(os.urandom(16), NOTE, k.node, pack(NOW), set={2: 7})))
    k.storage.queue_raw(b"\xa0")  # a map, but no delta
    last = k.storage.write("also good")
    sent = []
    hub = fleet.hub_role(k)
    role = k.role()
    (_, welcome), = hub.receive_data(role.hello(NOW)[0][1], NOW)
    for _, data in role.receive_data(welcome, NOW):
        sent.append(data)
    batch = next(d for d in sent if messages.decode(d).name == "sync-batch")
    ack = reply_of(hub, batch)
    assert ack.name == "sync-ack" and ack.get("quarantined") == [1, 2, 3, 4]
    assert [code for _, _, code in fleet.hub.quarantine][:3] == [
        "foreign-node", "clock-ahead", "field-value"]
    assert len(fleet.hub.quarantine) == 4 and len(fleet.hub.ops) == 2
    role.receive_data(messages.encode(ack), NOW)
    assert k.storage.refused == {2, 3, 4, 5} and k.storage.outbox == {}
    assert good not in k.storage.refused and last not in k.storage.refused
    assert "quarantined" in fleet.hub.codes()


# The kiosk's handling of acks ------------------------------------------------------------

def test_an_ack_for_another_sequence_removes_nothing() -> None:
    fleet = Fleet()
    k = fleet.enrol(1)
    k.storage.write("a")
    k.storage.write("b")
    hub, role = fleet.hub_role(k), k.role()
    (_, welcome), = hub.receive_data(role.hello(NOW)[0][1], NOW)
    batch = next(d for _, d in role.receive_data(welcome, NOW)
                 if messages.decode(d).name == "sync-batch")
    assert role.in_flight is not None and role.in_flight[0] == 1
    for other in (0, 2):
        stale = messages.encode(messages.make("sync-ack", seq=other, quarantined=[0]))
        assert role.receive_data(stale, NOW) == []
        assert len(k.storage.outbox) == 2 and k.storage.unacked and not k.storage.refused
        assert role.in_flight is not None
    ack = reply_of(hub, batch)
    assert role.receive_data(messages.encode(ack), NOW) == []
    assert k.storage.outbox == {} and role.in_flight is None and role.done is False
    # A second ack for the same batch, now that none is in flight, removes nothing.
    k.storage.write("c")
    assert names(role.push()) == ["sync-batch"]
    assert role.receive_data(messages.encode(ack), NOW) == []
    assert len(k.storage.outbox) == 1


def test_a_reject_ends_the_round_with_its_reason() -> None:
    role = Fleet().enrol(1).role()
    reject = messages.encode(messages.make("sync-reject", seq=1, reason="replay", detail="x"))
    with pytest.raises(BatchRefused, match="refused batch 1: replay") as info:
        role.receive_data(reject, NOW)
    assert info.value.code == "replay"


# The hello ----------------------------------------------------------------------------

def test_the_hello_turns_away_strangers_borrowed_certificates_and_revoked_kiosks() -> None:
    fleet = Fleet()
    k = fleet.enrol(1)
    hello = k.role().hello(NOW)[0][1]
    stranger_hub = Fleet()
    cases = {
        "bad-certificate": HubSync(fleet.hub, stranger_hub.hub_ed.public_key()
                                   .public_bytes_raw(), k.x25519),
        "wrong-certificate": fleet.hub_role(k, remote=os.urandom(32)),
    }
    for reason, hub in cases.items():
        assert hub.receive_data(hello, NOW) == [] and hub.close is not None
        assert hub.close[0] == reason and hub.device is None
    batch = batch_msg(sync.make_batch(k.key, k.device, 1, sync.GENESIS, []))
    first = fleet.hub_role(k)
    assert first.receive_data(batch, NOW) == [] and first.close is not None
    assert first.close[0] == "protocol"  # the hello comes first
    garbage = fleet.hub_role(k)
    assert garbage.receive_data(b"\xff\x00", NOW) == [] and garbage.close is not None
    assert garbage.close[0] == "protocol"
    for state, reason in (("revoked", "revoked"), ("pending", "unapproved")):
        fleet.hub.devices[k.device] = dataclasses.replace(fleet.hub.devices[k.device],
                                                          state=state)
        hub = fleet.hub_role(k)
        assert hub.receive_data(hello, NOW) == [] and hub.close is not None
        assert hub.close[0] == reason
    # Revoked between the hello and a batch: turned away at the batch.
    fleet.hub.devices[k.device] = dataclasses.replace(fleet.hub.devices[k.device],
                                                      state="approved")
    hub = welcomed(fleet, k)
    fleet.hub.devices[k.device] = dataclasses.replace(fleet.hub.devices[k.device],
                                                      state="revoked")
    assert hub.receive_data(batch, NOW) == [] and hub.close is not None
    assert hub.close[0] == "revoked" and fleet.hub.commits == 0


# One check for both sides --------------------------------------------------------------

def test_one_check_serves_both_sides() -> None:
    """The hub names the node a kiosk must write as; the kiosk takes any node's writes
    from the hub. Both refuse a stamp too far ahead and a misfit field, one by one or in
    a batch, with the same codes."""
    other = Replica(9).put(os.urandom(16), "note", NOW, values={"text": "x"})
    ahead = encode(Delta(os.urandom(16), NOTE, 1, pack(NOW + DEFAULT_MAX_AHEAD_MS + 1)))
    edge = encode(Delta(os.urandom(16), NOTE, 1, pack(NOW + DEFAULT_MAX_AHEAD_MS, 0xFFFF)))
    misfit = encode(Delta(os.urandom(16), NOTE, 1, pack(NOW), set={2: 7}))
    assert check_remote_delta(other, NOW).node == 9
    assert check_remote_delta(edge, NOW).node == 1
    with pytest.raises(RemoteProtocolError) as info:
        check_remote_delta(other, NOW, node=1)
    assert info.value.code == "foreign-node"
    codes = []
    for data in (ahead, misfit, b"\x00"):
        with pytest.raises(RemoteProtocolError) as info:
            check_remote_delta(data, NOW)
        codes.append(info.value.code)
    assert codes[:2] == ["clock-ahead", "field-value"]
    many = check_remote_deltas([other, ahead, edge, misfit, b"\x00"], NOW)
    assert [getattr(x, "code", None) for x in many] == [None, *codes[:1], None, *codes[1:]]
    one, = check_remote_deltas([other], NOW, max_ahead_ms=0)
    assert isinstance(one, Delta) and one.node == 9


def test_a_round_on_a_session_kept_open_starts_without_a_hello() -> None:
    """The hub's role lives as long as the session; the next round's kiosk role starts
    with ``again`` (a pull and the next batch), and the hub serves it without a hello."""
    fleet = Fleet()
    k, other = fleet.enrol(1), fleet.enrol(2)
    k.storage.write("first round")
    hub = fleet.hub_role(k)
    converse(k.role(), hub)
    k.storage.write("second round")
    fleet.hub.add_local(other.storage.replica.put(os.urandom(16), "note", NOW))
    role = k.role()
    to_hub = [data for _, data in role.again()]
    assert [messages.decode(d).name for d in to_hub] == ["sync-pull", "sync-batch"]
    while to_hub:
        for _, reply in hub.receive_data(to_hub.pop(0), NOW):
            to_hub += [d for _, d in role.receive_data(reply, NOW)]
    assert role.done and hub.close is None and k.storage.outbox == {}
    assert fleet.hub.devices[k.device].last_seq == 2 and len(k.storage.merged) == 1


# Clones (SPEC.md "Clones") -----------------------------------------------------------

def saved(k: Kiosk, storage: KioskMemory, text: str) -> sync.Batch:
    """A write signed as the storage's next batch and saved, never sent: a kiosk cut
    off between saving its batch and its round."""
    entry = storage.write(text)
    seq, prev = storage.head()
    batch = sync.make_batch(k.key, k.device, seq + 1, prev, [storage.outbox[entry][1]], 3)
    storage.save_batch(batch, [entry])
    return batch


def two_cards(fleet: Fleet) -> tuple[Kiosk, KioskMemory]:
    """A kiosk with batch 1 committed, and a copy of its data folder; then the kiosk
    commits batch 2, which the copy never sees."""
    k = fleet.enrol(1)
    k.storage.write("one")
    converse(k.role(), fleet.hub_role(k))
    clone = copy.deepcopy(k.storage)
    k.storage.write("two")
    converse(k.role(), fleet.hub_role(k))
    assert fleet.hub.devices[k.device].last_seq == 2
    return k, clone


def alerts(seen: list[tuple[str, str]]) -> int:
    return seen.count(("<", "sync-alert"))


def clean(fleet: Fleet) -> bool:
    """Nothing held, nobody flagged, no clone logged."""
    return (not fleet.hub.held and "suspected-clone" not in fleet.hub.codes()
            and not any(d.suspected_clone for d in fleet.hub.devices.values()))


def test_a_hello_naming_another_batch_under_a_committed_sequence_is_a_clone() -> None:
    fleet = Fleet()
    k, clone = two_cards(fleet)
    mine = saved(k, clone, "the copy's")  # batch 2 of the copy, not the hub's
    seen = converse(k.role(clone), fleet.hub_role(k))
    # Told before the welcome, whose checkpoint (ahead of it) the copy must not adopt.
    assert seen[:3] == [(">", "sync-hello"), ("<", "sync-alert"), ("<", "sync-welcome")]
    assert ("<", "sync-reject") in seen and clone.held == 2 and clone.alert
    assert (clone.alert, clone.label) == ("suspected-clone", 1)
    assert list(fleet.hub.held) == [mine.hash] and fleet.hub.commits == 2
    assert len(clone.outbox) == 1  # held there, still queued here
    assert fleet.hub.codes().count("suspected-clone") == 1
    # The copy writes on: its next batch follows its own chain, held on its branch.
    clone.write("later")
    converse(k.role(clone), fleet.hub_role(k))
    assert sorted((b.seq, br) for _, br, b in fleet.hub.held.values()) == [(2, 1), (3, 1)]
    assert fleet.hub.commits == 2 and clone.label == 1
    # The other card is told too, with another label, and goes on as before.
    k.storage.write("three")
    seen = converse(k.role(), fleet.hub_role(k))
    assert alerts(seen) == 1 and k.storage.alert == "suspected-clone"
    assert k.storage.label == 2 and k.storage.outbox == {} and k.storage.held == 0
    assert fleet.hub.devices[k.device].last_seq == 3


def test_a_batch_over_the_hubs_chain_on_a_session_kept_open_is_a_clone() -> None:
    """Both cards at batch 1; one commits batch 2; the other, on a session opened
    before, signs its own batch 2 over the hub's batch 1."""
    fleet = Fleet()
    k = fleet.enrol(1)
    k.storage.write("one")
    converse(k.role(), fleet.hub_role(k))
    clone = copy.deepcopy(k.storage)
    clone_hub = welcomed(fleet, k)  # the copy's session, open since batch 1
    k.storage.write("two")
    converse(k.role(), fleet.hub_role(k))
    clone.write("the copy's")
    role = k.role(clone)
    to_hub = [d for _, d in role.again()]
    seen = []
    while to_hub:
        for _, reply in clone_hub.receive_data(to_hub.pop(0), NOW):
            seen.append(messages.decode(reply).name)
            to_hub += [d for _, d in role.receive_data(reply, NOW)]
    assert "sync-alert" in seen and "sync-reject" in seen and role.done and role.forked
    assert clone.held == 2 and len(clone.outbox) == 1 and fleet.hub.commits == 2
    assert fleet.hub.codes().count("suspected-clone") == 1


def test_a_kiosk_that_finds_the_hubs_checkpoint_not_its_own_sends_its_batches_to_be_held(
        ) -> None:
    """The copy is ahead of the hub (its batches 2 and 3 saved, unsent): its hello
    proves nothing, but the welcome's batch 2 is not its own. Its batches go, with
    their previous hashes; the first contradicts the hub's batch 2."""
    fleet = Fleet()
    k, clone = two_cards(fleet)
    b2, b3 = saved(k, clone, "x"), saved(k, clone, "y")
    role = k.role(clone)
    seen = converse(role, fleet.hub_role(k))
    assert role.done and role.forked and alerts(seen) == 1
    assert seen.count(("<", "sync-reject")) == 2
    assert set(fleet.hub.held) == {b2.hash, b3.hash}
    assert {br for _, br, _ in fleet.hub.held.values()} == {1}
    assert clone.held == 3 and len(clone.outbox) == 2 and fleet.hub.commits == 2
    assert fleet.hub.codes().count("suspected-clone") == 1


def test_copies_syncing_in_turn_are_caught_at_the_second_checkpoint_they_did_not_write(
        ) -> None:
    """Each copy in turn finds the hub's checkpoint ahead with the other's writes after
    its own head. The first time may be a card restored from a backup (it adopts);
    the second is a copy: it signs its own batch over its head instead, which the hub
    holds as the second batch under that sequence."""
    fleet = Fleet()
    k = fleet.enrol(1)
    k.storage.write("one")
    converse(k.role(), fleet.hub_role(k))
    clone = copy.deepcopy(k.storage)
    for storage, text in ((k.storage, "a1"), (clone, "b1"), (k.storage, "a2")):
        storage.write(text)
        converse(k.role(storage), fleet.hub_role(k))
    assert clean(fleet) and fleet.hub.devices[k.device].last_seq == 4
    assert (clone.foreign, k.storage.foreign) == (1, 1)
    clone.write("b2")
    role = k.role(clone)
    seen = converse(role, fleet.hub_role(k))
    assert role.forked and clone.foreign == 2 and ("<", "sync-reject") in seen
    assert fleet.hub.devices[k.device].suspected_clone and fleet.hub.commits == 4
    assert [(b.seq, br) for _, br, b in fleet.hub.held.values()] == [(4, 1)]
    assert len(clone.outbox) == 1 and clone.alert == "suspected-clone"
    seen = converse(k.role(), fleet.hub_role(k))
    assert alerts(seen) == 1 and k.storage.label != clone.label


def test_labels_are_never_given_twice_and_go_stale_at_each_detection() -> None:
    fleet = Fleet()
    k, clone = two_cards(fleet)
    third = copy.deepcopy(k.storage)  # a copy of the kiosk as it is now
    saved(k, clone, "the copy's")
    converse(k.role(clone), fleet.hub_role(k))
    converse(k.role(), fleet.hub_role(k))
    converse(k.role(third), fleet.hub_role(k))  # the same state as k: told apart by label
    labels = [clone.label, k.storage.label, third.label]
    assert labels == [1, 2, 3]
    # Each keeps its label at its next hello...
    for storage in (clone, k.storage, third):
        converse(k.role(storage), fleet.hub_role(k))
    assert [clone.label, k.storage.label, third.label] == labels
    # ... until another copy is caught: the third one signs its own batch 3.
    k.storage.write("three")
    converse(k.role(), fleet.hub_role(k))
    saved(k, third, "the third's")
    converse(k.role(third), fleet.hub_role(k))
    assert fleet.hub.codes().count("suspected-clone") == 2 and third.label == 4
    converse(k.role(), fleet.hub_role(k))
    assert k.storage.label == 5 and len({clone.label, k.storage.label, third.label}) == 3


def test_a_copy_of_a_held_copy_is_caught_on_a_branch_of_its_own() -> None:
    """The held copy's folder is copied again (its queue label with it): the second
    batch held after one held batch is one more copy, and every label goes stale."""
    fleet = Fleet()
    k, clone = two_cards(fleet)
    saved(k, clone, "the copy's")
    converse(k.role(clone), fleet.hub_role(k))
    third = copy.deepcopy(clone)
    assert third.label == clone.label == 1
    for storage, text in ((clone, "c1"), (third, "t1")):
        storage.write(text)
        converse(k.role(storage), fleet.hub_role(k))
    assert sorted((b.seq, br) for _, br, b in fleet.hub.held.values()) == [
        (2, 1), (3, 1), (3, 2)]
    assert fleet.hub.codes().count("suspected-clone") == 2
    converse(k.role(clone), fleet.hub_role(k))
    assert third.label not in (None, 1) and clone.label not in (None, 1, third.label)
    assert fleet.hub.commits == 2


def test_a_cleared_flag_is_told_once_and_the_label_stays() -> None:
    fleet = Fleet()
    k, clone = two_cards(fleet)
    saved(k, clone, "the copy's")
    converse(k.role(clone), fleet.hub_role(k))
    converse(k.role(), fleet.hub_role(k))
    assert k.storage.alert == "suspected-clone" and k.storage.label == 2
    fleet.hub.devices[k.device] = dataclasses.replace(fleet.hub.devices[k.device],
                                                      suspected_clone=0)
    seen = converse(k.role(), fleet.hub_role(k))
    assert alerts(seen) == 1 and k.storage.alert is None and k.storage.label == 2
    assert alerts(converse(k.role(), fleet.hub_role(k))) == 0


def test_a_label_the_hub_never_gave_is_replaced() -> None:
    fleet = Fleet()
    k, clone = two_cards(fleet)
    saved(k, clone, "the copy's")
    converse(k.role(clone), fleet.hub_role(k))
    k.storage.alert, k.storage.label = "suspected-clone", 7  # not one the hub gave
    converse(k.role(), fleet.hub_role(k))
    assert k.storage.label == 2 and clone.label == 1


# Legitimate rewinds are not clones ------------------------------------------------------

def test_a_hub_restored_from_a_backup_is_not_a_clone() -> None:
    """The kiosk goes back to the hub's checkpoint and signs its later writes again,
    as new batches under numbers the restored hub never had."""
    fleet = Fleet()
    k = fleet.enrol(1)
    for text in ("a", "b"):
        k.storage.write(text)
        converse(k.role(), fleet.hub_role(k))
    backup = copy.deepcopy(fleet.hub)
    for text in ("c", "d"):
        k.storage.write(text)
        converse(k.role(), fleet.hub_role(k))
    fleet.hub = backup
    k.storage.write("e")
    seen = converse(k.role(), fleet.hub_role(k))
    assert alerts(seen) == 0 and ("<", "sync-reject") not in seen and clean(fleet)
    assert len(fleet.hub.ops) == 5 and k.storage.outbox == {}
    assert k.storage.alert is None and k.storage.held == 0


def test_a_checkpoint_adopted_after_a_power_cut_is_not_a_clone() -> None:
    """The kiosk's saved batches (no fsync) are lost after the hub committed them."""
    fleet = Fleet()
    k = fleet.enrol(1)
    k.storage.write("a")
    converse(k.role(), fleet.hub_role(k))
    for text in ("b", "c"):
        k.storage.write(text)
    converse(k.role(), fleet.hub_role(k), drop=frozenset({"sync-ack"}))
    k.storage.chain.pop(2)  # what the power cut took
    k.storage.unacked.clear()
    k.storage.write("d")
    seen = converse(k.role(), fleet.hub_role(k))
    assert alerts(seen) == 0 and ("<", "sync-reject") not in seen and clean(fleet)
    assert fleet.hub.devices[k.device].last_seq == 3 and len(fleet.hub.ops) == 4
    assert k.storage.foreign == 0  # the writes after its head were its own


def test_an_sd_card_restored_from_a_backup_is_not_a_clone() -> None:
    """The card goes back to a night's backup taken with batch 2 saved, unsent; the
    kiosk had gone on to batch 4 before its card died."""
    fleet = Fleet()
    k = fleet.enrol(1)
    k.storage.write("a")
    converse(k.role(), fleet.hub_role(k))
    saved(k, k.storage, "b")
    backup = copy.deepcopy(k.storage)
    for text in ("c", "d"):
        converse(k.role(), fleet.hub_role(k))
        k.storage.write(text)
    converse(k.role(), fleet.hub_role(k))
    assert fleet.hub.devices[k.device].last_seq == 4
    k.storage = backup
    k.storage.write("after the restore")
    seen = converse(k.role(), fleet.hub_role(k))  # its saved batch 2 again, then adopts
    assert alerts(seen) == 0 and ("<", "sync-reject") not in seen and clean(fleet)
    assert fleet.hub.devices[k.device].last_seq == 5 and k.storage.outbox == {}
    assert k.storage.foreign == 1  # the lost writes of batches 3 and 4, once


# Revocation (DESIGN contract 3) ---------------------------------------------------------

def test_nothing_is_served_after_a_revocation() -> None:
    fleet = Fleet()
    k, other = fleet.enrol(1), fleet.enrol(2)
    hub = welcomed(fleet, k)
    fleet.hub.devices[k.device] = dataclasses.replace(fleet.hub.devices[k.device],
                                                      state="revoked")
    fleet.hub.add_local(other.storage.replica.put(os.urandom(16), "note", NOW))
    pull = messages.encode(messages.make("sync-pull", cursor=0))
    assert hub.receive_data(pull, NOW) == [] and hub.close is not None
    assert hub.close[0] == "revoked" and fleet.hub.pulls == []
    assert hub.receive_data(pull, NOW) == [] and fleet.hub.pulls == []
