"""The hub under load: idle sessions held, a sync under attack, an idle day, churn, revocation.

Each figure runs against ``haven hub serve`` as a real subprocess (its own
data directory, fresh for each part), driven from this process by one
selectors loop (``_swarm``) or by the real kiosk code:

1. **Idle sessions**: N kiosks, each enrolled with its own keys, complete the
   Noise handshake and a ``sync-hello`` / ``sync-welcome`` and stay open.
   The hub's RSS before and after gives the growth per session.
2. **Sync under attack**: a real kiosk (``device.sync.engine.run_round``,
   new link and session each round, check-ins to push) syncs a few rounds
   alone, then again while a hostile process (``_swarm attack``, one core)
   churns connections; the ratio of the medians, and the attack's rate.
3. **Idle day** (``_idle_day``): the kiosk's and the hub's session drivers
   on a simulated clock, and a real runtime in a network namespace counted
   by nftables (full mode only, root only).
4. **Short connections**: the hub's RSS after the first 1,000 and after all.
5. **Revocation**: an open session, ``haven hub revoke`` in another process,
   the time until the kiosk's socket sees the session end.

The hub's data directory for part 1 is on tmpfs when there is one: each
welcome writes the kiosk's ``last_seen`` with a full fsync, and the figure is
the server's memory, not the disk's speed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from . import Context, Result, benchmark
from . import _hub_proc as hp
from ._swarm import KioskSessions, ShortConnections, Swarm
from .sync import ROOT, kiosk_and_hub, put_records, records

GOAL_KIB_PER_SESSION = 40
GOAL_ATTACK_RATIO = 2.0
GOAL_DAY_BYTES = 100_000
GOAL_CHURN_MIB = 5
GOAL_REVOKE_S = 1.0


def _row(what: str, value: Any, detail: str, goal: str, met: bool | None) -> dict[str, Any]:
    return {"what": what, "value": value, "detail": detail, "goal": goal, "met": met}


def _n(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else "?"


def _tmpfs_dir(ctx: Context) -> Path:
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        return Path(tempfile.mkdtemp(prefix="hub-load-", dir=shm))
    path = ctx.workdir / "hub-tmpfs"
    path.mkdir()
    return path


def _serve_args(flags: set[str], connections: int) -> list[str]:
    """Flags sizing the server for the run, where this server has them."""
    args = []
    if "--max-connections" in flags:
        args += ["--max-connections", str(connections)]
    return args


# 1. Idle authenticated sessions -------------------------------------------------------------


def idle_sessions(ctx: Context, n: int, flags: set[str]) -> dict[str, Any]:
    from device.config import KioskConfig
    from host.hub.hub import init_hub

    warm = 20
    hub_dir = _tmpfs_dir(ctx) / "hub"
    try:
        init_hub(hub_dir)
        t0 = time.monotonic()
        kiosks = hp.enrol_many(hub_dir, n + warm)
        ctx.log(f"idle sessions: {n + warm} kiosks enrolled in {time.monotonic() - t0:.1f} s")
        extra = _serve_args(flags, n + warm + 1000)
        with hp.hub_serving(hub_dir, ctx.workdir / "hub-idle.log", extra) as hub:
            swarm = Swarm()
            ks = KioskSessions(swarm, hub.host, hub.port, hub.key,
                               keepalive=KioskConfig().keepalive)
            opened = 0

            def open_until(target: int, window: int = 100, limit: float = 600.0) -> bool:
                nonlocal opened

                def done() -> bool:
                    nonlocal opened
                    while opened < target and ks.pending < window:
                        ks.open(opened, kiosks[opened].x_key, kiosks[opened].cert)
                        opened += 1
                    return opened >= target and ks.pending == 0

                return swarm.run(done, limit)

            open_until(warm)
            swarm.run(lambda: False, 2.0)
            before = hub.rss_kib()
            fds_before = hp.open_fds(hub.pid)
            t1 = time.monotonic()
            finished = open_until(warm + n)
            took = time.monotonic() - t1
            ctx.log(f"idle sessions: {ks.welcomed} welcomed in {took:.1f} s "
                    f"(failed {ks.failed}, closed {ks.closed_after_welcome})")
            swarm.run(lambda: False, 5.0)  # idle: keepalives and acks only
            after = hub.rss_kib()
            fds_after = hp.open_fds(hub.pid)
            health = hp.health(hub_dir)
            held = ks.welcomed
            result = {"n": n, "warm": warm, "welcomed_then_held": held - warm,
                      "rss_before_kib": before, "rss_after_kib": after,
                      "fds_before": fds_before, "fds_after": fds_after,
                      "open_seconds": round(took, 1), "finished": finished,
                      "failed": dict(ks.failed), "closed": dict(ks.closed_after_welcome),
                      "health": health, "serve_args": extra}
            for c in list(swarm.clients.values()):
                swarm.end(c, "done")
    finally:
        shutil.rmtree(hub_dir.parent, ignore_errors=True)
    return result


def idle_rows(r: dict[str, Any]) -> list[dict[str, Any]]:
    n, held = r["n"], r["welcomed_then_held"]
    growth = r["rss_after_kib"] - r["rss_before_kib"]
    per = growth / max(held, 1)
    fails = ", ".join(f"{k}: {v}" for k, v in {**r["failed"], **r["closed"]}.items())
    h = r.get("health") or {}
    seen = ""
    if h:
        tcp = h.get("connections", {}).get("tcp", {})
        fds = h.get("descriptors", {})
        seen = (f"; health socket: {_n(tcp.get('authenticated'))} authenticated TCP "
                f"sessions, {_n(fds.get('in_use'))} of {_n(fds.get('limit'))} "
                f"descriptors, refusals {h.get('refusals', {})}")
    return [
        _row("idle authenticated sessions held by one hub process", held,
             f"{n:,} opened (handshake, hello, welcome) in {r['open_seconds']} s; "
             f"{r['fds_after']:,} fds in the hub" + (f"; lost: {fails}" if fails else "")
             + seen,
             f">= {n:,}", held >= n),
        _row("  hub RSS growth per session, KiB", round(per, 1),
             f"RSS {r['rss_before_kib'] / 1024:.1f} MiB with {r['warm']} sessions, "
             f"{r['rss_after_kib'] / 1024:.1f} MiB with {r['warm'] + held:,}",
             f"<= {GOAL_KIB_PER_SESSION}", per <= GOAL_KIB_PER_SESSION and held >= n),
    ]


# 2. A kiosk's sync round under attack --------------------------------------------------------


def _round_times(store: Any, state: Any, ident: Any, url: str, rounds: int, per_round: int,
                 tag: int, pause: float = 0.5) -> tuple[list[float], list[str]]:
    from device.sync.engine import run_round

    times, errors = [], []
    for i in range(rounds):
        put_records(store, records(per_round, seed=tag * 1000 + i))
        t0 = time.perf_counter()
        try:
            s = run_round(store, state, ident, url, limit=60.0)
        except Exception as exc:  # noqa: BLE001 - a failed round is the figure
            errors.append(f"{type(exc).__name__}: {exc}")
            continue
        times.append(time.perf_counter() - t0)
        if s.pushed != 2 * per_round:
            errors.append(f"round pushed {s.pushed} of {2 * per_round}")
        time.sleep(pause)
    return times, errors


ATTACKS = {"one address": 1, "2,000 addresses": 2000}  #: the attack's source addresses


def _attacked(hub: hp.HubProcess, sources: int, run: Any) -> tuple[Any, dict[str, Any]]:
    """``run()`` while ``_swarm attack`` churns from ``sources`` addresses."""
    attacker = subprocess.Popen(
        [sys.executable, "-m", "tools.benchmarks._swarm", "attack", "--port", str(hub.port),
         "--hub-key", hub.key.hex(), "--seconds", "3600", "--sources", str(sources)],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        start_new_session=True)
    try:
        assert attacker.stdout is not None and attacker.stdin is not None
        attacker.stdout.readline()  # ready
        time.sleep(2.0)  # the attack at full speed
        result = run()
        attacker.stdin.write("stop\n")
        attacker.stdin.flush()
        line = attacker.stdout.readline()
        attacker.wait(60)
        return result, json.loads(line) if line else {}
    finally:
        if attacker.poll() is None:
            attacker.kill()
            attacker.wait()


def under_attack(ctx: Context, rounds: int, per_round: int, flags: set[str]) -> dict[str, Any]:
    work = ctx.workdir / "attack"
    hub_dir, store, state, ident = kiosk_and_hub(work, [])
    out: dict[str, Any] = {"rounds": rounds, "per_round": per_round, "attacks": {}}
    try:
        with hp.hub_serving(hub_dir, work / "hub.log", _serve_args(flags, 20000)) as hub:
            url = f"tcp://{hub.host}:{hub.port}"
            _round_times(store, state, ident, url, 1, per_round, 0)  # warm-up
            out["alone"], out["alone_errors"] = _round_times(store, state, ident, url, rounds,
                                                             per_round, 1)
            for n, (name, sources) in enumerate(ATTACKS.items()):
                ctx.log(f"under attack from {name}")
                (times, errors), attack = _attacked(hub, sources, lambda n=n: _round_times(
                    store, state, ident, url, rounds, per_round, 2 + n))
                out["attacks"][name] = {"times": times, "errors": errors, "attack": attack,
                                        "sources": sources}
            out["health"] = hp.health(hub_dir)
            out["hub_alive"] = hub.proc.poll() is None
    finally:
        state.close()
        store.close()
    return out


def attack_rows(r: dict[str, Any]) -> list[dict[str, Any]]:
    alone = r["alone"]
    rows = []
    refusals = (r.get("health") or {}).get("refusals")
    for name, v in r["attacks"].items():
        attacked, a = v["times"], v["attack"]
        secs = a.get("seconds") or 1.0
        rate = (f"attack from {name}: {a.get('connections', 0) / secs:,.0f} connections/s, "
                f"{a.get('answers', 0) / secs:,.0f} first handshake messages answered/s, "
                f"{a.get('handshakes', 0) / secs:,.0f} handshakes completed/s "
                f"({a.get('refreshes', 0) / secs:,.0f} of them refreshes), "
                f"{a.get('closed_by_hub', 0):,} connections closed by the hub, "
                f"{a.get('connect_errors', 0)} connects refused, over {secs:.0f} s, "
                f"{a.get('cpu_seconds', 0):.0f} s of the attacker's CPU")
        what = f"kiosk sync round under attack from {name} / alone (medians)"
        if not alone or not attacked:
            errs = "; ".join((r["alone_errors"] + v["errors"])[:3])
            rows.append(_row(what, None, f"{len(attacked)} of {r['rounds']} rounds completed "
                             f"under attack; {errs}; {rate}", f"<= {GOAL_ATTACK_RATIO}x",
                             False))
            continue
        m0, m1 = statistics.median(alone), statistics.median(attacked)
        ratio = m1 / m0
        mean_ratio = statistics.mean(attacked) / statistics.mean(alone)
        done = len(attacked) == r["rounds"] and not v["errors"]
        rows.append(_row(
            what, round(ratio, 2),
            f"{r['per_round']} check-ins a round, new session each; alone {m0:.3f} s, "
            f"attacked {m1:.3f} s (slowest {max(attacked):.3f} s, ratio of the means "
            f"{mean_ratio:.2f}), {len(attacked)} of {r['rounds']} rounds completed; {rate}",
            f"completes, <= {GOAL_ATTACK_RATIO}x", done and ratio <= GOAL_ATTACK_RATIO))
    if refusals is not None:
        rows.append(_row("  hub's refusals by reason over the attacks (health socket)",
                         sum(refusals.values()),
                         ", ".join(f"{k}: {v:,}" for k, v in sorted(refusals.items())),
                         "report", None))
    return rows


# 4. Short connections ------------------------------------------------------------------------


def churn(ctx: Context, total: int, flags: set[str]) -> dict[str, Any]:
    from host.hub.hub import init_hub

    hub_dir = ctx.workdir / "churn-hub"
    init_hub(hub_dir)
    with hp.hub_serving(hub_dir, ctx.workdir / "hub-churn.log", _serve_args(flags, 20000)) \
            as hub:
        swarm = Swarm()
        sc = ShortConnections(swarm, hub.host, hub.port, hub.key)
        t0 = time.monotonic()
        sc.run(1000)
        time.sleep(1.0)
        first = hub.rss_kib()
        marks = []
        step = max(1000, (total - 1000) // 4)
        while sc.started < total:
            sc.run(min(step, total - sc.started))
            marks.append((sc.started, hub.rss_kib()))
            ctx.log(f"short connections: {sc.started:,}, hub RSS {marks[-1][1] / 1024:.1f} MiB")
        seconds = time.monotonic() - t0
        time.sleep(1.0)
        last = hub.rss_kib()
        fds = hp.open_fds(hub.pid)
        alive = hub.proc.poll() is None
    return {"total": sc.started, "first_kib": first, "last_kib": last, "marks": marks,
            "seconds": seconds, "answered": sc.answered, "errors": sc.errors, "fds": fds,
            "alive": alive}


def churn_rows(r: dict[str, Any]) -> list[dict[str, Any]]:
    grew = (r["last_kib"] - r["first_kib"]) / 1024
    errs = ", ".join(f"{k}: {v}" for k, v in list(r["errors"].items())[:3])
    return [_row(f"hub RSS after {r['total']:,} short connections - after 1,000, MiB",
                 round(grew, 2),
                 f"{r['first_kib'] / 1024:.1f} MiB -> {r['last_kib'] / 1024:.1f} MiB; "
                 f"{r['total'] / r['seconds']:,.0f} connections/s; "
                 f"{r['answered']:,} handshake answers; {r['fds']} fds after"
                 + (f"; errors: {errs}" if errs else ""),
                 f"<= {GOAL_CHURN_MIB}", grew <= GOAL_CHURN_MIB and r["alive"])]


# 5. Revocation -------------------------------------------------------------------------------


def revocation(ctx: Context, flags: set[str], limit: float = 10.0) -> dict[str, Any]:
    from host.hub.hub import init_hub

    hub_dir = ctx.workdir / "revoke-hub"
    init_hub(hub_dir)
    kiosk = hp.enrol_many(hub_dir, 1)[0]
    out: dict[str, Any] = {}
    with hp.hub_serving(hub_dir, ctx.workdir / "hub-revoke.log", _serve_args(flags, 1000)) \
            as hub:
        swarm = Swarm()
        ks = KioskSessions(swarm, hub.host, hub.port, hub.key)
        ks.open(0, kiosk.x_key, kiosk.cert)
        if not swarm.run(lambda: ks.welcomed == 1, 30.0):
            return {"error": f"no welcome: {ks.failed}"}
        swarm.run(lambda: False, 1.0)
        db = sqlite3.connect(f"file:{hub_dir / 'hub.db'}?mode=ro", uri=True)
        t0 = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "host.cli", "hub", "revoke", "--data",
                                 str(hub_dir), kiosk.device_id], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        committed: float | None = None

        def ended() -> bool:
            nonlocal committed
            if committed is None:
                with contextlib.suppress(sqlite3.Error):
                    row = db.execute("SELECT state FROM devices WHERE device_id = ?",
                                     [kiosk.device_id]).fetchone()
                    if row and row[0] == "revoked":
                        committed = time.monotonic()
            return ks.welcomed == 0

        closed = swarm.run(ended, limit, wait=0.001)
        t1 = time.monotonic()
        proc.wait(30)
        db.close()
        out = {"closed": closed, "from_start": t1 - t0,
               "from_commit": None if committed is None else t1 - committed,
               "how": dict(ks.closed_after_welcome), "revoke_rc": proc.returncode,
               "limit": limit}
        for c in list(swarm.clients.values()):
            swarm.end(c, "done")
    return out


def revoke_rows(r: dict[str, Any]) -> list[dict[str, Any]]:
    if "error" in r:
        return [_row("revocation to the session's end, s", None, r["error"],
                     f"<= {GOAL_REVOKE_S}", False)]
    if not r["closed"]:
        return [_row("revocation to the session's end, s", None,
                     f"the session was still open {r['limit']:.0f} s after `haven hub revoke` "
                     f"started (it exited with status {r['revoke_rc']})",
                     f"<= {GOAL_REVOKE_S}", False)]
    how = ", ".join(f"{k}" for k in r["how"])
    t = r["from_commit"]
    if t is None:  # the session ended before the store was seen to change
        t = 0.0
    return [_row("revocation to the session's end, s", round(t, 3),
                 f"from the revocation's commit in `haven hub revoke` (another process; seen "
                 f"by polling hub.db every 1 ms) to the kiosk's socket seeing the end ({how}); "
                 f"{r['from_start']:.3f} s from the command's start, Python's start-up "
                 "included", f"<= {GOAL_REVOKE_S}", t <= GOAL_REVOKE_S)]


# The benchmark -------------------------------------------------------------------------------


def _checkout() -> str:
    """The commit the run starts on, and whether the working tree differs from it."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=30).stdout.strip()

    with contextlib.suppress(OSError, subprocess.SubprocessError):
        head = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", "host", "device",
                    "protocol")
        return f"commit {head}" + (" with uncommitted changes to host, device or protocol"
                                   if dirty else "")
    return "commit unknown"


@benchmark("hub-load", "The hub under load: idle sessions, a sync under attack, an idle day, "
           "churn, revocation")
def hub_load(ctx: Context) -> Result:
    from . import _idle_day

    commit = _checkout()  # at the start: others may commit while it runs
    limit = hp.raise_nofile()
    flags = hp.serve_flags()
    sessions = 1000 if ctx.quick else 10_000
    short = 20_000 if ctx.quick else 100_000
    rounds = 15 if ctx.quick else 40
    rows: list[dict[str, Any]] = []
    raw: dict[str, Any] = {"nofile": limit, "serve_flags": sorted(flags)}
    ctx.log(f"descriptor limit {limit:,}; haven hub serve flags: {' '.join(sorted(flags))}")

    ctx.log(f"1. {sessions:,} idle sessions")
    raw["idle"] = idle_sessions(ctx, sessions, flags)
    rows += idle_rows(raw["idle"])

    ctx.log(f"2. a sync round, {rounds} alone and {rounds} under attack")
    raw["attack"] = under_attack(ctx, rounds, 20, flags)
    rows += attack_rows(raw["attack"])

    ctx.log("3. an idle day on a simulated clock")
    raw["day"] = _idle_day.simulated(ctx)
    rows += _idle_day.simulated_rows(raw["day"], GOAL_DAY_BYTES)
    if ctx.quick:
        rows.append(_row("  idle kiosk, real run in a network namespace (nftables)", None,
                         "skipped: full mode only (10 minutes)", "report", None))
    else:
        from device.config import KioskConfig

        keepalive = KioskConfig().keepalive  # a whole number of keepalives, 10 min at least
        periods = max(1, -(-600 // int(keepalive))) if keepalive > 0 else 1
        raw["netns"] = _idle_day.real(ctx, minutes=max(10.0, periods * keepalive / 60))
        rows += _idle_day.real_rows(raw["netns"], GOAL_DAY_BYTES)

    ctx.log(f"4. {short:,} short connections")
    raw["churn"] = churn(ctx, short, flags)
    rows += churn_rows(raw["churn"])

    ctx.log("5. revocation")
    raw["revoke"] = revocation(ctx, flags)
    rows += revoke_rows(raw["revoke"])

    notes = [
        f"`haven hub serve` runs as its own process on 127.0.0.1 ({commit}), with "
        f"its descriptor limit and this one's raised to {limit:,}; flags passed: "
        f"{' '.join(raw['idle']['serve_args']) or 'none'}. Clients run from one selectors "
        "loop in this process with the real initiator `SessionDriver`, from source addresses "
        "spread over 127.0.0.0/8 (so a per-address cap meant for strangers does not apply, "
        "and ports do not run out).",
        "Idle sessions: each kiosk is enrolled with its own keys and certificate (straight "
        "into the hub's store before it starts, the hub's data on tmpfs), completes the "
        "Noise XX handshake and a sync-hello / sync-welcome, and stays open with the "
        "kiosk's default keepalive; 20 such sessions are open when the first RSS is read, "
        "held is what is still open 5 s after the last welcome.",
        "Under attack: `run_round` of the real kiosk from 127.0.0.1 (new TCP connection and "
        "session each round, 20 check-ins to push, 0.5 s apart, the hub's data on disk); "
        "the attacker is one other process (one core), 500 sockets at a time, rotating "
        "garbage, half handshakes, full handshakes with unknown keys and handshake "
        "refreshes on one connection; once from one source address (a stranger: the "
        "per-address cap applies), once spread over 2,000 (many strangers).",
        "Short connections: in turn a connect and reset, 64 garbage bytes and reset, a "
        "first handshake message and reset once answered (0.3 s at most); 64 at a time. "
        "RSS is read 1 s after the first 1,000 and after the last.",
        "Revocation: an enrolled kiosk's session, welcomed; `haven hub revoke` runs in "
        "another process; the time is until the kiosk's socket sees the session's close "
        "or the connection's end.",
        *_idle_day.NOTES,
    ]
    return Result(rows, ["what", "value", "detail", "goal", "met"], notes, raw)
