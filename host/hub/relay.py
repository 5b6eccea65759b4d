"""``haven hub relay import DIR``: kiosks' relay bundles applied, answers written back.

Theory of operation
-------------------
SPEC.md "Relay bundles". Each bundle sealed to this hub is opened, its
signature checked against the kiosk's enrolled key (or, for a kiosk's first
sync by an offline approval, its request's key), and its sequence against
the kiosk's ``ReplayWindow`` (hub.db meta ``relay:<kiosk>``). Its messages
then go to a ``HubPeer`` as a session's would, the kiosk's key standing for
the session's: the hello (certificate, revocations, scope, enrolment), the
batches (each committed once: the chain acknowledges a batch it holds
without applying it again, and a batch after a gap, whose piece is missing,
waits for the next trip), then the pull, whose pages the hub goes on asking
for itself (``_pull``) as the kiosk would. The replies are the answer,
control messages first (welcome, acks, alerts), then the pages; cut into
pieces of at most ``PIECE_BYTES``, each sealed to the kiosk and signed by
the hub, the welcome's time being the hub-signed time.

Order: the stick is checked writable before anything is applied; an answer
is written (whole, read back) before the kiosk's bundle is marked applied
and removed. A stick pulled out or full in between leaves the bundle there:
imported again, its batches are acknowledged, not applied, and the answer
is written again. A replayed, duplicated or too old bundle is reported and
changes nothing; one that does not open, is not signed by its kiosk or names
another hub is refused. Every problem is one line of ``Imported.problems``.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from host.hub.hub import Hub
from host.hub.peer import HubPeer
from protocol import messages
from protocol.crdt.delta import Delta, decode_many
from protocol.driver import relay_stick
from protocol.driver.wall_clock import wall_ms
from protocol.errors import ProtocolError
from protocol.sync import approval as sync_approval
from protocol.sync import batches as sync
from protocol.sync import certificate as sync_cert
from protocol.sync.relay import (
    DOWN,
    HEAD,
    PIECE_BYTES,
    UP,
    Bundle,
    RelayError,
    ReplayWindow,
    direction_of,
    message_bytes,
    open_bundle,
    seal_bundle,
    verify,
)
from protocol.sync.round_common import encode

META = "relay:"
#: The most pages one pull of an answer carries (the next trip goes on from there).
MAX_PAGES = 4096


@dataclass
class Imported:
    bundles: int = 0  #: kiosks' bundles applied
    batches: int = 0  #: batches in them (acknowledged, applied once)
    answers: list[Path] = field(default_factory=list)
    bytes: int = 0  #: answers' bytes on the stick, padding included
    padding: int = 0
    others: int = 0  #: answers still waiting for their kiosks, passed over
    problems: list[str] = field(default_factory=list)


@dataclass
class _Kiosk:
    """What a bundle is checked with: the kiosk's keys, as enrolled or requested."""

    ed25519: bytes
    x25519: bytes


def import_dir(hub: Hub, directory: Path, *, clock: Callable[[], int] = wall_ms,
               piece_bytes: int = PIECE_BYTES) -> Imported:
    """Apply the kiosks' bundles in ``directory`` and write their answers there.
    ``StickError``: the stick cannot be written (nothing applied) or failed half way
    (what was applied stays applied, its bundle stays to be imported again)."""
    relay_stick.writable(directory)
    out = Imported()
    found = _opened(hub, directory, out)
    for bundle, path, kiosk in sorted(found, key=lambda f: (f[0].device, f[0].seq)):
        window = _window(hub, bundle.device)
        try:
            window.check(bundle.seq)
        except RelayError as exc:
            out.problems.append(f"{path.name}: kiosk {bundle.device}: {exc}: nothing "
                                "changed; removed")
            relay_stick.remove(path)
            continue
        if bundle.seq < window.top:
            out.problems.append(f"{path.name}: kiosk {bundle.device}: bundle {bundle.seq} "
                                f"came after bundle {window.top}: its batches the hub holds "
                                "are acknowledged again, not applied")
        try:
            _apply(hub, bundle, path, kiosk, out, clock, piece_bytes)
        except relay_stick.StickError:
            raise
        except ProtocolError as exc:  # signed by the kiosk, yet not sync messages
            out.problems.append(f"{path.name}: kiosk {bundle.device}: bundle {bundle.seq} "
                                f"refused: {exc}")
    return out


def _opened(hub: Hub, directory: Path,
            out: Imported) -> list[tuple[Bundle, Path, _Kiosk]]:
    files, parts, foreign = relay_stick.listing(directory)
    out.problems += [f"{p.name}: half-written (a write was cut): ignored" for p in parts]
    out.problems += [f"{p.name}: not a relay file: ignored" for p in foreign]
    found = []
    seen: set[tuple[str, int]] = set()
    for path in files:
        direction = direction_of(relay_stick.peek(path, HEAD))
        if direction == DOWN:
            out.others += 1
            continue
        if direction is None:
            out.problems.append(f"{path.name}: not a relay file: ignored")
            continue
        try:
            bundle, sig = open_bundle(relay_stick.read(path), UP, hub.x_key)
            kiosk = _kiosk_of(hub, bundle)
            verify(bundle, sig, kiosk.ed25519)
            if bundle.hub_x25519 != hub.x_public:
                raise RelayError("made for another hub", "elsewhere")
        except RelayError as exc:
            if exc.code == "unopened":
                exc = RelayError("made for another hub, or truncated or altered on the way",
                                 exc.code)
            out.problems.append(f"{path.name}: refused: {exc}")
            continue
        if (bundle.device, bundle.seq) in seen:
            out.problems.append(f"{path.name}: kiosk {bundle.device}: a second copy of "
                                f"bundle {bundle.seq}: nothing changed; removed")
            relay_stick.remove(path)
            continue
        seen.add((bundle.device, bundle.seq))
        found.append((bundle, path, kiosk))
    return found


def _kiosk_of(hub: Hub, bundle: Bundle) -> _Kiosk:
    """The keys the kiosk's bundle is checked with: its enrolled ones; for a kiosk not
    enrolled yet, its hello's enrolment request's (the approval is checked by the hub's
    role, as live)."""
    dev = hub.store.device(bundle.device)
    if dev is not None:
        if dev.state == "revoked":
            raise RelayError(f"kiosk {bundle.device} was revoked", "revoked")
        return _Kiosk(dev.ed25519, dev.x25519)
    try:
        hello = messages.decode(bundle.messages[0])
        if hello.type != sync.HELLO.number or hello.get("enrol") is None:
            raise RelayError(f"kiosk {bundle.device} is not enrolled here", "unknown-device")
        _, request = sync_approval.read_enrolment(hello.get("enrol"))
        req = sync_cert.read_request(request)
    except (ProtocolError, IndexError) as exc:
        raise RelayError(f"kiosk {bundle.device}: {exc}", "unknown-device") from None
    return _Kiosk(req.ed25519, req.x25519)


def _window(hub: Hub, device: str) -> ReplayWindow:
    held = json.loads(hub.store.get_meta(META + device) or "{}")
    return ReplayWindow.from_state(held.get("up"))


def _next_down(hub: Hub, device: str, count: int) -> int:
    """The first of ``count`` sequences for answers to ``device``, kept before use."""
    held = json.loads(hub.store.get_meta(META + device) or "{}")
    first = int(held.get("down", 0)) + 1
    hub.store.set_meta(META + device, json.dumps({**held, "down": first + count - 1}))
    return first


def _applied(hub: Hub, device: str, seq: int) -> None:
    held = json.loads(hub.store.get_meta(META + device) or "{}")
    window = ReplayWindow.from_state(held.get("up"))
    window.accept(seq)
    hub.store.set_meta(META + device, json.dumps({**held, "up": window.state()}))


def _apply(hub: Hub, bundle: Bundle, path: Path, kiosk: _Kiosk, out: Imported,
           clock: Callable[[], int], piece_bytes: int) -> None:
    peer = HubPeer(hub.store, hub.ed_public, kiosk.x25519, clock,
                   enrol=hub.enroll_by_approval, stable_key=hub.ed_key,
                   after_batch=hub.after_batch, fleet=hub.fleet)
    control, pages, batches = _replies(peer, bundle.messages)
    if peer.sync.close is not None:
        reason, detail = peer.sync.close
        out.problems.append(f"{path.name}: kiosk {bundle.device} refused ({reason}: "
                            f"{detail}): nothing applied")
        return
    pieces = _pieces([*control, *pages], piece_bytes)
    first = _next_down(hub, bundle.device, len(pieces))
    now = clock()
    written: list[Path] = []
    try:
        for i, piece in enumerate(pieces):
            answer = Bundle(DOWN, bundle.device, hub.x_public, first + i, now, piece,
                            bundle.seq, i + 1, len(pieces))
            data, pad = seal_bundle(answer, hub.ed_key, kiosk.x25519)
            written.append(relay_stick.write(path.parent, data))
            out.bytes += len(data)
            out.padding += pad
    except relay_stick.StickError:
        for done in written:  # an answer is whole or not there (the kiosk checks too)
            with contextlib.suppress(relay_stick.StickError):
                relay_stick.remove(done)
        raise
    out.answers += written
    _applied(hub, bundle.device, bundle.seq)
    relay_stick.remove(path)
    out.bundles += 1
    out.batches += batches


def _replies(peer: HubPeer, msgs: list[bytes]) -> tuple[list[bytes], list[bytes], int]:
    """The hub's role fed the bundle's messages: (control replies, pages, batches fed).
    Batches go before the pull, so the pages carry what they led the hub to write."""
    decoded = [(m, messages.decode(m)) for m in msgs]
    control: list[bytes] = []
    fed: list[messages.Message] = []
    hello = [m for m, d in decoded if d.type == sync.HELLO.number][:1]
    for data in hello:
        control += [r for _, r in peer.on_message(data)]
    if peer.sync.device is None:
        return control, [], 0
    for data, msg in decoded:
        if msg.type != sync.BATCH.number:
            continue
        dev = peer.sync.device
        if msg.get("seq") > dev.last_seq + 1 and not peer.sync.held:
            break  # a piece before it is missing: it waits for the next trip
        control += [r for _, r in peer.on_message(data)]
        fed.append(msg)
    pulls = [d for _, d in decoded if d.type == sync.PULL.number]
    pull = next((d for d in pulls if not isinstance(d.get("snapshot"), list)), None)
    if pull is None or peer.sync.close is not None:
        return control, [], len(fed)
    snapshot = True if _rebase_asked(control) or pull.get("snapshot") is True else None
    pages = _pull(peer, pull.get("cursor"), snapshot)
    stale = _write_sets_owed(fed, pages, [d for d in pulls if d is not pull])
    if stale and peer.sync.close is None:
        ask = encode("sync-pull", cursor=pull.get("cursor"), snapshot=stale)
        pages += [ask, *_pull(peer, pull.get("cursor"), stale)]
    return control, pages, len(fed)


def _write_sets_owed(batches: list[messages.Message], pages: list[bytes],
                     asked: list[messages.Message]) -> list[bytes]:
    """The records whose whole write set the kiosk will ask for after the pages (live, it
    asks at once: ``KioskSync._fetch_stale``): those the pages change that its batches
    wrote too (a view it cannot extend: a conflict), and those it asked for already.
    They follow the pages, after a copy of their pull that names them, for the kiosk
    to check that they cover what it asks (``device.relay.answers``)."""
    wrote = _rids([sync.unpack(m.get("payload")) for m in batches])
    changed = _rids([sync.unpack(m.get("payload")) for m in map(messages.decode, pages)
                     if m.type == sync.CHANGES.number and not m.get("snapshot")])
    owed = dict.fromkeys(rid for m in asked for rid in m.get("snapshot"))
    owed.update(dict.fromkeys(sorted(wrote & changed)))
    return list(owed)[:sync.MAX_SNAPSHOT_RECORDS]


def _rids(payloads: list[list[bytes]]) -> set[bytes]:
    return {d.record_id for deltas in payloads for d in decode_many(deltas) if isinstance(d, Delta)}


def _rebase_asked(control: list[bytes]) -> bool:
    welcome = messages.decode(control[0]) if control else None
    return welcome is not None and welcome.type == sync.WELCOME.number and bool(
        welcome.get("rebase"))


def _pull(peer: HubPeer, cursor: int, snapshot: bool | list[bytes] | None) -> list[bytes]:
    """Every page of a pull, asked for as the kiosk asks (``KioskSync``): the changes
    since ``cursor``, a snapshot of the whole scope (True) or these records' write sets."""
    ask = encode("sync-pull", cursor=cursor, snapshot=snapshot)
    pages: list[bytes] = []
    for _ in range(MAX_PAGES):
        got = [r for _, r in peer.on_message(ask)]
        pages += got
        page = next((m for m in map(messages.decode, got) if m.type == sync.CHANGES.number),
                    None)
        if page is None or not page.get("more"):
            break
        ask = encode("sync-pull", cursor=page.get("cursor"), snapshot=snapshot,
                     upto=page.get("upto") if snapshot is not None else None)
    return pages


def _pieces(msgs: list[bytes], piece_bytes: int) -> list[list[bytes]]:
    pieces: list[list[bytes]] = [[]]
    for msg in msgs:
        if pieces[-1] and message_bytes([*pieces[-1], msg]) > piece_bytes:
            pieces.append([])
        pieces[-1].append(msg)
    return pieces
