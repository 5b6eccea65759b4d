"""``haven tech`` on the kiosk: technician sessions on the console, and their commands.

Theory of operation
-------------------
``TechService`` is the console's Haven endpoint (``device.console.server.
HavenEndpoint``): it owns a responder ``SessionDriver`` and speaks the
messages of ``protocol.tech_messages`` (SPEC.md "Technician sessions") on it.
When a session opens it sends a challenge; the tool's hello must carry a
certificate the kiosk's ``Technicians`` accept (hub signature, revocation,
window against trusted time, scope), whose key is the session's remote static
key, and a signature over the challenge bound to the session id. A refusal is
answered with ``tech-refused``, audited, and changes nothing; the session stays
unauthenticated and every request on it is refused.

Commands live in ``REGISTRY``, by name. A module adds its own with::

    from device.tech.service import CommandError, Context, command

    @command("provision", action="provision")
    def provision(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
        ctx.note("hold the service button")           # a tech-note to the tool
        ...
        raise CommandError("no-presence", "the button was not held")  # a refusal
        return {"kiosk": "0000002a"}                     # the reply's result

and names the module in ``COMMAND_MODULES`` so the service imports it. A
handler runs on the service's worker thread (one at a time, in order), never on
the console's: it may block (a button press awaited). ``action`` is the
credential action the certificate must allow (``credential.ACTIONS``),
checked again at each request (a revoked or expired certificate stops at once);
``action=None`` makes a command open: it runs before the welcome too (what a
fresh kiosk offers a technician under presence). ``ctx.env`` is the kiosk's
``TechEnv``; ``ctx.what``/``ctx.detail`` refine the audit entry the service
writes for every command, ok or refused (``device.audit``, via
``Technicians.audit``). A handler that returns ``Outgoing`` sends a file: the
service runs a transfer ``Sender`` with the request id as transfer id (lane 1)
and replies once the tool confirmed the whole file (``xfer-done``).

Threads: the console thread calls ``feed``/``output``/``events``; the worker
hands its replies back through a locked queue that ``output`` drains, so only
the console thread touches the session.
"""

from __future__ import annotations

import importlib
import logging
import os
import queue
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from device.console.env import ConsoleEnv
from device.exc import DeviceError
from device.tech.access import Accepted, Refused, Technicians
from protocol import tech_messages as tm
from protocol.driver.session_driver import LinkClosed, Restarted, SessionDriver, session_config
from protocol.errors import ProtocolError
from protocol.manifest import Manifest
from protocol.session.events import Closed, Connected, MessageReceived
from protocol.sync import credential
from protocol.transfer import Sender, TransferAborted, TransferComplete, transfer_id

log = logging.getLogger("haven.tech")

#: Modules whose ``@command``s the service serves (imported when it starts).
COMMAND_MODULES = ["device.tech.commands", "device.tech.provision", "device.tech.wipe_command",
                   "device.bundle.command", "device.logs.command",
                   "device.fridges.tech_command"]
NONCE_BYTES = 32
#: A session with no frame for this long is over (the tool went away).
DEAD_TIMEOUT = 30.0
KEEPALIVE = 2.0
AFTER_REPLY = 2.0
#: Refusals are audited one by one up to this many per window (``RefusalBudget``).
REFUSALS_AUDITED = 10
REFUSAL_WINDOW = 600.0
#: A session whose tool has not been welcomed this long after it opened is closed.
HELLO_WITHIN = 60.0


class CommandError(DeviceError):
    """A command refused: ``code`` (a short code) and a one-line message for the tool."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Command:
    name: str
    handler: Callable[[Context, dict[str, Any]], dict[str, Any] | Outgoing]
    action: str | None  #: what the certificate must allow; None: open


REGISTRY: dict[str, Command] = {}


def command(name: str, *, action: str | None
            ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register ``handler(ctx, args) -> result`` as ``name`` (see the module docstring)."""
    if action is not None and action not in credential.ACTIONS:
        raise ValueError(f"unknown action {action!r}")

    def add(handler: Callable[..., Any]) -> Callable[..., Any]:
        if name in REGISTRY and REGISTRY[name].handler is not handler:
            raise ValueError(f"command {name!r} registered twice")
        REGISTRY[name] = Command(name, handler, action)
        return handler
    return add


@dataclass
class TechEnv:
    """What commands may use of the kiosk. The runtime builds one
    (``device.console.runtime_env``); tests build their own."""

    console: ConsoleEnv  #: export directory, restart hook, clock, technicians, version
    #: The kiosk's status for ``haven tech status`` (a JSON-able map).
    status: Callable[[], dict[str, Any]] = dict
    config_file: Path | None = None  #: the kiosk's TOML configuration
    #: Apply a configuration just written; returns what it restarted (names).
    apply_config: Callable[[Path], list[str]] | None = None
    hardware: Callable[[], Any] = lambda: None  #: the panel (``device.hardware.panel``)
    #: The kiosk's certificate (hub-signed), shown in the challenge; None before enrolment.
    kiosk_certificate: Callable[[], bytes | None] = lambda: None
    started: float = field(default_factory=time.monotonic)  #: for the uptime
    extra: dict[str, Any] = field(default_factory=dict)  #: what other commands need

    @property
    def technicians(self) -> Technicians | None:
        return self.console.technicians()


@dataclass
class Outgoing:
    """A file a command sends: its manifest and how to read it; ``result`` is the reply
    once the tool confirmed it; ``close`` is called when the transfer ends either way."""

    manifest: Manifest
    read: Callable[[int, int], bytes]
    result: dict[str, Any]
    close: Callable[[], None] = lambda: None


@dataclass
class Context:
    env: TechEnv
    request: int
    accepted: Accepted | None  #: None for an open command before the welcome
    note: Callable[[str], None]
    what: str = ""  #: the audit entry's ``what`` (default ``tech.<command>``)
    detail: dict[str, Any] = field(default_factory=dict)  #: the audit entry's detail
    #: Run once the tool has the (ok) reply, or ``AFTER_REPLY`` s after it was sent (a
    #: restart, which would otherwise cut the reply off).
    after_reply: list[Callable[[], None]] = field(default_factory=list)
    #: The command wrote its own audit entry (a wipe, before its keys went): the service
    #: writes none for it.
    audited: bool = False
    #: The session's id (its handshake hash's first 16 bytes) and the tool's static key:
    #: what provisioning binds its short code and the credential to.
    session_id: bytes = b""
    remote_static: bytes | None = None

    @property
    def who(self) -> str:
        return str(self.accepted.tech.serial) if self.accepted is not None else "presence"

    @property
    def technicians(self) -> Technicians | None:
        return self.env.technicians


class RefusalBudget:
    """Which refusals to audit: one by one up to ``REFUSALS_AUDITED`` per
    ``REFUSAL_WINDOW`` s; past it (a flood from a device on the cable) they are only
    counted, and the next one audited says how many were not, so that the audit, the
    store and the sync to the hub stay bounded."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._audited: deque[float] = deque()  #: when each of the window's was
        self._skipped = 0  #: refusals not audited since the last one that was

    def take(self) -> tuple[bool, int]:
        """Whether to audit this refusal, and how many before it were not."""
        now = self.clock()
        while self._audited and self._audited[0] <= now - REFUSAL_WINDOW:
            self._audited.popleft()
        if len(self._audited) >= REFUSALS_AUDITED:
            self._skipped += 1
            return False, 0
        self._audited.append(now)
        skipped, self._skipped = self._skipped, 0
        return True, skipped


@dataclass
class _Peer:
    """One session's state: its challenge, and the technician once welcomed."""

    session_id: bytes
    remote_static: bytes | None
    since: float = 0.0  #: when it opened (the service's clock)
    nonce: bytes = field(default_factory=lambda: secrets.token_bytes(NONCE_BYTES))
    accepted: Accepted | None = None
    open_commands: int = 0  #: open commands run before any welcome (a fresh kiosk's)


class TechService:
    """The console's Haven endpoint; see the module docstring."""

    def __init__(self, env: TechEnv, *, static_key: X25519PrivateKey, baud: int | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        for name in COMMAND_MODULES:
            importlib.import_module(name)
        self.env = env
        config = session_config(stream=False, baud=baud, keepalive=KEEPALIVE,
                                dead_timeout=DEAD_TIMEOUT, send_buffer=256 * 1024)
        self.driver = SessionDriver(initiator=False, config=config, static_key=static_key,
                                    restart=True, clock=clock)
        self.peer: _Peer | None = None
        self.refusals = 0
        self.refusal_budget = RefusalBudget(clock)
        self._later: deque[Callable[[], None]] = deque()  # from the worker, run in output
        self._lock = threading.Lock()
        self._jobs: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._sending: dict[int, tuple[Sender, Outgoing, bytes | None]] = {}
        self._contexts: dict[int, Context] = {}
        self._after: list[tuple[float, list[Callable[[], None]]]] = []
        self.clock = clock
        self._worker = threading.Thread(target=self._work, name="tech-commands", daemon=True)
        self._worker.start()

    # -- HavenEndpoint ---------------------------------------------------------------

    def feed(self, data: bytes | None, now: float) -> None:
        self.driver.feed(data, now)

    def output(self, now: float) -> bytes:
        with self._lock:
            later, self._later = list(self._later), deque()
        for action in later:
            action()
        peer = self.peer
        if peer is not None and peer.accepted is None and not peer.open_commands \
                and now - peer.since > HELLO_WITHIN:
            self.peer = None  # a session that never showed a credential frees the port
            self.driver.session.close("timeout", "no credential presented")
        self._pump()
        out = self.driver.output(now)
        if self._after and (self.driver.session.all_acked or not self.driver.connected
                            or now > self._after[0][0]):
            due, self._after = self._after, []
            for _, actions in due:
                for action in actions:
                    try:
                        action()
                    except Exception:
                        log.exception("technician command: an action after the reply failed")
        return out

    def next_deadline(self) -> float | None:
        if self._later:
            return float("-inf")
        return self.driver.next_deadline()

    def events(self) -> list[Any]:
        events = self.driver.events()
        for event in events:
            try:
                self._on_event(event)
            except Exception:  # one bad turn never ends the console's sessions
                log.exception("technician session: an event failed")
        return events

    def stop(self) -> None:
        self._jobs.put(None)
        self._end_transfers()

    # -- the conversation --------------------------------------------------------------

    def _on_event(self, event: Any) -> None:
        if isinstance(event, Connected):
            if event.resumed and self.peer is not None:
                return
            self._end_transfers()
            self.peer = _Peer(event.session_id, event.remote_static, self.clock())
            techs = self.env.technicians
            if techs is None:
                device, site, how = "", "", "not enrolled"
            else:
                now = techs.clock.now()
                device, site = techs.device_id, techs.site
                how = "none" if now is None else now.describe()
            self._send(tm.encode("tech-challenge", nonce=self.peer.nonce, device=device,
                                 site=site, time=how, kiosk=self.env.kiosk_certificate()))
        elif isinstance(event, Restarted | Closed | LinkClosed):
            self.peer = None
            self._end_transfers()
        elif isinstance(event, MessageReceived):
            self._on_message(event.data)

    def _on_message(self, data: bytes) -> None:
        peer = self.peer
        if peer is None:
            return
        try:
            msg = tm.decode(data)
        except ProtocolError as exc:
            log.info("technician session: a message refused: %s", exc)
            return
        if transfer_id(msg) is not None:
            held = self._sending.get(msg.get("xfer"))
            if held is not None:
                self._on_transfer(msg.get("xfer"), held[0].receive(msg))
            return
        if msg.name == "tech-hello":
            self._hello(peer, msg.get("cert"), msg.get("sig"), msg.get("revocations"),
                        msg.get("time"))
        elif msg.name == "tech-request":
            self._request(peer, msg.get("id"), msg.get("command"), msg.get("args", {}))

    def _hello(self, peer: _Peer, cert: bytes, sig: bytes, revocations: bytes | None,
               statement: bytes | None) -> None:
        techs = self.env.technicians
        who = "unknown"
        try:
            if techs is None:
                raise Refused("this kiosk is not enrolled: no technician can be checked",
                              "not-enrolled")
            if peer.accepted is not None:
                raise Refused("this session already has a technician", "already")
            try:
                tech = credential.read_technician(cert, techs.hub_ed25519)
            except ProtocolError as exc:
                raise Refused(str(exc), exc.code) from None
            who = str(tech.serial)
            if peer.remote_static != tm.x25519_public(tech.ed25519):
                raise Refused("the session's key is not the certificate's", "key-mismatch")
            if statement is not None:
                techs.note_signed_time(statement, peer.nonce)
            accepted = techs.authenticate(cert, sig, peer.nonce, peer.session_id, revocations)
        except (Refused, ProtocolError) as exc:
            code = getattr(exc, "code", "refused")
            self.refusals += 1
            log.info("technician session refused (%s): %s", code, exc)
            audited, skipped = self.refusal_budget.take()
            if techs is not None and audited:
                self._audit(techs, who, "tech.session", f"refused:{code}",
                            {"unaudited": skipped} if skipped else None)
            self._send(tm.encode("tech-refused", code=code, reason=str(exc)[:tm.MAX_TEXT]))
            # Once the tool has heard why, the session ends: the port is free for the next.
            session = self.driver.session
            self._after.append((self.clock() + AFTER_REPLY,
                                [lambda: session.close("refused", "credential refused")]))
            return
        peer.accepted = accepted
        t = accepted.tech
        self._send(tm.encode("tech-welcome", serial=t.serial, technician=t.name,
                             actions=list(t.actions), time=accepted.how))

    def _request(self, peer: _Peer, ident: int, name: str, args: dict[str, Any]) -> None:
        cmd = REGISTRY.get(name)
        techs = self.env.technicians
        if cmd is None:
            self._send(tm.reply_error(ident, "unknown-command", f"no command {name!r}"))
            return
        if cmd.action is not None:
            if peer.accepted is None or techs is None:
                self._send(tm.reply_error(ident, "not-authenticated",
                                          "no valid credential on this session"))
                return
            if not techs.still_good(peer.accepted.tech, cmd.action):
                self._audit(techs, str(peer.accepted.tech.serial), f"tech.{name}",
                            "refused:not-allowed", None)
                self._send(tm.reply_error(
                    ident, "not-allowed", f"the credential does not allow {cmd.action!r} "
                    "now (expired, revoked or not in its actions)"))
                return
        if cmd.action is None and peer.accepted is None:
            peer.open_commands += 1
        ctx = Context(self.env, ident, peer.accepted,
                      note=lambda text: self._later_send(tm.encode(
                          "tech-note", id=ident, text=text[:tm.MAX_TEXT])),
                      what=f"tech.{name}", session_id=peer.session_id,
                      remote_static=peer.remote_static)
        self._jobs.put(lambda: self._run(cmd, ctx, args, peer))

    # -- the worker ------------------------------------------------------------------

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                job()
            except Exception:
                log.exception("technician command failed")

    def _run(self, cmd: Command, ctx: Context, args: dict[str, Any], peer: _Peer) -> None:
        try:
            result = cmd.handler(ctx, args)
        except CommandError as exc:
            self._finish(ctx, f"refused:{exc.code}")
            self._later_send(tm.reply_error(ctx.request, exc.code, str(exc)))
            return
        except Exception as exc:
            log.exception("technician command %s failed", cmd.name)
            self._finish(ctx, "error")
            # The type only: a message may quote a value a patient typed (the log keeps
            # the frames, device.logs).
            self._later_send(tm.reply_error(
                ctx.request, "failed", f"{cmd.name} failed on the kiosk "
                f"({type(exc).__name__}); its log says where (haven tech logs)"))
            return
        if isinstance(result, Outgoing):
            self._later_do(lambda: self._start_transfer(ctx, result, peer))
            return
        self._finish(ctx, "ok")
        reply = tm.reply_ok(ctx.request, result)

        def send() -> None:
            self._send(reply)
            if ctx.after_reply:
                self._after.append((self.clock() + AFTER_REPLY, ctx.after_reply))
        self._later_do(send)

    def _finish(self, ctx: Context, result: str) -> None:
        techs = ctx.technicians
        if techs is not None and not ctx.audited:
            self._audit(techs, ctx.who, ctx.what, result, ctx.detail or None)

    def _audit(self, techs: Technicians, who: str, what: str, result: str,
               detail: dict[str, Any] | None) -> None:
        try:
            now = techs.clock.now()
            techs.audit(who, what, result, detail, now)
        except Exception:  # the action stands; the failure to record it is logged loudly
            log.exception("technician action not audited: %s %s %s", who, what, result)

    def _later_send(self, wire: bytes) -> None:
        self._later_do(lambda: self._send(wire))

    def _later_do(self, action: Callable[[], None]) -> None:
        with self._lock:
            self._later.append(action)

    def _send(self, wire: bytes, lane: int = tm.CONTROL_LANE) -> None:
        if self.driver.connected:
            self.driver.send(lane, wire)

    # -- files out -------------------------------------------------------------------

    def _start_transfer(self, ctx: Context, out: Outgoing, peer: _Peer) -> None:
        if self.peer is not peer:  # the session ended while the file was prepared
            out.close()
            return
        sender = Sender(out.manifest, out.read, xfer=ctx.request)
        self._sending[ctx.request] = (sender, out, None)
        self._contexts[ctx.request] = ctx

    def _pump(self) -> None:
        for ident in list(self._sending):
            sender, out, pending = self._sending[ident]
            while self.driver.can_send(tm.BULK_LANE, tm.MAX_MESSAGE):
                if pending is None:
                    pending = sender.next_message()
                    if pending is None:
                        break
                self.driver.send(tm.BULK_LANE, pending)
                pending = None
            if ident in self._sending:
                self._sending[ident] = (sender, out, pending)
            if sender.failure is not None:
                self._on_transfer(ident, [sender.failure])

    def _on_transfer(self, ident: int, events: list[Any]) -> None:
        held = self._sending.get(ident)
        if held is None:
            return
        sender, out, _ = held
        for event in events:
            if isinstance(event, TransferComplete | TransferAborted):
                del self._sending[ident]
                out.close()
                ctx = self._contexts.pop(ident)
                while (wire := sender.next_message()) is not None:  # an abort, said
                    self._send(wire)
                if isinstance(event, TransferComplete):
                    self._finish(ctx, "ok")
                    self._send(tm.reply_ok(ident, out.result))
                else:
                    ctx.detail["why"] = event.reason[:60]
                    self._finish(ctx, "refused:transfer")
                    self._send(tm.reply_error(ident, "transfer", f"the transfer ended: "
                                              f"{event.reason} {event.detail}".strip()))
                return

    def _end_transfers(self) -> None:
        for ident, (_, out, _) in list(self._sending.items()):
            out.close()
            ctx = self._contexts.pop(ident, None)
            if ctx is not None:
                self._finish(ctx, "refused:interrupted")
        self._sending.clear()


def read_at(fd: int) -> Callable[[int, int], bytes]:
    return lambda offset, length: os.pread(fd, length, offset)


def pieces_of(fd: int, size: int = 1 << 20) -> Iterator[bytes]:
    """An open file's bytes from its start, ``size`` at a time (for its manifest)."""
    offset = 0
    while piece := os.pread(fd, size, offset):
        offset += len(piece)
        yield piece
