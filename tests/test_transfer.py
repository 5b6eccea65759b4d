"""Resumable chunked transfer: round trips, resume, deltas, corruption, bad input."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import messages
from protocol.chunking import ChunkParams, chunk_bytes, chunk_id
from protocol.errors import LocalProtocolError
from protocol.transfer import (
    MANIFEST_PIECE,
    MAX_MESSAGE,
    ChunkRejected,
    ChunkStored,
    Manifest,
    MemoryStore,
    OfferReceived,
    Receiver,
    ReceiverLimits,
    Sender,
    TransferAborted,
    TransferComplete,
    build_manifest,
    transfer_id,
)

SMALL = ChunkParams(256, 1024, 8192)
Tamper = Callable[[messages.Message], messages.Message | None]


class Link:
    """Wires a sender and a receiver in memory and counts what crosses."""

    def __init__(self, sender: Sender, receiver: Receiver) -> None:
        self.sender, self.receiver = sender, receiver
        self.events: list[object] = []
        self.sender_events: list[object] = []
        self.up = self.down = 0  # wire bytes each way
        self.data_messages = 0

    def run(self, *, max_data: int | None = None, tamper: Tamper | None = None) -> Link:
        while True:
            wire = self.sender.next_message()
            if wire is None:
                return self
            assert len(wire) <= MAX_MESSAGE
            msg = messages.decode(wire, max_size=MAX_MESSAGE)
            if msg.name == "xfer-data":
                if max_data is not None and self.data_messages >= max_data:
                    return self  # the link dies here
                self.data_messages += 1
            if tamper is not None:
                changed = tamper(msg)
                if changed is not None:
                    wire = messages.encode(changed)
            self.up += len(wire)
            self.events += self.receiver.receive(wire)
            for back in self.receiver.messages_to_send():
                self.down += len(back)
                self.sender_events += self.sender.receive(back)


def reader(data: bytes, reads: list[int] | None = None) -> Callable[[int, int], bytes]:
    def read(offset: int, length: int) -> bytes:
        if reads is not None:
            reads.append(length)
        return data[offset : offset + length]
    return read


def transfer(data: bytes, store: MemoryStore, *, name: str = "doc.pdf",
             params: ChunkParams = SMALL, **run_kwargs) -> Link:
    manifest = build_manifest([data], name, params)
    return Link(Sender(manifest, reader(data)), Receiver(store)).run(**run_kwargs)


def assembled(store: MemoryStore, manifest: Manifest) -> bytes:
    return b"".join(store.get(h) for h, _ in manifest.entries())


def of_type(events, cls):
    return [e for e in events if isinstance(e, cls)]


# --- round trips ---------------------------------------------------------------------


def test_round_trip_verifies():
    data = random.Random(1).randbytes(1 << 20)
    store = MemoryStore()
    manifest = build_manifest([data], "scan.tiff")
    link = Link(Sender(manifest, reader(data)), Receiver(store)).run()
    assert link.sender.is_done and link.receiver.state == "done"
    assert of_type(link.events, OfferReceived)[0].size == len(data)
    assert of_type(link.events, TransferComplete) == [
        TransferComplete("scan.tiff", len(data), manifest.object_hash)]
    assert of_type(link.sender_events, TransferComplete)
    assert len(of_type(link.events, ChunkStored)) == manifest.count
    assert assembled(store, manifest) == data
    assert link.receiver.manifest == manifest
    overhead = link.up - len(data)
    assert overhead < 0.01 * len(data), overhead  # manifest + envelopes, under 1%


def test_empty_object():
    store = MemoryStore()
    link = transfer(b"", store)
    assert link.sender.is_done and of_type(link.events, TransferComplete)


def test_manifest_in_pieces_and_parts():
    data = random.Random(2).randbytes(300_000)
    params = ChunkParams(64, 128, 4096)
    manifest = build_manifest([data], "many", params)
    assert manifest.count > 2 * MANIFEST_PIECE
    store = MemoryStore()
    reads: list[int] = []
    link = Link(Sender(manifest, reader(data, reads), part_size=100), Receiver(store)).run()
    assert link.sender.is_done and assembled(store, manifest) == data
    assert max(reads) <= params.max_size  # one chunk at a time
    assert len(manifest.hashes) + len(manifest.lengths) == 35 * manifest.count


def test_repeated_chunks_are_sent_once():
    data = bytes(1 << 20)  # every chunk the same
    store = MemoryStore()
    link = transfer(data, store)
    assert link.sender.is_done
    assert link.sender.stats.chunks_moved == 1 and store.puts == 1


def test_manifest_from_pieces_matches_whole():
    data = random.Random(3).randbytes(200_000)
    pieces = [data[i : i + 777] for i in range(0, len(data), 777)]
    assert build_manifest(pieces, "a", SMALL) == build_manifest([data], "a", SMALL)
    m = build_manifest([data], "a", SMALL)
    assert [h for h, _ in m.entries()] == [chunk_id(c) for c in chunk_bytes(data, SMALL)]


# --- resume and deltas ---------------------------------------------------------------


def test_interrupted_transfer_resumes_with_only_missing_chunks():
    data = random.Random(4).randbytes(1 << 20)
    store = MemoryStore()
    manifest = build_manifest([data], "big.bin", SMALL)
    first = Link(Sender(manifest, reader(data)), Receiver(store)).run(max_data=300)
    assert not first.sender.is_done and first.receiver.state == "receiving"
    stored = store.puts
    assert 0 < stored < manifest.count
    # Both processes died; new ones start over with the same durable store.
    second = Link(Sender(manifest, reader(data)), Receiver(store)).run()
    assert second.sender.is_done
    assert second.sender.stats.chunks_moved == manifest.count - stored
    assert second.receiver.stats.chunks_reused == stored
    assert assembled(store, manifest) == data


def edit(data: bytes, rng: random.Random, places: int, fraction: float) -> bytes:
    out = bytearray(data)
    size = int(len(data) * fraction / places)
    for k in range(places):
        pos = (k * len(data)) // places + rng.randrange(len(data) // places - size)
        out[pos : pos + size] = rng.randbytes(size)
    return bytes(out)


@pytest.mark.parametrize("params", [ChunkParams(), ChunkParams(512, 2048, 16384)],
                         ids=["8k", "2k"])
def test_new_version_sends_small_delta(params):
    moved = up = down = 0
    for seed in range(3):
        rng = random.Random(seed)
        v1 = rng.randbytes(1 << 20)
        v2 = edit(v1, rng, places=5, fraction=0.01)
        store = MemoryStore()
        transfer(v1, store, params=params)
        link = transfer(v2, store, params=params)
        assert link.sender.is_done and assembled(store, link.receiver.manifest) == v2
        assert link.receiver.stats.chunks_reused > 0.85 * link.receiver.stats.chunks_total
        moved += link.sender.stats.bytes_moved
        up, down = up + link.up, down + link.down
    print(f"\n1 MiB, 1% changed in 5 places, avg chunk {params.avg_size}, mean of 3: "
          f"{moved // 3} chunk bytes, {up // 3} bytes up, {down // 3} down")
    assert moved / 3 < 0.10 * (1 << 20)


# --- corruption ----------------------------------------------------------------------


def flip_first_data(times: int, index: int = 0) -> Tamper:
    """Flip a bit of chunk ``index``'s first data message, the first ``times`` times."""
    left = [times]

    def tamper(msg):
        if msg.name == "xfer-data" and msg.get("index") == index and left[0] > 0:
            left[0] -= 1
            data = bytearray(msg.get("data"))
            data[0] ^= 1
            return messages.Message(msg.type, {**msg.fields, 4: bytes(data)})
        return None
    return tamper


def test_corrupted_chunk_is_rejected_and_asked_again():
    data = random.Random(6).randbytes(50_000)
    store = MemoryStore()
    link = transfer(data, store, tamper=flip_first_data(1))
    assert of_type(link.events, ChunkRejected) == [ChunkRejected(0, "chunk-hash")]
    assert link.sender.is_done and link.receiver.stats.rejected == 1
    assert link.sender.stats.chunks_moved == link.sender.stats.chunks_total + 1


def test_persistent_corruption_fails_cleanly():
    data = random.Random(7).randbytes(50_000)
    store = MemoryStore()
    link = transfer(data, store, tamper=flip_first_data(100, index=2))
    failed = of_type(link.events, TransferAborted)
    assert failed == [TransferAborted("chunk-hash", failed[0].detail)]
    assert link.sender.state == "failed" and link.sender.failure is not None
    assert link.sender.failure.remote and link.sender.failure.reason == "chunk-hash"
    # The chunks before the damaged one were stored, each once; every chunk
    # kept is the content its id names, and the damaged chunk's id names nothing.
    ids = [h for h, _ in build_manifest([data], "doc.pdf", SMALL).entries()]
    assert all(chunk_id(chunk) == h for h, chunk in store.chunks.items())
    assert list(store.chunks) == ids[:2] and store.puts == 2
    assert not store.has(ids[2])


def test_duplicate_data_is_idempotent():
    data = random.Random(8).randbytes(20_000)
    manifest = build_manifest([data], "d", SMALL)
    store = MemoryStore()
    sender, receiver = Sender(manifest, reader(data), part_size=30_000), Receiver(store)
    sent = []
    while (wire := sender.next_message()) is not None:
        sent.append(wire)
        receiver.receive(wire)
        if messages.decode(wire).name == "xfer-data":
            assert receiver.receive(wire) == []  # the same chunk again
        for back in receiver.messages_to_send():
            sender.receive(back)
    assert receiver.state == "done" and sender.is_done
    assert store.puts == manifest.count
    assert receiver.stats.duplicates == manifest.count - 1  # the last came after done
    assert receiver.receive(sent[-1]) == [] and receiver.stats.ignored == 2


def test_source_changed_under_sender():
    data = bytearray(random.Random(9).randbytes(20_000))
    manifest = build_manifest([bytes(data)], "d", SMALL)
    sender, receiver = Sender(manifest, reader(data)), Receiver(MemoryStore())
    data[0] ^= 1
    events = []
    while (wire := sender.next_message()) is not None:
        assert messages.decode(wire).name != "xfer-data"  # nothing of the changed file
        events += receiver.receive(wire)
        for back in receiver.messages_to_send():
            sender.receive(back)
    assert sender.state == "failed" and sender.failure is not None
    assert sender.failure.reason == "source-changed"
    assert events[-1] == TransferAborted("source-changed", events[-1].detail, remote=True)


# --- bad input -------------------------------------------------------------------------


H = bytes(32)


def offered(size=1000, count=1, name="f", store=None, limits=None) -> Receiver:
    r = Receiver(store or MemoryStore(), limits=limits)
    events = r.receive(messages.encode(messages.make(
        "xfer-offer", xfer=1, object=H, size=size, filename=name, count=count)))
    assert r.state == "receiving", events
    return r


L1000 = (1000).to_bytes(3, "big")


def manifest_msg(start=0, hashes=H, lengths=L1000, xfer=1):
    return messages.make("xfer-manifest", xfer=xfer, start=start, hashes=hashes, lengths=lengths)


def data_msg(index=0, offset=0, data=b"x", xfer=1):
    return messages.make("xfer-data", xfer=xfer, index=index, offset=offset, data=data)


def expect_failure(receiver: Receiver, message, code: str) -> None:
    events = receiver.receive(message)
    assert len(events) == 1 and isinstance(events[0], TransferAborted), events
    assert events[0].reason == code, events[0]
    assert receiver.state == "failed"
    out = [messages.decode(m) for m in receiver.messages_to_send()]
    assert out[-1].name == "xfer-abort" and out[-1].get("reason") == code
    assert receiver.receive(message) == []  # a failed transfer ignores the rest


OFFER_CASES = [
    ({"size": 10, "count": 11}, "manifest-size"),
    ({"size": 10 << 20, "count": 1}, "manifest-size"),
    ({"size": 1 << 40, "count": 1 << 30}, "too-large"),
    ({"filename": "../etc/passwd"}, "bad-name"),
    ({"filename": ""}, "bad-name"),
    ({"filename": "a\nb"}, "bad-name"),
    ({"object": b"short"}, "bad-field"),
    ({"size": -1}, "bad-field"),
]


@pytest.mark.parametrize("change,code", OFFER_CASES)
def test_bad_offers(change, code):
    fields = {"xfer": 1, "object": H, "size": 1000, "filename": "f", "count": 1, **change}
    expect_failure(Receiver(MemoryStore()), messages.make("xfer-offer", **fields), code)


def test_bad_manifests():
    expect_failure(offered(), manifest_msg(start=1), "manifest-order")
    expect_failure(offered(), manifest_msg(hashes=H + b"x"), "manifest-format")
    expect_failure(offered(), manifest_msg(lengths=b"\x00\x03"), "manifest-format")
    expect_failure(offered(), manifest_msg(hashes=H * 2, lengths=bytes(6)), "manifest-count")
    expect_failure(offered(), manifest_msg(lengths=(999).to_bytes(3, "big")), "manifest-size")
    expect_failure(offered(), manifest_msg(lengths=(1001).to_bytes(3, "big")), "manifest-size")
    expect_failure(offered(), manifest_msg(lengths=bytes(3)), "chunk-size")
    expect_failure(Receiver(MemoryStore(), limits=ReceiverLimits(max_chunk=999)), messages.make(
        "xfer-offer", xfer=1, object=H, size=1000, filename="f", count=1), "manifest-size")
    expect_failure(offered(size=1000, count=2, limits=ReceiverLimits(max_chunk=999)),
                   manifest_msg(), "chunk-size")
    two = offered(size=2000, count=2)
    expect_failure(two, manifest_msg(hashes=H * 2, lengths=bytes([0, 3, 232, 0, 3, 231])),
                   "manifest-inconsistent")
    again = offered(size=2000, count=2)
    assert again.receive(manifest_msg()) == []
    expect_failure(again, manifest_msg(), "manifest-order")  # the same piece twice


def test_bad_data():
    expect_failure(offered(), data_msg(), "unknown-chunk")  # before its manifest entry
    r = offered()
    r.receive(manifest_msg())
    expect_failure(r, data_msg(data=bytes(1001)), "chunk-oversized")
    r = offered()
    r.receive(manifest_msg())
    expect_failure(r, data_msg(index=5), "unknown-chunk")
    r = offered()
    r.receive(manifest_msg())
    r.receive(data_msg(data=bytes(10)))
    expect_failure(r, data_msg(offset=20), "data-order")


def test_garbage_and_strangers():
    expect_failure(Receiver(MemoryStore()), b"\xff\x00garbage", "indefinite")
    expect_failure(Receiver(MemoryStore()), messages.encode(messages.make("ping", nonce=1)),
                   "unexpected-message")
    expect_failure(Receiver(MemoryStore()), messages.encode(data_msg()), "unexpected-message")
    expect_failure(offered(), manifest_msg(xfer=2), "xfer-id")
    expect_failure(offered(), messages.encode(messages.make(
        "xfer-offer", xfer=1, object=H, size=1, filename="f", count=1)), "unexpected-message")
    expect_failure(offered(), b"\xa1\x00\x18\x2b", "missing-field")  # xfer-data, no fields


def test_sender_refuses_bad_replies():
    data = random.Random(10).randbytes(5000)
    manifest = build_manifest([data], "s", SMALL)

    def fresh() -> Sender:
        s = Sender(manifest, reader(data), xfer=3)
        assert s.next_message() is not None
        return s

    def need(start, count, bitmap):
        return messages.encode(messages.make(
            "xfer-need", xfer=3, start=start, count=count, bitmap=bitmap))

    for bad in (need(0, manifest.count + 1, b"\xff"), need(0, 1, b"\x03"), need(0, 0, b""),
                messages.encode(messages.make("xfer-done", xfer=3, object=H)),
                messages.encode(messages.make("xfer-done", xfer=4, object=H)),
                b"\x00"):
        s = fresh()
        while s.state == "offering":
            s.next_message()
        events = s.receive(bad)
        assert s.state == "failed" and isinstance(events[0], TransferAborted), bad
        assert messages.decode(s.next_message() or b"").name == "xfer-abort"
        assert s.next_message() is None


def test_api_misuse():
    m = build_manifest([b"abc"], "f", SMALL)
    with pytest.raises(LocalProtocolError):
        Sender(m, reader(b"abc"), part_size=0)
    with pytest.raises(LocalProtocolError):
        Sender(Manifest(m.object_hash, 4, "f", m.hashes, m.lengths), reader(b"abc"))
    with pytest.raises(LocalProtocolError):
        build_manifest([b"abc"], "a/b")
    assert transfer_id(messages.make("ping", nonce=1)) is None
    assert transfer_id(data_msg(xfer=9)) == 9


# --- property: any starting store, any part size ----------------------------------------


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32), size=st.integers(0, 60_000),
       have=st.floats(0, 1), part=st.integers(1, 5000))
def test_any_store_any_parts(seed, size, have, part):
    rng = random.Random(seed)
    data = rng.randbytes(size)
    manifest = build_manifest([data], "p", SMALL)
    store = MemoryStore()
    for chunk in chunk_bytes(data, SMALL):
        if rng.random() < have:
            store.put(chunk_id(chunk), chunk)
    present = sum(store.has(h) for h in {h for h, _ in manifest.entries()})
    link = Link(Sender(manifest, reader(data), part_size=part), Receiver(store)).run()
    assert link.sender.is_done and assembled(store, manifest) == data
    distinct = len({h for h, _ in manifest.entries()})
    assert link.sender.stats.chunks_moved == distinct - present


# --- vectors (see tests/test_chunking.py) --------------------------------------------------


def build_message_vectors() -> list[dict]:
    from tests.test_chunking import counter_stream

    data = counter_stream(b"haven-xfer-vector", 3000)
    m = build_manifest([data], "note.txt", SMALL)
    first = m.chunk_length(0)
    examples = [
        ("xfer-offer", {"xfer": 7, "object": m.object_hash, "size": m.size, "filename": m.name,
                        "count": m.count}),
        ("xfer-manifest", {"xfer": 7, "start": 0, "hashes": m.hashes, "lengths": m.lengths}),
        ("xfer-need", {"xfer": 7, "start": 0, "count": m.count,
                       "bitmap": bytes([(1 << m.count) - 1])}),
        ("xfer-data", {"xfer": 7, "index": 0, "offset": 0, "data": data[:first]}),
        ("xfer-done", {"xfer": 7, "object": m.object_hash}),
        ("xfer-abort", {"xfer": 7, "reason": "chunk-hash", "detail": "chunk 0"}),
    ]
    out = []
    for name, fields in examples:
        wire = messages.encode(messages.make(name, **fields))
        out.append({"name": name, "cbor": wire.hex(), "fields": {
            k: v.hex() if isinstance(v, bytes) else v for k, v in fields.items()}})
    return out
