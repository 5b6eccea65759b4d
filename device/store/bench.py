"""Measure the store: ``python -m device.store.bench [--records N] [--checkins N]``.

Prints one JSON object: bytes of a single-field delta; CPU per durable
check-in (p50/p99) beside a bare sqlite3 INSERT + COMMIT at synchronous=FULL
in the same run; fsyncs per check-in (counted with strace when present);
bulk merge of N x 10 single-field deltas, persisted; check-in latency at
rest and while that merge runs; bytes on disk per check-in beside the same
data as plain JSON rows. Figures are ratios within one run: the machine is
shared and absolute times drift.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from protocol.crdt.clock import pack
from protocol.crdt.delta import Delta, encode
from protocol.crdt.replica import Replica

from .create import init_store

T0 = 1_790_000_000_000


def _q(xs: list[float], f: float) -> float:
    xs = sorted(xs)
    return round(xs[int(f * (len(xs) - 1))] * 1000, 3)


def checkin_cpu(root: Path, n: int) -> dict[str, Any]:
    store = init_store(root / "cpu", "Bench", "B")
    cpu = []
    for i in range(n):
        t = time.process_time()
        store.checkin(name=f"Person {i}", passport=f"P{i:08d}", birth_year=1950 + i % 50,
                      reason="fever", now_ms=T0 + i)
        cpu.append(time.process_time() - t)
    store.close()
    disk = sum(p.stat().st_size for p in (root / "cpu").iterdir() if p.is_file())
    conn = sqlite3.connect(root / "plain.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("CREATE TABLE t (id TEXT PRIMARY KEY, doc TEXT)")
    plain, json_bytes = [], 0
    for i in range(n):
        doc = json.dumps({"name": f"Person {i}", "passport": f"P{i:08d}", "reason": "fever",
                          "birthDate": str(1950 + i % 50), "queue": f"B-{i:03d}",
                          "status": "arrived", "site": "Bench"})
        json_bytes += len(doc) + 36
        t = time.process_time()
        conn.execute("BEGIN")
        conn.execute("INSERT INTO t VALUES (?, ?)", [str(uuid.uuid4()), doc])
        conn.execute("COMMIT")
        plain.append(time.process_time() - t)
    conn.close()
    plain_disk = sum(p.stat().st_size for p in root.glob("plain.db*"))
    return {"checkin_cpu_ms_p50": _q(cpu, .5), "checkin_cpu_ms_p99": _q(cpu, .99),
            "plain_insert_commit_cpu_ms_p50": _q(plain, .5),
            "plain_insert_commit_cpu_ms_p99": _q(plain, .99),
            "cpu_ratio_p50": round(_q(cpu, .5) / max(_q(plain, .5), 1e-6), 1),
            "store_bytes_per_checkin": disk // n, "plain_json_rows_bytes_per_checkin":
            plain_disk // n, "json_text_bytes_per_checkin": json_bytes // n}


def fsyncs_per_checkin(root: Path, n: int) -> float | None:
    strace = shutil.which("strace")
    if strace is None:
        return None
    counts = []
    for k in (0, n):
        data = root / f"fs{k}"
        init_store(data, "Bench", "B").close()
        code = (f"from device.store import Store\ns = Store({str(data)!r})\n"
                f"[s.checkin(name='P', now_ms={T0} + i) for i in range({k})]\ns.close()")
        out = root / f"trace{k}"
        subprocess.run([strace, "-f", "-c", "-e", "trace=fsync,fdatasync", "-o", str(out),
                        sys.executable, "-c", code], check=True, capture_output=True)
        total = sum(int(line.split()[3]) for line in out.read_text().splitlines()
                    if line.strip().endswith(("fsync", "fdatasync")))
        counts.append(total)
    return (counts[1] - counts[0]) / n


def bulk_merge(root: Path, records: int) -> dict[str, Any]:
    deltas = []
    stamp = pack(T0)
    for r in range(records):
        rid = uuid.UUID(int=r + 1).bytes
        for f in range(10):
            stamp += 1
            deltas.append(encode(Delta(rid, 6, 0x1234ABCD, stamp, set={2: f"value {r}-{f}"})))
    store = init_store(root / "merge", "Bench", "B")
    t = time.perf_counter()
    report = store.merge(deltas, now_ms=T0 + 10**6)
    elapsed = time.perf_counter() - t

    def latencies(n: int) -> list[float]:
        out = []
        for i in range(n):
            t0 = time.perf_counter()
            store.checkin(name=f"P{i}", now_ms=T0 + 10**6)
            out.append(time.perf_counter() - t0)
        return out

    rest = latencies(200)
    more = [encode(Delta(uuid.UUID(int=10**9 + i).bytes, 6, 0x1234ABCD, stamp + 1 + i,
                         set={2: f"w{i}"})) for i in range(len(deltas))]
    merging = threading.Thread(target=store.merge, args=(more,), kwargs={"now_ms": T0 + 10**6})
    merging.start()
    busy = latencies(200)
    merging.join()
    store.close()
    return {"merged_deltas": report.applied, "merge_seconds": round(elapsed, 3),
            "merge_deltas_per_s": round(len(deltas) / elapsed),
            "checkin_ms_p99_at_rest": _q(rest, .99), "checkin_ms_p99_during_merge": _q(busy, .99),
            "checkin_ms_p50_at_rest": _q(rest, .5), "checkin_ms_p50_during_merge": _q(busy, .5)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--checkins", type=int, default=1000)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="haven-bench-"))
    try:
        rep = Replica(0x1234ABCD)
        rid = uuid.uuid4().bytes
        rep.put(rid, "patient", T0, {"name": "Alice Smith"})
        size = len(rep.put(rid, "patient", T0 + 1, {"name": "Alice Smythe"}))
        result: dict[str, Any] = {"single_field_delta_bytes": size}
        result["fsyncs_per_checkin"] = fsyncs_per_checkin(root, 50)
        result.update(checkin_cpu(root, args.checkins))
        result.update(bulk_merge(root, args.records))
        print(json.dumps(result, indent=1))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
