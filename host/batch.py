"""What ``haven send`` and ``haven receive`` share: the batch, the link, the summary.

On lane 1, before the first ``xfer-offer`` of a session, the sender says how
many files and bytes the batch holds (``haven-batch``); after the last file
is confirmed it says the batch is over (``haven-end``), and the receiver may
exit. File ``i`` of the batch is transfer ``i``. Types 48 and 49 sit in the
transfer range of SPEC.md (40-49).

``open_run`` opens the port and a ``SessionDriver`` on it (Noise ``XX``
with ``--key``, else ``NN``; paced to ``--baud``; stream mode with
``--tcp`` or a ``tcp://`` URL). A session that hears no authenticated frame
for ``RESET_AFTER`` seconds is replaced (a ``Restarted`` event: the peer may
have restarted, and the transfer starts over, moving only missing chunks).
``poll`` adds the run's rules: a handshake refused for its key raises
``PeerRefused``; no authenticated frame for ``--timeout`` seconds, across
sessions, raises ``PeerSilent``.

``TransferSummary`` is what ``--json`` prints, for either side.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from host.errors import HavenError, PeerRefused, PeerSilent, UsageError
from protocol.driver.errors import LinkError
from protocol.driver.link import open_link
from protocol.driver.session_driver import DriverEvent, SessionDriver, session_config
from protocol.messages import MessageSpec, register
from protocol.session.events import Closed, Connected

BATCH = register(MessageSpec(48, "haven-batch", {1: ("files", int), 2: ("bytes", int)}))
END = register(MessageSpec(49, "haven-end", {1: ("files", int)}))

BULK_LANE = 1  #: offers, manifests, data, batch and end
CONTROL_LANE = 0  #: needs, done, aborts: small, and they overtake the bulk
KEEPALIVE = 2.0
RESET_AFTER = 10.0


@dataclass
class LinkOptions:
    baud: int | None = None
    tcp: bool = False  #: a reliable byte stream end to end: no retransmission timers
    timeout: float = 120.0  #: give up after this long without an authenticated frame
    key: X25519PrivateKey | None = None
    peer_key: bytes | None = None


@contextmanager
def open_run(port: str, options: LinkOptions, *, initiator: bool) -> Iterator[SessionDriver]:
    """The driver of a run over ``port``; closes the port after. Link errors become
    ``UsageError`` (the port will not open) or ``HavenError`` (it broke)."""
    try:
        link = open_link(port, options.baud)
    except LinkError as exc:
        raise UsageError(str(exc)) from None
    config = session_config(
        stream=options.tcp or link.stream, baud=options.baud,
        pattern="XX" if options.key is not None else "NN",
        dead_timeout=min(RESET_AFTER, options.timeout), keepalive=KEEPALIVE,
        send_buffer=256 * 1024)
    driver = SessionDriver(initiator=initiator, config=config, static_key=options.key,
                           remote_static=options.peer_key, restart=True, link=link)
    try:
        yield driver
    except LinkError as exc:
        raise HavenError(str(exc)) from None
    finally:
        link.close()


def poll(driver: SessionDriver, options: LinkOptions) -> list[DriverEvent]:
    """``driver.poll()``, raising ``PeerRefused`` and ``PeerSilent`` (see above)."""
    connected = driver.connected
    events = driver.poll()
    for event in events:
        if isinstance(event, Connected):
            connected = True
        if not isinstance(event, Closed):
            continue
        peer = "the receiver" if driver.initiator else "the sender"
        us = "here (sender)" if driver.initiator else "here (receiver)"
        if event.reason in ("auth", "unknown-key"):
            driver.flush()  # our refusal, if it is ours, leaves before we stop
            raise PeerRefused(f"handshake refused {'by ' + peer if event.by_peer else us}: "
                              f"{event.detail or 'authentication failed'}"
                              " (wrong --peer-key, or the two sides disagree about --key)")
        if event.by_peer and event.reason in ("version", "protocol") and not connected:
            raise PeerRefused(f"{peer} refused the session ({event.reason}): {event.detail}"
                              " (do both sides agree on --tcp?)")
    if driver.silent_for(time.monotonic()) > options.timeout:
        raise PeerSilent(
            f"no authenticated frame from the peer for {options.timeout:g} s"
            + ("" if driver.ever_connected else
               " (is the other side running, on the right port, with matching "
               "--key/--peer-key/--tcp?)"))
    return events


def drain(driver: SessionDriver, options: LinkOptions, seconds: float = 2.0) -> None:
    """Close the session once the peer has what we queued (an ``xfer-abort`` with our
    reason, say), or after ``seconds``: a CLOSE drops what is still queued."""
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end and driver.connected and not driver.session.all_acked:
            if any(isinstance(e, Closed) for e in poll(driver, options)):
                break
        driver.close(linger=0.2)
    except (HavenError, LinkError):
        pass


@dataclass
class TransferSummary:
    role: str
    files: list[dict[str, Any]] = field(default_factory=list)
    file_bytes: int = 0
    chunks: int = 0
    chunks_moved: int = 0  #: chunks sent (sender) or stored (receiver)
    chunk_bytes_moved: int = 0
    chunks_reused: int = 0  #: chunks the receiver had already (both ends count the same)
    wire_bytes_sent: int = 0
    wire_bytes_received: int = 0
    retransmitted_bytes: int = 0
    frames_lost: int = 0
    seconds: float = 0.0
    resets: int = 0  #: sessions replaced after a silence
    peer_key: str | None = None

    def add_run(self, driver: SessionDriver, started: float) -> TransferSummary:
        """What the run's sessions moved, and how long it took since ``started``."""
        stats = driver.stats()
        self.wire_bytes_sent = stats.bytes_sent
        self.wire_bytes_received = stats.bytes_received
        self.retransmitted_bytes = stats.retransmitted_bytes
        self.frames_lost = stats.lost_frames
        self.seconds = round(time.monotonic() - started, 3)
        self.resets = driver.restarts
        self.peer_key = driver.peer_static.hex() if driver.peer_static else None
        return self
