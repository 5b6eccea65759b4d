"""An idle kiosk's day on TCP: simulated, and ten real minutes in a network namespace.

Theory of operation
-------------------
**Simulated.** The kiosk's session driver (``device.sync.engine.kiosk_driver``
as a kept-open session builds it, with ``KioskConfig``'s default keepalive)
and the hub's (as ``host.hub.serve`` builds it for a TCP link) talk over an
in-memory wire on a simulated clock: each side's ``output`` is written at
the simulated time it is due, arrives ``DELAY`` later, and each side's
``next_deadline`` decides when it next runs, so a day passes in seconds. The
session is a real one: handshake, the kiosk's hello, the hub's welcome
(``HubPeer`` on a real hub store) and whatever the configuration does after
that: keepalives, and polling rounds (``Round.again``: a pull and the
hub's page of changes) if the kiosk still polls a kept-open TCP session.

TCP is counted, not run: a write is ceil(len / MSS) segments, each with
``HEADER`` bytes of TCP/IP headers (Linux with timestamps); a side that
receives data and writes nothing within ``ACK_DELAY`` sends a pure ACK (one
per two segments received); a write within it carries the ACK. The
connection's three-way handshake counts once.

**Real.** Two network namespaces joined by a veth pair: ``haven hub serve``
in one, the real ``haven-kiosk run`` in the other, and nftables counters in
the kiosk's namespace (packets and bytes of the hub's port, both ways: IP
packet lengths, headers included). Counting starts once the first round is
over; the figure is extrapolated to a day. It needs root and ``nft``, and
says so when it cannot run.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import Context
from .sync import ROOT, kiosk_and_hub

DAY = 86_400.0
DELAY = 0.1  #: one-way latency of the simulated link, seconds
MSS = 1448  #: 1500 - 20 (IP) - 32 (TCP with timestamps)
HEADER = 52  #: IP + TCP headers with timestamps
ACK_DELAY = 0.04  #: Linux's delayed ACK

NOTES = [
    f"Idle day, simulated: the kiosk's and the hub's real session drivers (as "
    "`kiosk_driver(kept_open=True)` and `haven hub serve` configure them for TCP) and the "
    "real hello / welcome (`HubPeer` on a real hub store), on a simulated clock over a wire "
    f"with {DELAY * 1000:.0f} ms one way. TCP is counted: each write is ceil(len / {MSS}) "
    f"segments with {HEADER} B of headers each; a side that receives data and writes "
    f"nothing within {ACK_DELAY * 1000:.0f} ms sends a pure ACK; the connection's "
    "three-way handshake counts once. Polling rounds on the kept-open session are "
    "simulated when the kiosk's configuration has them (the detail says which period).",
    "Idle day, real (full mode): `haven hub serve` and `haven-kiosk run` in two network "
    "namespaces joined by a veth pair; nftables counters in the kiosk's namespace count "
    "every packet of the hub's port both ways (IP lengths, headers included) for at least "
    "10 minutes after the first round, extrapolated to a day.",
]


# Simulated -----------------------------------------------------------------------------------


class SimLink:
    """Enough of a ``Link`` for the drivers' constructors: a TCP stream."""

    url = "tcp://simulated:0"
    stream = True

    def read(self, timeout: float = 0.0) -> bytes | None:
        return b""

    def write(self, data: bytes) -> None:
        raise AssertionError("the simulation writes through output()")

    def close(self) -> None:
        pass

    def fileno(self) -> int | None:
        return None


@dataclass
class Side:
    name: str
    driver: Any
    payload: int = 0
    segments: int = 0
    acks: int = 0
    writes: int = 0
    ack_due: float | None = None  #: a delayed ACK owed at this time
    ack_segments: int = 0  #: segments received since our last segment
    inbox: list[tuple[float, bytes]] = field(default_factory=list)

    @property
    def wire(self) -> int:
        return self.payload + HEADER * (self.segments + self.acks)


def _hub_driver(work: Path) -> tuple[Any, str]:
    """The hub's driver for a TCP link, built by ``haven hub serve``'s own ``Server``
    with its default limits (``Server.driver(stream=True)``; before the event-driven
    server, ``Server.driver(link)``)."""
    from host.hub import serve
    from host.hub.hub import Hub

    hub = Hub(work / "hub")
    server = serve.Server(hub, 300_000)
    try:
        try:
            return server.driver(True), "host.hub.serve.Server.driver(stream=True)"
        except (TypeError, AttributeError):
            old: Any = server.driver  # the thread-per-connection server took the link
            return old(SimLink()), "host.hub.serve.Server.driver(link)"
    finally:
        if hasattr(server, "shutdown"):
            server.shutdown()


def _poll_period(cfg: Any) -> tuple[float, str]:
    """How often an idle kiosk runs a round on its kept-open TCP session."""
    names = [n for n in vars(cfg) if "poll" in n]
    if names:
        return float(getattr(cfg, names[0])), f"KioskConfig.{names[0]}"
    return float(cfg.interval), "KioskConfig.interval (the kiosk polls every interval)"


def simulated(ctx: Context, seconds: float = DAY) -> dict[str, Any]:
    from device.config import KioskConfig
    from device.sync.engine import Round, kiosk_driver
    from host.hub.document_inbox import DOCUMENTS_DIR, DocumentInbox
    from host.hub.hub import Hub
    from host.hub.peer import HubPeer
    from protocol.driver.session_driver import LinkClosed, Restarted
    from protocol.driver.wall_clock import wall_ms
    from protocol.session.events import Closed, Connected, MessageReceived

    work = ctx.workdir / "day"
    hub_dir, store, state, ident = kiosk_and_hub(work, [])
    cfg = KioskConfig()
    poll, poll_source = _poll_period(cfg)
    t_start = time.monotonic()
    hub_drv, how = _hub_driver(work)
    k = Side("kiosk", kiosk_driver(ident, SimLink(), keepalive=cfg.keepalive, kept_open=True))
    h = Side("hub", hub_drv)
    hub = Hub(hub_dir)
    peer: HubPeer | None = None
    rnd: Round | None = None
    now = time.monotonic() + 0.001
    t0 = now
    end = t0 + seconds
    next_poll = math.inf
    rounds = 0
    closes: list[str] = []
    k.segments = h.segments = 1  # SYN, SYN-ACK
    k.acks = 1  # the handshake's last ACK
    hub_config = h.driver.config
    steps = 0
    while steps < 2_000_000:
        steps += 1
        # Run both sides at ``now``: events, then output.
        for side, other in ((k, h), (h, k)):
            due = [d for t, d in side.inbox if t <= now]
            side.inbox = [(t, d) for t, d in side.inbox if t > now]
            for data in due:
                side.driver.feed(data, now)
            for event in side.driver.events():
                if side is h:
                    if isinstance(event, Connected):
                        peer = HubPeer(hub.store, hub.ed_public, event.remote_static, wall_ms,
                                       documents=DocumentInbox(hub_dir / DOCUMENTS_DIR,
                                                               hub.store, wall_ms))
                    elif isinstance(event, MessageReceived) and peer is not None:
                        for lane, msg in peer.on_message(event.data):
                            h.driver.send(lane, msg)
                elif isinstance(event, Connected):
                    rnd = Round(store, state, ident)
                    for lane, msg in rnd.hello():
                        k.driver.send(lane, msg)
                elif isinstance(event, MessageReceived) and rnd is not None:
                    for lane, msg in rnd.on_message(event.data):
                        k.driver.send(lane, msg)
                    if rnd.done:
                        rounds += 1
                        rnd = None
                        if poll > 0 and next_poll == math.inf:
                            next_poll = now + poll
                if isinstance(event, Closed | Restarted | LinkClosed):
                    closes.append(f"{side.name}: {event}")
            out = side.driver.output(now)
            if out:
                side.writes += 1
                side.payload += len(out)
                segs = math.ceil(len(out) / MSS)
                side.segments += segs
                side.ack_due, side.ack_segments = None, 0  # our segment carries the ACK
                other.inbox.append((now + DELAY, out))
                other.ack_segments += segs
                if other.ack_due is None:
                    other.ack_due = now + DELAY + ACK_DELAY
        for side in (k, h):
            if side.ack_due is not None and side.ack_due <= now:
                side.acks += max(1, side.ack_segments // 2)
                side.ack_due, side.ack_segments = None, 0
        if poll > 0 and now >= next_poll and rnd is None and k.driver.connected:
            rnd = Round(store, state, ident)
            for lane, msg in rnd.again():
                k.driver.send(lane, msg)
            next_poll = now + poll
            continue
        times = [t for s in (k, h) for t, _ in s.inbox]
        times += [s.ack_due for s in (k, h) if s.ack_due is not None]
        times += [d for d in (k.driver.next_deadline(), h.driver.next_deadline())
                  if d is not None]
        times.append(next_poll)
        nxt = min(times)
        if nxt >= end:
            now = end
            break
        # A deadline already run and still due: the session's timer check (now - last
        # >= interval) can miss its own deadline (last + interval) by a rounding; a
        # real clock has moved on by the next turn, so does this one.
        now = max(now + 1e-6, nxt)
    state.close()
    store.close()
    hub.close()
    return {"seconds": seconds, "kiosk": vars_of(k), "hub": vars_of(h), "rounds": rounds,
            "closes": closes, "keepalive": cfg.keepalive, "poll": poll,
            "poll_source": poll_source, "hub_driver": how,
            "hub_keepalive": hub_config.keepalive, "hub_dead_timeout": hub_config.dead_timeout,
            "kiosk_dead_timeout": k.driver.config.dead_timeout,
            "real_seconds": time.monotonic() - t_start, "steps": steps,
            "reached": now - t0}


def vars_of(side: Side) -> dict[str, int]:
    return {"payload": side.payload, "segments": side.segments, "acks": side.acks,
            "writes": side.writes, "wire": side.wire}


def simulated_rows(r: dict[str, Any], goal: int) -> list[dict[str, Any]]:
    k, h = r["kiosk"], r["hub"]
    total = k["wire"] + h["wire"]
    day = total * DAY / r["seconds"]
    closes = "; ".join(r["closes"][:2])
    polls = (f"a round every {r['poll']:g} s ({r['poll_source']}), {r['rounds']:,} rounds"
             if r["poll"] > 0 else f"no polling ({r['poll_source']} = 0)")
    return [{"what": "idle kiosk on TCP, simulated day, bytes both ways", "value": round(day),
             "detail": f"kiosk keepalive {r['keepalive']:g} s (dead {r['kiosk_dead_timeout']:g} "
                       f"s), hub keepalive {r['hub_keepalive']:g} s / idle limit "
                       f"{r['hub_dead_timeout']:g} s ({r['hub_driver']}); {polls}; up "
                       f"{k['wire']:,} B ({k['payload']:,} B payload, {k['segments']:,} "
                       f"segments + {k['acks']:,} pure ACKs), down {h['wire']:,} B "
                       f"({h['payload']:,} B payload, {h['segments']:,} + {h['acks']:,}); "
                       + (f"session ended: {closes}" if closes else "the session lasted the day")
                       + ("" if r["reached"] >= r["seconds"] else
                          f"; the simulation stalled at {r['reached']:.0f} s"),
             "goal": f"<= {goal:,}",
             "met": day <= goal and not r["closes"] and r["reached"] >= r["seconds"]}]


# Real, in network namespaces -----------------------------------------------------------------


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, check=check, timeout=60)


NFT = """table inet hkbench {{
  counter up {{ }}
  counter down {{ }}
  chain out {{ type filter hook output priority 0; tcp dport {port} counter name "up"; }}
  chain in {{ type filter hook input priority 0; tcp sport {port} counter name "down"; }}
}}
"""


def _counters(ns: str) -> dict[str, tuple[int, int]]:
    out = {}
    for name in ("up", "down"):
        doc = json.loads(_run("ip", "netns", "exec", ns, "nft", "-j", "list", "counter",
                              "inet", "hkbench", name).stdout)
        c = next(item["counter"] for item in doc["nftables"] if "counter" in item)
        out[name] = (int(c["packets"]), int(c["bytes"]))
    return out


def cannot_run_real() -> str | None:
    if os.geteuid() != 0:
        return "skipped: needs root (network namespaces, nftables)"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"skipped: `{tool}` is missing (tools/bench installs nftables)"
    return None


def real(ctx: Context, minutes: float) -> dict[str, Any]:
    why = cannot_run_real()
    if why:
        return {"skipped": why}
    tag = f"{os.getpid() % 100000}"
    ns_hub, ns_kiosk = f"hkh{tag}", f"hkk{tag}"
    work = ctx.workdir / "netns"
    hub_dir, store, state, _ = kiosk_and_hub(work, [])
    state.close()
    store.close()
    port = 7300
    procs: list[subprocess.Popen[bytes]] = []
    try:
        _run("ip", "netns", "add", ns_hub)
        _run("ip", "netns", "add", ns_kiosk)
        _run("ip", "link", "add", f"vh{tag}", "netns", ns_hub, "type", "veth", "peer",
             "name", f"vk{tag}", "netns", ns_kiosk)
        for ns, dev, addr in ((ns_hub, f"vh{tag}", "10.211.0.1/24"),
                              (ns_kiosk, f"vk{tag}", "10.211.0.2/24")):
            _run("ip", "-n", ns, "addr", "add", addr, "dev", dev)
            _run("ip", "-n", ns, "link", "set", dev, "up")
            _run("ip", "-n", ns, "link", "set", "lo", "up")
        subprocess.run(["ip", "netns", "exec", ns_kiosk, "nft", "-f", "-"],
                       input=NFT.format(port=port), text=True, check=True,
                       capture_output=True, timeout=60)
        with (work / "hub.log").open("ab") as log:
            procs.append(subprocess.Popen(
                ["ip", "netns", "exec", ns_hub, sys.executable, "-m", "host.cli", "hub",
                 "serve", "--data", str(hub_dir), "--listen", f"tcp://10.211.0.1:{port}"],
                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        time.sleep(2.0)
        kiosk = [str(Path(sys.executable).parent / "haven-kiosk"), "run", "--data",
                 str(work / "kiosk"), "--hub", f"tcp://10.211.0.1:{port}", "--ui",
                 "127.0.0.1:8080", "--hardware", "simulated"]
        with (work / "kiosk.log").open("ab") as log:
            procs.append(subprocess.Popen(
                ["ip", "netns", "exec", ns_kiosk, *kiosk], cwd=ROOT, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True))
        deadline = time.monotonic() + 60
        while _counters(ns_kiosk)["down"][0] == 0:
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                return {"skipped": "the kiosk never reached the hub in the namespace "
                        f"(see {work}/kiosk.log)"}
            time.sleep(0.5)
        time.sleep(10.0)  # the first round, and its acks
        _run("ip", "netns", "exec", ns_kiosk, "nft", "reset", "counters", "table", "inet",
             "hkbench")
        ctx.log(f"idle day, real: counting for {minutes:g} minutes")
        t0 = time.monotonic()
        time.sleep(minutes * 60)
        counts = _counters(ns_kiosk)
        seconds = time.monotonic() - t0
        alive = all(p.poll() is None for p in procs)
        return {"seconds": seconds, "up": counts["up"], "down": counts["down"],
                "alive": alive}
    finally:
        for p in procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, 15)
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, 9)
                    p.wait(15)
        for ns in (ns_hub, ns_kiosk):
            _run("ip", "netns", "del", ns, check=False)


def real_rows(r: dict[str, Any], goal: int) -> list[dict[str, Any]]:
    what = "idle kiosk on TCP, real run in a network namespace, bytes both ways a day"
    if "skipped" in r:
        return [{"what": what, "value": None, "detail": r["skipped"], "goal": f"<= {goal:,}",
                 "met": None}]
    (up_p, up_b), (down_p, down_b) = r["up"], r["down"]
    day = (up_b + down_b) * DAY / r["seconds"]
    return [{"what": what, "value": round(day),
             "detail": f"{up_b + down_b:,} B in {r['seconds'] / 60:.1f} min (nftables): up "
                       f"{up_p:,} packets {up_b:,} B, down {down_p:,} packets {down_b:,} B; "
                       "x 86,400 s / the time counted"
                       + ("" if r["alive"] else "; a process exited meanwhile"),
             "goal": f"<= {goal:,}", "met": day <= goal and r["alive"]}]
