"""The hub's store on PostgreSQL in ``./tools/bench hub-scale``: the herd, its floors.

Theory of operation
-------------------
One PostgreSQL cluster is started for the run on this machine
(``tests/postgres_cluster.py``), with PostgreSQL's durable defaults, as
production runs it (``DURABLE``: ``fsync``, ``synchronous_commit`` and
``full_page_writes`` on, the default buffers and WAL sizes; the test
clusters turn these off), and ``pg_stat_statements`` loaded to count the
hub's statements.

* The herd (``herd``): ``_herd.measure``, the same load as the SQLite herd
  of the same run, with ``HAVEN_HUB_DATABASE`` naming a fresh database, so
  that ``init_hub`` puts the hub there and ``haven hub serve`` follows it.
  Beside ``_herd``'s figures (time until all is on the hub, round times,
  each kiosk's check-ins read back once, RSS per connected kiosk), the
  database is read after: the herd's rows of ``ops``, their distinct dots
  and the current records they made, against the counts written. While the
  herd runs, ``Watch`` samples the CPU time of the hub's process and of
  the cluster's processes (the postmaster's own, its reaped children's and
  its live ones') from the moment the hub has started (its CPU time stands
  still), and resets the statement counts then and reads them while the
  hub runs, so that they are the serving hub's alone (not the read back).
* The floor (``floor``): what the hub does with each delta in Python, with
  no database, in this process: the batch message decoded, its signature
  verified, its deltas unpacked, decoded and checked
  (``check_remote_deltas``) and sealed (``Sealer.seal_ops``); the same
  backlogs (``_herd.backlog``), in the same batches; deltas a second of CPU.
* ``COPY`` (``bare_copy``): the floor's sealed rows, shaped as the hub's
  ``ops`` (its key and unique dot), into an empty table with psycopg's
  binary ``COPY``, in one transaction.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from . import _herd

#: PostgreSQL's defaults where the test clusters' settings differ, and the statements'
#: counter.
DURABLE: dict[str, Any] = {
    "fsync": True, "synchronous_commit": True, "full_page_writes": True,
    "shared_buffers": "128MB", "max_wal_size": "1GB", "checkpoint_timeout": "5min",
    "max_parallel_workers_per_gather": 2,
    "shared_preload_libraries": "pg_stat_statements",
}
GOAL_VS_SQLITE = 0.5
GOAL_VS_FLOOR = 0.4
FIRST_NODE = 0x40000000  #: ``_hub_proc.enrol_many``'s first node
_TICK = os.sysconf("SC_CLK_TCK")
IDLE_SAMPLES = 3  #: a hub whose CPU time stands still this many tenths of a second: started


@contextlib.contextmanager
def durable_cluster() -> Iterator[Any]:
    """A PostgreSQL cluster on this machine with ``DURABLE`` settings, stopped after."""
    from tests.postgres_cluster import server_root, start_cluster

    with server_root("haven-hub-pg-bench-") as root, \
            start_cluster(root, **DURABLE) as cluster:
        _sql(cluster.url, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        yield cluster


#: The statements run in the herd's database: query, calls, milliseconds, rows.
STATEMENTS = ("SELECT query, calls, total_exec_time, rows FROM pg_stat_statements"
              " WHERE dbid = (SELECT oid FROM pg_database WHERE datname = 'herd')"
              " ORDER BY total_exec_time DESC")


def _sql(url: str, query: str, params: Any = None) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(query, params)
        return cur.fetchall() if cur.description else []


# The herd ----------------------------------------------------------------------------

def herd(ctx: Any, cluster: Any, count: int, checkins: int) -> dict[str, Any]:
    """``_herd.measure`` against a hub whose store is a fresh database of ``cluster``,
    with what the database holds after and where the time went."""
    name = "pg-herd"
    url = cluster.create_database("herd")
    with _database(url), watching(
            ctx, name, cluster.process.pid,
            started=lambda: _sql(cluster.url, "SELECT pg_stat_statements_reset()"),
            sample=lambda: _sql(cluster.url, STATEMENTS)) as watch:
        figures = _herd.measure(ctx, count, checkins, name=name)
    statements = watch.sampled or []  # the hub's alone: not the read back after it
    held = on_hub(url, count)
    batches = count * -(-2 * checkins // _herd.BATCH_DELTAS)
    calls = sum(c for _, c, _, _ in statements)
    figures.update({
        "deltas": 2 * count * checkins, "on_hub": held, "batches": batches,
        "hub_cpu_s": round(watch.hub_cpu, 1), "server_cpu_s": round(watch.server_cpu, 1),
        "statements": calls, "statements_per_batch": round(calls / batches, 1),
        "server_exec_s": round(sum(t for _, _, t, _ in statements) / 1000, 1),
        "top_statements": [{"query": q[:160], "calls": c, "ms": round(t), "rows": r}
                           for q, c, t, r in statements[:12]],
    })
    ctx.log(f"herd on PostgreSQL: {figures}")
    return figures


@contextlib.contextmanager
def _database(url: str) -> Iterator[None]:
    """``init_hub`` (and so the hub served) puts the store at ``url`` meanwhile."""
    from host.hub.hub import DATABASE_ENV

    before = os.environ.get(DATABASE_ENV)
    os.environ[DATABASE_ENV] = url
    try:
        yield
    finally:
        if before is None:
            del os.environ[DATABASE_ENV]
        else:
            os.environ[DATABASE_ENV] = before


def on_hub(url: str, count: int) -> dict[str, int]:
    """The herd's rows in the hub's database: its deltas, their distinct dots, and the
    current records they made."""
    nodes = [FIRST_NODE, FIRST_NODE + count - 1]
    ops, dots = _sql(url, "SELECT COUNT(*), COUNT(DISTINCT (rid, stamp, node)) FROM ops"
                     " WHERE node BETWEEN %s AND %s", nodes)[0]
    records, = _sql(url, "SELECT COUNT(*) FROM records r WHERE EXISTS (SELECT 1 FROM ops o"
                    " WHERE o.rid = r.rid AND o.node BETWEEN %s AND %s)", nodes)[0]
    return {"ops": ops, "distinct": dots, "records": records}


def watching(ctx: Any, name: str, postmaster: int | None = None,
             started: Callable[[], Any] = lambda: None,
             sample: Callable[[], Any] = lambda: None) -> Watch:
    """A ``Watch`` of the hub that ``_herd.measure(..., name=name)`` serves (its data
    folder is ``WORKDIR/NAME-hub``)."""
    return Watch(f"--data\0{ctx.workdir / f'{name}-hub'}\0", postmaster, started, sample)


class Watch:
    """While a hub process (its command line holding ``marker``) runs: its CPU time, and
    the cluster's (``postmaster`` and its children; None: no cluster), in seconds from
    the end of its start (the first time it is idle, as ``_herd.measure`` leaves it a
    second before the herd); ``started`` is called then. ``sampled``: what ``sample``
    returned the last time it was called while the hub ran."""

    def __init__(self, marker: str, postmaster: int | None, started: Callable[[], Any],
                 sample: Callable[[], Any]) -> None:
        self.marker, self.postmaster = marker.encode(), postmaster
        self.started, self.sample = started, sample
        self.hub_cpu = self.server_cpu = 0.0
        self.sampled: Any = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        pid = None
        while pid is None and not self._stop.wait(0.1):
            pid = _find(self.marker)
        idle, last = 0, -1.0
        while pid is not None and idle < IDLE_SAMPLES and not self._stop.wait(0.1):
            now = _cpu(pid)
            if now is None:
                return
            idle, last = idle + 1 if now == last else 0, now
        if pid is None or idle < IDLE_SAMPLES:
            return
        self.started()
        hub0, server0 = last, self._server()
        while not self._stop.wait(0.5):
            hub = _cpu(pid)
            if hub is None:  # stopped: the last sample stands
                return
            self.hub_cpu, self.server_cpu = hub - hub0, self._server() - server0
            self.sampled = self.sample()

    def _server(self) -> float:
        return 0.0 if self.postmaster is None else _server_cpu(self.postmaster)


def _find(marker: bytes) -> int | None:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if marker in (entry / "cmdline").read_bytes():
                    return int(entry.name)
    return None


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()  # from field 3 (state) on


def _cpu(pid: int, children: bool = False) -> float | None:
    """Seconds of CPU the process used (with its reaped children's)."""
    f = _stat(pid)
    if f is None:
        return None
    return sum(int(x) for x in f[11:15 if children else 13]) / _TICK


def _server_cpu(postmaster: int) -> float:
    total = _cpu(postmaster, children=True) or 0.0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (f := _stat(int(entry.name))) and int(f[1]) == postmaster:
            total += _cpu(int(entry.name)) or 0.0
    return total


# The floor and COPY -------------------------------------------------------------------

def floor(count: int, checkins: int) -> tuple[dict[str, Any], list[tuple[Any, ...]]]:
    """The hub's work on the herd's deltas in Python, no database: figures (deltas a
    second of this process's CPU time: the machine is shared, and its wall time counts
    others' work), and the rows it would insert (the hub's ``ops`` columns)."""
    from host.hub.at_rest import NAME_KEY, Sealer
    from protocol import messages
    from protocol.crdt.delta import Delta
    from protocol.driver.wall_clock import wall_ms
    from protocol.sync import batches as sync
    from protocol.sync.checks import check_remote_deltas

    now = wall_ms()
    sealer = Sealer({NAME_KEY: os.urandom(32), 1: os.urandom(32)}, 1, plain_ok=False)
    sent = []
    for i in range(count):
        key, device, node = Ed25519PrivateKey.generate(), f"bench-{i}", FIRST_NODE + i
        deltas = _herd.backlog(node, checkins, now)
        prev = sync.GENESIS
        for seq, at in enumerate(range(0, len(deltas), _herd.BATCH_DELTAS), 1):
            batch = sync.make_batch(key, device, seq, prev, deltas[at:at + _herd.BATCH_DELTAS])
            sent.append((device, key.public_key().public_bytes_raw(), node, prev,
                         messages.encode(messages.make("sync-batch", seq=seq,
                                                       payload=batch.payload, sig=batch.sig))))
            prev = batch.hash
    done = []
    t0, cpu0 = time.perf_counter(), time.process_time()
    for device, public, node, prev, data in sent:
        msg = messages.decode(data)
        batch = sync.Batch(msg.get("seq"), prev, msg.get("payload"), msg.get("sig"))
        sync.verify_batch(batch, device, public)
        raw = sync.unpack(batch.payload)
        good = [(d, r) for d, r in zip(check_remote_deltas(raw, now, node=node), raw,
                                        strict=True) if isinstance(d, Delta)]
        sealed = sealer.seal_ops([(d.record_id, d.stamp, d.node, r) for d, r in good])
        done.append((device, [d for d, _ in good], sealed))
    took, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    kept = [(d, blob, device) for device, good, sealed in done
            for d, blob in zip(good, sealed, strict=True)]
    rows = [(hseq, d.record_id, d.stamp, d.node, blob, device, int(d.is_delete))
            for hseq, (d, blob, device) in enumerate(kept, 1)]
    return {"deltas": len(rows), "seconds": round(took, 2), "cpu_s": round(cpu, 2),
            "deltas_per_s": round(len(rows) / cpu)}, rows


OPS_SHAPED = ("CREATE TABLE ops_copy (hseq BIGINT PRIMARY KEY, rid BYTEA NOT NULL,"
              " stamp BIGINT NOT NULL, node BIGINT NOT NULL, data BYTEA NOT NULL,"
              " origin TEXT NOT NULL, del BIGINT NOT NULL, UNIQUE (rid, stamp, node))")


def bare_copy(cluster: Any, rows: list[tuple[Any, ...]]) -> dict[str, Any]:
    """``rows`` into an empty ops-shaped table by binary ``COPY``, one transaction."""
    import psycopg

    url = cluster.create_database("copy")
    with psycopg.connect(url) as conn:
        conn.execute(OPS_SHAPED)
        conn.commit()
        t0 = time.perf_counter()
        with conn.cursor() as cur, cur.copy(
                "COPY ops_copy (hseq, rid, stamp, node, data, origin, del) FROM STDIN"
                " (FORMAT BINARY)") as copy:
            copy.set_types(["int8", "bytea", "int8", "int8", "bytea", "text", "int8"])
            for row in rows:
                copy.write_row(row)
        conn.commit()
        took = time.perf_counter() - t0
    return {"rows": len(rows), "seconds": round(took, 2), "rows_per_s": round(len(rows) / took)}


def measure(ctx: Any, count: int, checkins: int) -> dict[str, Any]:
    """The floor, then a durable cluster for the herd and ``COPY``."""
    ctx.log(f"the hub's Python alone: {count * checkins * 2:,} deltas, no database")
    alone, rows = floor(count, checkins)
    ctx.log(f"floor: {alone}")
    with durable_cluster() as cluster:
        ctx.log(f"the herd against a hub on PostgreSQL: {count:,} kiosks, {checkins} each")
        pg = herd(ctx, cluster, count, checkins)
        ctx.log("a bare COPY of the same rows")
        copied = bare_copy(cluster, rows)
        ctx.log(f"COPY: {copied}")
    return {"herd": pg, "floor": alone, "copy": copied}


# Rows -------------------------------------------------------------------------------

def _per_s(r: dict[str, Any]) -> float:
    return 2 * r["kiosks"] * r["checkins"] / r["all_landed_s"] if r["all_landed_s"] else 0.0


def rows(r: dict[str, Any], sqlite: dict[str, Any], sqlite_cpu: float
         ) -> list[dict[str, Any]]:
    """``measure``'s figures as benchmark rows; ``sqlite``: ``_herd.measure``'s figures
    for the same herd on SQLite, in the same run, and its hub's CPU seconds."""
    pg, alone, copied = r["herd"], r["floor"], r["copy"]
    us = 1e6 / pg["deltas"]  # seconds in all -> µs per delta
    n, held = pg["kiosks"], pg["on_hub"]
    rate, peer = _per_s(pg), _per_s(sqlite)
    vs_sqlite = rate / peer if peer else 0.0
    vs_floor = rate / alone["deltas_per_s"]
    once = pg["finished"] and pg["exactly_once"] == n and \
        held["ops"] == held["distinct"] == held["records"] == pg["deltas"]
    top = "; ".join(f"{s['calls']:,}x {s['ms'] / 1000:.1f} s {s['query'][:60]!r}"
                    for s in pg["top_statements"][:4])
    return [
        {"what": f"hub on PostgreSQL (fsync, synchronous_commit on): the same herd, {n:,} "
                 f"kiosks x {pg['checkins']}, all on the hub (s)", "value": pg["all_landed_s"],
         "detail": f"{pg['exactly_once']:,} of {n:,} kiosks' check-ins read back once; "
                   f"ops rows {held['ops']:,}, distinct {held['distinct']:,}, current records "
                   f"{held['records']:,} of {pg['deltas']:,} written; round p50 "
                   f"{pg['round_p50_s']} s, p99 {pg['round_p99_s']} s; {pg['busy_answers']:,} "
                   f"busy answers; failed {pg['failed'] or 'none'}",
         "goal": "every check-in once", "met": once},
        {"what": "  deltas/s on PostgreSQL, beside SQLite's (the herd above, same run)",
         "value": round(rate),
         "detail": f"SQLite {round(peer):,} deltas/s; PostgreSQL {vs_sqlite:.2f}x. The hub's "
                   f"CPU per delta: {pg['hub_cpu_s'] * us:.0f} µs on PostgreSQL (and the "
                   f"server's {pg['server_cpu_s'] * us:.0f} µs), {sqlite_cpu * us:.0f} µs on "
                   "SQLite",
         "goal": f">= {GOAL_VS_SQLITE}x SQLite", "met": vs_sqlite >= GOAL_VS_SQLITE},
        {"what": "  the hub's Python alone, no database: decode, verify, check, seal the same "
                 "deltas in one process, deltas per CPU second", "value": alone["deltas_per_s"],
         "detail": f"{alone['deltas']:,} deltas in {alone['cpu_s']} s of CPU "
                   f"({alone['cpu_s'] * us:.0f} µs a delta; {alone['seconds']} s wall on the "
                   f"shared machine); the herd on PostgreSQL {vs_floor:.3f}x this",
         "goal": f"PostgreSQL >= {GOAL_VS_FLOOR}x", "met": vs_floor >= GOAL_VS_FLOOR},
        {"what": "  where the PostgreSQL herd's time went: statements per batch",
         "value": pg["statements_per_batch"],
         "detail": f"{pg['batches']:,} batches, {pg['statements']:,} statements, "
                   f"{pg['server_exec_s']} s executing in the server; CPU: hub process "
                   f"{pg['hub_cpu_s']} s, PostgreSQL {pg['server_cpu_s']} s, load generator "
                   f"{pg['herd_cpu_s']} s, over {pg['seconds']} s; most time: {top}",
         "goal": "report", "met": None},
        {"what": "  bare COPY of the same rows (ops-shaped, its key and unique dot) into "
                 "PostgreSQL, rows/s", "value": copied["rows_per_s"],
         "detail": f"{copied['rows']:,} rows in {copied['seconds']} s, binary COPY, one "
                   "transaction",
         "goal": "report", "met": None},
        {"what": "  hub RSS per connected kiosk above the idle process, on PostgreSQL, KiB",
         "value": pg["kib_per_kiosk"],
         "detail": f"{pg['connected']:,} kiosks connected; RSS {pg['idle_rss_kib'] / 1024:.1f}"
                   f" MiB idle, {pg['rss_kib'] / 1024:.1f} MiB after the herd (the hub's "
                   "process; the server's not counted)",
         "goal": f"<= {_herd.GOAL_KIB_PER_KIOSK}",
         "met": pg["kib_per_kiosk"] <= _herd.GOAL_KIB_PER_KIOSK},
    ]
