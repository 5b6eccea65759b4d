"""``haven hub serve``: thousands of kiosk sessions in one process, over TCP and serial.

Theory of operation
-------------------
One asyncio event loop, in a thread of its own, runs every link:
``listener.Listener`` accepts TCP connections (its own accept loop, which
survives running out of descriptors), ``serial_port.SerialPort`` serves each
``--serial`` port, and each link is a ``connection.Connection`` driving its
responder ``SessionDriver``. Blocking work (the store, document files) runs
in a bounded worker pool; ``watch.StoreWatch`` looks at the store a few times
a second to push ``sync-notify`` and to end revoked kiosks' sessions; the
health report answers on a unix socket (``health.py``). Whatever a peer
sends, the worst outcome is that its connection closes. The re-sealer
(``Hub.reseal_slice``: the rows of a hub from before sealing, or of a data
key rotated away) runs a slice at a time in the pool, a pause between
slices so sessions' commits wait at most one slice; idle, it looks again
every ``RESEAL_IDLE`` seconds (``haven hub keys rotate`` from another
process starts a new walk). A fleet key rotation's migration of patient ids
(``Hub.fleet_slice``) goes on the same way, a slice after each re-seal slice.

Bounds (``limits.Limits``, each a ``haven hub serve`` flag): connections at
once (kept below the descriptor limit), connections not yet authenticated
per source address (kiosks behind one NAT share an address, so authenticated
ones are never capped by address), one live session per kiosk key, a rate of
key exchanges (``Session``'s admission), a handshake deadline from connect,
an idle limit, and caps on queued input and output. Every refusal is counted
by reason and logged at most once per interval (``limits.Refusals``), and so
are a kiosk's takeovers and superseded connections; a stranger's (a key that
never made an accepted hello) are not logged at all, so that an attacker
cycling its own keys writes nothing to the store.

Key exchanges are shared fairly (``admission.HandshakeBudget``): each source
address has a share of its own (``handshake-address`` once it is used up);
strangers draw on a general bucket (``handshake-rate`` once it is empty);
and a reserved bucket serves only addresses from which a kiosk recently
completed a hello the hub accepted (``peer.sync.device`` set, no refusal):
the address enters a bounded LRU (``--known-addresses``, forgotten
``--known-address-age`` after its last accepted hello or session end). So
strangers from any number of addresses cannot starve a kiosk that was seen
before, and one behind a kiosk's NAT gets that address's share and no more.
Authenticated sessions are never capped by address; serial ports are the
hub's own lines and their handshakes are never rationed.

Sessions and kiosks: a TCP connection carries one session. When a new
session authenticates with the same static key as an older connection, the
older one is closed at once (usually a NAT dropped it silently). A kiosk
keeps its session open between rounds and may resume it on a new connection:
the server keeps each key's last session and its ``HubPeer`` (bounded: an
entry goes when its session closes, when the kiosk never said hello, or an
idle limit after its link ended), so the conversation goes on where it was.
A serial line outlives its sessions: a session that ends is replaced by a
fresh one, and a kiosk that starts over is taken over by the session itself.
On TCP the hub never pings first: the kiosk keeps the session alive, and the
hub ends one silent for ``idle_limit``.

If the loop dies, or a listener cannot be opened again, ``serve`` raises
``ServerFailed``: the process exits non-zero and systemd restarts it.

Several processes, one database: a hub on PostgreSQL may run N ``haven hub
serve`` processes on one port (``--reuse-port``: ``SO_REUSEPORT``, the
kernel spreading connections over them; each a systemd unit of its own,
restarted alone), or behind HAProxy in TCP mode. What must hold across
processes lives in the database: a kiosk's chain and checkpoint (its row
locked by each batch's commit: ``HubStore.commit_batch``), clone evidence
(held batches, the flag), revocations, arrivals; the watch hears of them
at commit (``watch``, ``change_feed``), and one process at a time runs the
background walks (``StoreWatch.leads``). The rest is this process's own, by
design: its connections and sessions, the kept sessions for a resume (a
kiosk that comes back on another process gets a fresh session there), the
one-connection-per-key takeover (a kiosk's stale connection on another
process ends at its idle limit), the handshake budget and the per-address
caps (they guard this process's CPU and descriptors), the rounds bound
(``--max-rounds`` is per process: give each its share), refusal counts, and
the health report, on ``serve-PID.sock`` for each process. An SQLite hub
has one writer file: a second ``haven hub serve`` on it is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import fcntl
import functools
import math
import os
import resource
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from host.errors import HavenError, UsageError
from host.hub import health as health_socket
from host.hub import provisioning
from host.hub.admission import HandshakeBudget
from host.hub.connection import AUTHENTICATED, HANDSHAKING, Connection, PeerSlot
from host.hub.database import is_url
from host.hub.document_inbox import DOCUMENTS_DIR, DocumentInbox
from host.hub.hub import Hub, database_of
from host.hub.limits import Limits, Refusals
from host.hub.listener import Listener, bind
from host.hub.peer import HubPeer
from host.hub.serial_port import SerialPort
from host.hub.shedding import GO, HOLD, Shedder
from host.hub.watch import Look, StoreWatch
from protocol import messages
from protocol.driver.errors import LinkError
from protocol.driver.session_driver import SessionDriver, session_config
from protocol.driver.wall_clock import wall_ms
from protocol.session.core import Session
from protocol.session.events import CLOSED, Connected
from protocol.sync.conversation import CONTROL_LANE

#: (keepalive, dead timeout) in seconds on a serial line: the hub's own line, where
#: pings are free and a restarted kiosk is spotted soon.
SERIAL_LIVENESS = (5.0, 60.0)
M_ARENA_MAX = -8  #: glibc's mallopt parameter


class ServerFailed(HavenError, RuntimeError):
    """The server cannot go on (its loop died, a listener will not reopen)."""

    exit_code = 1


@dataclass
class Kept:
    """A kiosk key's last session, for a resume on a new connection."""

    session_id: bytes
    session: Session
    slot: PeerSlot
    ended_at: float | None = None  #: when its last link ended (None: a link holds it)


def descriptor_limit() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def limit_malloc_arenas(arenas: int = 2) -> None:
    """At most ``arenas`` glibc malloc arenas (unless ``MALLOC_ARENA_MAX`` says), before
    any thread starts. glibc gives each thread that allocates an arena of its own, up
    to eight a core, and keeps what was freed in each: the store's workers, after a
    herd of 1,000 kiosks' batches, left the hub 6 KiB a kiosk larger. Threads that take
    turns on the GIL need no more than two."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt(M_ARENA_MAX, arenas)


def raise_descriptor_limit() -> int:
    """Raise this process's soft descriptor limit to the hard one; returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return descriptor_limit()


class Server:
    #: Seconds between two re-seal slices, and between two looks when nothing is to do.
    RESEAL_PAUSE, RESEAL_IDLE = 0.05, 10.0

    def __init__(self, hub: Hub, max_ahead_ms: int, limits: Limits | None = None,
                 reuse_port: bool = False) -> None:
        """``reuse_port``: listen beside other processes of this hub (PostgreSQL only)."""
        if reuse_port and not is_url(database_of(hub.data)):
            raise UsageError(SQLITE_ALONE + "; --reuse-port needs the hub on PostgreSQL")
        self.hub = hub
        self.reuse_port = reuse_port
        #: Where the health report answers: one socket per process when they share ports.
        self.health_path = hub.data / (f"serve-{os.getpid()}.sock" if reuse_port
                                       else health_socket.SOCKET)
        self._resealing: asyncio.Task[None] | None = None
        self.max_ahead_ms = max_ahead_ms
        self.limits = lim = limits or Limits()
        self._promoting: asyncio.Task[None] | None = None
        self.started = time.monotonic()
        self.loop = asyncio.new_event_loop()
        self.pool = ThreadPoolExecutor(max(1, lim.workers), thread_name_prefix="hub-store")
        self.pending = 0  #: jobs handed to the pool and not finished
        self.running = 0  #: of which a worker runs now
        self._count_lock = threading.Lock()
        self.accepted_total = 0  #: TCP connections accepted since start
        self.connections: set[Connection] = set()
        self.unauthenticated: dict[str, int] = {}  #: by source address
        self._holders: dict[bytes, Connection] = {}  #: TCP: the connection holding each key
        self._kept: dict[bytes, Kept] = {}  #: by session id
        self._kept_by_key: dict[bytes, bytes] = {}  #: kiosk key -> its last session id
        #: Each kiosk key's last conversation, while anything holds it.
        self._slots: weakref.WeakValueDictionary[bytes, PeerSlot] = \
            weakref.WeakValueDictionary()
        self.budget = HandshakeBudget(
            rate=lim.handshake_rate, burst=lim.handshake_burst,
            reserved_rate=lim.handshake_reserved_rate, reserved_burst=lim.handshake_reserved_burst,
            address_rate=lim.handshake_address_rate, address_burst=lim.handshake_address_burst,
            known_size=lim.known_addresses, known_age=lim.known_address_age,
            now=time.monotonic())
        self.refusals = Refusals(lambda reason, text: self.log("refused", f"{reason}: {text}"),
                                 lim.log_interval)
        #: Takeovers and superseded connections: logged like refusals, at most a row an interval.
        self.notes = Refusals(self.log, lim.log_interval)
        self.shedder = Shedder(lim.max_rounds, lim.round_quiet, lim.busy_retry_min,
                               lim.busy_retry_max, lim.round_guess, lim.busy_hold)
        #: Conversations whose round's first messages wait for a place (``shedding``).
        self._holding: dict[PeerSlot, tuple[Connection, list[bytes]]] = {}
        self.listeners: list[Listener] = []
        self.ports: list[SerialPort] = []
        self.watch = StoreWatch(self, database_of(hub.data))
        self.failure: str | None = None
        self.stopped = threading.Event()
        self._health: asyncio.AbstractServer | None = None
        self._thread = threading.Thread(target=self._run, name="hub-loop", daemon=True)
        self._thread.start()
        self.call(self._start)

    # -- the loop thread ---------------------------------------------------------

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        except BaseException as exc:  # noqa: BLE001 - a dead loop ends the process
            self.failure = f"the event loop died: {type(exc).__name__}: {exc}"
        finally:
            self.stopped.set()

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` on the loop thread and return what it returns (or raise)."""
        async def run() -> Any:
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result()

    async def _start_health(self) -> None:
        if self.reuse_port:
            health_socket.sweep(self.hub.data)
        self._health = await health_socket.open_health(self.loop, self.health_path,
                                                       self.health)
        if self._health is None:
            self.log("health", f"cannot answer on {self.health_path}: "
                     "no health report for haven hub status")

    def _start(self) -> None:
        self.loop.create_task(self._start_health())
        self.watch.start()
        if self.limits.promote_interval > 0:
            self._promoting = self.loop.create_task(self._promote_claims())
        self._resealing = self.loop.create_task(self._reseal())

    async def _reseal(self) -> None:
        """Seal what is not under the current data key, a slice at a time, in the pool."""
        while True:
            try:
                more = self.watch.leads and await self.submit(self._background_slice)
            except RuntimeError:  # the pool is shut down
                return
            except Exception as exc:  # noqa: BLE001 - logged; the next look tries again
                self.log("reseal", f"re-sealing failed: {type(exc).__name__}: {exc}")
                more = False
            await asyncio.sleep(self.RESEAL_PAUSE if more else self.RESEAL_IDLE)

    async def _promote_claims(self) -> None:
        """Every ``promote_interval``, check-ins' claims made records where none exists
        (``Hub.promote_claims``, in the pool: it reads only what arrived since)."""
        while True:
            await asyncio.sleep(self.limits.promote_interval)
            if not self.watch.leads:
                continue
            try:
                await self.submit(self.hub.promote_claims)
            except RuntimeError:  # the pool is shut down
                return
            except Exception as exc:  # noqa: BLE001 - logged; the next pass tries again
                self.log("claims", f"promoting claims failed: {type(exc).__name__}: {exc}")

    def submit(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """Run ``fn(*args)`` in the worker pool (loop thread only)."""
        self.pending += 1
        fut = self.loop.run_in_executor(self.pool, self._job, fn, args)
        fut.add_done_callback(self._job_done)
        return fut

    def _job(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        with self._count_lock:
            self.running += 1
        try:
            return fn(*args)
        finally:
            with self._count_lock:
                self.running -= 1

    def _job_done(self, fut: asyncio.Future[Any]) -> None:
        self.pending -= 1

    def log(self, kind: str, text: str) -> None:
        """A row in the hub's log, written in the pool (loop thread only)."""
        with contextlib.suppress(RuntimeError):  # the pool is shut down
            self.submit(self.hub.store.log, None, kind, text, wall_ms())

    def log_threadsafe(self, kind: str, text: str) -> None:
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.log, kind, text)

    def refused(self, reason: str, detail: str) -> None:
        self.refusals.count(reason, detail, time.monotonic())

    def fatal(self, why: str) -> None:
        self.failure = why
        self.log("fatal", why)
        self.loop.call_later(0.2, self.loop.stop)  # let the log row go

    @property
    def connection_cap(self) -> int:
        return max(1, min(self.limits.max_connections,
                          descriptor_limit() - self.limits.fd_reserve))

    # -- sessions ------------------------------------------------------------------

    def new_peer(self, remote: bytes | None) -> HubPeer:
        inbox = DocumentInbox(self.hub.data / DOCUMENTS_DIR, self.hub.store, wall_ms)
        return HubPeer(self.hub.store, self.hub.ed_public, remote, wall_ms, self.max_ahead_ms,
                       documents=inbox, enrol=self.hub.enroll_by_approval,
                       provision=functools.partial(provisioning.answer, self.hub),
                       stable_key=self.hub.ed_key, after_batch=self.hub.after_batch,
                       defer=True, fleet=self.hub.fleet)

    def admit_handshake(self, host: str, now: float) -> bool:
        """May a key exchange from ``host`` start now? (``HandshakeBudget``)"""
        refusal = self.budget.admit(host, now)
        if refusal is None:
            return True
        self.refused(refusal, f"tcp://{host}: a key exchange over "
                     f"{'its address' if refusal == 'handshake-address' else 'the'} "
                     "share of the rate cap was dropped")
        return False

    def kiosk_seen(self, conn: Connection) -> None:
        """A kiosk's hello on ``conn`` was accepted: its address is known (loop thread)."""
        if conn.host is not None and not conn.kiosk:
            conn.kiosk = True
            self.budget.kiosk_seen(conn.host, time.monotonic())

    def driver(self, stream: bool, baud: int | None = None,
               host: str | None = None) -> SessionDriver:
        lim = self.limits
        if stream:  # the kiosk keeps it alive; the hub never pings (its pongs do not
            keepalive, dead = math.inf, lim.idle_limit  # count as pings of its own)
        else:
            keepalive, dead = SERIAL_LIVENESS
        config = session_config(stream=stream, baud=baud, keepalive=keepalive,
                                dead_timeout=dead, max_message=1 << 20, send_buffer=2 << 20)
        admit = None if host is None else functools.partial(self.admit_handshake, host)
        return SessionDriver(initiator=False, config=config, static_key=self.hub.x_key,
                             restart=not stream, resume_lookup=self._lookup,
                             admit_handshake=admit)

    def _lookup(self, session_id: bytes) -> Session | None:
        kept = self._kept.get(session_id)
        return kept.session if kept is not None else None

    def authenticated(self, conn: Connection) -> None:
        """``conn``'s first session connected: it no longer counts against its address."""
        self._uncount(conn)

    def connected(self, conn: Connection, event: Connected) -> None:
        key = event.remote_static
        kept = self._kept.get(event.session_id) if event.resumed else None
        if conn.slot is not None and not event.resumed and conn.slot.device is not None:
            self.notes.count("takeover", f"{conn.url}: the kiosk started over; its new "
                             "session replaces the open one", time.monotonic())
        if kept is not None:
            slot = kept.slot
        else:
            slot = PeerSlot(self, self.new_peer(key), self._slots.get(key) if key else None)
            if key is not None:
                self._slots[key] = slot
        old = conn.slot
        if old is not None and old is not slot:
            old.conn = old.session = None  # the kiosk started over: its old replies go nowhere
        slot.attach(conn, conn.driver.session)
        conn.slot, conn.remote, conn.notified = slot, key, False
        if key is None:
            return
        last = self._kept_by_key.get(key)
        if last is not None and last != event.session_id:
            self._kept.pop(last, None)
        self._kept[event.session_id] = Kept(event.session_id, conn.driver.session, slot)
        self._kept_by_key[key] = event.session_id
        if not conn.persistent:
            self._claim(conn, key)

    def _claim(self, conn: Connection, key: bytes) -> None:
        """``conn`` holds its kiosk's key: an older connection holding it ends."""
        older = self._holders.get(key)
        self._holders[key] = conn
        if older is not None and older is not conn:
            if older.kiosk:  # a stranger's key, used again, is no news
                self.notes.count("superseded", f"{older.url}: the kiosk connected again "
                                 f"from {conn.url}", time.monotonic())
            older.supersede()

    def round_message(self, conn: Connection, slot: PeerSlot, data: bytes) -> bool:
        """A kiosk's message for ``slot`` (loop thread): True if it goes on to the pool;
        False if it would begin a round over ``max_rounds`` and waits for a place (kept
        here), or ``conn`` was told busy (``shedding``)."""
        verdict = self.shedder.message(slot, time.monotonic(), conn.remote)
        if verdict == GO:
            return True
        if verdict == HOLD:
            self._holding.setdefault(slot, (conn, []))[1].append(data)
        else:
            self._busy(conn, int(verdict))
        return False

    def _busy(self, conn: Connection, wait_ms: int) -> None:
        conn.refuse("busy", f"{conn.url}: {self.shedder.in_progress} sync rounds in "
                    f"progress; told to come back in {wait_ms / 1000:g} s",
                    goodbye=("busy", "sync rounds at the bound"), retry_ms=wait_ms)

    def _rounds_swept(self, now: float) -> None:
        """Rounds ended; places free go to the rounds held, first come first; those held
        too long are told busy; those whose session ended are forgotten."""
        go, told = self.shedder.sweep(now, lambda slot: slot.idle, lambda slot: slot.gone)
        slots: list[PeerSlot] = go
        for slot in slots:
            conn, held = self._holding.pop(slot)
            if conn.live and conn.slot is slot:
                for data in held:
                    conn.deliver(slot, data)
        for slot, wait_ms in told:
            conn, _ = self._holding.pop(slot)
            if conn.slot is slot:
                self._busy(conn, wait_ms)
        for slot in [s for s in self._holding if not self.shedder.is_holding(s)]:
            del self._holding[slot]

    def _uncount(self, conn: Connection) -> None:
        addr = conn.address
        if addr is not None:
            conn.address = None
            left = self.unauthenticated.get(addr, 1) - 1
            if left > 0:
                self.unauthenticated[addr] = left
            else:
                self.unauthenticated.pop(addr, None)

    def ended(self, conn: Connection) -> None:
        self.connections.discard(conn)
        self._uncount(conn)
        if conn.kiosk and conn.host is not None:  # a kiosk's session ended: still known
            self.budget.kiosk_seen(conn.host, time.monotonic())
        key = conn.remote
        if key is None:
            return
        if self._holders.get(key) is conn:
            del self._holders[key]
        sid = self._kept_by_key.get(key)
        kept = self._kept.get(sid) if sid is not None else None
        if kept is not None and kept.session is conn.driver.session:
            if kept.session.state == CLOSED or kept.slot.device is None:
                self._forget(key, sid)
            else:
                kept.ended_at = time.monotonic()

    def _forget(self, key: bytes, sid: bytes | None) -> None:
        if sid is not None:
            self._kept.pop(sid, None)
        if self._kept_by_key.get(key) == sid:
            del self._kept_by_key[key]

    def housekeeping(self) -> None:
        """Every look at the store: refusals logged, kept sessions that expired forgotten."""
        now = time.monotonic()
        self.refusals.flush(now)
        self.notes.flush(now)
        self._rounds_swept(now)
        idle = self.limits.idle_limit
        for key, sid in list(self._kept_by_key.items()):
            kept = self._kept.get(sid)
            if kept is None or kept.session.state == CLOSED or (
                    kept.ended_at is not None and now - kept.ended_at > idle):
                self._forget(key, sid)

    # -- the store's changes -----------------------------------------------------------

    def store_changed(self, look: Look) -> None:
        if look.data_key != self.hub.store.sealer.current:
            self.submit(self._take_keys)
        for conn in list(self.connections):
            slot = conn.slot
            dev = slot.device if slot is not None else None
            if dev is None or conn.state != AUTHENTICATED:
                continue
            if dev.device_id in look.revoked:
                conn.refuse("revoked", f"{conn.url}: kiosk {dev.device_id} was revoked",
                            goodbye=("revoked", "this kiosk was revoked"))
            elif not conn.notified and look.writers - {dev.node}:
                conn.notified = True
                conn.send_now(CONTROL_LANE, messages.encode(
                    messages.make("sync-notify", cursor=look.head)))
        if look.revoked:
            for key, sid in list(self._kept_by_key.items()):
                kept = self._kept.get(sid)
                dev = kept.slot.device if kept is not None else None
                if dev is not None and dev.device_id in look.revoked and kept is not None \
                        and kept.ended_at is not None:
                    self._forget(key, sid)

    # -- TCP -----------------------------------------------------------------------------

    def listen(self, url: str) -> tuple[str, int]:
        """Accept kiosks on ``tcp://HOST:PORT``; returns the address bound."""
        parts = urlsplit(url)
        try:
            port = parts.port
        except ValueError:
            port = None
        if parts.scheme != "tcp" or not parts.hostname or port is None:
            raise UsageError(f"--listen wants tcp://HOST:PORT, not {url!r}")
        try:
            sock = bind(parts.hostname, port, reuse_port=self.reuse_port)
        except OSError as exc:
            raise UsageError(f"cannot listen on {url}: {exc.strerror or exc}") from None
        listener = self.call(Listener, self, sock, self.reuse_port)
        self.listeners.append(listener)
        host, bound = listener.address
        return str(host), int(bound)

    def accepted(self, sock: socket.socket, addr: Any) -> None:
        """A connection the listener took (loop thread)."""
        self.accepted_total += 1
        host = str(addr[0]) if isinstance(addr, tuple) else "?"
        url = f"tcp://{host}:{addr[1]}" if isinstance(addr, tuple) else "tcp://?"
        lim = self.limits
        if len(self.connections) >= self.connection_cap:
            self.refused("over-cap", f"{url}: {len(self.connections)} connections already")
            sock.close()
            return
        if self.unauthenticated.get(host, 0) >= lim.max_unauthenticated_per_address:
            self.refused("address-cap", f"{url}: {lim.max_unauthenticated_per_address} "
                         "connections from this address not yet authenticated")
            sock.close()
            return
        conn = Connection(self, self.driver(stream=True, host=host), url, kind="tcp",
                          address=host, deadline=time.monotonic() + lim.handshake_deadline)
        self.connections.add(conn)
        self.unauthenticated[host] = self.unauthenticated.get(host, 0) + 1
        self.loop.create_task(self._attach(conn, sock))

    async def _attach(self, conn: Connection, sock: socket.socket) -> None:
        try:
            await self.loop.connect_accepted_socket(lambda: conn, sock)
        except OSError:
            sock.close()
            conn.connection_lost(None)

    # -- serial ----------------------------------------------------------------------------

    def serial(self, url: str, baud: int | None) -> None:
        """Serve kiosks on a serial port (any pyserial URL); it must open now."""
        from protocol.driver.link import open_link

        try:
            link = open_link(url, baud)
        except LinkError as exc:
            raise UsageError(str(exc)) from None
        port = SerialPort(self, url, baud, link)
        conn = Connection(self, self.driver(stream=False, baud=baud), url, kind="serial")
        self.call(self.connections.add, conn)
        self.ports.append(port)
        port.start(conn)

    # -- health --------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """What the health socket reports (loop thread)."""
        by: dict[str, dict[str, int]] = {k: {"handshaking": 0, "authenticated": 0,
                                              "closing": 0} for k in ("tcp", "serial")}
        for conn in self.connections:
            if conn.state in by[conn.kind]:
                by[conn.kind][conn.state] += 1
        feed = self.watch.feed
        return {
            "pid": os.getpid(),
            "uptime": round(time.monotonic() - self.started, 3),
            "connections": {**by, "total": len(self.connections), "cap": self.connection_cap,
                            "accepted": self.accepted_total,
                            "unauthenticated_addresses": len(self.unauthenticated),
                            "resumable": len(self._kept)},
            "descriptors": {"in_use": health_socket.descriptors(), "limit": descriptor_limit()},
            "workers": {"size": self.limits.workers, "running": self.running,
                        "queued": max(0, self.pending - self.running)},
            "refusals": self.refusals.totals(),
            "rounds": self.shedder.report(),
            "handshakes": self.budget.report(time.monotonic()),
            "listeners": [f"tcp://{h}:{p}" for h, p in (x.address for x in self.listeners)],
            "serial": [p.url for p in self.ports],
            "store_looks": self.watch.looks,
            "data_key": self.hub.store.sealer.current,
            "store_feed": None if feed is None else {
                "listening": feed.listening, "leads": feed.leads, "failures": feed.failures},
        }

    def _take_keys(self) -> None:
        """The keyring as another process left it."""
        try:
            self.hub.store.take_keys()
        except Exception as exc:  # noqa: BLE001 - the next look tries again
            self.log_threadsafe("keys", f"taking the new data key failed: {exc}")

    def _background_slice(self) -> bool:
        """A re-seal slice, then one of a fleet key rotation's migration: True while
        either goes on."""
        return self.hub.reseal_slice() | self.hub.fleet_slice()

    # -- stopping --------------------------------------------------------------------------

    async def _close_all(self) -> None:
        self.watch.stop()
        for task in (self._promoting, self._resealing):
            if task is not None:
                task.cancel()
        for listener in self.listeners:
            listener.close()
        if self._health is not None:
            self._health.close()
        for conn in list(self.connections):
            if conn.transport is not None and not conn.persistent:
                conn.transport.abort()
        for _ in range(3):
            await asyncio.sleep(0)
        self.loop.stop()

    def wait(self) -> None:
        """Until the loop stops; ``ServerFailed`` if it stopped on a failure."""
        while not self.stopped.wait(0.5):
            pass
        if self.failure is not None:
            raise ServerFailed(f"the hub server stopped: {self.failure}")

    def shutdown(self) -> None:
        if not self.stopped.is_set():
            with contextlib.suppress(RuntimeError):
                asyncio.run_coroutine_threadsafe(self._close_all(), self.loop)
            self._thread.join(timeout=5.0)
        for port in self.ports:
            port.stop()
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.watch.close()
        if not self._thread.is_alive():
            self.loop.close()
        with contextlib.suppress(OSError):
            if self._health is not None and self.health_path.exists():
                self.health_path.unlink()


#: Why an SQLite hub has one serving process.
SQLITE_ALONE = ("the hub's store is an SQLite file, which takes one haven hub serve process "
                "(one writer); to run several, put the hub on PostgreSQL (haven hub init "
                "--db postgresql://...)")
#: On SQLite: the file ``haven hub serve`` holds locked while it runs, with its pid.
SERVE_LOCK = "serve.lock"


def sole_server(hub: Hub) -> contextlib.AbstractContextManager[None]:
    """On SQLite: this process is the hub's only server while in the context
    (``UsageError`` if another one runs). Nothing on PostgreSQL."""
    if is_url(database_of(hub.data)):
        return contextlib.nullcontext()
    return _locked(hub.data / SERVE_LOCK)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            pid = f.read().strip() or "?"
            raise UsageError(f"another haven hub serve (pid {pid}) serves this hub: "
                             + SQLITE_ALONE) from None
        f.truncate(0)
        f.write(f"{os.getpid()}\n")
        f.flush()
        yield


def serve(hub: Hub, *, listen: list[str], serial: list[str], baud: int | None = None,
          max_ahead_ms: int, limits: Limits | None = None, reuse_port: bool = False,
          ready: Callable[[str], None] = lambda line: None) -> None:
    """Serve kiosks until interrupted; ``ready`` hears each address as it opens.
    ``reuse_port``: share the ports with this hub's other processes (PostgreSQL).
    ``ServerFailed`` if the server cannot go on."""
    if not listen and not serial:
        raise UsageError("give at least one --listen tcp://HOST:PORT or --serial URL")
    raise_descriptor_limit()
    limit_malloc_arenas()
    with sole_server(hub):
        _serve(Server(hub, max_ahead_ms, limits, reuse_port), listen, serial, baud, ready)


def _serve(server: Server, listen: list[str], serial: list[str], baud: int | None,
           ready: Callable[[str], None]) -> None:
    hub = server.hub
    try:
        for url in listen:
            host, port = server.listen(url)
            ready(f"listening on tcp://{host}:{port}")
        for url in serial:
            server.serial(url, baud)
            ready(f"serving serial {url}")
        ready(f"hub {hub.x_public.hex()} ready")
        server.wait()
    finally:
        server.shutdown()


__all__ = ["HANDSHAKING", "Limits", "Server", "ServerFailed", "serve"]
