"""The herd: enrolled kiosks that all come back at once after an outage, each with a backlog.

Theory of operation
-------------------
``Herd`` drives many kiosks from one process over ``_swarm``'s selectors
loop. Each is a real enrolled kiosk (its own X25519 and Ed25519 keys, a
certificate the hub issued, ``_hub_proc.enrol_many``) speaking the real
protocol: the initiator ``SessionDriver``'s Noise handshake, a
``sync-hello`` naming its chain head, then its backlog of check-ins (a
patient and a check-in record each, written by a ``Replica`` of its node)
as signed ``sync-batch``es, one in flight at a time, each sent once its
predecessor is acknowledged. A welcome whose checkpoint is ahead of the
kiosk's head means batches the hub committed but whose ack was lost: the
kiosk goes on from there, as ``KioskSync`` does. It does not pull: the
figure is the hub taking the herd's backlogs in.

A kiosk the hub answers busy (``close`` reason ``busy`` with ``retry_ms``)
ends its connection and comes back with a new one after the wait the
kiosk's own loop would take (``device.sync.loop.busy_wait``: the hub's ask
times 1 to 1.5, from a seeded ``random.Random``). Any other failure (a
connection the hub dropped, a round over ``attempt_limit``) comes back
after ``FAILED_WAIT`` seconds with the same jitter. A kiosk whose backlog is
acknowledged keeps its session open and idle (``keep_open``), as a real
kiosk does, so that the hub's memory with every kiosk connected can be read.

Every attempt is kept (``Attempt``: when it began and ended, how, what the
hub asked), so a test can check that no kiosk came back before its wait and
that the returns did not all fall on one instant. ``landed`` reads the
hub's store afterwards: every kiosk's check-in records, each exactly once.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import statistics
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from device.sync.loop import busy_wait
from protocol import messages
from protocol.crdt.replica import Replica
from protocol.driver.session_driver import LinkClosed, SessionDriver
from protocol.driver.wall_clock import wall_ms
from protocol.session.events import Closed, Connected, MessageReceived
from protocol.sync import batches as sync

from ._swarm import Client, Swarm, connect, hello, kiosk_config, source_address

#: Deltas a batch carries (a check-in is two).
BATCH_DELTAS = 100
FAILED_WAIT = 1.0  #: seconds before a kiosk whose attempt failed otherwise comes back
BUSY = "busy"


def backlog(node: int, checkins: int, at_ms: int) -> list[bytes]:
    """``checkins`` check-ins written at the kiosk of ``node``: a patient and its
    check-in record each, stamped from ``at_ms`` (a minute apart, in the past)."""
    writer = Replica(node)
    rng = random.Random(node)
    out: list[bytes] = []
    for i in range(checkins):
        at = at_ms - (checkins - i) * 60_000
        pid = uuid.UUID(int=rng.getrandbits(128)).bytes
        name = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(12)).title()
        out.append(writer.put(pid, "patient", at, {"name": name, "birthDate": "1984-02-03",
                                                    "gender": "female"}))
        out.append(writer.put(uuid.UUID(int=rng.getrandbits(128)).bytes, "checkin", at, {
            "subject": str(uuid.UUID(bytes=pid)), "status": "arrived",
            "periodStart": "2026-12-05T09:00:00Z", "location": "North",
            "queueNumber": f"A-{i % 1000:03d}", "claimName": name}))
    return out


@dataclass
class Attempt:
    start: float
    end: float = 0.0
    outcome: str = ""  #: "landed", "busy" or what failed
    retry_ms: int | None = None  #: the hub's busy answer asked for this
    welcomed: bool = False  #: the hub answered its hello: its round was under way
    back_at: float | None = None  #: when the kiosk chose to come back


@dataclass
class HerdKiosk:
    index: int
    device_id: str
    node: int
    x_key: X25519PrivateKey
    ed_key: Ed25519PrivateKey
    cert: bytes
    batches: list[list[bytes]]  #: the backlog, cut into batches
    seq: int = 0  #: the last batch the hub acknowledged (or its welcome showed)
    prev: bytes = sync.GENESIS
    in_flight: sync.Batch | None = None
    due: float = 0.0  #: when it (re)connects
    landed_at: float | None = None
    quarantined: int = 0
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def checkins(self) -> int:
        return sum(len(b) for b in self.batches) // 2


class Herd:
    """Kiosks coming back at once; see the module docstring."""

    def __init__(self, host: str, port: int, hub_key: bytes, kiosks: list[HerdKiosk], *,
                 seed: int = 17, keep_open: bool = True, attempt_limit: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.host, self.port, self.hub_key = host, port, hub_key
        self.kiosks = kiosks
        self.rng = random.Random(seed)
        self.keep_open, self.attempt_limit = keep_open, attempt_limit
        self.swarm = Swarm(clock)
        self.swarm.on_event = self._event
        self.swarm.on_end = self._end
        self.config = kiosk_config(240.0)
        self.waiting: list[HerdKiosk] = []  #: not connected, not landed
        self.started_at = 0.0

    @property
    def clock(self) -> Callable[[], float]:
        return self.swarm.clock

    def run(self, limit: float) -> bool:
        """All kiosks connect now; True once every backlog is acknowledged, False if
        ``limit`` seconds passed first."""
        self.started_at = now = self.clock()
        for k in self.kiosks:
            k.due = now
        self.waiting = list(self.kiosks)
        return self.swarm.run(self._start_due, limit, wait=0.01)

    def idle(self, seconds: float) -> None:
        """Keep the open sessions serviced for ``seconds``."""
        self.swarm.run(lambda: False, seconds)

    def _start_due(self) -> bool:
        now = self.clock()
        later = []
        for k in self.waiting:
            if k.due <= now:
                self._open(k, now)
            else:
                later.append(k)
        self.waiting = later
        return all(k.landed_at is not None for k in self.kiosks)

    def _open(self, k: HerdKiosk, now: float) -> None:
        k.attempts.append(Attempt(now))
        k.in_flight = None
        try:
            sock = connect(self.host, self.port, source_address(k.index))
        except OSError as exc:
            self._failed(k, f"connect: {exc}")
            return
        driver = SessionDriver(initiator=True, config=self.config, static_key=k.x_key,
                               remote_static=self.hub_key, clock=self.clock)
        c = Client(sock, driver, data={"kiosk": k})
        c.until = now + self.attempt_limit
        self.swarm.add(c)

    # -- the kiosk's side of a round -------------------------------------------------

    def _event(self, c: Client, event: Any) -> None:
        k: HerdKiosk = c.data["kiosk"]
        assert c.driver is not None
        if isinstance(event, Connected):
            self._send(c, self._hello(k))
        elif isinstance(event, MessageReceived):
            self._message(c, k, messages.decode(event.data))
        elif isinstance(event, Closed):
            if event.reason == BUSY and event.retry_ms is not None:
                self._busy(k, event.retry_ms)
            else:
                self._failed(k, f"closed: {event.reason}")
            self.swarm.end(c, "closed")
        elif isinstance(event, LinkClosed):
            self._failed(k, "link closed")
            self.swarm.end(c, "closed")

    def _hello(self, k: HerdKiosk) -> bytes:
        if k.seq == 0:
            return hello(k.cert, wall_ms())
        return messages.encode(messages.make("sync-hello", cert=k.cert, vv={}, cursor=0,
                                             seq=k.seq, hash=k.prev, time=wall_ms()))

    def _message(self, c: Client, k: HerdKiosk, msg: messages.Message) -> None:
        if msg.type == sync.WELCOME.number:
            k.attempts[-1].welcomed = True
            if msg.get("seq") > k.seq:  # committed, its ack lost with the last connection
                k.seq, k.prev = msg.get("seq"), msg.get("hash")
            self._next(c, k)
        elif msg.type == sync.ACK.number and k.in_flight is not None \
                and msg.get("seq") == k.in_flight.seq:
            k.seq, k.prev, k.in_flight = k.in_flight.seq, k.in_flight.hash, None
            k.quarantined += len(msg.get("quarantined") or ())
            self._next(c, k)
        elif msg.type == sync.REJECT.number:
            self._failed(k, f"rejected: {msg.get('reason')}")
            self.swarm.end(c, "rejected")

    def _send(self, c: Client, data: bytes) -> None:
        """Queue a message and write it now (the swarm writes only on its own turns)."""
        assert c.driver is not None
        c.driver.send(0, data)
        if out := c.driver.output(self.clock()):
            self.swarm.write(c, out)

    def _next(self, c: Client, k: HerdKiosk) -> None:
        assert c.driver is not None
        if k.seq < len(k.batches):
            batch = sync.make_batch(k.ed_key, k.device_id, k.seq + 1, k.prev,
                                       k.batches[k.seq])
            k.in_flight = batch
            self._send(c, messages.encode(messages.make(
                "sync-batch", seq=batch.seq, payload=batch.payload, sig=batch.sig)))
            return
        now = self.clock()
        attempt = k.attempts[-1]
        attempt.end, attempt.outcome = now, "landed"
        k.landed_at = now
        if self.keep_open:
            c.until = float("inf")
        else:  # the hub reads the goodbye: the round ends at once, not after a quiet
            c.driver.close("done")
            with contextlib.suppress(OSError):
                c.sock.send(c.out + c.driver.output(now))
            self.swarm.end(c, "landed", rst=False)

    # -- coming back ------------------------------------------------------------------

    def _busy(self, k: HerdKiosk, retry_ms: int) -> None:
        now = self.clock()
        attempt = k.attempts[-1]
        attempt.end, attempt.outcome, attempt.retry_ms = now, BUSY, retry_ms
        attempt.back_at = k.due = now + busy_wait(retry_ms / 1000, self.rng)
        self.waiting.append(k)

    def _failed(self, k: HerdKiosk, why: str) -> None:
        attempt = k.attempts[-1]
        if attempt.outcome:
            return
        now = self.clock()
        attempt.end, attempt.outcome = now, why
        attempt.back_at = k.due = now + busy_wait(FAILED_WAIT, self.rng)
        self.waiting.append(k)

    def _end(self, c: Client, why: str) -> None:
        k: HerdKiosk = c.data["kiosk"]
        if k.landed_at is None:
            self._failed(k, why)

    # -- what happened ------------------------------------------------------------------

    def figures(self) -> dict[str, Any]:
        """Times in seconds from ``run``'s start."""
        landed = [k.landed_at for k in self.kiosks if k.landed_at is not None]
        rounds = sorted(a.end - a.start for k in self.kiosks for a in k.attempts
                        if a.outcome == "landed")
        attempts = [a for k in self.kiosks for a in k.attempts]
        failed: dict[str, int] = {}
        for a in attempts:
            if a.outcome not in ("landed", BUSY, ""):
                failed[a.outcome] = failed.get(a.outcome, 0) + 1
        return {
            "kiosks": len(self.kiosks), "landed": len(landed),
            "all_landed_s": round(max(landed) - self.started_at, 3) if landed else None,
            "round_p50_s": round(statistics.median(rounds), 3) if rounds else None,
            "round_p99_s": round(rounds[min(len(rounds) - 1, int(len(rounds) * 0.99))], 3)
            if rounds else None,
            "attempts": len(attempts),
            "busy_answers": sum(1 for a in attempts if a.outcome == BUSY),
            "busy_mid_round": sum(1 for a in attempts if a.outcome == BUSY and a.welcomed),
            "failed": failed,
            "quarantined": sum(k.quarantined for k in self.kiosks),
        }

    def early_returns(self) -> list[tuple[int, float, float]]:
        """Returns that came before the hub's wait was over: (kiosk, came, allowed)."""
        early = []
        for k in self.kiosks:
            for a, b in zip(k.attempts, k.attempts[1:], strict=False):
                if a.outcome == BUSY and a.retry_ms is not None \
                        and b.start < a.end + a.retry_ms / 1000:
                    early.append((k.index, b.start, a.end + a.retry_ms / 1000))
        return early

    def close(self) -> None:
        for c in list(self.swarm.clients.values()):
            self.swarm.end(c, "done")


def herd_kiosks(hub_dir: Path, count: int, checkins: int) -> list[HerdKiosk]:
    """``count`` kiosks enrolled in the hub at ``hub_dir`` (not serving), each with a
    backlog of ``checkins`` check-ins."""
    from ._hub_proc import enrol_many

    now = wall_ms()
    out = []
    for i, e in enumerate(enrol_many(hub_dir, count)):
        assert e.ed_key is not None
        deltas = backlog(e.node, checkins, now)
        cut = [deltas[at:at + BATCH_DELTAS] for at in range(0, len(deltas), BATCH_DELTAS)]
        out.append(HerdKiosk(i, e.device_id, e.node, e.x_key, e.ed_key, e.cert, cut))
    return out


def landed(store: Any, kiosks: list[HerdKiosk]) -> dict[int, int]:
    """How many check-in writes of each kiosk (by node) the hub's store holds, each
    write counted as often as it is there (``changes_since`` from the start)."""
    from protocol.crdt.delta import decode
    from protocol.crdt.schema import type_by_name

    checkin = type_by_name("checkin").number
    nodes = {k.node for k in kiosks}
    counts = dict.fromkeys(nodes, 0)
    cursor, more = 0, True
    while more:
        page, cursor, more = store.changes_since(cursor, None, 256 * 1024)
        for raw in page:
            d = decode(raw)
            if d.node in nodes and d.type == checkin:
                counts[d.node] += 1
    return counts


# The benchmark's part: 1,000 kiosks against ``haven hub serve`` --------------------------

GOAL_KIB_PER_KIOSK = 40


def measure(ctx: Any, count: int, checkins: int, serve_args: list[str] | None = None,
            limit: float = 1800.0, name: str = "herd") -> dict[str, Any]:
    """``count`` kiosks, each with ``checkins`` check-ins, back at once against ``haven
    hub serve`` (a subprocess, its defaults unless ``serve_args``): the time until every
    backlog is on the hub, round times, busy answers, the hub's peak rounds in
    progress, its RSS per connected kiosk above the idle process, and each check-in
    read back from the store."""
    from host.hub.hub import Hub, init_hub

    from . import _hub_proc as hp

    hp.raise_nofile()
    hub_dir = ctx.workdir / f"{name}-hub"
    init_hub(hub_dir)
    t0 = time.monotonic()
    kiosks = herd_kiosks(hub_dir, count, checkins)
    ctx.log(f"herd: {count:,} kiosks enrolled, {count * checkins:,} check-ins written, "
            f"in {time.monotonic() - t0:.1f} s")
    args = ["--max-connections", str(count + 1000), *(serve_args or [])]
    with hp.hub_serving(hub_dir, ctx.workdir / f"{name}-hub.log", args) as hub:
        time.sleep(1.0)
        idle_kib = hub.rss_kib()
        herd = Herd(hub.host, hub.port, hub.key, kiosks, keep_open=True)
        t1, cpu1 = time.monotonic(), time.process_time()
        finished = herd.run(limit)
        took, herd_cpu = time.monotonic() - t1, time.process_time() - cpu1
        herd.idle(3.0)  # every kiosk connected and idle: its rounds over on the hub
        connected = len(herd.swarm.clients)
        rss_kib = hub.rss_kib()
        health = hp.health(hub_dir) or {}
        ctx.log(f"herd: {'all' if finished else 'NOT all'} landed in {took:.1f} s; "
                f"{herd.figures()}; hub rounds {health.get('rounds')}")
        herd.close()
    with Hub(hub_dir) as h:
        counts = landed(h.store, kiosks)
    shutil.rmtree(hub_dir, ignore_errors=True)
    once = sum(1 for k in kiosks if counts.get(k.node) == k.checkins)
    return {**herd.figures(), "finished": finished, "seconds": round(took, 1), "limit_s": limit,
            "herd_cpu_s": round(herd_cpu, 1), "connected": connected,
            "idle_rss_kib": idle_kib, "rss_kib": rss_kib,
            "kib_per_kiosk": round((rss_kib - idle_kib) / max(1, connected), 1),
            "exactly_once": once, "checkins": checkins, "early_returns": len(herd.early_returns()),
            "rounds": health.get("rounds"), "refusals": health.get("refusals"),
            "serve_args": args}


def rows(r: dict[str, Any], peer: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """``measure``'s figures as benchmark rows (what, value, detail, goal, met); ``peer``:
    the same herd against a hub that sheds nothing, in the same run."""
    n = r["kiosks"]
    hub_rounds = r.get("rounds") or {}
    versus = []
    if peer is not None:
        timeouts = peer["failed"].get("timeout", 0)
        late = "" if peer["finished"] else (
            f"only {peer['landed']:,} of {n:,} landed within {peer['limit_s']:g} s; ")
        versus = [{
            "what": "  the same herd, the hub shedding nothing (--max-rounds "
                    f"{10 * n:,}), all on the hub (s)",
            "value": peer["all_landed_s"] if peer["finished"] else None,
            "detail": f"{late}round p50 {peer['round_p50_s']} s, p99 {peer['round_p99_s']} s; "
                      f"{timeouts:,} rounds past their time limit, tried again; "
                      f"{peer['exactly_once']:,} of {n:,} exactly once; peak "
                      f"{(peer.get('rounds') or {}).get('peak')} rounds at once",
            "goal": "report", "met": None}]
    return [
        {"what": f"herd: {n:,} kiosks back at once, {r['checkins']} check-ins each, all on "
                 "the hub (s)", "value": r["all_landed_s"],
         "detail": f"{r['exactly_once']:,} of {n:,} kiosks' check-ins on the hub exactly "
                   f"once; {r['attempts']:,} attempts, round p50 {r['round_p50_s']} s, p99 "
                   f"{r['round_p99_s']} s; failed {r['failed'] or 'none'}",
         "goal": "every check-in once", "met": r["finished"] and r["exactly_once"] == n},
        *versus,
        {"what": "  busy answers given", "value": r["busy_answers"],
         "detail": f"kiosks back before their wait: {r['early_returns']}; rounds told busy "
                   f"after their welcome: {r['busy_mid_round']} (the kiosk answered the hub "
                   f"after --round-quiet); hub: {hub_rounds}",
         "goal": "report", "met": r["early_returns"] == 0 and r["busy_mid_round"] == 0},
        {"what": "  peak rounds in progress", "value": hub_rounds.get("peak"),
         "detail": f"the hub's bound: {hub_rounds.get('bound')}",
         "goal": "<= bound", "met": hub_rounds.get("peak", 0) <= hub_rounds.get("bound", 0)},
        {"what": "  hub RSS per connected kiosk above the idle process, KiB",
         "value": r["kib_per_kiosk"],
         "detail": f"{r['connected']:,} kiosks connected; RSS {r['idle_rss_kib'] / 1024:.1f} "
                   f"MiB idle, {r['rss_kib'] / 1024:.1f} MiB after the herd",
         "goal": f"<= {GOAL_KIB_PER_KIOSK}", "met": r["kib_per_kiosk"] <= GOAL_KIB_PER_KIOSK},
    ]
