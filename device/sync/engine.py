"""One sync round over a session, new or kept open.

Theory of operation
-------------------
``Round`` is one sync round over an open session, without I/O. Its rules
(the chain, fork, adopt and rewind, acks, paging) are the kiosk's role in
``protocol.sync.kiosk_round`` (``KioskSync``); ``Round`` gives that role
the store and ``sync.db`` (``KioskLedger``) and the time. It says hello,
then pushes (one batch in flight, saved in ``sync.db`` before it is sent)
and pulls (each page merged durably before the cursor is saved) at once.
Once the push is done, documents follow (``sync_documents``): only the
chunks the hub lacks, on the session's last lane, a batch written meanwhile
first. Past ``DOCUMENT_SHARE`` of the round's time limit no more content
goes out; the next round resumes it.

The welcome's scope and signed stable point, a rebase's snapshot of the
scope and the write sets of stale records follow the conversation's rules
too; the ledger keeps the scope, the stable point and a rebase owed in
``sync.db`` (a snapshot half taken in its memory) and hands snapshots to the
store. A stable point, scope or snapshot the kiosk refuses fails the round
(``SyncFailed``, saying why) before anything of it is kept.

The round is done when the outbox is empty, nothing is in flight and the
last page said no more. ``drive_round`` runs a round over a session driver
(``protocol.driver``), which may outlive it (``device.sync.connection``);
``run_round`` opens a link and a session for one round and closes them
after. A refusal by the hub (revoked, unknown, wrong certificate) raises
``SyncRefused``: retrying will not help. The hub's busy answer (SPEC.md
"Busy": it serves as many rounds as it can) raises ``SyncBusy`` with the
wait it asked for; the loop of rounds obeys it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from device.enrol import Identity
from device.exc import DeviceError
from device.store import BadSnapshot, Store, StoreError
from device.store.reissue import reissue_ahead
from device.sync.document_push import DocumentPush, lane_room
from device.sync.document_store import DocumentStore
from device.sync.fleet_keys import KioskFleetKeys
from device.sync.state import SEAL_LABEL, SyncState
from device.tech.revocations import RevocationList
from device.tech.trusted_time import SYNC, TrustedClock
from protocol import messages
from protocol.driver.errors import LinkError
from protocol.driver.link import Link, open_link
from protocol.driver.session_driver import LinkClosed, SessionDriver, session_config
from protocol.driver.wall_clock import wall_ms
from protocol.errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from protocol.session.events import Closed, Connected, MessageReceived
from protocol.sync import batches as sync
from protocol.sync.kiosk_round import KioskSync
from protocol.sync.round_common import (
    CLONE_CLEARED,
    DECOMMISSIONED,
    SUSPECTED_CLONE,
    BatchRefused,
    SnapshotRefused,
)
from protocol.sync.scope import Scope
from protocol.transfer import transfer_id

log = logging.getLogger("haven.sync")

BATCH_BYTES = 48 * 1024
BUSY = "busy"  #: the hub's close reason when it serves as many rounds as it can
REFUSALS = ("unknown-device", "revoked", "wrong-certificate", "bad-certificate", "unapproved",
            "auth", "bad-approval")


def refuser(by_peer: bool) -> str:
    """Who refused whom, for a session closed with one of ``REFUSALS``: the hub, or this
    kiosk (the hub's key is not the one its certificate names)."""
    return "the hub refused this kiosk" if by_peer else "this kiosk refused the hub"


#: A serial round that hears nothing authenticated this long starts over: a hub that
#: restarted ignores the old session's frames (it sends keep-alives every 2 s).
SERIAL_DEAD_TIMEOUT = 20.0
#: A kept-open session silent this long within a round is taken for a dead link.
STALL = 10.0
#: A round on a session kept open since an earlier round that hears nothing this long
#: after its first message takes the link for dropped (a NAT that forgot the flow).
REPLY_TIMEOUT = 4.0
#: Document content goes out during this share of a round's time limit, so a long
#: document leaves the round time to end cleanly (the next one resumes it).
DOCUMENT_SHARE = 0.75


class SyncFailed(DeviceError):
    """This round failed; another may succeed."""


class SyncBusy(SyncFailed):
    """The hub is busy and asked us to come back in ``retry_after`` seconds (SPEC.md
    "Busy"): the link is fine, and nothing of the round was lost."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def closed_error(event: Closed, url: str) -> SyncFailed:
    """What a round raises for its session's ``Closed``: ``SyncRefused`` for a refusal,
    ``SyncBusy`` for the hub's busy answer with its wait, else ``SyncFailed``."""
    what = f"{event.reason}: {event.detail}" if event.detail else event.reason
    if event.reason in REFUSALS:
        return SyncRefused(f"{refuser(event.by_peer)} ({what})", event.reason)
    if event.reason == BUSY and event.by_peer and event.retry_ms is not None:
        return SyncBusy(f"the hub at {url} is busy; it asks for {event.retry_ms / 1000:g} s",
                        event.retry_ms / 1000)
    return SyncFailed(f"session closed {'by the hub' if event.by_peer else 'here'} ({what})")


class SyncRefused(SyncFailed):
    """The hub refused this kiosk; retrying will not help. ``reason``: the session's
    close reason (``revoked``, ``unknown-device``...), "" for a refusal of our own."""

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class Summary:
    batches: int = 0
    pushed: int = 0
    quarantined: int = 0
    #: own writes stamped too far ahead of the hub's time, issued again (``reissue``)
    reissued: int = 0
    pulled: int = 0
    rebased: int = 0  #: deltas of the snapshot of our scope this round rebased us on
    refreshed: int = 0  #: records rebuilt from the hub's whole write set of them
    bytes_sent: int = 0
    bytes_received: int = 0
    frames_sent: int = 0
    frames_lost: int = 0  #: frames the session judged lost and sent again
    retransmitted_bytes: int = 0  #: lane bytes sent again
    seconds: float = 0.0  #: the round's time, on the driver's clock
    rtt_ms: float | None = None  #: the session's smoothed round trip at the end, if measured
    url: str = ""
    documents: dict[str, Any] = field(default_factory=dict)  #: ``DocumentPush.figures``


def describe_scope(scope: Scope) -> str:
    """A scope in words, for the log and ``haven-kiosk status``."""
    if scope.role == "full":
        return "full (every record but the audit trail)"
    window = f", {scope.window_days} days back" if scope.role == "clinician" else ""
    return f"{scope.role} at site {scope.site!r}, day {scope.day}{window}"


class KioskLedger:
    """``KioskStorage`` for the kiosk's role: the store (outbox, merge) and ``sync.db``
    (the chain, the cursor), with the round's ``Summary`` counting what moved."""

    def __init__(self, store: Store, state: SyncState, summary: Summary,
                 hub_ed25519: bytes | None = None, docs: DocumentStore | None = None) -> None:
        """``hub_ed25519``: the hub's key from our certificate, which signs the
        technicians' revocation list (None: the list is not kept). ``docs``: the
        kiosk's documents, offered again to a hub restored from a backup."""
        self.store, self.state, self.summary, self.docs = store, state, summary, docs
        #: The hub's time as a technician's credential is judged by (SPEC.md "Technicians")
        self.hub_time = TrustedClock(store.data)
        self.revocations = (None if hub_ed25519 is None
                            else RevocationList(store.data, hub_ed25519))

    def head(self) -> tuple[int, bytes]:
        return self.state.head()

    def acked_head(self) -> int:
        return self.state.acked_head()

    def saved_hash(self, seq: int) -> bytes | None:
        return self.state.batch_hash(seq)

    def cursor(self) -> int:
        return self.state.cursor

    def version_vector(self) -> dict[int, int]:
        return self.store.version_vector().to_wire()

    def unacked_batch(self) -> tuple[sync.Batch, list[int]] | None:
        pending = self.state.pending()
        if not pending:
            return None
        seq, prev, lane, entries, sealed, sig = pending[0]
        payload = self.store.cipher.open_blob(SEAL_LABEL, sealed)
        return sync.Batch(seq, prev, payload, sig, lane), entries

    def next_writes(self) -> list[tuple[int, int, bytes]]:
        out = self.store.outbox_batch(self.store.clock(), max_bytes=BATCH_BYTES)
        return [(e.seq, e.lane, e.data) for e in out]

    def save_batch(self, batch: sync.Batch, entries: list[int]) -> None:
        self.state.save_batch(batch.seq, batch.prev, batch.hash, batch.lane, entries,
                              self.store.cipher.seal_blob(SEAL_LABEL, batch.payload), batch.sig)

    def adopt(self, seq: int, hash_: bytes) -> None:
        self.state.adopt(seq, hash_)

    def rewind(self, seq: int, acked: int) -> None:
        self.state.rewind(seq)
        again = self.store.outbox_requeue_local()
        # the content of a document the backup missed is gone with it, and its record
        # comes back by the writes queued again: offer the content again too
        docs = 0 if self.docs is None else self.docs.requeue_delivered()
        log.warning("the hub holds our batches up to %d of %d (restored from a backup?): "
                    "%d writes and %d documents queued again", seq, acked, again, docs)

    def acked(self, seq: int, kept: list[int], quarantined: list[int],
              arrived: int | None) -> None:
        for entry in quarantined:
            self.store.outbox_reject(entry, "hub-quarantined")
        self.store.outbox_ack(kept, arrived=arrived)
        self.state.mark_acked(seq)
        self.summary.batches += 1
        self.summary.pushed += len(kept)
        self.summary.quarantined += len(quarantined)

    def merge(self, deltas: list[bytes], cursor: int) -> None:
        if deltas:
            # Checked against the hub's time, not our clock: the hub checked each against
            # its own, and a kiosk whose clock is behind would quarantine them all.
            self.store.merge(deltas, now_ms=wall_ms() + self.state.clock_offset,
                             cursor=cursor)
        self.state.set("cursor", cursor)
        self.summary.pulled += len(deltas)

    # Scopes (SPEC.md "Scopes and garbage collection") ----------------------------------

    def scope_checksum(self) -> bytes | None:
        scope = self.state.scope_at(wall_ms() + self.state.clock_offset)
        return None if scope is None else self.store.scope_checksum(scope)

    def note_scope(self, scope: Scope, stable: int | None) -> None:
        held = self.state.scope
        if scope != held:
            log.info("the hub names this kiosk's scope: %s", describe_scope(scope))
        if held is None or (held.role, held.site) != (scope.role, scope.site):
            self.state.partial_snapshot = None  # another scope's
        self.state.note_scope(scope, stable)

    def note_stable(self, stable: int) -> None:
        scope = self.state.scope
        if scope is not None:
            self.state.note_scope(scope, stable)

    def rebase_owed(self) -> bool:
        return self.state.rebase_owed

    def partial_snapshot(self) -> tuple[int, int, list[bytes]] | None:
        return self.state.partial_snapshot

    def keep_partial(self, partial: tuple[int, int, list[bytes]] | None) -> None:
        self.state.partial_snapshot = partial

    def note_rebase(self) -> None:
        if not self.state.rebase_owed:
            log.warning("the hub asks for a rebase of this kiosk's scope (its checksum "
                        "disagreed, its role changed or it fell far behind)")
        self.state.owe_rebase(True)

    def rebase(self, deltas: list[bytes], upto: int, hub_sum: bytes, version: int = 2,
               lost: int | None = None) -> None:
        try:
            self.store.rebase(deltas, upto, hub_sum, version, scope=self.state.scope,
                              lost=lost)
        except BadSnapshot as exc:
            raise SnapshotRefused(f"the hub's snapshot of this kiosk's scope was refused, "
                                  f"nothing changed: {exc}") from None
        self.state.set("cursor", upto)
        self.state.owe_rebase(False)  # writes the cursor with it
        self.summary.rebased += len(deltas)
        log.warning("rebased on the hub's snapshot of this kiosk's scope (%d deltas, up "
                    "to %d); unsynced writes kept", len(deltas), upto)

    def stale_records(self) -> list[bytes]:
        return self.store.stale_records()

    def replace_records(self, deltas: list[bytes], rids: list[bytes], upto: int | None,
                        ) -> None:
        try:  # counted stable from the head they were cut at, never from before it
            self.store.replace_records(deltas, rids, cursor=max(upto or 0, self.state.cursor))
        except BadSnapshot as exc:
            raise SnapshotRefused(f"the hub's write sets of {len(rids)} records were "
                                  f"refused, nothing changed: {exc}") from None
        self.summary.refreshed += len(rids)

    def revocations_number(self) -> int:
        return 0 if self.revocations is None else self.revocations.number

    def note_revocations(self, doc: bytes) -> None:
        if self.revocations is None:
            return
        try:
            self.revocations.offer(doc)
        except ProtocolError as exc:  # the hub's own list should verify: say so, go on
            log.warning("the hub's technician revocation list is refused: %s", exc)

    def note_clock_offset(self, offset_ms: int) -> None:
        self.state.note_clock_offset(offset_ms)
        # The welcome's time was read against ``wall_ms()`` a moment ago: the same sum is
        # the hub's time now, whatever our own clock says.
        self.hub_time.note(SYNC, offset_ms + wall_ms())

    # A suspected clone (SPEC.md "Clones") --------------------------------------------

    def unacked_batches(self) -> list[tuple[sync.Batch, list[int]]]:
        return [(sync.Batch(seq, prev, self.store.cipher.open_blob(SEAL_LABEL, sealed), sig,
                            lane), entries)
                for seq, prev, lane, entries, sealed, sig in self.state.pending()]

    def next_writes_besides(self, skip: set[int]) -> list[tuple[int, int, bytes]]:
        out = self.store.outbox_batch(self.store.clock(), max_bytes=BATCH_BYTES, besides=skip)
        return [(e.seq, e.lane, e.data) for e in out]

    def held_upto(self) -> int:
        return self.state.held_upto

    def note_held(self, seq: int) -> None:
        if self.state.held_upto == 0:
            log.warning("the hub holds this kiosk's batches for review from batch %d on: "
                        "another kiosk runs with its identity; call a technician", seq)
        self.state.note_held(seq)
        if self.state.alert is None:
            self.state.set_alert(SUSPECTED_CLONE)

    def note_alert(self, code: str, label: int | None, held: bool) -> None:
        if code == CLONE_CLEARED:
            self.state.set_alert(None)
            log.warning("the hub cleared this kiosk's suspected-clone flag")
            return
        if code == DECOMMISSIONED:  # for good: what it writes waits at the hub for a person
            if self.state.alert != code:
                log.warning("the hub decommissioned this kiosk: its writes are quarantined")
                self.state.set_alert(code)
            return
        if label is not None and label != self.store.queue_label:
            self.store.set_queue_label(label)  # durable before the status says it
        if self.state.alert != code:
            log.warning("the hub says: %s (queue label %s%s): call a technician", code,
                        label, ", batches held" if held else "")
            # The other copies' writes carry our node, which our pulls passed over: the
            # hub sends them to a suspected clone, from the start.
            self.state.set("cursor", 0)
            self.state.set_alert(code)

    def queue_label(self) -> int | None:
        return self.store.queue_label if self.state.alert else None

    def note_kiosk_number(self, number: int) -> None:
        if self.store.kiosk_number is None:  # a certificate from before kiosk numbers
            self.store.set_kiosk_number(number)
            log.info("the hub gave this kiosk number %d: new patients get short codes", number)

    def owns(self, writes: list[tuple[bytes, int]]) -> bool:
        return self.store.made_here(writes)

    def note_foreign_adopt(self) -> int:
        count = self.state.note_foreign_adopt()
        log.warning("the hub's batches after ours carry writes this kiosk never made (%d "
                    "times): %s", count, "a card restored from a backup?" if count == 1
                    else "another kiosk runs with this identity")
        return count


class Round:
    """One round over an open session: the rules are ``KioskSync``'s; this gives it the
    kiosk's storage (``KioskLedger``) and the time, turns its errors into ``SyncFailed``
    and ``SyncRefused``, and routes document messages to ``documents``."""

    def __init__(self, store: Store, state: SyncState, ident: Identity,
                 documents: DocumentPush | None = None,
                 ledger: type[KioskLedger] | None = None) -> None:
        """``ledger``: the storage's class, when not ``KioskLedger`` (a relay's)."""
        self.store, self.state, self.ident = store, state, ident
        self.documents = documents
        self.device = ident.cert.device_id
        self.summary = Summary()
        hub_key = ident.cert.hub_ed25519
        self.sync = KioskSync((ledger or KioskLedger)(
                                  store, state, self.summary, hub_key,
                                  None if documents is None else documents.docs),
                              cert=ident.cert.raw, device=self.device, key=ident.ed_key,
                              enrol=ident.enrol, hub_ed25519=hub_key,
                              fleet=KioskFleetKeys(store, ident.x_key))
        self.installed: int | None = None  #: the certificate's serial, once one was issued

    @property
    def done(self) -> bool:
        return self.sync.done and (self.documents is None or self.documents.done)

    def hello(self) -> list[tuple[int, bytes]]:
        return self.sync.hello(wall_ms())

    def on_message(self, data: bytes) -> list[tuple[int, bytes]]:
        msg = messages.decode(data)
        if self.documents is not None and transfer_id(msg) is not None:
            return self.documents.on_message(msg)
        try:
            replies = self.sync.receive(msg, wall_ms())
        except BatchRefused as exc:
            raise SyncFailed(str(exc)) from None
        except RemoteProtocolError as exc:  # a stable point, scope or snapshot refused
            raise SyncFailed(f"the hub's {msg.name} was refused: {exc}") from None
        if self.sync.issued is not None and self.installed is None:
            self._install(self.sync.issued)
        return replies

    def _install(self, doc: bytes) -> None:
        """The certificate the hub issued at the first sync of a kiosk provisioned
        offline: installed (with the fleet key sealed to this kiosk) and audited."""
        from device import audit
        from device.enrol import install

        try:
            cert = install(self.store, doc)
        except StoreError as exc:
            raise SyncFailed(f"the certificate the hub issued was not installed: {exc}") \
                from None
        self.installed = cert.serial
        log.info("enrolled by the hub at the first sync: certificate %d", cert.serial)
        try:
            audit.record(self.store, str(cert.serial), "enrol.certificate", "ok",
                         {"kiosk": cert.device_id, "certificate": cert.serial})
        except Exception:
            log.exception("the enrolment was not audited")

    def documents_out(self, room: Callable[[int], bool],
                      out_of_time: bool = False) -> Iterator[tuple[int, bytes]]:
        """Document messages that may go now, once the push is done; the caller queues
        each before the next is made (``room``: the lane takes ``size`` more bytes).
        Before each, a batch written meanwhile goes first, and the content waits for
        its acknowledgement."""
        docs = self.documents
        if docs is None or not (self.sync.welcomed and self.sync.push_done):
            return
        if out_of_time:
            docs.pause()
        docs.start()
        while docs.ready(room):
            yield from self.sync.push()
            if self.sync.in_flight is not None or (msg := docs.next_message(room)) is None:
                return
            yield msg

    def again(self) -> list[tuple[int, bytes]]:
        """A round on a session kept open, which the hub already welcomed, starts here
        instead of with ``hello``: a pull from the cursor and the next batch."""
        return self.sync.again()


def smoothed_rtt_ms(driver: SessionDriver) -> float | None:
    """The session's smoothed round-trip time (RFC 6298's SRTT) in ms; None before a
    sample (its sender keeps it: no counter of ``stats`` has it)."""
    rtt = getattr(getattr(driver.session, "_tx", None), "rtt", None)
    srtt = getattr(rtt, "srtt", None)
    return None if srtt is None else round(srtt * 1000, 1)


def open_hub_link(url: str, baud: int | None) -> Link:
    try:
        return open_link(url, baud)
    except LinkError as exc:
        raise SyncFailed(str(exc)) from None


def kiosk_driver(ident: Identity, link: Link, *, baud: int | None = None,
                 limit: float = 60.0, keepalive: float = 5.0,
                 kept_open: bool = False,
                 clock: Callable[[], float] = time.monotonic) -> SessionDriver:
    """The kiosk's session driver over ``link``, the hub's key pinned. It may outlive
    a round: ``drive_round`` runs one round over it and leaves its session open.
    ``kept_open``: the session outlives rounds (``device.sync.connection``), so its
    dead timeout is not a round's limit, and outlasts a few keepalives on TCP."""
    dead = 60.0 if link.stream else SERIAL_DEAD_TIMEOUT
    dead = max(dead, 3 * keepalive) if kept_open and link.stream else min(limit, dead)
    config = session_config(stream=link.stream, baud=baud, keepalive=keepalive,
                            dead_timeout=dead,
                            max_message=1 << 20, send_buffer=2 << 20)
    return SessionDriver(initiator=True, config=config, static_key=ident.x_key,
                         remote_static=ident.cert.hub_x25519, link=link, clock=clock)


def run_round(store: Store, state: SyncState, ident: Identity, url: str, *,
              baud: int | None = None, limit: float = 60.0,
              docs: DocumentStore | None = None) -> Summary:
    """One round over a new link to ``url`` and a new session, closed after it;
    raises ``SyncFailed`` (or ``SyncRefused``). ``docs``: see ``drive_round``."""
    link = open_hub_link(url, baud)
    try:
        driver = kiosk_driver(ident, link, baud=baud, limit=limit)
        summary = drive_round(driver, store, state, ident, url=url, limit=limit, docs=docs)
        driver.close("done")
        return summary
    except LinkError as exc:
        raise SyncFailed(str(exc)) from None
    finally:
        link.close()


def drive_round(driver: SessionDriver, store: Store, state: SyncState, ident: Identity, *,
                url: str, limit: float = 60.0, docs: DocumentStore | None = None,
                reopen: Callable[[], Link] | None = None, stall: float = STALL,
                reply_timeout: float = REPLY_TIMEOUT, pending: list[bytes] | None = None,
                ) -> Summary:
    """One round over ``driver``'s session, which it leaves open; on a session already
    connected (kept open) the round starts with a pull and the next batch. Raises
    ``SyncFailed`` (or ``SyncRefused``).

    ``docs``: the kiosk's documents, open for as long as the caller syncs (opening
    them creates and deletes their WAL files, pages an SD card would write each
    round); without it the round opens and closes them itself.

    ``reopen``: when the link breaks, a new one, on which the session resumes and the
    round goes on (nothing acknowledged is sent again); without it the round fails.
    A kept-open link on which the hub said nothing for ``stall`` seconds of the round
    counts as broken (a route or a NAT that dropped it without a word); on a session
    kept open since an earlier round, nothing heard ``reply_timeout`` seconds after
    the round's first message does too (idle links are the ones NATs forget).
    A fresh session (the hub did not know ours) starts the round over from its hello.

    ``pending``: messages the hub sent while no round ran (a ``sync-notify``), taken
    first. Times are the driver's clock."""
    clock = driver.clock
    start = clock()
    erased = store.erased
    own_docs = docs is None
    docs = DocumentStore(store.data, store.cipher) if docs is None else docs
    rnd = Round(store, state, ident, DocumentPush(docs, store))
    rnd.summary.url = url
    before = driver.stats()
    try:
        since = start  #: the round began, or its link was last opened again
        hello = driver.connected
        #: kept open since an earlier round: a first answer is due within reply_timeout
        quick = hello and reply_timeout > 0
        for data in pending or ():
            for lane, msg in rnd.on_message(data):
                if hello:
                    driver.send(lane, msg)
        if hello:  # the hub knows this kiosk from the session's hello: pull and push
            for lane, msg in rnd.again():
                driver.send(lane, msg)
        while not rnd.done:
            now = clock()
            if now - start > limit:
                raise SyncFailed(f"round over {url} took longer than {limit:g} s")
            try:
                quiet = reply_timeout if quick and driver.last_heard < since else stall
                if reopen is not None and now - max(since, driver.last_heard) > quiet:
                    raise LinkError(f"the hub at {url} said nothing for {quiet:g} s")
                events = driver.poll(0.1)
            except LinkError:
                if reopen is None:
                    raise
                events = [LinkClosed()]
            for event in events:
                replies: list[tuple[int, bytes]] = []
                if isinstance(event, Connected) and event.resumed:
                    continue  # the same session on a new link: the round goes on
                if isinstance(event, Connected) and hello:
                    # A fresh session replaced ours (the hub did not know it): the round
                    # starts over from its hello; a batch in flight is sent again from
                    # sync.db, and the hub keeps each write once.
                    log.info("a fresh session over %s: the round starts over", url)
                    rnd = Round(store, state, ident, DocumentPush(docs, store))
                    rnd.summary.url = url
                    replies = rnd.hello()
                elif isinstance(event, Connected):
                    hello = True
                    replies = rnd.hello()
                elif isinstance(event, MessageReceived):
                    replies = rnd.on_message(event.data)
                elif isinstance(event, Closed):
                    raise closed_error(event, url)
                elif isinstance(event, LinkClosed) and reopen is not None:
                    reopen()
                    since, quick = clock(), False
                    break  # what is left of this turn was read from the old link
                elif isinstance(event, LinkClosed):
                    raise SyncFailed(f"the hub at {url} closed the connection")
                for lane, msg in replies:
                    driver.send(lane, msg)
            room = lane_room(driver.session)
            for lane, msg in rnd.documents_out(room, now - start > DOCUMENT_SHARE * limit):
                driver.send(lane, msg)
        driver.flush()
        state.note_synced(wall_ms(), moved=bool(rnd.summary.pushed or rnd.summary.pulled))
        # The welcome told us the hub's time: writes our clock stamped too far ahead of
        # it go out again with fresh stamps next round (the hub drops the originals).
        # Not while batches wait for an ack or are held (a suspected clone): their writes
        # are on the chain already, and only the hub's answer settles them.
        if not state.held_upto and not state.pending():
            rnd.summary.reissued = reissue_ahead(store, wall_ms() + state.clock_offset)
        if rnd.summary.reissued:
            log.warning("%d writes were stamped too far ahead of the hub's clock: issued "
                        "again with the hub's time", rnd.summary.reissued)
    except LinkError as exc:
        raise SyncFailed(str(exc)) from None
    except LocalProtocolError:
        if driver.connected:
            raise
        # The hub closed the session in the same turn that brought a message we
        # answered (a newer connection took the session): the round ends here.
        raise SyncFailed(f"the session over {url} closed under the round") from None
    finally:
        moved = driver.stats()
        rnd.summary.bytes_sent = moved.bytes_sent - before.bytes_sent
        rnd.summary.bytes_received = moved.bytes_received - before.bytes_received
        rnd.summary.frames_sent = moved.frames_sent - before.frames_sent
        rnd.summary.frames_lost = moved.lost_frames - before.lost_frames
        rnd.summary.retransmitted_bytes = moved.retransmitted_bytes - before.retransmitted_bytes
        rnd.summary.seconds = clock() - start
        rnd.summary.rtt_ms = smoothed_rtt_ms(driver)
        rnd.summary.documents = rnd.documents.figures() if rnd.documents else {}
        if store.erased is not erased:  # an erasure merged: sent batches may hold values
            state.drop_sent()
        state.flush()  # acknowledgements and cursor, if they have waited long enough
        if own_docs:
            docs.close()
    return rnd.summary
