"""The hub's role in a sync round (the server), without I/O.

Theory of operation
-------------------
SPEC.md, "Sync"; ``protocol.sync.conversation`` tells how both roles fit.
The hub (``HubSync``) wants the hello first: a certificate it signed, naming
the session's key, of an approved kiosk; a refusal sets ``close``. It reads
the kiosk's record again before every later message and turns a revoked
kiosk away. A batch must follow the hash the hub holds (``_prev_hash``) and
carry a valid signature; the same batch again is acknowledged, not applied
(``duplicate``). Each delta is checked (``check_remote_deltas``): the bad
ones are quarantined, the rest committed, and the ack follows the commit. A
pull returns the deltas after the cursor that are not the kiosk's own, a
page at a time.

A kiosk provisioned offline (SPEC.md "Offline approvals") says hello with its
approval (``enrol``); the hub's ``enrol`` makes it a normal enrolment and the
welcome carries the certificate. An approval already used by another kiosk
enrols nothing: this kiosk is held as a copy is (below), its batches verified
by its request's key.

Clones (SPEC.md, "Clones"): two batches under one sequence, both signed by
the kiosk, mean two kiosks run with one identity. The hub holds the batch
that is not on its chain (``_hold``; never applied), flags the kiosk, and
alerts each copy with a queue label no other copy has (``_alert``). A kiosk
behind the hub is shown the writes after its head (``tail``).

Scopes (SPEC.md "Scopes and garbage collection"): the welcome names the
kiosk's scope and its stable point, signed by the hub's Ed25519 key, and
whether to ``rebase`` (the sums disagreed, the role changed, or the kiosk is
too far behind); see ``HubSync``. A snapshot is cut at one head (``upto``),
whatever the session, and its last page carries the scope's sum there.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol import messages
from protocol.crdt.clock import DEFAULT_MAX_AHEAD_MS
from protocol.crdt.delta import Delta
from protocol.crdt.schema import ERASURE, VERIFIER
from protocol.errors import ProtocolError, RemoteProtocolError
from protocol.sync import batches as sync
from protocol.sync import certificate as sync_cert
from protocol.sync.checks import check_remote_deltas
from protocol.sync.fleet_chain import generation_of
from protocol.sync.paging import PageSplit, packed
from protocol.sync.round_common import (
    CHANGES_LANE,
    CLONE_CLEARED,
    CONTROL_LANE,
    DECOMMISSIONED,
    SUSPECTED_CLONE,
    Reply,
    encode,
)
from protocol.sync.scope import Scope, sign_stable_point, utc_day

#: The most a ``sync-changes`` page carries (deltas' bytes).
CHANGES_BYTES = 256 * 1024
#: The most writes a welcome shows a kiosk behind the hub (``tail``).
TAIL_WRITES = 64
#: A kiosk's states in which the hub lets its sessions in (a decommissioned one: to
#: quarantine what it still sends), and the role that holds every record but audit's.
FULL = "full"
LIVE_STATES = ("approved", DECOMMISSIONED)
#: A kiosk whose cursor is older than this (µs: cursors follow the hub's clock) is told
#: to rebase: a snapshot of its scope costs less than everything since.
STALE_CURSOR_US = 30 * 86_400 * 1_000_000
#: The types only the hub writes: a kiosk's write of one is quarantined (``hub-only``).
_HUB_ONLY = {VERIFIER.number: "verifier", ERASURE.number: "erasure"}


class CheckpointMoved(ProtocolError):
    """The kiosk's checkpoint is not the one the round read: another hub process
    committed a batch of it meanwhile (``HubStorage.commit_batch``'s ``follows``)."""


class KioskRecord(Protocol):
    """What the hub holds of an enrolled kiosk."""

    @property
    def device_id(self) -> str: ...
    @property
    def node(self) -> int: ...
    @property
    def x25519(self) -> bytes: ...
    @property
    def ed25519(self) -> bytes: ...
    @property
    def state(self) -> str: ...
    @property
    def last_seq(self) -> int: ...
    @property
    def last_hash(self) -> bytes: ...
    @property
    def suspected_clone(self) -> int: ...
    @property
    def clone_labels(self) -> int:
        """How many queue labels copies of this kiosk were given."""
    @property
    def clone_mark(self) -> int:
        """How many queue labels copies of this kiosk had been given at the last
        detection: those are stale."""
    @property
    def kiosk_number(self) -> int | None:
        """The kiosk's number (its short patient codes' first part)."""
    @property
    def site(self) -> str: ...
    @property
    def role(self) -> str:
        """Its scope's role (``scope.ROLES``)."""
    @property
    def window_days(self) -> int:
        """A clinician station's window, in days."""
    @property
    def role_since(self) -> int | None:
        """When its role was set (hub time, ms); None: at its enrolment."""
    @property
    def last_seen(self) -> int | None: ...


class HubStorage(Protocol):
    """What the hub's role asks of its storage, and tells it to keep."""

    def device(self, device_id: str) -> KioskRecord | None: ...
    def batch_hash(self, device_id: str, seq: int) -> bytes | None:
        """The hash of the kiosk's committed batch ``seq``."""
    def batch_quarantined(self, device_id: str, seq: int) -> list[int]:
        """The indices quarantined in the kiosk's committed batch ``seq``."""
    def commit_batch(self, device_id: str, seq: int, hash_: bytes,
                     good: list[tuple[Delta, bytes]], bad: list[tuple[str, str, bytes]],
                     now: int, quarantined: list[int], follows: bytes | None = None,
                     ) -> int | None:
        """Keep the batch durably: the good deltas, the bad ones in quarantine
        (code, reason, bytes), and the kiosk's checkpoint moved to it. Returns the
        greatest arrival number the good deltas were given (None: none was new).
        ``follows``: the checkpoint the round saw (batch ``seq - 1``'s hash), checked
        under a lock on the kiosk's row: ``CheckpointMoved`` if it is not the one held,
        nothing written."""
    def erasure_records(self, rids: list[bytes]) -> set[bytes]:
        """Those of ``rids`` that are erasure records the hub holds."""
        ...

    def batch_arrived(self, device_id: str, seq: int) -> int | None:
        """What ``commit_batch`` returned for the kiosk's committed batch ``seq``."""
    def changes_since(self, cursor: int, exclude_node: int | None, max_bytes: int,
                      scope: Scope | None = None, split: PageSplit | None = None,
                      ) -> tuple[list[bytes], int, bool]:
        """Deltas after ``cursor`` not written by ``exclude_node`` (None: all of them),
        of the records in ``scope`` (None: every record): (deltas, cursor, more); a
        group larger than a page over the session's pages (``split``)."""
    def head(self) -> int:
        """The greatest arrival number."""
    def snapshot(self, scope: Scope, cursor: int, upto: int, rids: list[bytes] | None,
                 max_bytes: int) -> tuple[list[bytes], int, bool]:
        """Every delta (any writer's) of the records in ``scope`` (of ``rids`` only, those
        in scope), arrived after ``cursor`` and by ``upto``: (deltas, cursor, more)."""
    def own_node(self) -> int:
        """The hub's own node, which its writes (resolutions, claims) carry."""
    def scope_sums(self, scope: Scope, cursor: int, node: int | None = None,
                   versions: tuple[int, ...] = (2, 1)) -> dict[int, bytes]:
        """The checksums of ``scope`` held with every delta arrived by ``cursor`` and
        every delta of ``node``, by version: 2 ``scope.scope_checksum``, 1
        ``scope.scope_checksum_v1``."""
    def stable_point(self, role: str, site: str) -> int:
        """The smallest cursor every live kiosk of the scope group acknowledged."""
    def version_vector(self) -> dict[int, int]: ...
    def seen(self, device_id: str, now: int, cursor: int | None = None,
             vv: Mapping[Any, Any] | None = None) -> None:
        """The kiosk was here (and holds what arrived by ``cursor``, or ``vv``)."""
    def log(self, device_id: str | None, code: str, detail: str, now: int) -> None: ...
    def is_held(self, device_id: str, hash_: bytes) -> bool:
        """Whether a batch with this hash is held for the kiosk."""
    def held_hashes(self, device_id: str, seq: int) -> list[bytes]:
        """The hashes of the kiosk's held batches ``seq``."""
    def hold_batch(self, device_id: str, batch: sync.Batch, now: int,
                   ) -> tuple[int, bool, bool]:
        """Keep a verified batch off the chain, durably, on the branch of the held batch
        it follows unless that one has a batch under its sequence already: (its branch,
        whether the batch is new, whether its branch is)."""
    def suspect_clone(self, device_id: str, detail: str, now: int) -> None:
        """Flag the kiosk, log ``suspected-clone`` with ``detail``, make its labels stale."""
    def issue_label(self, device_id: str) -> int:
        """A queue label no copy of this kiosk was given before."""
    def writes_since_batch(self, device_id: str, seq: int, node: int, limit: int,
                           ) -> list[tuple[bytes, int]]:
        """The last ``limit`` writes of ``node`` (record id, stamp) that came with the
        kiosk's batch ``seq`` or after it."""
    def technician_revocations(self) -> tuple[int, bytes] | None:
        """The hub's signed revocation list of technicians' certificates and its number;
        None before the hub made one."""


class HubFleet(Protocol):
    """The hub's generations of the fleet key (SPEC.md "Fleet key rotation")."""

    def generation_now(self) -> int:
        """The generation in effect now (another process may have rotated the key)."""

    def chain_for(self, x25519: bytes, generation: int) -> bytes | None:
        """The welcome's ``fleet`` for the kiosk of key ``x25519`` at ``generation``: the
        later keys sealed to it (``fleet_chain.seal_chain``); None if it holds them all."""
    def note_moves(self, node: int, moves: list[list[int]]) -> None:
        """Keep what a kiosk (its ``node``) says of its moves to later generations, before
        its writes that follow are committed."""


@dataclass(frozen=True)
class ApprovalEnrolment:
    """What the hub made of the approval in a hello (SPEC.md "Offline approvals")."""

    device_id: str  #: the kiosk the approval enrolled
    #: Its certificate, for the welcome; None: the approval enrolled another kiosk, and
    #: this one is held as a suspected clone.
    cert: bytes | None
    #: Then: this kiosk's Ed25519 key (its request's), which its held batches verify by.
    held_key: bytes | None = None


#: The hub's enrolment by approval: (the hello's ``enrol``, the session's key, now) ->
#: what it made of it; a ``ProtocolError`` refuses it.
Enroller = Callable[[bytes, bytes, int], ApprovalEnrolment]


class HubSync:
    """The hub's role with one kiosk's session. ``remote_static``: the kiosk's key as
    the session authenticated it. ``close``: set when the kiosk must be turned away.
    ``held``: this session's kiosk is a copy whose batches the hub holds. ``enrol``: how
    the hub enrols a kiosk whose hello presents an approval; None: it does not.

    Scopes: the kiosk is served its scope (its record's role and site, today's
    day of the hub): its pulls and snapshots hold only that scope's records. The
    welcome names the scope, the stable point signed with ``stable_key`` (none
    without it) and whether to ``rebase``: the hello's sum is not the hub's at
    its cursor, its role changed after it was last here, or its cursor is more
    than ``STALE_CURSOR_US`` old. A role changed during a session ends it
    (``rescoped``): the next hello sees it; so does a rotation of the fleet key
    (``rekeyed``). A decommissioned kiosk's sessions are
    let in; every delta of its batches is quarantined (``decommissioned``) and
    acknowledged, and it is served nothing. A kiosk's verifier or erasure record,
    or its write of any type to an erasure record the hub holds, is quarantined
    (``hub-only``): a door kiosk trusts the hub's verifiers alone, and
    only the hub erases a patient."""

    def __init__(self, storage: HubStorage, hub_ed25519: bytes, remote_static: bytes | None,
                 *, max_ahead_ms: int = DEFAULT_MAX_AHEAD_MS,
                 enrol: Enroller | None = None,
                 stable_key: Ed25519PrivateKey | None = None,
                 fleet: HubFleet | None = None) -> None:
        self.storage = storage
        self.fleet = fleet  #: None: a hub that never rotated its fleet key keeps quiet
        self._generation: int | None = None  #: the fleet key's, as the welcome knew it
        self.enrol = enrol
        self.stable_key = stable_key
        self._role: tuple[str, int | None] | None = None  #: the role (and since) welcomed
        #: The key this session's batches verify by when it is not the kiosk's enrolled
        #: one: a second kiosk that presented an approval already used.
        self.batch_key: bytes | None = None
        self.hub_ed25519 = hub_ed25519
        self.remote = remote_static
        self.max_ahead_ms = max_ahead_ms
        self.device: KioskRecord | None = None
        self.close: tuple[str, str] | None = None
        self.rejected = 0
        self.held = False
        self.label: int | None = None  #: the queue label the kiosk holds, as we know it
        self._told: tuple[int | None, bool] | None = None  #: the last alert: (label, held)
        self._flagged = False  #: this session's evidence is logged
        self._split = PageSplit()  #: where a pull is inside a group larger than a page

    def decode(self, data: bytes, now: int) -> messages.Message | None:
        """The message, or None: undecodable, the kiosk is turned away (``close``)."""
        try:
            return messages.decode(data)
        except RemoteProtocolError as exc:
            self._refuse("protocol", f"undecodable message: {exc}", now)
            return None

    def receive_data(self, data: bytes, now: int) -> list[Reply]:
        msg = self.decode(data, now)
        return [] if msg is None else self.receive(msg, now)

    def receive(self, msg: messages.Message, now: int) -> list[Reply]:
        if self.close is not None:
            return []
        if self.device is None:
            if msg.type != sync.HELLO.number:
                return self._refuse("protocol", f"expected sync-hello, got {msg.name}", now)
            return self._hello(msg, now)
        if not self.refresh(now):
            return []
        if msg.type == sync.BATCH.number:
            replies = self._batch(msg, now)
        elif msg.type == sync.PULL.number:
            replies = self._pull(msg, now)
        else:
            self._log("unknown-message", msg.name, now)
            replies = []
        return self._alert(now) + replies

    def refresh(self, now: int) -> bool:
        """Read the kiosk's record again, as before every message after the hello: a
        kiosk revoked (or no longer approved) since is turned away (``close``), and
        is served nothing more. False once turned away."""
        if self.close is not None:
            return False
        assert self.device is not None
        dev = self.storage.device(self.device.device_id)
        if dev is None or dev.state == "revoked":
            self._refuse("revoked", f"kiosk {self.device.device_id} was revoked", now)
            return False
        if dev.state not in LIVE_STATES:
            self._refuse("unapproved", f"kiosk {dev.device_id} is {dev.state}", now)
            return False
        if self._role is not None and (dev.role, dev.role_since) != self._role:
            self._refuse("rescoped", f"kiosk {dev.device_id} is {dev.role} now; its next "
                         "hello is told its scope", now)
            return False
        if (self.fleet is not None and self._generation is not None
                and (generation := self.fleet.generation_now()) > self._generation):
            self._refuse("rekeyed", f"the fleet key rotated to generation {generation}: "
                         "the next hello takes it", now)
            return False
        self.device = dev
        return True

    def _scope(self, dev: KioskRecord, now: int) -> Scope:
        """The kiosk's scope on the hub's day now."""
        return Scope(dev.role, dev.site, utc_day(now), dev.window_days)

    def _scoping(self, dev: KioskRecord, msg: messages.Message, now: int) -> dict[str, Any]:
        """The welcome's ``scope``, ``stable`` and ``rebase`` for the kiosk (after its
        hello's cursor was kept); nothing for a decommissioned kiosk."""
        self._role = (dev.role, dev.role_since)
        if dev.state == DECOMMISSIONED:
            return {}
        scope = self._scope(dev, now)
        cursor = msg.get("cursor")
        rebase = (dev.role_since is not None and (dev.last_seen or 0) < dev.role_since
                  or 0 < cursor < now * 1000 - STALE_CURSOR_US
                  or self._diverged(msg, scope, dev.node))
        stable = None
        if self.stable_key is not None:
            stable = sign_stable_point(self.stable_key, dev.device_id,
                                       self.storage.stable_point(dev.role, dev.site), now)
        return {"scope": scope.to_wire(), "stable": stable, "rebase": rebase or None}

    def _log(self, code: str, detail: str, now: int) -> None:
        self.storage.log(self.device.device_id if self.device else None, code, detail, now)

    def _refuse(self, reason: str, detail: str, now: int) -> list[Reply]:
        self._log(reason, detail, now)
        self.close = (reason, detail)
        return []

    def _enrolled(self, msg: messages.Message, now: int,
                  ) -> tuple[KioskRecord | None, bytes | None]:
        """A hello that presents an approval: the kiosk's record and its certificate (None
        for a second kiosk on one approval, held from now on); (None, None) refused."""
        if self.enrol is None or self.remote is None:
            self._refuse("bad-approval", "this hub enrols no kiosk in a hello", now)
            return None, None
        try:
            made = self.enrol(msg.get("enrol"), self.remote, now)
        except ProtocolError as exc:
            self._refuse("bad-approval", str(exc), now)
            return None, None
        dev = self.storage.device(made.device_id)
        if dev is None:
            self._refuse("unknown-device", f"kiosk {made.device_id} is not enrolled", now)
            return None, None
        if made.held_key is not None:
            self.batch_key, self.held = made.held_key, True
        return dev, made.cert

    def _hello(self, msg: messages.Message, now: int) -> list[Reply]:
        issued = None
        if msg.get("enrol") is not None:  # a kiosk provisioned offline: SPEC.md
            dev, issued = self._enrolled(msg, now)  # "Offline approvals"
            if dev is None:
                return []
            number = None  # its certificate names it
        else:
            try:
                cert = sync_cert.read_certificate(msg.get("cert"), self.hub_ed25519)
            except ProtocolError as exc:
                return self._refuse("bad-certificate", str(exc), now)
            dev = self.storage.device(cert.device_id)
            if dev is None:
                return self._refuse("unknown-device", f"kiosk {cert.device_id} is not "
                                    "enrolled", now)
            if cert.x25519 != self.remote or dev.x25519 != self.remote:
                return self._refuse("wrong-certificate", f"the certificate of kiosk "
                                    f"{cert.device_id} does not match this session's key", now)
            # Its number, for a kiosk whose certificate has none: one enrolled before
            # kiosks were numbered (SPEC.md "Short patient codes").
            number = dev.kiosk_number if cert.kiosk_number is None else None
        if dev.state == "revoked":
            return self._refuse("revoked", f"kiosk {dev.device_id} was revoked", now)
        if dev.state not in LIVE_STATES:
            return self._refuse("unapproved", f"kiosk {dev.device_id} is {dev.state}", now)
        self.device = dev
        self.label = msg.get("label")
        seq, hash_ = msg.get("seq"), msg.get("hash")
        if self.batch_key is not None:  # a second kiosk on one approval: a copy
            self._suspect("a second kiosk presented the approval that enrolled it", now,
                          new_copy=False)
        elif self.storage.is_held(dev.device_id, hash_):
            self.held = True  # a copy the hub knows already
        elif 0 < seq <= dev.last_seq and self.storage.batch_hash(
                dev.device_id, seq) not in (None, hash_):
            self.held = True  # its head is its own batch ``seq``, ours is another
            self._suspect(f"its hello names a batch {seq} that is not the one committed", now,
                          new_copy=False)
        if self.batch_key is None:  # a second kiosk's cursor and vv are not the kiosk's
            self.storage.seen(dev.device_id, now, cursor=max(0, msg.get("cursor")),
                              vv=msg.get("vv"))
        tail = None
        if not self.held and seq < dev.last_seq:  # behind: show what came after its head
            tail = [[rid, stamp] for rid, stamp in self.storage.writes_since_batch(
                dev.device_id, seq + 1, dev.node, TAIL_WRITES)] or None
        # The technicians' revocation list, to a kiosk holding an older one (SPEC.md
        # "Technicians"): signed when it changed, sent once to each kiosk.
        revs = self.storage.technician_revocations()
        newer = revs[1] if revs is not None and revs[0] > (msg.get("revs") or 0) else None
        welcome = (CONTROL_LANE, encode("sync-welcome", time=now,
                                        vv=self.storage.version_vector(),
                                        seq=dev.last_seq, hash=dev.last_hash, tail=tail,
                                        kiosk=number, revs=newer, cert=issued,
                                        fleet=self._fleet_chain(dev, msg, issued),
                                        **self._scoping(dev, msg, now)))
        return [*self._alert(now), welcome]

    def _fleet_chain(self, dev: KioskRecord, msg: messages.Message,
                     issued: bytes | None) -> bytes | None:
        """The welcome's ``fleet``: the later keys of the fleet key, for a kiosk at an older
        generation (its moves kept first). None for a kiosk enrolled by this hello: it
        installs the first key after the welcome, and takes the rest next time."""
        if self.fleet is None or self.batch_key is not None:
            return None
        moves = msg.get("fleet") or []
        if moves:
            self.fleet.note_moves(dev.node, moves)
        chain = None if issued is not None else self.fleet.chain_for(
            dev.x25519, generation_of(moves))
        self._generation = self.fleet.generation_now()
        return chain

    def _suspect(self, detail: str, now: int, *, new_copy: bool) -> None:
        """Evidence of a clone (two batches under one sequence, both the kiosk's), once
        per session: flag the kiosk, log it, and make every queue label given so far
        stale. On a kiosk flagged already, only a copy not seen before (a new held
        branch) counts: a copy whose labelled data folder was copied again."""
        assert self.device is not None
        if self._flagged or self.device.suspected_clone and not new_copy:
            return
        self._flagged = True
        self.storage.suspect_clone(self.device.device_id,
                                   f"{detail} (two kiosks run with this identity?)", now)
        self.device = self.storage.device(self.device.device_id) or self.device

    def _alert(self, now: int) -> list[Reply]:
        """``sync-alert`` to a flagged kiosk: once per session, and again when its
        label went stale (another copy was caught) or its batches began to be held.
        A stale label is replaced by one no copy was given before. A kiosk that still
        shows a label (its hello's) when the flag was cleared is told so, once."""
        dev = self.device
        if dev is None:
            return []
        if dev.state == DECOMMISSIONED:
            if self._told is not None:
                return []
            self._told = (None, False)
            return [(CONTROL_LANE, encode(
                "sync-alert", code=DECOMMISSIONED,
                detail="the hub decommissioned this kiosk: what it sends is quarantined"))]
        if not dev.suspected_clone:
            if self.label is None or self._told is not None:
                return []
            self._told = (self.label, False)  # it still shows the flag a technician cleared
            return [(CONTROL_LANE, encode("sync-alert", code=CLONE_CLEARED))]
        if self.label is None or not dev.clone_mark < self.label <= dev.clone_labels:
            self.label = self.storage.issue_label(dev.device_id)  # none, stale or not ours
        if self._told == (self.label, self.held):
            return []
        self._told = (self.label, self.held)
        detail = ("another kiosk runs with this identity; call a technician"
                  + ("; this kiosk's batches are held for review" if self.held else ""))
        return [(CONTROL_LANE, encode("sync-alert", code=SUSPECTED_CLONE, detail=detail,
                                      label=self.label, held=self.held or None))]

    def _reject(self, seq: int, code: str, detail: str, now: int) -> list[Reply]:
        self.rejected += 1
        self._log(code, f"batch {seq}: {detail}", now)
        return [(CONTROL_LANE, encode("sync-reject", seq=seq, reason=code,
                                      detail=detail[:200]))]

    @staticmethod
    def _ack(seq: int, quarantined: list[int], arrived: int | None) -> Reply:
        return (CONTROL_LANE, encode("sync-ack", seq=seq, quarantined=quarantined or None,
                                     arrived=arrived))

    def _signed(self, seq: int, prevs: list[bytes], msg: messages.Message,
                ) -> sync.Batch | None:
        """The batch as it verifies over the first of ``prevs`` that it does."""
        assert self.device is not None
        for prev in prevs:
            batch = sync.Batch(seq, prev, msg.get("payload"), msg.get("sig"))
            try:
                sync.verify_batch(batch, self.device.device_id,
                                  self.batch_key or self.device.ed25519)
            except RemoteProtocolError:
                continue
            return batch
        return None

    def _batch(self, msg: messages.Message, now: int) -> list[Reply]:
        try:
            return self._batch_once(msg, now)
        except CheckpointMoved:  # another hub process committed for this kiosk: look again
            assert self.device is not None
            self.device = self.storage.device(self.device.device_id) or self.device
            return self._batch_once(msg, now)

    def _batch_once(self, msg: messages.Message, now: int) -> list[Reply]:
        dev = self.device
        assert dev is not None
        seq, given = msg.get("seq"), msg.get("prev")
        if self.fleet is not None and msg.get("fleet") and self.batch_key is None:
            self.fleet.note_moves(dev.node, msg.get("fleet"))
        ours = self._prev_hash(dev, seq)
        if given is None and not self.held and seq == dev.last_seq + 1:
            batch = self._signed(seq, [dev.last_hash], msg)
            if batch is not None:  # the next on the hub's chain: the usual case
                return self._commit(dev, batch, now)
        held = self.storage.held_hashes(dev.device_id, seq - 1)
        if given is not None:
            prevs = [given]
        elif self.held:
            prevs = [*held, *([ours] if ours is not None else [])]
        else:
            prevs = [*([ours] if ours is not None else []), *held]
        batch = self._signed(seq, prevs, msg)
        if batch is None:
            if ours is None and given is None and not held:
                return self._reject(seq, "out-of-chain",
                                    f"expected batch {dev.last_seq + 1} after the last "
                                    "committed", now)
            return self._reject(seq, "forged", "the batch's chain head is not signed by "
                                "this kiosk", now)
        if self.storage.batch_hash(dev.device_id, seq) == batch.hash:
            self._log("duplicate", f"batch {seq} again; acknowledged, not applied", now)
            return [self._ack(seq, self.storage.batch_quarantined(dev.device_id, seq),
                              self.storage.batch_arrived(dev.device_id, seq))]
        if not self.held and seq == dev.last_seq + 1 and batch.prev == dev.last_hash:
            return self._commit(dev, batch, now)
        return self._hold(dev, batch, now)

    def _hold(self, dev: KioskRecord, batch: sync.Batch, now: int) -> list[Reply]:
        """A batch of this kiosk's key that is not on the hub's chain: held, never
        applied. It is evidence of a clone when it contradicts the chain: another
        batch under a committed sequence, or after another batch than the committed."""
        try:
            sync.unpack(batch.payload)
        except RemoteProtocolError as exc:
            return self._reject(batch.seq, exc.code, str(exc), now)
        on_branch = self.storage.is_held(dev.device_id, batch.prev)
        branch, new, new_copy = self.storage.hold_batch(dev.device_id, batch, now)
        self.held = True
        seq = batch.seq
        if seq <= dev.last_seq:
            self._suspect(f"batch {seq} is signed by it and is not the one committed", now,
                          new_copy=new_copy)
        elif not on_branch and self._prev_hash(dev, seq) not in (None, batch.prev):
            self._suspect(f"batch {seq} follows another batch {seq - 1} than the committed",
                          now, new_copy=new_copy)
        elif on_branch and new_copy:  # a second batch after one held: one more copy
            self._suspect(f"batch {seq} is the second held after batch {seq - 1}", now,
                          new_copy=True)
        if new:
            self._log("held", f"batch {seq} held on branch {branch}", now)
        return [(CONTROL_LANE, encode("sync-reject", seq=seq, reason="held",
                                      detail=f"held for review (branch {branch})"))]

    def _commit(self, dev: KioskRecord, batch: sync.Batch, now: int) -> list[Reply]:
        seq = batch.seq
        try:
            deltas = sync.unpack(batch.payload)
        except RemoteProtocolError as exc:
            return self._reject(seq, exc.code, str(exc), now)
        good: list[tuple[Delta, bytes]] = []
        bad: list[tuple[str, str, bytes]] = []
        quarantined: list[int] = []
        checked: list[Delta | RemoteProtocolError]
        if dev.state == DECOMMISSIONED:  # gone: whatever it still sends waits for a person
            checked = [RemoteProtocolError(f"kiosk {dev.device_id} is decommissioned",
                                           DECOMMISSIONED)] * len(deltas)
        else:
            checked = check_remote_deltas(deltas, now, node=dev.node,
                                          max_ahead_ms=self.max_ahead_ms)
            # an erasure record's id, under any type: its facts would name another patient
            erasures = self.storage.erasure_records(
                [d.record_id for d in checked if isinstance(d, Delta)])
            checked = [RemoteProtocolError("only the hub writes "
                                           f"{_HUB_ONLY.get(d.type, 'erasure')} records",
                                           "hub-only")
                       if isinstance(d, Delta) and (d.type in _HUB_ONLY
                                                    or d.record_id in erasures) else d
                       for d in checked]
        for i, (data, got) in enumerate(zip(deltas, checked, strict=True)):
            if isinstance(got, RemoteProtocolError):
                bad.append((got.code, str(got), data))
                quarantined.append(i)
            else:
                good.append((got, data))
        arrived = self.storage.commit_batch(dev.device_id, seq, batch.hash, good, bad, now,
                                            quarantined, follows=batch.prev)
        if bad:
            self._log("quarantined", f"batch {seq}: {len(bad)} deltas ({bad[0][0]})", now)
        self.device = self.storage.device(dev.device_id) or dev
        return [self._ack(seq, quarantined, arrived)]

    def _prev_hash(self, dev: KioskRecord, seq: int) -> bytes | None:
        """The hash batch ``seq`` must follow in this kiosk's chain, as the hub holds
        it; None when ``seq`` is not the next one and no committed batch precedes it."""
        if seq == dev.last_seq + 1:
            return dev.last_hash
        if seq == 1:
            return sync.GENESIS
        if 1 < seq <= dev.last_seq:
            return self.storage.batch_hash(dev.device_id, seq - 1)
        return None

    def _pull(self, msg: messages.Message, now: int) -> list[Reply]:
        dev = self.device
        assert dev is not None
        cursor = max(0, msg.get("cursor"))
        limit = min(max(msg.get("max_bytes") or CHANGES_BYTES, 1024), CHANGES_BYTES)
        if dev.state == DECOMMISSIONED:
            return [(CHANGES_LANE, encode("sync-changes", payload=sync.pack([]),
                                          cursor=cursor, more=False))]
        scope = self._scope(dev, now)
        if msg.get("snapshot") is not None:
            return self._snapshot(msg, scope, limit)
        # A suspected clone's copies all write as its node: each is sent the others'.
        own = None if dev.suspected_clone else dev.node
        place = self._split.copy()

        def page(max_bytes: int) -> tuple[list[bytes], int, bool]:
            self._split = place.copy()
            # full: every record but audit entries, the pull as it always was
            return self.storage.changes_since(cursor, own, max_bytes, split=self._split,
                                              scope=None if scope.role == FULL else scope)
        payload, new, more = packed(page, limit)
        if self.batch_key is None:  # a second kiosk's cursor is not the kiosk's
            self.storage.seen(dev.device_id, now, cursor=cursor)
        # A kept-open session has no other welcome: the last page of each pull carries
        # the stable point as it stands, or the kiosk would collect at its session's start.
        stable = (None if more or self.stable_key is None else sign_stable_point(
            self.stable_key, dev.device_id, self.storage.stable_point(dev.role, dev.site), now))
        return [(CHANGES_LANE, encode("sync-changes", payload=payload, cursor=new,
                                      more=more, stable=stable))]

    def _diverged(self, msg: messages.Message, scope: Scope, node: int) -> bool:
        """Whether the hello's checksum is not the hub's: ``sum2`` when it has one, else
        a kiosk's from before it (``sum``, by ``scope_checksum_v1``), each by its own."""
        version, theirs = (2, msg.get("sum2")) if msg.get("sum2") is not None else (
            1, msg.get("sum"))
        if theirs is None:
            return False
        ours = self.storage.scope_sums(scope, msg.get("cursor"), node, (version,))
        return bool(theirs != ours[version])

    def _snapshot(self, msg: messages.Message, scope: Scope, limit: int) -> list[Reply]:
        """A page of a snapshot: the first is cut at the head now (``upto``), the next
        ones go on from the page before; the last page of a whole-scope one carries the
        scope's sums at ``upto``, and the hub's node (``lost``: a write of its own it does
        not hold is lost, so a kiosk does not wait for it)."""
        asked, upto = msg.get("snapshot"), msg.get("upto")
        cursor = 0 if upto is None else max(0, msg.get("cursor"))
        if upto is None:
            upto = self.storage.head()
        rids = None if asked is True else list(asked)
        payload, new, more = packed(
            lambda max_bytes: self.storage.snapshot(scope, cursor, upto, rids, max_bytes), limit)
        last = rids is None and not more
        sums = self.storage.scope_sums(scope, upto) if last else {}
        return [(CHANGES_LANE, encode("sync-changes", payload=payload, cursor=new,
                                      more=more, snapshot=True, sum=sums.get(1),
                                      sum2=sums.get(2), upto=upto,
                                      lost=self.storage.own_node() if last else None))]
