"""The technician's side of a ``haven tech`` session: connect, authenticate, call commands.

Theory of operation
-------------------
SPEC.md "Technician sessions". ``TechClient`` opens the port (any pyserial
URL, through ``protocol.driver.link.open_link``), runs a Noise ``XX``
handshake as initiator with the X25519 form of the technician's Ed25519 key
(``protocol.tech_messages.x25519_private``), answers the kiosk's challenge
with the certificate and a signature bound to the session, and waits for the
welcome. Then::

    with TechClient(port, credential.load_file(data)) as tech:   # connects
        status = tech.call("status")                              # -> the result map
        tech.call("config", {"op": "set", "key": "interval", "value": "30"})
        tech.pull("kiosk.log", Path("out"), progress)             # resumable

``call`` raises ``CommandRefused`` (one line: the kiosk's code and message)
for a refused command; ``connect`` raises ``PeerRefused`` for a refused
credential, ``PeerSilent`` when no kiosk answers in ``timeout`` seconds and
``UsageError`` for a port that will not open. ``signed_time(nonce)``, if given,
returns a hub-signed time over the challenge's nonce (a tool that reaches the
hub), which the hello carries for a kiosk without trusted time. ``on_note`` sees the kiosk's
``tech-note``s while a command runs ("press the service button").

``pull`` receives into ``DirStore`` (``host/transfer_store.py``) as ``haven
receive`` does: every chunk is durable as it arrives, so the same pull run
again after a cable was pulled asks only for the chunks it lacks.
"""

from __future__ import annotations

import itertools
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from host.errors import HavenError, PeerRefused, PeerSilent, UsageError
from host.progress import Progress
from host.transfer_store import DirStore, disk_full
from protocol import tech_messages as tm
from protocol.driver.errors import LinkError
from protocol.driver.link import Link, open_link
from protocol.driver.session_driver import Restarted, SessionDriver, session_config
from protocol.errors import ProtocolError
from protocol.messages import Message
from protocol.session.events import Closed, Connected, MessageReceived
from protocol.sync import certificate as sync_cert
from protocol.sync import credential
from protocol.transfer import (
    ChunkStored,
    OfferReceived,
    Receiver,
    TransferAborted,
    TransferComplete,
    transfer_id,
)

DEFAULT_TIMEOUT = 10.0
KEEPALIVE = 2.0


class CommandRefused(HavenError):
    """The kiosk refused a command (its code and one-line message)."""

    exit_code = 1

    def __init__(self, command: str, code: str, message: str) -> None:
        super().__init__(f"{command}: refused by the kiosk ({code}): {message}")
        self.code = code


@dataclass(frozen=True)
class Welcome:
    device: str
    site: str
    serial: int
    name: str
    actions: tuple[str, ...]
    time: str  #: how the kiosk judged the certificate's time


class TechClient:
    """One authenticated session with a kiosk's console; see the module docstring."""

    def __init__(self, port: str, cred: credential.CredentialFile, *, baud: int | None = None,
                 timeout: float = DEFAULT_TIMEOUT,
                 signed_time: Callable[[bytes], bytes | None] | None = None,
                 on_note: Callable[[str], None] | None = None) -> None:
        self.port = port
        self.cred = cred
        self.baud = baud
        self.timeout = timeout
        self.signed_time = signed_time
        self.on_note = on_note
        self.welcome: Welcome | None = None
        self._ids = itertools.count(1)
        self._link: Link | None = None
        self._driver: SessionDriver | None = None
        self._inbox: list[Message] = []

    # -- connecting ------------------------------------------------------------------

    def __enter__(self) -> TechClient:
        if self._link is None:  # ``client_for`` gives one connected already
            self.connect()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def connect(self) -> Welcome:
        """Open the port and the session; the welcome (see the module docstring)."""
        try:
            self._link = open_link(self.port, self.baud, exclusive=True)
        except LinkError as exc:
            raise UsageError(f"cannot open {self.port}: {exc}") from None
        try:
            return self._connect()
        except BaseException:
            self.close()  # says goodbye, so the kiosk's console is free for the next
            raise

    def _connect(self) -> Welcome:
        assert self._link is not None
        config = session_config(stream=self._link.stream, baud=self.baud, pattern="XX",
                                keepalive=KEEPALIVE, dead_timeout=max(self.timeout, 5.0),
                                send_buffer=256 * 1024)
        key = X25519PrivateKey.from_private_bytes(
            tm.x25519_private(self.cred.key.private_bytes_raw()))
        self._driver = SessionDriver(initiator=True, config=config, static_key=key,
                                     link=self._link)
        session_id = b""
        end = time.monotonic() + self.timeout
        while not session_id:
            for event in self._poll(end, "no kiosk answers on {port}: is it the kiosk's "
                                         "console port, and its runtime running?"):
                if isinstance(event, Connected):
                    session_id = event.session_id
        challenge = self._wait(lambda m: m.name == "tech-challenge", end)
        nonce, device = challenge.get("nonce"), challenge.get("device")
        self._check_kiosk(challenge.get("kiosk"), device)
        sig = credential.sign_auth(self.cred.key, nonce, device, session_id)
        self._send(tm.encode("tech-hello", cert=self.cred.certificate, sig=sig,
                             revocations=self.cred.revocations,
                             time=self.signed_time(nonce) if self.signed_time else None))
        answer = self._wait(lambda m: m.name in ("tech-welcome", "tech-refused"), end)
        if answer.name == "tech-refused":
            raise PeerRefused(f"the kiosk refused the credential ({answer.get('code')}): "
                              f"{answer.get('reason')}")
        self.welcome = Welcome(device, challenge.get("site"), answer.get("serial"),
                               answer.get("technician"), tuple(answer.get("actions")),
                               answer.get("time"))
        return self.welcome

    def _check_kiosk(self, doc: bytes | None, device: str) -> None:
        """``PeerRefused`` unless ``doc`` is a certificate of our hub for ``device`` whose
        key is the session's remote static: the tool signs nothing for anything else."""
        assert self._driver is not None
        where = f"the device on {self.port} is not a kiosk of this credential's hub"
        if doc is None:
            raise PeerRefused(f"{where}: it shows no kiosk certificate (not enrolled?)")
        try:
            cert = sync_cert.read_certificate(doc, self.cred.hub_ed25519)
        except ProtocolError as exc:
            raise PeerRefused(f"{where}: {exc}") from None
        if cert.hub_ed25519 != self.cred.hub_ed25519 or cert.device_id != device \
                or cert.x25519 != self._driver.peer_static:
            raise PeerRefused(f"{where}: its certificate is not for this session's key")

    def close(self) -> None:
        driver, link = self._driver, self._link
        self._driver = self._link = None
        if driver is not None:
            try:
                end = time.monotonic() + 1.0
                while driver.connected and not driver.session.all_acked \
                        and time.monotonic() < end:
                    driver.poll()
                driver.close(linger=0.1)
            except LinkError:
                pass  # the cable is gone: there is nothing left to say goodbye on
        if link is not None:
            link.close()

    # -- commands ----------------------------------------------------------------------

    def call(self, command: str, args: dict[str, Any] | None = None, *,
             timeout: float | None = None) -> dict[str, Any]:
        """Run ``command`` on the kiosk; its result, or ``CommandRefused``."""
        ident = next(self._ids)
        self._send(tm.encode("tech-request", id=ident, command=command, args=args or {}))
        end = time.monotonic() + (self.timeout if timeout is None else timeout)
        reply = self._wait(lambda m: m.name == "tech-reply" and m.get("id") == ident, end)
        return self._result(command, reply)

    def pull(self, name: str, directory: Path, progress: Progress | None = None,
             ) -> dict[str, Any]:
        """Fetch ``name`` from the kiosk's export directory into ``directory``; the reply's
        result, with ``path`` where the file now is."""
        return self.fetch("pull", {"name": name}, directory, progress)

    def fetch(self, command: str, args: dict[str, Any], directory: Path,
              progress: Progress | None = None) -> dict[str, Any]:
        """Run ``command``, whose answer is a file (the kiosk's ``Outgoing``), received
        into ``directory`` (resumable: ``DirStore``); its reply's result, with ``path``."""
        progress = progress or Progress(enabled=False)
        store = DirStore(directory)
        try:
            return self._fetch(command, args, store, progress)
        finally:
            store.close()

    def _fetch(self, command: str, args: dict[str, Any], store: DirStore,
               progress: Progress) -> dict[str, Any]:
        ident = next(self._ids)
        receiver = Receiver(store)
        path: Path | None = None
        done = 0
        name = args.get("name", command)
        self._send(tm.encode("tech-request", id=ident, command=command, args=args))
        end = time.monotonic() + self.timeout
        while True:
            msg = self._wait(lambda m: (m.name == "tech-reply" and m.get("id") == ident)
                             or transfer_id(m) == ident, end)
            end = time.monotonic() + self.timeout  # silence, not length, times a pull out
            if msg.name == "tech-reply":
                result = self._result(command, msg)
                if path is None:
                    raise HavenError(f"{command}: the kiosk replied before the file was in "
                                     "place")
                r = receiver.stats
                return {**result, "path": str(path), "chunks": r.chunks_total,
                        "chunks_reused": r.chunks_reused, "chunks_moved": r.chunks_moved}
            try:
                if msg.name == "xfer-manifest" and receiver.state == "receiving":
                    store.add_layout(msg.get("start"), msg.get("hashes"), msg.get("lengths"))
                events = receiver.receive(msg)
            except (OSError, sqlite3.Error) as exc:
                if not disk_full(exc):
                    raise
                store.discard()
                events = receiver.abort("no-space", f"the disk is full ({store.root})")
            for event in events:
                if isinstance(event, OfferReceived):
                    need, free = store.room_for(event.object_hash, event.name, event.size)
                    if need > free:
                        events += receiver.abort("no-space", f"{store.root} lacks room")
                        continue
                    store.begin(event.object_hash, event.name, event.size)
                    progress.update(event.name, 0, event.size, force=True)
                elif isinstance(event, ChunkStored):
                    done += event.length
                    r = receiver.stats
                    reused = receiver.size * r.chunks_reused // max(1, r.chunks_total)
                    progress.update(receiver.name, min(receiver.size, done + reused),
                                    receiver.size)
                elif isinstance(event, TransferComplete):
                    path = store.finish()
                    progress.update(event.name, event.size, event.size, force=True)
                    progress.end()
                elif isinstance(event, TransferAborted) and not event.remote:
                    for wire in receiver.messages_to_send():
                        self._send(wire)
                    raise HavenError(f"{command} {name}: refused here: {event.reason} "
                                     f"({event.detail})")
            for wire in receiver.messages_to_send():
                self._send(wire)

    @staticmethod
    def _result(command: str, reply: Message) -> dict[str, Any]:
        if not reply.get("ok"):
            raise CommandRefused(command, reply.get("code"), reply.get("error", ""))
        return dict(reply.get("result", {}))

    # -- the session -------------------------------------------------------------------

    def _send(self, wire: bytes, lane: int = tm.CONTROL_LANE) -> None:
        assert self._driver is not None
        self._driver.send(lane, wire)

    def _wait(self, wanted: Callable[[Message], bool], end: float) -> Message:
        while True:
            for i, msg in enumerate(self._inbox):
                if wanted(msg):
                    return self._inbox.pop(i)
            self._poll(end, "the kiosk on {port} stopped answering")

    def _poll(self, end: float, silent: str) -> list[Any]:
        driver = self._driver
        if driver is None:
            raise HavenError("not connected")
        if time.monotonic() > end:
            raise PeerSilent(silent.format(port=self.port))
        try:
            events = driver.poll()
        except LinkError as exc:
            raise HavenError(f"{self.port}: {exc}") from None
        for event in events:
            if isinstance(event, MessageReceived):
                try:
                    msg = tm.decode(event.data)
                except ProtocolError:
                    continue  # an authenticated kiosk sent what we cannot read: skipped
                if msg.name == "tech-note":
                    if self.on_note is not None:
                        self.on_note(msg.get("text"))
                    continue
                self._inbox.append(msg)
            elif isinstance(event, Closed | Restarted):
                reason = getattr(event, "reason", "")
                detail = getattr(event, "detail", "")
                if reason in ("auth", "unknown-key"):
                    raise PeerRefused(f"the kiosk on {self.port} refused the session: "
                                      f"{detail or reason}")
                raise HavenError(f"the session with the kiosk on {self.port} ended "
                                 f"({reason}{': ' + detail if detail else ''})")
        if driver.link is None:
            raise HavenError(f"{self.port} closed")
        return events
