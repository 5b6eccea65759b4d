"""Measure the store beside its peers (run by ``./tools/bench store``).

Prints one JSON object. Every figure that is compared is compared with its
peer or baseline in the same run (the machine is shared and absolute times
drift); where it says ``best_of`` the figure is the best of that many runs,
peers and store alike.

* ``checkin``: CPU per durable check-in (patient + check-in + outbox entries,
  one transaction), p50/p99, beside a bare sqlite3 INSERT + COMMIT at
  synchronous=FULL; the two alternate, so both see the same noise. Bytes the
  process passed to ``write()`` per check-in, both sides; fsyncs per
  check-in, counted with strace when it is there.
* ``merge``: N records x 10 single-field updates from one seeded generator
  (``field_updates``), applied one at a time: by the store (as deltas, merged
  and persisted, sealed at rest), by pycrdt (Yjs) and by loro, each in
  memory; and by the peers as one merged update. Two shapes: ``fields``, ten
  different fields per record, and ``rewrites``, one field written ten times.
  The store's ten fields are numbers 24-33, which schema 1 does not know:
  they are kept and merged as registers like any other, only their values
  are not checked (a string check costs well under a microsecond).
* ``sqlite_only_per_s``: SQLite alone writing the rows such a merge writes,
  from prepared tuples (no decoding, no sealing, no Python merge logic): the
  ceiling the store's merge is under with this schema.
* ``latency``: check-in wall time, p50/p99, at rest and while a merge of
  N x 10 deltas runs on the writer thread; check-ins run back to back until
  the merge ends.
* ``delta_bytes``: one single-field update overwriting a 12-character string,
  before framing: the store's delta, pycrdt's and loro's update. (Automerge
  needs node; PEERS.md quotes 156 B for the same change, measured there.)
* ``disk``: database bytes per check-in beside the same data as JSON rows.

The peers come from the ``bench`` extra: ``pip install -e '.[bench]'``
(``./tools/bench store`` installs it).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from device.store.create import init_store
from protocol.crdt.clock import pack
from protocol.crdt.delta import Delta, encode
from protocol.crdt.replica import Replica

T0 = 1_790_000_000_000
NODE = 0x1234ABCD
NOTE = 6  # record type of the merged deltas
TEXT = 2  # the note's text field
NEW_FIELDS = 24  # first field number schema 1 does not know


class MissingPeers(RuntimeError):
    pass


def peers() -> tuple[ModuleType, ModuleType]:
    """pycrdt and loro, or a clear error saying how to install them."""
    try:
        import loro
        import pycrdt
    except ImportError as exc:
        raise MissingPeers(
            f"the benchmark's peers are missing ({exc.name}): run pip install -e '.[bench]'"
            " (the 'bench' extra in pyproject.toml), or ./tools/bench store, which"
            " installs it") from None
    return pycrdt, loro


def _q(xs: list[float], f: float) -> float:
    xs = sorted(xs)
    return round(xs[int(f * (len(xs) - 1))] * 1000, 3)


def _wchar() -> int:
    try:
        for line in Path("/proc/self/io").read_text().splitlines():
            if line.startswith("wchar:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


# The one data generator ----------------------------------------------------------------


def field_updates(records: int, fields: int, shape: str, seed: int = 7
                  ) -> list[tuple[int, int, str]]:
    """(record, field, value) in write order: ``fields`` updates per record.

    ``shape`` is ``fields`` (one update to each of ``fields`` fields) or
    ``rewrites`` (one field written ``fields`` times). Values are 12 characters."""
    rng = random.Random(seed)
    alphabet = "abcdefghijklmnopqrstuvwxyz"
    return [(r, f if shape == "fields" else 0, "".join(rng.choices(alphabet, k=12)))
            for r in range(records) for f in range(fields)]


def store_deltas(updates: list[tuple[int, int, str]], shape: str, seed: int = 7) -> list[bytes]:
    """The updates as store deltas: one write each, by one node, in causal order, to
    note records with random ids (``rewrites`` write the note's text)."""
    rng = random.Random(seed)
    rids: dict[int, bytes] = {}
    out = []
    stamp = pack(T0)
    for r, f, value in updates:
        rid = rids.get(r)
        if rid is None:
            rid = rids[r] = uuid.UUID(int=rng.getrandbits(128)).bytes
        stamp += 1
        field = TEXT if shape == "rewrites" else NEW_FIELDS + f
        out.append(encode(Delta(rid, NOTE, NODE, stamp, set={field: value})))
    return out


# Peers --------------------------------------------------------------------------------


def pycrdt_updates(pycrdt: ModuleType, updates: list[tuple[int, int, str]]
                   ) -> tuple[list[bytes], bytes]:
    """One Yjs update per assignment (a root map per record), and the doc's full update."""
    doc = pycrdt.Doc()
    out: list[bytes] = []
    sub = doc.observe(lambda event: out.append(event.update))
    maps: dict[int, Any] = {}
    for r, f, value in updates:
        m = maps.get(r)
        if m is None:
            m = maps[r] = doc.get(f"r{r}", type=pycrdt.Map)
        m[f"f{f}"] = value
    doc.unobserve(sub)
    return out, doc.get_update()


def _keep(into: list[bytes], update: bytes) -> bool:
    into.append(update)
    return True  # stay subscribed


def loro_updates(loro: ModuleType, updates: list[tuple[int, int, str]]
                 ) -> tuple[list[bytes], bytes]:
    """One Loro update per assignment (commit), and all of them exported as one."""
    doc = loro.LoroDoc()
    out: list[bytes] = []
    sub = doc.subscribe_local_update(lambda b: _keep(out, b))
    for r, f, value in updates:
        doc.get_map(f"r{r}").insert(f"f{f}", value)
        doc.commit()
    del sub
    return out, doc.export(loro.ExportMode.Updates(loro.VersionVector()))


def _best(runs: int, fn: Callable[[], float]) -> float:
    return min(fn() for _ in range(runs))


def peer_rates(updates: list[tuple[int, int, str]], runs: int) -> dict[str, Any]:
    pycrdt, loro = peers()
    y_each, y_all = pycrdt_updates(pycrdt, updates)
    l_each, l_all = loro_updates(loro, updates)

    def y_apply(items: list[bytes]) -> float:
        doc = pycrdt.Doc()
        t = time.perf_counter()
        for u in items:
            doc.apply_update(u)
        return time.perf_counter() - t

    def l_apply(items: list[bytes]) -> float:
        doc = loro.LoroDoc()
        t = time.perf_counter()
        for u in items:
            doc.import_(u)
        return time.perf_counter() - t

    n = len(updates)
    return {
        "pycrdt_per_s": round(n / _best(runs, lambda: y_apply(y_each))),
        "loro_per_s": round(n / _best(runs, lambda: l_apply(l_each))),
        "pycrdt_merged_per_s": round(n / _best(runs, lambda: y_apply([y_all]))),
        "loro_merged_per_s": round(n / _best(runs, lambda: l_apply([l_all]))),
        "pycrdt_update_bytes": round(sum(map(len, y_each)) / n, 1),
        "loro_update_bytes": round(sum(map(len, l_each)) / n, 1),
    }


def delta_bytes() -> dict[str, int]:
    pycrdt, loro = peers()
    rep = Replica(NODE)
    rid = uuid.UUID(int=1).bytes
    rep.put(rid, "patient", T0, {"name": "Alice Smith"})
    store = len(rep.put(rid, "patient", T0 + 1, {"name": "Alice Smythe"}))
    doc = pycrdt.Doc()
    m = doc.get("patient", type=pycrdt.Map)
    m["name"] = "Alice Smith"
    got: list[bytes] = []
    doc.observe(lambda event: got.append(event.update))
    m["name"] = "Alice Smythe"
    ldoc = loro.LoroDoc()
    lm = ldoc.get_map("patient")
    lm.insert("name", "Alice Smith")
    ldoc.commit()
    lgot: list[bytes] = []
    sub = ldoc.subscribe_local_update(lambda b: _keep(lgot, b))
    lm.insert("name", "Alice Smythe")
    ldoc.commit()
    del sub
    return {"store": store, "pycrdt": len(got[0]), "loro": len(lgot[0]),
            "automerge_quoted_from_PEERS_md": 156}


# The store ----------------------------------------------------------------------------


def store_merge_rate(root: Path, deltas: list[bytes], runs: int,
                     **merge_args: Any) -> dict[str, Any]:
    """Deltas merged per second into a new store (best and median of ``runs``);
    ``merge_args`` go to ``Store.merge``."""
    rates = []
    for i in range(runs):
        store = init_store(root / f"merge{i}", "Bench", "B")
        try:
            gc.collect()
            t = time.perf_counter()
            report = store.merge(deltas, now_ms=T0 + 10**6, **merge_args)
            rates.append(len(deltas) / (time.perf_counter() - t))
            if report.applied != len(deltas):
                raise AssertionError(f"merged {report.applied} of {len(deltas)}")
        finally:
            store.close()
        shutil.rmtree(root / f"merge{i}", ignore_errors=True)
    return {"per_s": round(max(rates)), "median_per_s": round(statistics.median(rates))}


def sqlite_only_rate(root: Path, deltas: list[bytes], runs: int,
                     registers_only: bool = False) -> int:
    """SQLite alone, writing the rows such a merge writes (write log, merged registers,
    record heads; random blobs the size of the sealed ones) from prepared tuples, in
    transactions of 600 and statements of 64: the ceiling under the store's Python.

    ``registers_only`` writes just the merged registers (one upsert per field value),
    the rows any design that merges registers in SQL must write."""
    from device.store.db import connect, migrate
    from device.store.materialise import FAST_RECORD, INSERT_OP, UPSERT_FIELD
    from protocol.crdt.delta import decode

    ops, fields, heads = [], [], {}
    for data in deltas:
        d = decode(data)
        ops.append((d.record_id, d.stamp, d.node, d.type, 0, os.urandom(len(data) + 28)))
        for k in d.set:
            fields.append((d.record_id, k, d.stamp, d.node, os.urandom(41)))
        heads[d.record_id] = (d.record_id, d.type, os.urandom(15))
    records = list(heads.values())
    best = 0.0
    for i in range(runs):
        db = connect(root / f"sqlite{i}.db")
        migrate(db)
        conn = db.conn
        t = time.perf_counter()
        for start in range(0, len(ops), 600):
            conn.execute("BEGIN IMMEDIATE")
            for k in range(start, min(start + 600, len(ops)), 64):
                conn.executemany(UPSERT_FIELD, fields[k:k + 64])
                if not registers_only:
                    conn.executemany(INSERT_OP, ops[k:k + 64])
                    conn.executemany(FAST_RECORD, records[k // 10:(k + 64) // 10])
            conn.execute("COMMIT")
        best = max(best, len(ops) / (time.perf_counter() - t))
        conn.close()
    return round(best)


def python_only_rate(deltas: list[bytes], runs: int) -> int:
    """The Python a merge cannot skip, without SQLite: strict decoding and checking of
    each delta (in the merge's chunks) and sealing each merged value with AES-GCM."""
    from device.store.inbox import CHUNK, _checked
    from device.store.keys import FieldCipher

    cipher = FieldCipher(os.urandom(32))
    best = 0.0
    for _ in range(runs):
        t = time.perf_counter()
        for i in range(0, len(deltas), CHUNK):
            good, _ = _checked(deltas[i:i + CHUNK], T0 + 10**6)
            cipher.seal_fields([(d.record_id, k, d.stamp, d.node, json.dumps(v).encode())
                                for d, _ in good for k, v in d.set.items()])
        best = max(best, len(deltas) / (time.perf_counter() - t))
    return round(best)


def checkin_cpu(root: Path, n: int) -> dict[str, Any]:
    store = init_store(root / "cpu", "Bench", "B")
    conn = sqlite3.connect(root / "plain.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("CREATE TABLE t (id TEXT PRIMARY KEY, doc TEXT)")
    cpu: list[float] = []
    plain: list[float] = []
    store_w = plain_w = json_bytes = 0
    for i in range(n):
        doc = json.dumps({"name": f"Person {i}", "passport": f"P{i:08d}", "reason": "fever",
                          "birthDate": str(1950 + i % 50), "queue": f"B-{i:03d}",
                          "status": "arrived", "site": "Bench"})
        json_bytes += len(doc) + 36
        w, t = _wchar(), time.process_time()
        conn.execute("BEGIN")
        conn.execute("INSERT INTO t VALUES (?, ?)", [str(uuid.uuid4()), doc])
        conn.execute("COMMIT")
        plain.append(time.process_time() - t)
        plain_w += _wchar() - w
        w, t = _wchar(), time.process_time()
        store.checkin(name=f"Person {i}", passport=f"P{i:08d}", birth_year=1950 + i % 50,
                      reason="fever", now_ms=T0 + i)
        cpu.append(time.process_time() - t)
        store_w += _wchar() - w
    store.close()
    conn.close()
    disk = sum(p.stat().st_size for p in (root / "cpu").iterdir() if p.is_file())
    plain_disk = sum(p.stat().st_size for p in root.glob("plain.db*"))
    return {"cpu_ms_p50": _q(cpu, .5), "cpu_ms_p99": _q(cpu, .99),
            "plain_cpu_ms_p50": _q(plain, .5), "plain_cpu_ms_p99": _q(plain, .99),
            "cpu_ratio_p50": round(_q(cpu, .5) / max(_q(plain, .5), 1e-6), 1),
            "cpu_ratio_p99": round(_q(cpu, .99) / max(_q(plain, .99), 1e-6), 1),
            "write_bytes": store_w // n, "plain_write_bytes": plain_w // n,
            "db_bytes": disk // n, "plain_json_rows_db_bytes": plain_disk // n,
            "json_text_bytes": json_bytes // n}


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


def latency_beside(store: Any, background: Callable[[], Any], rest: int,
                   now_ms: int = T0 + 10**6, gap_s: float = 0.0) -> dict[str, Any]:
    """Check-in wall times at rest (``rest`` of them), then for as long as
    ``background`` runs in another thread (20 at least); ``gap_s`` apart (0: back to
    back), at rest and busy alike."""

    def one(i: int) -> float:
        time.sleep(gap_s)
        t0 = time.perf_counter()
        store.checkin(name=f"P{i}", now_ms=now_ms)
        return time.perf_counter() - t0

    at_rest = [one(i) for i in range(rest)]
    working = threading.Thread(target=background)
    busy: list[float] = []
    t = time.perf_counter()
    working.start()
    while working.is_alive() or len(busy) < 20:
        busy.append(one(len(busy)))
    working.join()
    return {"p50_ms_at_rest": _q(at_rest, .5), "p99_ms_at_rest": _q(at_rest, .99),
            "p50_ms_busy": _q(busy, .5), "p99_ms_busy": _q(busy, .99),
            "p99_ratio": round(_q(busy, .99) / max(_q(at_rest, .99), 1e-6), 2),
            "checkins_busy": len(busy), "seconds": time.perf_counter() - t}


def latency_during_merge(root: Path, deltas: list[bytes], rest: int) -> dict[str, Any]:
    store = init_store(root / "latency", "Bench", "B")
    try:
        r = latency_beside(store, lambda: store.merge(deltas, now_ms=T0 + 10**6), rest)
    finally:
        store.close()
    return {"p50_ms_at_rest": r["p50_ms_at_rest"], "p99_ms_at_rest": r["p99_ms_at_rest"],
            "p50_ms_during_merge": r["p50_ms_busy"], "p99_ms_during_merge": r["p99_ms_busy"],
            "p99_ratio": r["p99_ratio"], "checkins_during_merge": r["checkins_busy"],
            "merge_per_s_with_checkins": round(len(deltas) / r["seconds"])}


def run(records: int = 10_000, checkins: int = 1000, runs: int = 3,
        log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="haven-bench-"))
    try:
        peers()  # fail early, and clearly, if they are missing
        result: dict[str, Any] = {"records": records, "updates": records * 10,
                                  "best_of": runs}
        log("delta bytes")
        result["delta_bytes"] = delta_bytes()
        log("fsyncs per check-in")
        result["fsyncs_per_checkin"] = fsyncs_per_checkin(root, 50)
        log(f"CPU per check-in ({checkins}, beside a bare INSERT + COMMIT)")
        result["checkin"] = checkin_cpu(root, checkins)
        for shape in ("fields", "rewrites"):
            updates = field_updates(records, 10, shape)
            deltas = store_deltas(updates, shape)
            log(f"merge, {shape}: peers")
            merge = peer_rates(updates, runs)
            log(f"merge, {shape}: store")
            merge.update({f"store_{k}": v for k, v in
                          store_merge_rate(root, deltas, runs).items()})
            log(f"merge, {shape}: SQLite alone")
            merge["sqlite_only_per_s"] = sqlite_only_rate(root, deltas, runs)
            merge["sqlite_registers_per_s"] = sqlite_only_rate(root, deltas, runs, True)
            merge["python_only_per_s"] = python_only_rate(deltas, runs)
            merge["store_over_pycrdt"] = round(merge["store_per_s"] / merge["pycrdt_per_s"], 2)
            merge["store_over_loro"] = round(merge["store_per_s"] / merge["loro_per_s"], 2)
            result[f"merge_{shape}"] = merge
        log("check-in latency during a merge")
        result["latency"] = latency_during_merge(
            root, store_deltas(field_updates(records, 10, "fields"), "fields", seed=8), 1000)
        return result
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--checkins", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3, help="best of this many merge runs")
    args = parser.parse_args()
    try:
        result = run(args.records, args.checkins, args.runs,
                     lambda s: print(f"  {s}", file=sys.stderr, flush=True))
    except MissingPeers as exc:
        sys.exit(f"bench: {exc}")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
