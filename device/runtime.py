"""``haven-kiosk run``: one process with the page server, the sync loop and the hardware.

Theory of operation
-------------------
The event loop serves the page (``device.ui``); every store call it makes
runs in a thread. The sync loop (``device.sync.loop``, blocking) runs in a
thread of its own: after each round it tells ``LiveStatus`` how far
check-ins reached the hub, and shows the state on the status LED. A
check-in or a long press of the service button starts a round at once
(``device.sync.wake.Wake``: the sync thread sleeps on it and on the hub's
socket together). On a kept-open TCP session the hub pushes its changes
(``sync-notify`` starts a round) and rounds follow ``poll_interval`` only
if set; over a serial line they follow ``interval``; while no hub answers,
a backoff capped at ``retry_max``. A link monitor (``device.sync.link_monitor``, a
thread of its own) watches each URL's link: when one returns, its breaker
lets a probe through and a round starts at once. The hub session stays
open between rounds while ``keepalive`` is above 0. An idle round logs only
at DEBUG: a log line every 10 s is a write to the card too. An unenrolled
kiosk still checks patients in (the LED shows an error).

The status (``device.status``) is decided in one place, ``_show``, and shown
at once on the LED and the page's header (``LiveStatus.state``): what needs
a technician (revoked, suspected-clone) over everything; then ``error`` (the
hub refused us, no enrolment, a disk running out of space); then
``offline`` (the last round found no hub, or the link is known to be down);
then ``pending`` (a check-in the page saved and the hub has not
acknowledged, entries left in the outbox, or a link back and its round
under way); else ``synced``. It is decided again whenever one of these
changes: after each round, when the page saves a check-in
(``LiveStatus.when_checkin``: before the round it asks for), when the link
monitor sees a link go down or return, when the kept-open session loses its
link while idle, when the disk's level changes. The time of the last round
that worked is kept in memory (``SyncState.last_sync_ms``, on the page as
``last_sync``); ``haven-kiosk status`` asks the page for it.

A kiosk the hub revoked (its session closed, or its hello refused, with
reason ``revoked``) shows ``revoked`` on the LED, the page and the staff
screen, and stops syncing: the revocation is kept in ``sync.db``, so a
restart neither tries again nor storms the hub. At that contact it destroys
its keys (``device.wipe``): its data stays, sealed under keys that are gone,
and it takes no more check-ins; restarted, it opens no store
(``SealedStore``) and shows ``revoked`` again. One the hub suspects of being
a clone (``suspected_clone``) shows ``suspected-clone``, goes on, and still
checks patients in. A kiosk wiped by a technician starts as a fresh one: its
start finishes the wipe (``device.wipe.finish``) and says so in one line.
The page's "last contact" age is read from the sync loop on demand, in
memory only.

Every ``health_interval`` the runtime looks at its memory
(``device.health.memory``: caches dropped past the soft threshold, the
staff told past the hard one) and at the free space on the disk holding
``--data`` (``device.health.storage_guard``: write-ahead logs truncated
when low, new check-ins refused under the critical threshold).

Metrics (``device.metrics``): each round, a health sample a minute (taken
at those looks, or after a round, whichever comes first: rounds follow a
simulated clock in benchmarks) and the page's usage are counted, an hour at
a time on the card; a telemetry record goes into the outbox when one is due
(``Metrics.telemetry_due``), once the kiosk is enrolled.

The fridge nodes' serial lines (``fridges``, ``device.fridges.port``) are
served by a thread each once the store is open; while a node's alarm is
raised, the LED blinks ``fridge-alarm`` over every status but those that
need a technician, and the staff screen says which fridge.

The LED, button and buzzer are the Pi's pins; the runtime refuses to start
on simulated pins (``HardwareError``, one line) unless the configuration
asks for them (``hardware = "simulated"``). Once the page is served,
``runtime.json`` in ``--data`` says where, so that ``haven-kiosk hw`` can
drive simulated hardware (``hw_remote``).

A kiosk whose keys are under a passphrase (``key_provider = "passphrase"``)
starts locked (``device.store.locked.LockableStore``): the page takes
check-ins, sealed to a key only the passphrase opens, the page and
``haven-kiosk status`` say it is locked, and the sync thread waits; staff
unlock it on the staff screen, the check-ins taken meanwhile are merged,
and a round starts.

A rotation of the store key (``haven-kiosk keys rotate``: a next key beside
the store's) is walked by a thread of its own (``device.store.rotation``),
found within ``rotation.POLL_S`` or at start: every sealed value is sealed
again under the new key in slices on the writer, check-ins first, then the
old key is destroyed.

SIGTERM and SIGINT stop the server, let a running round end (bounded),
then close the store. With systemd, ``sd_notify`` says READY, pings the
watchdog from the event loop (only while the sync thread is alive) and
says STOPPING.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import signal
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, cast

from device import logs as kiosk_logs
from device import wipe as kiosk_wipe
from device.config import KioskConfig, memory_limits, storage_limits
from device.console.runtime_env import start_console
from device.console.server import ConsoleServer
from device.enrol import NotEnrolled, ensure_keys, load
from device.exc import HardwareError
from device.fridges.port import Fridges
from device.hardware import panel as hw
from device.hardware import remote as hw_remote
from device.hardware.printer import Printer
from device.health.memory import MemoryMonitor, MemoryReadError, collect_garbage
from device.health.storage_guard import OK as STORAGE_OK
from device.health.storage_guard import StorageGuard, truncate_wal_file
from device.metrics import samples as metric_samples
from device.metrics import telemetry as metric_telemetry
from device.metrics.collector import Metrics
from device.status import (
    ERROR,
    FRIDGE_ALARM,
    OFFLINE,
    PENDING,
    REVOKED,
    SUSPECTED_CLONE,
    SYNCED,
)
from device.store import Store, StoreError, rotation, unlock
from device.store.locked import LockableStore
from device.store.providers import open_keys
from device.sync.document_store import DocumentStore
from device.sync.engine import SyncFailed, SyncRefused
from device.sync.link_monitor import LinkMonitor, Signal, link_monitor_for
from device.sync.loop import SyncLoop
from device.sync.state import DB_NAME as SYNC_DB
from device.sync.state import SyncState
from device.sync.wake import Wake
from device.tech.trusted_time import TrustedClock
from device.ui import http
from device.ui.app import KioskApp
from device.ui.live import LiveStatus
from protocol.driver.wall_clock import wall_ms

log = logging.getLogger("haven.kiosk")
STOP_BOUND = 15.0
#: The link as the runtime knows it: no known problem, known down (the link monitor, or
#: the kept-open session lost its link), come back with a round under way.
LINK_UP, LINK_DOWN, LINK_RECONNECTING = "up", "down", "reconnecting"


def sd_notify(message: str, env: dict[str, str] | None = None) -> bool:
    """Send ``message`` to systemd's ``$NOTIFY_SOCKET``; ``False`` when not under systemd."""
    addr = (os.environ if env is None else env).get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(addr)
            s.sendall(message.encode())
    except OSError as exc:
        log.warning("sd_notify failed: %s", exc)
        return False
    return True


def suspected_clone(state: SyncState) -> bool:
    """Whether the hub told this kiosk that another runs with its identity (its alert,
    kept in ``sync.db`` until a technician settles it)."""
    return state.alert == SUSPECTED_CLONE


def outbox_entries(store: Store) -> int:
    lanes = store.status()["outbox"]["lanes"]
    return sum(int(x["entries"]) for x in lanes.values())


class Runtime:
    def __init__(self, cfg: KioskConfig, *, hardware: Any = None,
                 clock: Callable[[], float] = time.monotonic,
                 pause: Callable[[threading.Event, float], object] | None = None,
                 link_signals: Mapping[str, Signal] | None = None) -> None:
        """``clock`` (monotonic seconds) times the breakers, the link monitor and the sync
        state's deferred writes; ``pause(wake, seconds)``, if given, is the sync thread's
        wait between rounds (a simulated day passes both); ``link_signals``: a hub URL's
        link-up signal in place of its own (``device.sync.link_monitor``)."""
        self.cfg = cfg
        self.clock = clock
        self._pause = pause
        self._link_signals = link_signals
        self._loop: SyncLoop | None = None  #: rounds, breakers, kept-open sessions
        self._monitor: LinkMonitor | None = None
        assert cfg.data is not None
        self.data = cfg.data
        self.live = LiveStatus()
        self.hardware = hardware
        #: The ticket printer (``printer`` in the configuration), made at start.
        self.printer: Printer | None = None
        self._offset = 0
        self._wake = Wake()
        #: REVOKED or SUSPECTED_CLONE: shown over the sync state (a technician is needed)
        self._alert: str | None = None
        #: Why the keys are gone (revoked: ``device.wipe``): no check-in, no sync
        self._keys_gone: str | None = None
        self._asked = True  #: the first round, or one asked for: logged even if idle
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._links: threading.Thread | None = None
        self._rotating: threading.Thread | None = None  #: walks a key rotation
        self._fridges_thread: threading.Thread | None = None
        #: The fridge nodes' lines (``fridges`` in the configuration), once the store opens.
        self.fridges: Fridges | None = None
        #: URLs whose link came back, for the sync thread
        self._returned: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._server: http.HttpServer | None = None
        self.store: Store | None = None
        self.address: tuple[str, int] | None = None
        self.memory = MemoryMonitor(memory_limits(cfg))
        self.storage = StorageGuard(self.data, storage_limits(cfg))
        #: The hub's time as technicians' credentials are judged by (``device.tech``):
        #: moved forward on the card hourly, so a reboot loses at most that much of it.
        self.trusted_time = TrustedClock(self.data)
        self.storage.when_changed = lambda level: self._show()
        self._result = PENDING  #: what the last round said: SYNCED, PENDING, OFFLINE, ERROR
        self._link = LINK_UP
        self._link_events = 0  #: link changes the link monitor reported (its thread)
        self._showing = threading.Lock()  #: one decision at a time, shown as decided
        self.live.when_checkin = self._show
        self._health_task: asyncio.Task[None] | None = None
        #: Sync rounds, health each minute, usage (``device.metrics``), made at start.
        self.metrics: Metrics | None = None
        self._looking = threading.Lock()  #: one look at memory and disk at a time
        self._round_summary: Any = None  #: the last round's ``Summary`` (None: no round)
        self._health_stop: asyncio.Event | None = None
        #: The technician's console (``console`` in the configuration), made at start.
        self.console: ConsoleServer | None = None
        self.restart_asked = False  #: a graceful restart was asked (the console's reset)
        #: The configuration file it runs with, which ``haven tech config set`` rewrites
        #: (``haven-kiosk run --config``; None: /etc/haven/kiosk.toml if it exists).
        self.config_file: Path | None = None
        self._run_stop: tuple[asyncio.AbstractEventLoop, asyncio.Event] | None = None
        #: The kiosk's own log on disk (``device.logs``), from start to stop.
        self.logs: kiosk_logs.Logs | None = None

    # Start and stop ---------------------------------------------------------------------

    async def start(self) -> tuple[str, int]:
        self._check_hardware()  # before anything is opened: a refusal leaves nothing behind
        self.live.bind(asyncio.get_running_loop())
        self.live.watch_contact(self._contact_age, self.cfg.keepalive or self.cfg.interval)
        self._offset = await asyncio.to_thread(self._saved_offset)
        self.metrics = Metrics(self.data, start_ms=wall_ms() + self._offset, clock=self.clock)
        self.store = await asyncio.to_thread(self._open_store)
        # After the store: a wipe the start finishes erases the data folder, logs/ too.
        self.logs = await asyncio.to_thread(
            kiosk_logs.start, self.data / kiosk_logs.DIRECTORY,
            int(self.cfg.log_max_mib * 1024 * 1024))
        self.hardware.button.when_sync_now = self.sync_now
        if self.cfg.printer:
            self.printer = Printer(self.cfg.printer, width=self.cfg.printer_width,
                                   timeout=self.cfg.printer_timeout, baud=self.cfg.printer_baud)
            self.printer.refresh(0)  # the staff screen shows its state from the start
        self._show()
        self.memory.add_cleanup(self.store.release_memory)
        self.memory.add_cleanup(collect_garbage)
        self.storage.add_reclaimer(self.store.truncate_wal)
        self.storage.add_reclaimer(self._truncate_sync_wal)
        app = KioskApp(self.store, self.live, idle_seconds=self.cfg.idle_seconds,
                       staff_pin=self.cfg.staff_pin, staff_pin_wait=self.cfg.staff_pin_wait,
                       hardware=self.hardware,
                       on_checkin=self.sync_now, health=self.health,
                       admit_checkin=self._admit, printer=self.printer, usage=self.metrics)
        host, port = self.cfg.ui_address()
        self._server = http.HttpServer(app.handle)
        self.address = await self._server.start(host, port)
        try:  # where ``haven-kiosk hw`` finds the page (a full disk only costs that)
            await asyncio.to_thread(hw_remote.announce, self.data, *self.address)
        except OSError as exc:
            log.warning("cannot write %s: %s", hw_remote.RUNTIME_FILE, exc)
        self._thread = threading.Thread(target=self._sync_loop, name="sync", daemon=True)
        self._thread.start()
        self._rotating = threading.Thread(target=self._keep_rotating, name="key-rotation",
                                          daemon=True)
        self._rotating.start()
        if self.cfg.fridges:
            self._fridges_thread = threading.Thread(target=self._fridge_lines,
                                                    name="fridges", daemon=True)
            self._fridges_thread.start()
        monitor = link_monitor_for(self.cfg.hub, self.cfg.link_interval,
                                   carrier=self.cfg.link_carrier, when_up=self._link_returned,
                                   when_down=self._link_lost, clock=self.clock,
                                   signals=self._link_signals)
        self._monitor = monitor
        if monitor is not None:
            self._links = threading.Thread(target=monitor.watch, args=(self._stop,),
                                           name="links", daemon=True)
            self._links.start()
        self._health_stop = asyncio.Event()
        self._health_task = asyncio.create_task(self._watch_health(self._health_stop))
        self.console = await asyncio.to_thread(start_console, self)
        return self.address

    def _check_hardware(self) -> None:
        """The LED, button and buzzer: the Pi's pins, or simulated ones only when the
        configuration asks for them (``hardware``); ``HardwareError`` otherwise."""
        simulated = self.cfg.hardware == hw.SIMULATED
        if self.hardware is None:
            self.hardware = hw.Hardware(hold_time=self.cfg.hold_time, simulated=simulated)
        elif self.hardware.simulated and not simulated:
            raise HardwareError(f'simulated pins, and the configuration asks for real ones '
                                f'(hardware = "{self.cfg.hardware}"); set hardware = '
                                f'"{hw.SIMULATED}" (--hardware {hw.SIMULATED}) to run on them')

    def _open_store(self) -> Store:
        """The store, once an interrupted wipe is finished (``device.wipe.finish``: a
        wiped kiosk starts as a fresh one, and says so in one line). A kiosk whose keys
        were destroyed when it was revoked gets a ``SealedStore``: it shows REVOKED and
        takes no check-in."""
        marker = kiosk_wipe.finish(self.data)
        if marker is not None and marker["state"] == kiosk_wipe.REVOKED:
            self._keys_gone = str(marker.get("detail") or "revoked")
            return cast(Store, kiosk_wipe.SealedStore(self.data))
        note = kiosk_wipe.fresh_note(self.data)
        if note is not None:
            log.warning("%s", note)
            self.live.update(detail=note)
        def clock() -> int:
            return wall_ms() + self._offset

        passphrase = self.cfg.key_provider == "passphrase"
        if passphrase or unlock.uses_passphrase(self.data):
            log.warning("the store is locked: staff unlock it on the staff screen; "
                        "check-ins are kept sealed until then")
            self.live.set_locked(True)
            return cast(Store, LockableStore(self.data, clock=clock))
        key, fleet = open_keys(self.data, self.cfg.tpm_tcti)  # a TPM: the config's if set
        return Store(self.data, key, fleet=fleet, clock=clock)

    def _admit(self) -> None:
        """Before a check-in: refused once the keys are gone, or the disk is too full."""
        if self._keys_gone is not None:
            raise kiosk_wipe.KeysDestroyed(f"this kiosk's keys were destroyed ({self._keys_gone})")
        self.storage.admit()

    def keys_destroyed(self, why: str) -> None:
        """A technician's wipe destroyed the keys (``device.tech.wipe_command``): no more
        check-ins until the restart that erases the data."""
        self._keys_gone = why

    def _saved_offset(self) -> int:
        state = SyncState(self.data)
        try:
            return state.clock_offset
        finally:
            state.close()

    def sync_now(self) -> None:
        self._asked = True
        self._wake.set()

    def _link_returned(self, url: str) -> None:
        """The link monitor saw ``url``'s link come back (its thread): a round now."""
        self._link_events += 1
        if self._link == LINK_DOWN:
            self._link = LINK_RECONNECTING
            self._show()
        self._returned.put(url)
        self._wake.set()

    def _link_lost(self, url: str) -> None:
        """The link monitor saw ``url``'s link go down (its thread): offline at once when
        no hub URL is left whose link may be up."""
        monitor = self._monitor
        if monitor is None or any(monitor.is_up.get(u) is not False for u in self.cfg.hub):
            return
        self._link_events += 1
        self._link = LINK_DOWN
        self._show()

    def restart(self) -> None:
        """A graceful restart (the console's reset), from any thread: stop as on SIGTERM;
        the service manager (deploy/haven-kiosk.service, Restart=always) starts again."""
        self.restart_asked = True
        if self._run_stop is not None:
            loop, stop = self._run_stop
            loop.call_soon_threadsafe(stop.set)

    async def stop(self) -> None:
        if self.console is not None:  # first: no technician's command runs while we stop
            await asyncio.to_thread(self.console.stop)
        if self._health_task is not None and self._health_stop is not None:
            self._health_stop.set()  # a look in progress ends before the store closes
            await asyncio.wait({self._health_task}, timeout=STOP_BOUND)
        if self._server is not None:
            await self._server.close()
            hw_remote.withdraw(self.data)
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, STOP_BOUND)
        if self._links is not None:  # a look in progress (a host name resolving) ends
            await asyncio.to_thread(self._links.join, STOP_BOUND)
        if self._rotating is not None:  # a slice in progress ends (it resumes at start)
            await asyncio.to_thread(self._rotating.join, STOP_BOUND)
        if self._fridges_thread is not None:  # a message being stored is stored
            await asyncio.to_thread(self._fridges_thread.join, STOP_BOUND)
        if self.metrics is not None:
            await asyncio.to_thread(self.metrics.flush)
        if self._thread is None or not self._thread.is_alive():
            if self.store is not None:
                await asyncio.to_thread(self.store.close)
        else:  # a round is stuck on a link: everything confirmed is durable already
            log.warning("sync round still running at shutdown; leaving it")
        if self.hardware is not None:
            self.hardware.close()
        if self.printer is not None:
            self.printer.close()
        if self._thread is None or not self._thread.is_alive():
            self._wake.close()
        if self.logs is not None:
            self.logs.stop()
            self.logs = None

    async def run(self) -> None:
        """Run until SIGTERM or SIGINT."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        self._run_stop = (loop, stop)
        host, port = await self.start()
        log.info("page at http://%s:%d", host, port)
        print(f"haven-kiosk: page at http://{host}:{port}", flush=True)
        sd_notify("READY=1\nSTATUS=serving the check-in page")
        pinger = asyncio.create_task(self._watchdog())
        try:
            await stop.wait()
        finally:
            sd_notify("STOPPING=1")
            pinger.cancel()
            await self.stop()

    async def _watchdog(self) -> None:
        usec = int(os.environ.get("WATCHDOG_USEC", "0") or 0)
        if usec <= 0:
            return
        while True:
            await asyncio.sleep(usec / 2e6)
            if self._thread is not None and self._thread.is_alive():
                sd_notify("WATCHDOG=1")

    # Memory and disk --------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """What the staff screen shows of the kiosk's own health."""
        return {"memory": self.memory.status(), "storage": self.storage.status()}

    def _look(self) -> None:
        """One look at memory and disk space, with what they call for, and a minute's
        health for the metrics when one is due (blocking; any thread)."""
        with self._looking:
            memory = space = None
            try:
                memory = self.memory.check()
            except MemoryReadError as exc:
                log.warning("%s", exc)
            try:
                space = self.storage.check()
            except OSError as exc:
                log.warning("cannot read the free space of %s: %s", self.data, exc)
            metrics = self.metrics
            if metrics is None or memory is None or space is None or not metrics.sample_due():
                return
            health = self.health()
            printer = self.printer.snapshot()["state"] if self.printer is not None else "none"
            metrics.sample(metric_samples.take(memory.rss, memory.available, space.free),
                           {"storage": health["storage"]["level"],
                            "memory": health["memory"]["level"], "printer": printer})
        self._send_telemetry()

    def _send_telemetry(self) -> None:
        """A telemetry record into the outbox if one is due, once enrolled, and a round
        to take it (a kept-open session may have none for hours); any thread."""
        if self.metrics is None or self._loop is None or self.store is None:
            return
        with self._looking:  # one record from one period, whichever thread comes first
            written = metric_telemetry.write_due(self.metrics, self.store)
        if written is not None:
            self._wake.set()

    async def _watch_health(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.to_thread(self._look)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.cfg.health_interval)

    def _truncate_sync_wal(self) -> None:
        truncate_wal_file(self.data / SYNC_DB)

    # The sync thread --------------------------------------------------------------------

    def _store_opened(self) -> bool:
        """Wait until the store is open (a locked one: unlocked); False: revoked, or the
        runtime stops first."""
        if self._keys_gone is not None or self.store is None:
            return False
        if isinstance(self.store, LockableStore):
            while not self.store.opened.wait(0.5):
                if self._stop.is_set():
                    return False
        return True

    def _keep_rotating(self) -> None:
        """The key rotation's thread: once the store is open (a locked one: unlocked)."""
        if self._store_opened():
            assert self.store is not None
            rotation.keep_rotating(self.store, self._stop)

    def _fridge_lines(self) -> None:
        """The fridge nodes' lines (``device.fridges.port``), once the store is open."""
        if not self._store_opened():
            return
        store = self.store
        assert store is not None
        fridges = Fridges(store, ensure_keys(self.data)[0], self.cfg.fridges,
                          self.cfg.fridge_baud, wall=lambda: store.clock() / 1000,
                          on_change=self._show, on_stored=self.sync_now)
        self.fridges = fridges
        self._show()  # an alarm raised before a restart shows at once
        fridges.start()
        self._stop.wait()
        fridges.stop()

    def _contact_age(self) -> float | None:
        """Seconds since the hub was last heard (None: not yet); any thread."""
        loop = self._loop
        heard = loop.last_contact() if loop is not None else None
        return None if heard is None else max(0.0, self.clock() - heard)

    def status(self) -> str:
        """The status to show now (see the module docstring); any thread."""
        if self._alert is not None:
            return self._alert
        if self.storage.level != STORAGE_OK or self._result == ERROR:
            return ERROR
        link = self._link
        if link == LINK_DOWN or self._result == OFFLINE and link != LINK_RECONNECTING:
            return OFFLINE
        if self._result == PENDING or link == LINK_RECONNECTING or self.live.unsent():
            return PENDING
        return SYNCED

    def led_pattern(self, shown: str) -> str:
        """The LED's pattern for the status ``shown``: a fridge's alarm over everything but
        what needs a technician (the staff screen says which fridge)."""
        fridges = self.fridges
        if fridges is not None and fridges.alarm_raised and shown not in (
                REVOKED, SUSPECTED_CLONE):
            return FRIDGE_ALARM
        return shown

    def _show(self) -> None:
        """Decide the status and show it on the LED and the page; any thread."""
        with self._showing:
            shown = self.status()
            if self.hardware is not None:  # the LED first: the page is told right after
                with contextlib.suppress(Exception):
                    self.hardware.led.show(self.led_pattern(shown))
            self.live.update(state=shown, link=self._link)

    def _sync_loop(self) -> None:
        assert self.store is not None
        if self._keys_gone is not None:
            self._revoked(self._keys_gone)
            return
        opened = getattr(self.store, "opened", None)  # a locked store: until staff unlock it
        while opened is not None and not opened.wait(0.5):
            if self._stop.is_set():
                return
        state = SyncState(self.data, clock=self.clock)
        docs = DocumentStore(self.data, self.store.cipher)  # open for good: see drive_round
        try:
            self._rounds(self.store, state, docs)
        finally:
            if self._loop is not None:
                self._loop.close()
            docs.close()
            state.close()

    def _rounds(self, store: Store, state: SyncState, docs: DocumentStore) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            if self._loop is None:
                try:
                    ident = load(self.data)
                except (NotEnrolled, StoreError) as exc:
                    self.live.update(detail=str(exc))
                    self._result = ERROR
                    self._show()
                    self._wait(self.cfg.retry_max)
                    continue
                self._loop = SyncLoop(
                    store, state, ident, self.cfg.hub, baud=self.cfg.baud,
                    keepalive=self.cfg.keepalive, interval=self.cfg.interval,
                    poll=self.cfg.poll_interval, reply_timeout=self.cfg.reply_timeout,
                    retry_cap=self.cfg.retry_max, docs=docs, clock=self.clock,
                    failed=(SyncFailed, StoreError, ValueError, OSError, RuntimeError,
                            sqlite3.Error))  # sqlite3: the sync checkpoints on a full disk
                if (why := self._loop.revoked) is not None:
                    self._revoked(why)
                    return
            while not self._returned.empty():
                self._loop.link_returned(self._returned.get())
            mark = self.live.snapshot()["committed"]
            events = self._link_events
            started = self.clock()
            result, wait = self._one_round(self._loop)
            self._count_round(result, started)
            with contextlib.suppress(OSError):  # a full card: the saved time is older
                self.trusted_time.checkpoint()
            # What the link monitor reported during the round is newer than the round.
            settled = events == self._link_events
            if result == REVOKED:
                self._revoked(self.live.snapshot()["detail"])
                return
            self._alert = SUSPECTED_CLONE if suspected_clone(state) else None
            if result == SYNCED:
                self._offset = state.clock_offset
                mark_now = self.live.snapshot()["committed"]
                left = outbox_entries(store)
                at = state.last_sync_ms
                self.live.update(synced=True, synced_at=None if at is None else at / 1000,
                                 sent_upto=mark_now if left == 0 else mark, detail="")
                self._result = SYNCED if left == 0 else PENDING
                if settled:  # a round worked: whatever the monitor saw before, it is up
                    self._link = LINK_UP
                wait = wait if left == 0 else 0.0
            else:
                self._result = result if result in (ERROR, PENDING) else OFFLINE
                if settled and self._link == LINK_RECONNECTING:
                    self._link = LINK_UP  # the round after the link's return is over
            self._show()
            if wait > 0:
                conn = self._loop.conn
                was_open = conn is not None and conn.open
                self._wait(wait)
                if (was_open and conn is not None and not conn.open and not conn.superseded
                        and not self._stop.is_set()):
                    self._link = LINK_DOWN  # the session lost its link while idle
                    self._show()

    def _revoked(self, detail: str) -> None:
        """The hub revoked this kiosk: destroy its keys (``device.wipe``: its data stays,
        sealed under them), take no more check-ins, show it, and sync no more (until
        stopped; a wipe and a new enrolment return it to service)."""
        if self._keys_gone is None:
            log.error("this kiosk was revoked (%s): it syncs no more", detail)
            try:
                kiosk_wipe.wipe_on_revocation(self.data, detail)
            except Exception:  # never a crash: it stays revoked, keys or not
                log.exception("revoked, and the keys were not destroyed")
            self._keys_gone = detail
        self._alert = REVOKED
        self.live.update(detail=detail)
        self._show()
        if self._loop is not None:
            self._loop.close()
        self._stop.wait()

    def _wait(self, seconds: float) -> None:
        """Until the next round: ``seconds``, or until woken (a check-in, the button, a
        link back); the kept-open session is serviced meanwhile."""
        if self._pause is not None:
            self._pause(self._wake, seconds)
        elif self._loop is not None:
            self._loop.idle(seconds, self._wake)
        else:
            self._wake.wait(seconds)

    def _count_round(self, result: str, started: float) -> None:
        """The round in the metrics, and the minute's health if due (rounds run on a
        simulated clock in benchmarks, the health task on real time)."""
        if self.metrics is None:
            return
        summary = self._round_summary
        outcome = {SYNCED: "synced", OFFLINE: "offline", PENDING: "offline",  # hub busy
                   REVOKED: "refused"}.get(result, "error")
        self.metrics.round(outcome, summary,
                           summary.seconds if summary is not None else self.clock() - started)
        if self.metrics.sample_due():
            self._look()
        else:
            self._send_telemetry()

    def _one_round(self, loop: SyncLoop) -> tuple[str, float]:
        """One round of the shared loop: its result for the LED and the wait after it."""
        self._round_summary = None
        try:
            out = loop.round(lambda: 0.0 if self._stop.is_set() else self.cfg.round_limit)
        except SyncRefused as exc:
            if exc.reason == REVOKED:
                self.live.update(detail=str(exc))
                return REVOKED, 0.0
            self.live.update(detail=str(exc))
            log.error("sync refused: %s", exc,
                      extra=kiosk_logs.fields(outcome="refused", code=exc.reason or "refused"))
            return ERROR, self.cfg.retry_max
        summary = self._round_summary = out.summary
        asked, self._asked = self._asked, False
        if summary is not None:  # an idle round logs nothing: a log line is a write too
            moved = summary.pushed or summary.pulled or summary.quarantined
            log.log(logging.INFO if moved or asked else logging.DEBUG,
                    "synced via %s: %d up, %d down", summary.url, summary.pushed, summary.pulled,
                    extra=kiosk_logs.fields(
                        outcome="ok", deltas_up=summary.pushed, deltas_down=summary.pulled,
                        quarantined=summary.quarantined, batches=summary.batches,
                        bytes_sent=summary.bytes_sent, bytes_received=summary.bytes_received,
                        ms=int(summary.seconds * 1000)))
            return SYNCED, out.wait
        if out.busy is not None:  # not an error: the link is fine, the hub asks for time
            self.live.update(detail=f"the hub is busy: the next try in {out.wait:.0f} s")
            return PENDING, out.wait
        if out.failures or not self.cfg.hub:
            detail = "; ".join(out.failures) or "no hub URL configured"
        else:
            detail = (f"every hub URL failed lately; the next try in "
                      f"{loop.next_probe() or 0:.0f} s")
        self.live.update(detail=detail)
        log.info("no hub answered: %s", detail, extra=kiosk_logs.fields(outcome="offline"))
        return OFFLINE, out.wait
