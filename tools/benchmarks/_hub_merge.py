"""Child of the ``hub-merge`` benchmark: commit kiosk batches into a new ``HubStore``.

Run as ``python -m tools.benchmarks._hub_merge DIR N BATCH SEED`` with the tree to
measure first on ``sys.path`` (this code, or the release before, ``git archive``d
with this file copied in: it uses only what both have). Prints one JSON line:
the deltas merged and the wall and CPU seconds ``commit_batch`` took for them.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sys
import time
import uuid
from pathlib import Path

from host.hub.storage import HubStore
from protocol.crdt.delta import decode
from protocol.crdt.replica import Replica

T0 = 1_796_400_000_000


def deltas(count: int, seed: int) -> list[bytes]:
    """Kiosk writes as a day brings them: a patient and a check-in per visit, their
    status changes, a prescription for some."""
    rng = random.Random(seed)
    writer = Replica(0x1234_5678)
    out: list[bytes] = []
    at = T0
    while len(out) < count:
        at += rng.randrange(1, 60_000)
        pid, cid = uuid.UUID(int=rng.getrandbits(128)).bytes, uuid.UUID(
            int=rng.getrandbits(128)).bytes
        name = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(14)).title()
        out.append(writer.put(pid, "patient", at, {"name": name, "birthDate": "1984-02-03",
                                                    "gender": "female"}))
        out.append(writer.put(cid, "checkin", at, {
            "subject": str(uuid.UUID(bytes=pid)), "status": "arrived",
            "periodStart": "2026-12-05T09:00:00Z", "location": "North",
            "queueNumber": f"A-{len(out) % 1000:03d}", "claimName": name}))
        out.append(writer.put(cid, "checkin", at + 1, {"status": "called"}))
        if rng.random() < 0.5:
            out.append(writer.put(uuid.UUID(int=rng.getrandbits(128)).bytes, "prescription",
                                  at + 2, {"subject": str(uuid.UUID(bytes=pid)),
                                           "medication": "Amoxicillin 500 mg",
                                           "dosageInstruction": "three times a day, 7 days"}))
    return out[:count]


def main(argv: list[str]) -> None:
    where, count, batch, seed = Path(argv[0]), int(argv[1]), int(argv[2]), int(argv[3])
    good = [(decode(d), d) for d in deltas(count, seed)]
    store = HubStore(where / "hub.db")
    wall = cpu = 0.0
    for seq, at in enumerate(range(0, len(good), batch), 1):
        part = good[at:at + batch]
        digest = hashlib.sha256(seq.to_bytes(8, "big")).digest()
        t, c = time.perf_counter(), time.process_time()
        store.commit_batch("12345678", seq, digest, part, [], T0, [])
        wall += time.perf_counter() - t
        cpu += time.process_time() - c
    size = sum(os.path.getsize(p) for p in where.iterdir() if p.name.startswith("hub.db"))
    out: dict[str, object] = {"deltas": len(good), "wall_s": wall, "cpu_s": cpu, "bytes": size}
    if hasattr(store, "rotate_key"):  # sealed at rest: a rotation's re-sealing, a slice a time
        while store.reseal_slice():
            pass
        store.rotate_key(T0)
        slices = []
        while True:
            t = time.perf_counter()
            more = store.reseal_slice()
            slices.append(time.perf_counter() - t)
            if not more:
                break
        out["reseal_slices_s"] = sorted(slices)
    store.close()
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1:])
