"""A transfer (protocol/transfer.py) run end to end in one process, under either
interpreter: a first transfer, a resumed one whose store holds half the chunks, and one
whose chunk is damaged on the way (asked for again). Prints what each end saw, one line
a run; tests/test_micropython_transfer.py requires the same lines from both."""

from protocol.chunking import ChunkParams
from protocol.transfer import MemoryStore, Receiver, Sender, build_manifest

PARAMS = ChunkParams(256, 1024, 4096)


def stream(seed: int, n: int) -> bytes:
    out, x = bytearray(n), seed
    for i in range(n):
        x = (x * 1103515245 + 12345) & 0x7FFFFFFF
        out[i] = x >> 16 & 0xFF
    return bytes(out)


def run(data: bytes, store: MemoryStore, damage: int = -1) -> str:
    manifest = build_manifest([data], "report.bin", PARAMS)
    sender = Sender(manifest, lambda offset, n: data[offset : offset + n], xfer=7,
                    part_size=700)
    receiver = Receiver(store)
    seen = []
    for _ in range(10_000):  # bounded: a transfer of this size takes far fewer steps
        msg = sender.next_message()
        back = receiver.messages_to_send()
        if msg is None and not back:
            break
        if msg is not None:
            if damage == 0 and msg[-1:] != b"\x00":
                msg = msg[:-1] + bytes([msg[-1] ^ 1])
            damage -= 1
            seen += receiver.receive(msg)
        for reply in back + receiver.messages_to_send():
            seen += sender.receive(reply)
    names = [type(e).__name__ for e in seen]
    s = receiver.stats
    return (f"{sender.state} {receiver.state} chunks {manifest.count} moved {s.chunks_moved}"
            f" reused {s.chunks_reused} rejected {s.rejected} stored"
            f" {names.count('ChunkStored')} complete {names.count('TransferComplete')}")


data = stream(1, 20_000)
print(run(data, MemoryStore()))
half, offset = MemoryStore(), 0
for i, (digest, length) in enumerate(build_manifest([data], "r", PARAMS).entries()):
    if i % 2 == 0:
        half.put(digest, data[offset : offset + length])
    offset += length
print(run(data, half))
print(run(data, MemoryStore(), damage=3))
