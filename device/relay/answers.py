"""``haven-kiosk relay import DIR``: the hub's answers, fed to the kiosk's sync role.

Theory of operation
-------------------
Each answer (one or more pieces, for one bundle this kiosk wrote) holds the
hub's replies in the order a live round gets them: the welcome (with the
technicians' revocation list, the certificate of a kiosk enrolled by its
approval, the scope), acks and alerts, then the changes of the kiosk's scope
since its cursor. They go through ``Round`` as a session's would, so acks
leave the outbox and pulled deltas are merged by the same code, once:

* an answer is applied whole or not at all: all its pieces, in order, or
  none (a piece missing: reported, left on the stick for the next import);
* answers go in the order of the bundles they answer; one applied already (a
  copy, a replay: ``ReplayWindow``) or overtaken by live sync (``overtaken``)
  is reported and changes nothing;
* a file that does not open with this kiosk's key is another kiosk's (or the
  hub's own, still to be read): passed over, counted;
* an applied answer's files are removed from the stick.

Every problem is one line in ``Imported.problems``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from device.enrol import Identity
from device.exc import DeviceError
from device.relay.ledger import RelayLedger, down_window, keep_down_window, overtaken
from device.store import Store
from device.sync.engine import Round
from device.sync.state import SyncState
from protocol import messages
from protocol.driver import relay_stick
from protocol.driver.wall_clock import wall_ms
from protocol.errors import ProtocolError
from protocol.sync import batches as sync
from protocol.sync.relay import DOWN, HEAD, Bundle, RelayError, direction_of, open_bundle, verify


@dataclass
class Imported:
    answers: int = 0  #: answers applied
    acked: int = 0  #: batches the hub acknowledged in them
    pulled: int = 0  #: deltas merged
    rebased: int = 0  #: deltas of a snapshot of the scope the kiosk was rebased on
    others: int = 0  #: files for the hub or other kiosks, passed over
    problems: list[str] = field(default_factory=list)


def import_answers(store: Store, state: SyncState, ident: Identity,
                   directory: Path) -> Imported:
    out = Imported()
    groups = _opened(ident, directory, out)
    window = down_window(state)
    for answers, first in sorted(groups):
        got = groups[answers, first]
        paths = [p for _, p in got]
        try:
            for b, _ in got:
                window.check(b.seq)
        except RelayError:
            out.problems.append(f"the answer to bundle {answers} was applied already (a "
                                "copy or a replay): nothing changed; removed")
            _remove(paths, out)
            continue
        pieces = {b.piece: b for b, _ in got}
        want = got[0][0].pieces
        if sorted(pieces) != list(range(1, want + 1)):
            if any(a == answers and f > first for a, f in groups):
                out.problems.append(f"an incomplete answer to bundle {answers}, written "
                                    "again since: removed")
                _remove(paths, out)
                continue
            missing = sorted(set(range(1, want + 1)) - set(pieces))
            out.problems.append(f"the answer to bundle {answers} lacks piece(s) {missing} "
                                f"of {want}: nothing of it applied; bring the rest")
            continue
        msgs = [m for i in range(1, want + 1) for m in pieces[i].messages]
        try:
            stale = _overtaken(state, answers, msgs)
        except ProtocolError as exc:  # signed by the hub, yet not sync messages
            out.problems.append(f"the answer to bundle {answers} was refused: {exc}")
            continue
        if stale:
            out.problems.append(f"the answer to bundle {answers} was overtaken (live sync or "
                                "a later answer brought more): nothing changed; removed")
        else:
            _apply(store, state, ident, answers, msgs, out)
        for b in pieces.values():
            window.accept(b.seq)
        keep_down_window(state, window)
        _remove(paths, out)
    return out


def _opened(ident: Identity, directory: Path,
            out: Imported) -> dict[tuple[int, int], list[tuple[Bundle, Path]]]:
    """This kiosk's answers on the stick, by the bundle they answer and their first
    piece's sequence (an answer the hub wrote again, after a stick that filled, is
    another), one copy of each piece; the other copies removed."""
    files, parts, foreign = relay_stick.listing(directory)
    out.problems += [f"{p.name}: half-written (a write was cut): ignored" for p in parts]
    out.problems += [f"{p.name}: not a relay file: ignored" for p in foreign]
    groups: dict[tuple[int, int], list[tuple[Bundle, Path]]] = {}
    seen: set[int] = set()
    cert = ident.cert
    for path in files:
        direction = direction_of(relay_stick.peek(path, HEAD))
        if direction == DOWN:
            try:
                bundle, sig = open_bundle(relay_stick.read(path), DOWN, ident.x_key)
                verify(bundle, sig, cert.hub_ed25519)
                if bundle.device != cert.device_id or bundle.hub_x25519 != cert.hub_x25519:
                    raise RelayError("made for another kiosk or hub", "elsewhere")
            except RelayError as exc:
                if exc.code == "unopened":
                    out.others += 1  # another kiosk's (a damaged one cannot be told apart)
                else:
                    out.problems.append(f"{path.name}: refused: {exc}")
                continue
            if bundle.seq in seen:
                out.problems.append(f"{path.name}: a second copy of answer piece "
                                    f"{bundle.seq}: removed")
                _remove([path], out)
                continue
            seen.add(bundle.seq)
            first = bundle.seq - bundle.piece + 1
            groups.setdefault((bundle.answers, first), []).append((bundle, path))
        elif direction is None:
            out.problems.append(f"{path.name}: not a relay file: ignored")
        else:
            out.others += 1
    return groups


def _overtaken(state: SyncState, answers: int, msgs: list[bytes]) -> bool:
    """Whether the answer's welcome names an older checkpoint than ours, or its changes
    end before our cursor (``ledger.overtaken``)."""
    decoded = [messages.decode(m) for m in msgs]
    welcome = next((m for m in decoded if m.type == sync.WELCOME.number), None)
    if welcome is not None and overtaken(state, answers, welcome.get("seq")):
        return True
    pages = [m for m in decoded if m.type == sync.CHANGES.number and not m.get("snapshot")]
    return bool(pages) and pages[-1].get("cursor") < state.cursor


def _apply(store: Store, state: SyncState, ident: Identity, answers: int,
           msgs: list[bytes], out: Imported) -> None:
    rnd = Round(store, state, ident, ledger=RelayLedger)
    asked: set[bytes] | None = None  #: the records whose write sets the role asks for
    named: set[bytes] | None = None  #: those whose write sets follow, as the hub names them
    try:
        for data in msgs:
            msg = messages.decode(data)
            if msg.type == sync.PULL.number:
                named = set(msg.get("snapshot"))
                continue
            if named is not None and not (asked is not None and asked <= named):
                continue  # not what the role asks for: it asks again on the next trip
            asked = _asked(rnd.on_message(data), asked)
    except (DeviceError, ProtocolError) as exc:
        out.problems.append(f"the answer to bundle {answers} stopped: {exc} (what came "
                            "before it was kept)")
    state.note_synced(wall_ms(), True)
    state.flush(force=True)
    out.answers += 1
    out.acked += rnd.summary.batches
    out.pulled += rnd.summary.pulled
    out.rebased += rnd.summary.rebased


def _asked(replies: list[tuple[int, bytes]], asked: set[bytes] | None) -> set[bytes] | None:
    """The records whose write sets the role's replies ask for (it asks once its pull
    ended: ``KioskSync._fetch_stale``), else what it asked before."""
    for _, data in replies:
        msg = messages.decode(data)
        if msg.type == sync.PULL.number and isinstance(msg.get("snapshot"), list):
            return set(msg.get("snapshot"))
    return asked


def _remove(paths: list[Path], out: Imported) -> None:
    for path in paths:
        try:
            relay_stick.remove(path)
        except relay_stick.StickError as exc:
            out.problems.append(f"{exc} (applied; left on the stick, harmless)")
