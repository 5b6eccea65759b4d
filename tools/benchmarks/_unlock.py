"""The child of the ``unlock`` benchmark: one measurement in a process of its own.

``python -m tools.benchmarks._unlock DIR N CHECKINS`` makes a kiosk store under a
passphrase with scrypt n = ``N`` in ``DIR``, takes ``CHECKINS`` check-ins while
locked (each sealed and fsynced into ``pending.db``), then unlocks it, and prints
one JSON line: the unlock's seconds (scrypt and the key unwraps alone; then
``LockableStore.open``, the same with the store opened; then the merge of the
check-ins), the RSS before and the peak during
the unwrap (VmHWM reset after the imports), and each locked check-in's seconds.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from device.store import init_store, unlock
from device.store.locked import LockableStore

PASS = "correct horse battery staple"


def rss_kib() -> tuple[int, int]:
    lines = Path("/proc/self/status").read_text().splitlines()
    status = dict(line.split(":", 1) for line in lines)
    return int(status["VmRSS"].split()[0]), int(status["VmHWM"].split()[0])


def main(data: Path, n: int, count: int) -> dict[str, object]:
    data.mkdir(mode=0o700)
    keys = unlock.PassphraseKeys(data, unlock.create(data, PASS, b"F" * 32, n=n))
    init_store(data, "North", "B", key_provider=keys, fleet=keys).close()
    gate = LockableStore(data)
    took = []
    for i in range(count):
        start = time.perf_counter()
        gate.checkin(name=f"Patient Number{i}", birth_year=1950 + i % 60, reason="sick")
        took.append(time.perf_counter() - start)
    Path("/proc/self/clear_refs").write_text("5")
    before = rss_kib()[0]
    start = time.perf_counter()
    unlock.unwrap(data, PASS)
    unwrap_s = time.perf_counter() - start
    peak = rss_kib()[1]
    start = time.perf_counter()
    gate.open(PASS)
    open_s = time.perf_counter() - start
    start = time.perf_counter()
    merged = gate.merge_pending()
    merge_s = time.perf_counter() - start
    gate.close()
    return {"unwrap_s": unwrap_s, "open_s": open_s, "merge_s": merge_s,
            "merged": merged.merged,
            "rss_kib": before, "peak_kib": peak, "checkins_s": took}


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))))
