"""The kiosk's role in a sync round (the client), without I/O.

Theory of operation
-------------------
SPEC.md, "Sync"; ``protocol.sync.conversation`` tells how both roles fit.
The kiosk (``KioskSync``) says hello, then holds the hub's checkpoint of its
chain against its own before anything is sent: ahead of our head, our own
checkpoints were lost (``adopt``); a batch we hold under another hash, the
chains forked (another kiosk runs with our identity: see "Clones" below);
behind a batch the hub acknowledged, the hub was restored from a backup
(``rewind``: later writes are queued again). Then
a pull from the cursor, and one batch in flight at a time: a saved,
unacknowledged batch goes again as it was, else the next writes are signed
as batch ``head + 1`` and saved before they are sent. An ack removes only the
entries of the batch in flight. A ``sync-notify`` (the hub holds changes for
us, pushed to a kept-open session) asks for a pull: at once if the round's
pull is done, else once more after it if its answer stopped short.

A kiosk provisioned offline (SPEC.md "Offline approvals") says hello with
an empty certificate and its approval and enrolment request (``enrol``); the
welcome carries the certificate the hub issued (``issued``).

Clones (SPEC.md, "Clones"): a kiosk whose chain left the hub's is ``forked``:
its batches go with their previous hash, to be held, and it never adopts the
hub's checkpoint. A kiosk behind the hub is shown the writes after its head
(``tail``); finding, a second time, writes it never made there, it is a copy,
and forks.

Scopes (SPEC.md "Scopes and garbage collection"): the kiosk's hello carries
the checksum of the scope it holds (``sum2``) when nothing of its own is
queued or in flight. The welcome's stable point is signed by the hub's
Ed25519 key (the one the kiosk's certificate names): a stable point that does
not verify fails the round before anything is kept, so nothing is collected
by it. ``rebase`` is kept owed by the storage until done: the round's pull becomes
a snapshot of the whole scope, whose pages are staged and handed to the
storage at once with the hub's sum (``rebase``: refused, nothing changes,
when the sum disagrees); the cursor becomes the snapshot's head, and the
pull goes on from there. A round that ends half way through the snapshot
leaves what it took with the storage (``keep_partial``) and the next goes on
from its last page: every page is cut at one head, whatever the session, so
a scope larger than a round can carry (a serial line) is still taken.
After the pull, records whose write set the kiosk must have whole
(``stale_records``) are fetched (``snapshot: [rids]``) and rebuilt
(``replace_records``), each at most once a round.
"""

from __future__ import annotations

from typing import Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol import messages
from protocol.errors import RemoteProtocolError
from protocol.sync import batches as sync
from protocol.sync.round_common import (
    CONTROL_LANE,
    LAST_LANE,
    SUSPECTED_CLONE,
    BatchRefused,
    Reply,
    SnapshotRefused,
    encode,
)
from protocol.sync.scope import Scope, open_stable_point

#: A kiosk that finds writes it never made in the hub's chain after its head this many
#: times is a copy: the first may be its card restored from a backup.
FOREIGN_ADOPTS = 2


class KioskStorage(Protocol):
    """What the kiosk's role asks of its storage, and tells it to keep."""

    def head(self) -> tuple[int, bytes]:
        """The last batch of our chain, saved or adopted: (seq, hash); (0, GENESIS)."""
    def acked_head(self) -> int:
        """The last batch the hub acknowledged (0: none)."""
    def saved_hash(self, seq: int) -> bytes | None:
        """The hash of our batch ``seq``, if we hold it."""
    def cursor(self) -> int:
        """The pull cursor."""
    def version_vector(self) -> dict[int, int]: ...
    def unacked_batch(self) -> tuple[sync.Batch, list[int]] | None:
        """The first saved batch not acknowledged, and its outbox entries."""
    def next_writes(self) -> list[tuple[int, int, bytes]]:
        """The outbox's next entries for a batch: (entry, lane, delta); [] if none."""
    def save_batch(self, batch: sync.Batch, entries: list[int]) -> None:
        """Keep the batch (our new head) before it is first sent."""
    def adopt(self, seq: int, hash_: bytes) -> None:
        """Take the hub's checkpoint as our head: our own record of it was lost."""
    def rewind(self, seq: int, acked: int) -> None:
        """The hub holds our batches up to ``seq`` only (``acked`` it acknowledged):
        forget those after it and queue again every write not queued."""
    def acked(self, seq: int, kept: list[int], quarantined: list[int],
              arrived: int | None) -> None:
        """The hub committed batch ``seq``: ``kept`` entries leave the outbox,
        ``quarantined`` are marked refused by the hub; ``arrived``: the greatest
        arrival number the hub gave the batch's writes (None: it gave none)."""
    def merge(self, deltas: list[bytes], cursor: int) -> None:
        """Merge pulled deltas durably, then keep ``cursor``."""
    def scope_checksum(self) -> bytes | None:
        """The checksum of the scope we hold (``scope.scope_checksum``); None when
        anything of ours is queued or in flight, or no scope was kept yet."""
    def note_scope(self, scope: Scope, stable: int | None) -> None:
        """The welcome's scope and the stable point's cursor (verified), kept."""
    def note_stable(self, stable: int) -> None:
        """A later stable point's cursor (verified) in the scope kept; none kept: ignored."""
    def rebase_owed(self) -> bool:
        """Whether a rebase the hub asked for is not done yet."""
    def partial_snapshot(self) -> tuple[int, int, list[bytes]] | None:
        """A whole-scope snapshot a round left half taken: (upto, the last page's
        cursor, the deltas so far)."""
    def keep_partial(self, partial: tuple[int, int, list[bytes]] | None) -> None:
        """Keep (or forget, None) the whole-scope snapshot taken so far."""
    def note_rebase(self) -> None:
        """The hub asked for a rebase: kept owed, durably, until ``rebase`` is done."""
    def rebase(self, deltas: list[bytes], upto: int, hub_sum: bytes, version: int = 2,
               lost: int | None = None) -> None:
        """Rebuild the scope from the hub's snapshot (cut at ``upto``) and our unsynced
        writes, then keep ``upto`` as the cursor; the rebase is no longer owed. ``lost``:
        the hub's node, whose writes the snapshot lacks are lost (not waited for).
        ``SnapshotRefused`` if the snapshot's checksum (``version`` 2:
        ``scope.scope_checksum``, 1: ``scope.scope_checksum_v1``) is not ``hub_sum``:
        nothing changes."""
    def stale_records(self) -> list[bytes]:
        """Records whose view waits for the hub's whole write set."""
    def replace_records(self, deltas: list[bytes], rids: list[bytes], upto: int | None,
                        ) -> None:
        """The hub's whole write set of ``rids`` (cut at ``upto``): rebuild each from it."""
    def note_clock_offset(self, offset_ms: int) -> None:
        """The hub's clock minus ours."""
    def unacked_batches(self) -> list[tuple[sync.Batch, list[int]]]:
        """Every saved batch not acknowledged, in order, with its outbox entries."""
    def next_writes_besides(self, skip: set[int]) -> list[tuple[int, int, bytes]]:
        """``next_writes``, passing over the entries in ``skip``."""
    def held_upto(self) -> int:
        """Our last batch the hub holds for review (0: none held)."""
    def note_held(self, seq: int) -> None:
        """The hub holds our batch ``seq`` (and those before it) for review."""
    def note_alert(self, code: str, label: int | None, held: bool) -> None:
        """The hub's ``sync-alert``: keep its code (for the status) and the queue label
        (for queue numbers) durably, before the next check-in."""
    def queue_label(self) -> int | None:
        """The queue label the hub gave us, while we are told we are a suspected clone."""
    def note_kiosk_number(self, number: int) -> None:
        """The hub's welcome names our kiosk number: keep it durably if we hold none (a
        certificate from before kiosks were numbered), before the next check-in."""
    def revocations_number(self) -> int:
        """The number of the technicians' revocation list we hold (0: none)."""
    def note_revocations(self, doc: bytes) -> None:
        """The hub's signed revocation list of technicians' certificates, newer than ours:
        keep it if it verifies (a bad one is logged and dropped; sync goes on)."""
    def owns(self, writes: list[tuple[bytes, int]]) -> bool:
        """Whether we made every one of these writes (record id, stamp) ourselves."""
    def note_foreign_adopt(self) -> int:
        """Durably count one more checkpoint over writes we never made; returns the count."""


class KioskFleet(Protocol):
    """The kiosk's generations of the fleet key (SPEC.md "Fleet key rotation")."""

    def moves(self) -> list[list[int]]:
        """Each generation moved to, with our stamp at the move (``fleet_chain``)."""
    def offered(self, sealed: bytes) -> None:
        """The welcome's later keys of the fleet key, sealed to us: kept, and ours from
        now on (one that does not go on from our first key is logged and dropped)."""


class KioskSync:
    """The kiosk's role in one round. ``receive`` raises ``BatchRefused``, or a
    payload's ``BatchError``. ``forked``: our chain left the hub's (a clone), so our
    batches go to be held, with their previous hash."""

    def __init__(self, storage: KioskStorage, *, cert: bytes, device: str,
                 key: Ed25519PrivateKey, enrol: bytes | None = None,
                 hub_ed25519: bytes | None = None, fleet: KioskFleet | None = None) -> None:
        """``enrol``: a kiosk provisioned offline, not enrolled yet (``cert`` empty),
        presents its approval and request (``approval.enrolment``) in its hello; the
        certificate the hub then issues is ``issued``, for the kiosk to install.
        ``hub_ed25519``: the hub's key our certificate names, which signs the stable
        point (None: a welcome that carries one fails the round). ``fleet``: the
        kiosk's generations of the fleet key (None: it takes no later one)."""
        self.storage = storage
        self.fleet = fleet
        self.cert, self.device, self.key, self.enrol = cert, device, key, enrol
        self.hub_ed25519 = hub_ed25519
        self.issued: bytes | None = None
        self.in_flight: tuple[int, list[int]] | None = None  #: batch seq, outbox entries
        self.welcomed = self.push_done = self.pull_done = False
        self.wanted = 0  #: a ``sync-notify``'s cursor that the pull under way may miss
        self.forked = storage.held_upto() > 0
        #: The snapshot being pulled: True, the whole scope; a list, these records.
        self.snapshot: bool | list[bytes] | None = None
        self.staged: list[bytes] = []  #: its pages' deltas so far
        self.upto: int | None = None  #: the hub's head it is cut at (its first page's)
        self.fetched: set[bytes] = set()  #: records whose write sets came this round
        self.rebased = False  #: a snapshot of the whole scope was taken this round

    @property
    def done(self) -> bool:
        return self.welcomed and self.push_done and self.pull_done and self.in_flight is None

    def hello(self, now: int) -> list[Reply]:
        seq, hash_ = self.storage.head()
        return [(CONTROL_LANE, encode(
            "sync-hello", cert=self.cert, vv=self.storage.version_vector(),
            cursor=self.storage.cursor(), seq=seq, hash=hash_, time=now,
            label=self.storage.queue_label(), revs=self.storage.revocations_number() or None,
            enrol=self.enrol, sum2=self.storage.scope_checksum(), fleet=self._moves()))]

    def _moves(self) -> list[list[int]] | None:
        """The hello's and each batch's ``fleet``: None at the first generation."""
        return (self.fleet.moves() or None) if self.fleet is not None else None

    def receive_data(self, data: bytes, now: int) -> list[Reply]:
        return self.receive(messages.decode(data), now)

    def receive(self, msg: messages.Message, now: int) -> list[Reply]:
        """Replies to one message from the hub; other messages than sync's are ignored."""
        if msg.type == sync.WELCOME.number:
            return self._welcome(msg, now)
        if msg.type == sync.ACK.number:
            return self._ack(msg)
        if msg.type == sync.REJECT.number and msg.get("reason") == "held":
            return self._held(msg.get("seq"))
        if msg.type == sync.ALERT.number:
            return self._alerted(msg)
        if msg.type == sync.REJECT.number:
            raise BatchRefused(f"the hub refused batch {msg.get('seq')}: {msg.get('reason')} "
                               f"{msg.get('detail', '')}", msg.get("reason"))
        if msg.type == sync.CHANGES.number:
            return self._changes(msg)
        if msg.type == sync.NOTIFY.number:
            return self.notified(msg.get("cursor"))
        return []

    def notified(self, cursor: int) -> list[Reply]:
        """The hub holds changes for us up to ``cursor`` (``sync-notify``): a pull, unless
        we hold them already or a pull is under way (it pulls again when it ends if its
        answer stopped short of ``cursor``)."""
        if cursor <= self.storage.cursor():
            return []
        if not self.welcomed or not self.pull_done:
            self.wanted = max(self.wanted, cursor)
            return []
        self.pull_done = False
        return [(CONTROL_LANE, encode("sync-pull", cursor=self.storage.cursor()))]

    def _welcome(self, msg: messages.Message, now: int) -> list[Reply]:
        self.welcomed = True
        if msg.get("cert") is not None:
            self.issued = msg.get("cert")
        if msg.get("fleet") is not None and self.fleet is not None:
            self.fleet.offered(msg.get("fleet"))  # before any batch: its writes are newer
        self.storage.note_clock_offset(msg.get("time") - now)
        if msg.get("kiosk") is not None:
            self.storage.note_kiosk_number(msg.get("kiosk"))
        if msg.get("revs") is not None:
            self.storage.note_revocations(msg.get("revs"))
        hub_seq, hub_hash = msg.get("seq"), msg.get("hash")
        seq, _ = self.storage.head()
        if self.forked:
            pass  # our chain left the hub's: its checkpoint is not ours to take or go back to
        elif hub_seq > seq and self._foreign(msg.get("tail")) and (
                self.storage.note_foreign_adopt() >= FOREIGN_ADOPTS):
            self.forked = True  # the hub's batches after ours are not ours, again: a copy
            self.storage.note_alert(SUSPECTED_CLONE, None, True)
        elif hub_seq > seq:
            self.storage.adopt(hub_seq, hub_hash)  # our checkpoints were lost; the hub's stand
        elif hub_seq and self.storage.saved_hash(hub_seq) not in (None, hub_hash):
            self.forked = True  # the hub's batch is not ours: another kiosk runs as us
            self.storage.note_alert(SUSPECTED_CLONE, None, True)
        elif hub_seq < (acked := self.storage.acked_head()):
            self.storage.rewind(hub_seq, acked)  # the hub went back: restored from a backup
        self._scope(msg)
        return self.again()

    def _scope(self, msg: messages.Message) -> None:
        """The welcome's scope and stable point, kept once the stable point verifies
        (``RemoteProtocolError`` else, before anything is kept); its ``rebase`` kept
        owed."""
        if msg.get("scope") is None:
            if msg.get("stable") is not None or msg.get("rebase"):
                raise RemoteProtocolError("the hub's welcome names a stable point or a "
                                          "rebase but no scope", "bad-scope")
            return  # a hub from before scopes: the kiosk holds what it always held
        scope = Scope.from_wire(msg.get("scope"))
        stable = None if msg.get("stable") is None else self._verified(msg.get("stable"))
        self.storage.note_scope(scope, stable)
        if msg.get("rebase"):
            self.storage.note_rebase()

    def _verified(self, doc: bytes) -> int:
        """A stable point's cursor, once it verifies (``RemoteProtocolError`` else)."""
        if self.hub_ed25519 is None:
            raise RemoteProtocolError("the hub's stable point cannot be verified: no "
                                      "hub key", "bad-stable-point")
        return open_stable_point(doc, self.hub_ed25519, self.device)[0]

    def _stable(self, doc: bytes) -> None:
        """A pull's stable point (a kept-open session's rounds have no welcome): kept in
        the scope the welcome named."""
        self.storage.note_stable(self._verified(doc))

    def _foreign(self, tail: object) -> bool:
        """Whether the welcome's ``tail`` names a write we never made. After a power
        cut the batches we lost carried our own writes, which the store kept."""
        if not isinstance(tail, list):
            return False
        writes = [(bytes(w[0]), w[1]) for w in tail if isinstance(w, list) and len(w) == 2
                  and isinstance(w[0], bytes) and type(w[1]) is int]
        return bool(writes) and not self.storage.owns(writes)

    def again(self) -> list[Reply]:
        """What starts a round after the welcome: a pull from the cursor and the next
        batch. On a session kept open, a new round starts here, without a hello: the
        hub's checkpoint was held against our chain at the session's welcome, and
        only this kiosk has moved its chain since."""
        self.welcomed = True
        if self.storage.rebase_owed():
            return [self._snapshot_pull(True, self.storage.partial_snapshot()),
                    *self.push()]
        pull = encode("sync-pull", cursor=self.storage.cursor())
        return [(CONTROL_LANE, pull), *self.push()]

    def push(self) -> list[Reply]:
        """The next batch, if none is in flight and there is one to send."""
        if self.in_flight is not None:
            return []
        if self.forked:
            return self._push_held()
        saved = self.storage.unacked_batch()
        if saved is not None:
            batch, entries = saved
        else:
            writes = self.storage.next_writes()
            if not writes:
                self.push_done = True
                return []
            batch, entries = self._new_batch(writes)
        self.in_flight = (batch.seq, entries)
        # No previous hash on the wire: the hub holds it (SPEC.md, "Sync").
        return [(min(batch.lane, LAST_LANE), encode(
            "sync-batch", seq=batch.seq, payload=batch.payload, sig=batch.sig,
            fleet=self._moves()))]

    def _new_batch(self, writes: list[tuple[int, int, bytes]],
                   ) -> tuple[sync.Batch, list[int]]:
        """The next writes signed as batch ``head + 1``, saved before they are sent."""
        seq, prev = self.storage.head()
        entries = [entry for entry, _, _ in writes]
        batch = sync.make_batch(self.key, self.device, seq + 1, prev,
                                [data for _, _, data in writes],
                                min(lane for _, lane, _ in writes))
        self.storage.save_batch(batch, entries)
        return batch, entries

    def _push_held(self) -> list[Reply]:
        """Our chain left the hub's: each saved batch the hub does not hold yet goes
        with its previous hash, to be held (or acknowledged, if the hub committed it
        before the chains parted); new writes go on our own chain, to be held too.
        None is applied: re-provisioning this kiosk brings its writes in."""
        pending = self.storage.unacked_batches()
        upto = self.storage.held_upto()
        saved = next(((b, e) for b, e in pending if b.seq > upto), None)
        if saved is None:
            writes = self.storage.next_writes_besides({x for _, e in pending for x in e})
            if not writes:
                self.push_done = True
                return []
            saved = self._new_batch(writes)
        batch, entries = saved
        self.in_flight = (batch.seq, entries)
        return [(min(batch.lane, LAST_LANE), encode(
            "sync-batch", seq=batch.seq, payload=batch.payload, sig=batch.sig,
            prev=batch.prev, fleet=self._moves()))]

    def _held(self, seq: int) -> list[Reply]:
        """The hub holds our batch ``seq`` for review (``sync-reject`` ``held``): its
        writes stay queued here; the next batch goes to be held too."""
        if self.in_flight is None or seq != self.in_flight[0]:
            return []
        self.forked = True
        self.storage.note_held(seq)
        self.in_flight = None
        return self.push()

    def _alerted(self, msg: messages.Message) -> list[Reply]:
        """``sync-alert``: kept durably (the status; the queue label, before the next
        check-in numbers with it). ``held``: our batches go to be held from now on."""
        held = bool(msg.get("held"))
        self.storage.note_alert(msg.get("code"), msg.get("label"), held)
        self.forked = self.forked or held
        return []

    def _ack(self, msg: messages.Message) -> list[Reply]:
        if self.in_flight is None or msg.get("seq") != self.in_flight[0]:
            return []  # not for the batch in flight: removes nothing
        seq, entries = self.in_flight
        bad = {entries[i] for i in msg.get("quarantined") or []
               if type(i) is int and 0 <= i < len(entries)}
        arrived = msg.get("arrived")
        self.storage.acked(seq, [e for e in entries if e not in bad], sorted(bad),
                           arrived if type(arrived) is int else None)
        self.in_flight = None
        return self.push()

    def _changes(self, msg: messages.Message) -> list[Reply]:
        deltas = sync.unpack(msg.get("payload"))
        if self.snapshot is not None or msg.get("snapshot"):
            return self._snapshot_page(msg, deltas)
        cursor = msg.get("cursor")
        self.storage.merge(deltas, cursor)
        if msg.get("stable") is not None:
            self._stable(msg.get("stable"))
        if msg.get("more") or cursor < self.wanted:
            if not msg.get("more"):
                self.wanted = 0  # one more pull per notify, whatever the hub counts
            return [(CONTROL_LANE, encode("sync-pull", cursor=cursor))]
        self.wanted = 0
        return self._fetch_stale()

    def _snapshot_pull(self, what: bool | list[bytes],
                       partial: tuple[int, int, list[bytes]] | None = None) -> Reply:
        """The first pull of a snapshot: of the whole scope (True), or of these records'
        write sets; ``partial``: the whole scope's, from where an earlier round left it
        (its pages are cut at one head, whatever the session). The pull is not done
        until its last page is taken."""
        self.pull_done = False
        if partial is not None:
            self.snapshot, (self.upto, cursor, self.staged) = True, partial
            return (CONTROL_LANE, encode("sync-pull", cursor=cursor, snapshot=True,
                                         upto=self.upto))
        self.snapshot, self.staged, self.upto = what, [], None
        return (CONTROL_LANE, encode("sync-pull", cursor=self.storage.cursor(),
                                     snapshot=what))

    def _snapshot_page(self, msg: messages.Message, deltas: list[bytes]) -> list[Reply]:
        """A page of the snapshot under way: staged; the last one hands them all over
        (the whole scope: with the hub's sum, and the cursor becomes its head)."""
        if self.snapshot is None or not msg.get("snapshot"):
            wrong = "a snapshot not asked for" if self.snapshot is None else "no snapshot page"
            self.snapshot, self.staged = None, []
            raise SnapshotRefused(f"the hub's changes do not answer the pull: {wrong}")
        if self.upto is None:
            self.upto = msg.get("upto")
            if self.snapshot is True and (type(self.upto) is not int or self.upto < 0):
                raise SnapshotRefused("the snapshot's first page names no head (upto)")
        self.staged.extend(deltas)
        what, upto = self.snapshot, self.upto
        if msg.get("more"):
            if what is True and upto is not None:  # a round that fails goes on from here
                self.storage.keep_partial((upto, msg.get("cursor"), self.staged))
            return [(CONTROL_LANE, encode("sync-pull", cursor=msg.get("cursor"),
                                          snapshot=what, upto=upto))]
        staged, self.snapshot, self.staged, self.upto = self.staged, None, [], None
        if what is True:
            self.storage.keep_partial(None)  # taken or refused: the next starts afresh
            # A hub before scope_checksum sends only the v1 sum: checked by that one.
            hub_sum, version = msg.get("sum2"), 2
            if hub_sum is None:
                hub_sum, version = msg.get("sum"), 1
            if not isinstance(hub_sum, bytes) or upto is None:
                raise SnapshotRefused("the snapshot's last page carries no checksum")
            self.storage.rebase(staged, upto, hub_sum, version, msg.get("lost"))
            self.rebased = True
            # What the hub took after the snapshot's head follows as changes.
            return [(CONTROL_LANE, encode("sync-pull", cursor=self.storage.cursor()))]
        assert isinstance(what, list)
        self.storage.replace_records(staged, what, upto)
        return self._fetch_stale()

    def _fetch_stale(self) -> list[Reply]:
        """After the pull: the write sets of the records that wait for them, each once a
        round (a record still stale after its own is left for the next)."""
        rids = [rid for rid in self.storage.stale_records() if rid not in self.fetched]
        if not rids:
            self.pull_done = True
            return []
        rids = rids[:sync.MAX_SNAPSHOT_RECORDS]
        self.fetched.update(rids)
        return [self._snapshot_pull(rids)]
