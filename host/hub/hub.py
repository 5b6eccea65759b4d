"""The hub's data directory: keys, store, enrolment, state and review.

Theory of operation
-------------------
``init_hub`` creates an owner-only directory holding the hub's X25519 key
(its session identity), its Ed25519 key (it signs kiosk certificates), the
fleet's patient-id key and ``hub.db`` (``storage.HubStore``). ``Hub``
opens it. Enrolment checks the kiosk's signed request, gives the kiosk the
first letter free at its site when the request leaves it to the hub (A to
Z: a queue number is a letter and three digits, and no clinic has 26 kiosks),
refuses a letter asked for that is taken there (or reserved by an offline
approval), records the kiosk with a kiosk number no kiosk
had before (its short patient codes' first part; the same kiosk enrolling
again with its keys keeps it) and issues its certificate
(``protocol.sync.certificate``). The merged state is computed by the reference
merge (``protocol.crdt.record``) over every delta the hub holds, so
``dump`` prints the same canonical JSON as a kiosk holding the same deltas.
Document content the kiosks sent lives in ``documents/`` (``documents.py``);
``status`` counts what is held whole.
A resolution is a delta written by the hub's own node and HLC, pulled by
every kiosk like any other.
Batches held from a suspected clone (``storage``, SPEC.md "Clones") are
listed with the writes they carry, decoded for review (``held_batches``):
they are never applied; re-provisioning the copy brings its writes in anew.
``approve`` issues offline approvals (``protocol.sync.approval``), each with
a letter, a node and a kiosk number reserved for it (``storage``);
``enroll_by_approval`` makes one a normal enrolment at the kiosk's first
sync, and holds a second kiosk on a used approval as a suspected clone.
``history`` lists one record's writes with the kiosk that made each: who wrote
what (a check-in called, seen, its identity confirmed). Technicians' actions
are another matter, the kiosks' signed audit chains (``audit``).
"""

from __future__ import annotations

import os
import secrets
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from host.errors import HavenError, UsageError
from host.hub import alerts, claims, erasure, fleet_rotation, verifiers
from host.hub.at_rest import STORE_KEY, create_provider, default_provider
from host.hub.database import is_url
from host.hub.document_inbox import DOCUMENTS_DIR
from host.hub.sealed_documents import SealedChunks, held, owner_only, reseal_files
from host.hub.storage import Device, HubStore, Op
from protocol.crdt.clock import HLC
from protocol.crdt.delta import Delta, decode, encode
from protocol.crdt.record import RecordLog, RecordView, canonical_json, conflict_json
from protocol.crdt.schema import TYPES, field_name, parse_assignments, type_name
from protocol.crdt.writes import build_resolve
from protocol.driver.errors import SecretFileError, SecretMissing
from protocol.driver.secret_files import read_secret, write_secret
from protocol.driver.wall_clock import cursor_text, timed, wall_ms
from protocol.errors import ProtocolError
from protocol.sync import approval as sync_approval
from protocol.sync import batches as sync
from protocol.sync import certificate as sync_cert
from protocol.sync.approval import LETTERS
from protocol.sync.conversation import DECOMMISSIONED, ApprovalEnrolment
from protocol.sync.fleet_chain import generation_of
from protocol.sync.scope import DEFAULT_WINDOW_DAYS, MAX_WINDOW_DAYS, ScopeError, parse_role

X_KEY, ED_KEY, FLEET_KEY, DB = "hub_x25519.key", "hub_ed25519.key", "fleet.key", "hub.db"
#: The hub's database when it is not ``hub.db``: a PostgreSQL URL, in an owner-only file
#: (it may hold a password). ``haven hub init --db URL`` writes it.
DATABASE_URL = "database.url"
#: The database ``haven hub init`` makes the hub's when ``--db`` is not given.
DATABASE_ENV = "HAVEN_HUB_DATABASE"
#: The hub's secrets: what ``haven hub keys backup`` saves and ``keys restore`` brings back
#: (``host.hub.key_backup``); never in a data backup (``host.hub.backup``).
SECRET_FILES = (X_KEY, ED_KEY, FLEET_KEY, STORE_KEY)  # the last: the key of the data at rest
#: ``meta`` key: the hub's id (its Ed25519 public key, hex) the database belongs to.
HUB_ID = "hub_id"
APPROVED, REVOKED = "approved", "revoked"


def _read_secret(path: Path) -> bytes:
    try:
        return read_secret(path, "hub key", 32)
    except SecretMissing:
        if has_database(path.parent):  # a hub's data without its keys: restored?
            raise UsageError(f"{path} is missing: bring this hub's keys back with haven hub "
                             f"keys restore --data {path.parent} --from KEY_BACKUP") from None
        raise UsageError(f"{path} is missing; run: haven hub init --data {path.parent}") from None
    except SecretFileError as exc:
        raise UsageError(str(exc)) from None


def _role(text: str, window_days: int | None) -> tuple[str, int]:
    """A role and window from the command line; ``UsageError`` saying what is wrong."""
    try:
        role = parse_role(text)
    except ScopeError as exc:
        raise UsageError(str(exc)) from None
    if window_days is None:
        return role, DEFAULT_WINDOW_DAYS
    if role != "clinician":
        raise UsageError(f"--window goes with the clinician role, not {role}: a {role} "
                         "kiosk has no window (leave --window out)")
    if not 1 <= window_days <= MAX_WINDOW_DAYS:
        raise UsageError(f"--window is 1 to {MAX_WINDOW_DAYS} days, not {window_days}")
    return role, window_days


def database_of(data: Path) -> Path | str:
    """The hub's database: ``DATA/hub.db``, or the PostgreSQL URL ``init`` recorded."""
    url = data / DATABASE_URL
    return url.read_text().strip() if url.exists() else data / DB


def has_database(data: Path) -> bool:
    return (data / DB).exists() or (data / DATABASE_URL).exists()


def init_hub(data: Path, key_provider: str = "file", tpm_tcti: str | None = None,
             database: str | None = None) -> str:
    """Create the hub's keys and store in ``data``; returns its X25519 public key (hex).
    ``key_provider``: where the key of the data at rest is kept (``at_rest``);
    ``database``: a PostgreSQL URL (default ``$HAVEN_HUB_DATABASE``, else ``hub.db``)."""
    database = database or os.environ.get(DATABASE_ENV) or None
    if database is not None and not is_url(database):
        raise UsageError(f"--db takes a postgresql:// URL, not {database!r} (without --db "
                         "the hub keeps hub.db in its data folder)")
    if (data / X_KEY).exists():
        raise UsageError(f"{data} already holds a hub; not overwriting its keys")
    if has_database(data):  # new keys would belong to no hub its database knows
        raise UsageError(f"{data} holds a hub's database without its keys; restore them "
                         f"(haven hub keys restore --data {data} --from KEY_BACKUP)")
    if database is not None:
        _check_empty(database)  # before anything is made: a refusal leaves nothing
    data.mkdir(mode=0o700, parents=True, exist_ok=True)
    if database is not None:
        write_secret(data / DATABASE_URL, database.encode())
    create_provider(data, key_provider, tpm_tcti)  # first: a TPM refusing leaves no hub
    write_secret(data / X_KEY, X25519PrivateKey.generate().private_bytes_raw())
    write_secret(data / ED_KEY, Ed25519PrivateKey.generate().private_bytes_raw())
    write_secret(data / FLEET_KEY, secrets.token_bytes(32))
    with Hub(data) as hub:
        hub.store.set_meta("node", int.from_bytes(os.urandom(4), "big") | 1)
        return hub.x_key.public_key().public_bytes_raw().hex()


def _check_empty(url: str) -> None:
    """A PostgreSQL database a new hub may take: reachable, writable, holding no hub."""
    from host.hub.database.postgres import read_meta
    if read_meta(url, HUB_ID) is not None:
        raise UsageError("that database holds a hub already; give each hub a database "
                         "of its own (or restore this hub's keys to serve it)")


class Hub:
    def __init__(self, data: Path) -> None:
        self.data = Path(data)
        self.x_key = X25519PrivateKey.from_private_bytes(_read_secret(self.data / X_KEY))
        self.ed_key = Ed25519PrivateKey.from_private_bytes(_read_secret(self.data / ED_KEY))
        self.fleet_key = _read_secret(self.data / FLEET_KEY)
        self.store = HubStore(database_of(self.data), default_provider(self.data))
        self._own_database()
        #: The fleet key's generations (``fleet_rotation``): patient ids are the newest's.
        try:
            self.fleet = fleet_rotation.FleetKeys(self.data, self.fleet_key, self.store)
        except UsageError:  # a later generation's key missing: restored from an old backup
            self.store.close()
            raise
        owner_only(self.data / DOCUMENTS_DIR)

    def _own_database(self) -> None:
        """Record in the database whose it is (once), and refuse another hub's: keys and
        database brought back from backups of two hubs would sign for one and hold the
        other's kiosks."""
        mine, held = self.ed_public.hex(), self.store.get_meta(HUB_ID)
        if held is None:
            self.store.set_meta(HUB_ID, mine)
        elif held != mine:
            self.store.close()
            raise UsageError(f"{database_of(self.data)} belongs to hub {held}, but the keys in "
                             f"{self.data} are hub {mine}'s: restore the keys and the data "
                             "of the same hub")

    def close(self) -> None:
        self.store.close()

    # Keys at rest (``at_rest``) -----------------------------------------------------

    def rotate_key(self, now_ms: int | None = None) -> int:
        """A new data key seals from now on; a running hub re-seals the rest (``serve``)."""
        now = wall_ms() if now_ms is None else now_ms
        version = self.store.rotate_key(now)
        self.store.log(None, "key-rotated", f"data key {version} seals from now on", now)
        return version

    def document(self, record_id: str) -> bytes | None:
        """A document's content as a kiosk sent it (checked); None if not held whole."""
        return SealedChunks(self.data / DOCUMENTS_DIR, self.store.sealer).read(
            uuid.UUID(record_id).bytes)

    def reseal_slice(self, limit: int = 500) -> bool:
        """One slice of the re-sealer: rows, then document files; True while it goes on."""
        return self.store.reseal_slice(limit, lambda sealer: reseal_files(
            self.data / DOCUMENTS_DIR, sealer))

    def __enter__(self) -> Hub:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def node(self) -> int:
        return self.store.own_node()

    @property
    def x_public(self) -> bytes:
        return self.x_key.public_key().public_bytes_raw()

    @property
    def ed_public(self) -> bytes:
        return self.ed_key.public_key().public_bytes_raw()

    # Enrolment --------------------------------------------------------------------

    def enroll(self, request: bytes, now_ms: int | None = None, *,
               replaces: str | None = None, from_day: str | None = None,
               role: str | None = None, window_days: int | None = None) -> bytes:
        """Approve a kiosk's request; returns its certificate. ``replaces``: a kiosk at
        its site whose letter it takes over from ``from_day`` (``host.hub.replace``).
        ``role``: its scope's (default ``full``; a kiosk enrolled again keeps its own)."""
        now = wall_ms() if now_ms is None else now_ms
        scoped = _role(role or "full", window_days)
        try:
            req = sync_cert.read_request(request)
        except ProtocolError as exc:
            raise UsageError(f"bad enrolment request: {exc}") from None
        for dev in self.store.devices():
            if dev.device_id == req.device_id and dev.state in (REVOKED, DECOMMISSIONED):
                # its writes go to quarantine for good: a certificate would hide that
                fate = ("the hub refuses it" if dev.state == REVOKED
                        else "what it sends is quarantined")
                raise UsageError(f"kiosk {req.device_id} is {dev.state}, and its identity "
                                 f"never returns ({fate}): to put the device back in "
                                 "service, give it new keys in an empty "
                                 "folder (haven-kiosk init --data NEW_FOLDER --site "
                                 f"{req.site!r}) and enrol that folder's enrolment.req")
            if ((dev.device_id == req.device_id or dev.x25519 == req.x25519)
                    and (dev.x25519 != req.x25519 or dev.state == REVOKED)):
                raise HavenError(f"kiosk {req.device_id} is already known with other keys "
                                 "or revoked; make a new request")
        known = self.store.device(req.device_id)
        if replaces is not None:
            from host.hub.replace import take_over

            letter = take_over(self, replaces, req.device_id, req.site, req.letter, from_day,
                               now)
        else:
            letter = self._letter_for(req, known, now)
        if known is not None:
            number = known.kiosk_number  # the same kiosk again: its number stays
        else:
            try:
                number = self.store.add_device(Device(
                    req.device_id, req.node, req.site, letter, req.x25519, req.ed25519,
                    APPROVED, 0, b"\x00" * 32, 0, None, role=scoped[0],
                    window_days=scoped[1]), now)
            except ValueError as exc:
                raise HavenError(f"cannot enrol kiosk {req.device_id}: {exc}") from None
        if known is not None and role is not None:
            self.store.set_role(req.device_id, *scoped, now)
        serial = int(self.store.get_meta("serial") or 0) + 1
        self.store.set_meta("serial", serial)
        self.store.log(req.device_id, "enrolled",
                       f"site {req.site!r} letter {letter} number {number} role {scoped[0]}",
                       now)
        self.write_verifiers(now)
        return sync_cert.issue(req, self.ed_key, self.x_public, self.fleet_key, letter, now,
                               serial, number)

    def _letter_for(self, req: sync_cert.Request, known: Device | None, now: int) -> str:
        """The kiosk's letter at its site: the one it asked for if free there (no other
        kiosk's, no live approval's); else the one it holds (enrolling again), or the
        first free (A to Z)."""
        taken = self.store.letters_taken(req.site, but=req.device_id, now=now)
        if req.letter is None:
            if known is not None and known.site == req.site and known.letter not in taken:
                return known.letter
            free = [c for c in LETTERS if c not in taken]
            if not free:
                raise HavenError(f"every letter A to Z is taken at site {req.site!r}")
            return free[0]
        letter = req.letter.upper()
        if len(letter) != 1 or letter not in LETTERS:
            raise UsageError(f"bad enrolment request: the kiosk letter is one letter, A to Z, "
                             f"not {req.letter!r}")
        if letter in taken:
            raise HavenError(f"letter {letter} is taken at site {req.site!r} by "
                             f"{taken[letter]}")
        return letter

    # Offline approvals (SPEC.md "Offline approvals") ---------------------------------

    def approve(self, site: str, count: int, hours: float,
                now_ms: int | None = None, *, role: str | None = None,
                window_days: int | None = None) -> list[bytes]:
        """``count`` approvals for kiosks at ``site``, signed, valid ``hours``: each with a
        letter, a node and a kiosk number the hub reserves for it alone, and the role the
        kiosk enrolled by it has (default ``full``)."""
        now = wall_ms() if now_ms is None else now_ms
        scoped = _role(role or "full", window_days)
        if not 0 < len(site.strip()) <= sync_approval.MAX_SITE or not site.isprintable():
            raise UsageError(f"the site is 1 to {sync_approval.MAX_SITE} printable characters "
                             "(no line breaks or control characters)")
        if not 1 <= count <= len(LETTERS):
            raise UsageError(f"--count is 1 to {len(LETTERS)} (one letter each at a site), "
                             f"not {count}")
        longest = sync_approval.MAX_VALIDITY_MS // sync_approval.HOUR_MS
        if not 0 < hours <= longest:
            raise UsageError(f"--hours is more than 0 and at most {longest}, not {hours:g}")
        expires = now + int(hours * sync_approval.HOUR_MS)
        try:
            reserved = self.store.reserve_approvals(site, count, now, expires, _nodes(),
                                                    role=scoped[0], window_days=scoped[1])
        except ValueError as exc:
            raise HavenError(f"cannot approve {count} kiosks at site {site!r}: {exc}") from None
        self.store.log(None, "approved", f"{count} {scoped[0]} approvals for site {site!r} until "
                       f"{expires}: " + ", ".join(f"{serial} (letter {letter}, kiosk "
                                                 f"{node:08x}, number {number})"
                                                 for serial, letter, node, number in reserved),
                       now)
        return [sync_approval.issue(self.ed_key, self.x_public, serial=serial, site=site,
                                    letter=letter, node=node, kiosk_number=number,
                                    issued=now, expires=expires)
                for serial, letter, node, number in reserved]

    def enroll_by_approval(self, enrolment: bytes, remote: bytes,
                           now: int) -> ApprovalEnrolment:
        """A kiosk's first sync presents an approval and its request (``HubSync``'s
        ``enrol``): a normal enrolment with what the approval reserved, and the
        certificate; the same again, the same certificate anew (the first was lost on
        the way); another kiosk on a used approval enrols nothing, and is held as a
        suspected clone. A ``ProtocolError`` refuses it: forged, expired, not this
        session's key, or not the approval's kiosk."""
        approval_doc, request_doc = sync_approval.read_enrolment(enrolment)
        ap = sync_approval.read_approval(approval_doc, self.ed_public, now)
        req = sync_cert.read_request(request_doc)
        sync_approval.check_request(ap, req)
        if req.x25519 != remote:
            raise sync_approval.ApprovalError("the enrolment request names another key than "
                                              "this session's", "wrong-key")
        dev = Device(ap.device_id, ap.node, ap.site, ap.letter, req.x25519, req.ed25519,
                     APPROVED, 0, b"\x00" * 32, 0, None)
        try:
            outcome = self.store.enrol_approved(ap.serial, dev, now)
        except ValueError as exc:
            raise sync_approval.ApprovalError(f"approval {ap.serial}: {exc}",
                                              "refused") from None
        if outcome == "other":
            self.store.log(ap.device_id, "approval-reused",
                           f"approval {ap.serial} presented by a second kiosk (key "
                           f"{remote.hex()[:16]}...): held as a suspected clone", now)
            return ApprovalEnrolment(ap.device_id, None, held_key=req.ed25519)
        if outcome == "enrolled":
            self.store.log(ap.device_id, "enrolled", f"site {ap.site!r} letter {ap.letter} "
                           f"number {ap.kiosk_number}, by approval {ap.serial}", now)
        serial = int(self.store.get_meta("serial") or 0) + 1
        self.store.set_meta("serial", serial)
        return ApprovalEnrolment(ap.device_id, sync_cert.issue(
            req, self.ed_key, self.x_public, self.fleet_key, ap.letter, now, serial,
            ap.kiosk_number))

    def revoke(self, device_id: str, now_ms: int | None = None) -> None:
        if not self.store.set_state(device_id, REVOKED):
            raise UsageError(f"no kiosk {device_id}")
        self.store.log(device_id, "revoked", "revoked by the technician",
                       wall_ms() if now_ms is None else now_ms)

    def set_role(self, device_id: str, role: str, window_days: int | None = None,
                 now_ms: int | None = None) -> str:
        """Give a kiosk another role (a clinician station a window): at its next hello it
        is told its scope and rebases to it. An unknown role or kiosk changes nothing."""
        now = wall_ms() if now_ms is None else now_ms
        role, window = _role(role, window_days)
        if not self.store.set_role(device_id, role, window, now):
            raise UsageError(f"no kiosk {device_id} (haven hub status lists them)")
        self.write_verifiers(now)
        return f"kiosk {device_id} is a {role} kiosk" + (
            f" (window {window} days)" if role == "clinician" else "")

    def decommission(self, device_id: str, now_ms: int | None = None) -> None:
        """A kiosk that is gone: it no longer holds any stable point back; whatever it
        still sends is quarantined (``decommissioned``)."""
        dev = self.store.device(device_id)
        if dev is None:
            raise UsageError(f"no kiosk {device_id} (haven hub status lists them)")
        if dev.state == REVOKED:
            raise UsageError(f"kiosk {device_id} is revoked: the hub refuses it already, and "
                             "it holds no stable point back")
        if dev.state == DECOMMISSIONED:
            return
        self.store.set_state(device_id, DECOMMISSIONED)
        self.store.log(device_id, DECOMMISSIONED, "decommissioned: its writes from now on "
                       "are quarantined", wall_ms() if now_ms is None else now_ms)

    def write_verifiers(self, now_ms: int | None = None) -> int:
        """The door kiosks' verifier records that are missing or stale, written
        (``verifiers``); returns how many."""
        return verifiers.write(self.store, self.fleet.newest, self.node,
                               wall_ms() if now_ms is None else now_ms, self._hlc)

    def erase(self, patient: bytes, by: str, reason: str,
              now_ms: int | None = None) -> erasure.Receipt:
        """Erase a patient's data on the hub and, through sync, on every kiosk
        (``erasure``)."""
        return erasure.erase(self, patient, by, reason,
                             wall_ms() if now_ms is None else now_ms, self._hlc)

    def after_batch(self, now_ms: int | None = None) -> None:
        """What runs after each batch the hub commits: an erased patient's late writes
        settled (``erasure``), then the door kiosks' verifiers."""
        now = wall_ms() if now_ms is None else now_ms
        fleet_rotation.after_batch(self, now, self._hlc)
        erasure.after_batch(self, now, self._hlc)
        self.write_verifiers(now)

    def rotate_fleet(self, now_ms: int | None = None) -> int:
        """A new generation of the fleet key; patient ids migrate to it (``fleet_rotation``:
        ``fleet_slice`` goes on with it). Returns the generation."""
        return fleet_rotation.rotate(self, wall_ms() if now_ms is None else now_ms)

    def fleet_slice(self, limit: int = fleet_rotation.SLICE) -> bool:
        """One slice of the migration of patient ids to the fleet key's newest generation
        (``fleet_rotation``); True while it goes on."""
        return fleet_rotation.migrate_slice(self, wall_ms(), self._hlc, limit)

    def _hlc(self) -> HLC:
        """The hub's clock for its own writes: past every stamp it holds."""
        return HLC(max([int(self.store.get_meta("hlc") or 0),
                        *self.store.version_vector().values()]))

    def clear_clone(self, device_id: str, now_ms: int | None = None) -> None:
        """The copies of a suspected clone were re-provisioned (one keeps the identity):
        the flag goes; that kiosk is told at its next hello. Held batches stay."""
        if not self.store.clear_clone(device_id, wall_ms() if now_ms is None else now_ms):
            raise UsageError(f"no kiosk {device_id}")

    def held_batches(self) -> list[dict[str, Any]]:
        """Every held batch (SPEC.md "Clones"), with the writes it carries decoded."""
        out = []
        for row in self.store.held_batches():
            payload = row.pop("payload")
            try:
                writes = [_describe(decode(d)) for d in sync.unpack(payload)]
            except ProtocolError as exc:
                writes = [{"error": str(exc)}]
            out.append(timed({**row, "writes": writes}, "received_at"))
        return out

    # State ------------------------------------------------------------------------

    def views(self) -> list[RecordView]:
        """Every record's merged state, from the current records (``current``)."""
        return [view for view, _ in self.store.current_records()]

    def conflicted(self) -> list[RecordView]:
        """The records in conflict (what review, status and the alerts read)."""
        return [view for view, _ in self.store.current_records("r.conflicts > 0")]

    def dump(self) -> bytes:
        return canonical_json(self.views())

    def conflicts(self, views: list[RecordView] | None = None) -> list[dict[str, Any]]:
        """Every current conflict (of ``views``, already read: the state's by default)."""
        out = [conflict_json(c, v.type) for v in (self.conflicted() if views is None else views)
               for c in v.conflicts]
        return sorted(out, key=lambda c: str(c["id"]))

    def resolve(self, conflict_id: str, *, keep: str | None = None,
                assignments: list[str] | None = None, now_ms: int | None = None) -> str:
        """The kiosk's ``resolve``, written by the hub's node; returns the record id."""
        now = wall_ms() if now_ms is None else now_ms
        view = next((v for v in self.conflicted() if any(c.id == conflict_id for c in v.conflicts)),
                    None)
        if view is None:
            raise UsageError(f"no current conflict {conflict_id}")
        values = None
        try:
            if assignments is not None:
                values, add, remove = parse_assignments(TYPES[view.type], assignments)
                if add or remove:
                    raise UsageError("a resolution sets registers; keep a version to settle sets")
        except (ProtocolError, KeyError) as exc:
            raise UsageError(str(exc)) from None
        with self.store.own_writes():
            hlc = self._hlc()  # past every stamp held, without opening a delta
            try:
                delta = build_resolve(view, conflict_id, self.node, hlc.now(now), keep=keep,
                                      values=values)
            except (ProtocolError, KeyError) as exc:
                raise UsageError(str(exc)) from None
            self.store.set_meta("hlc", hlc.last)
            self.store.add_local(Op(delta.record_id, delta.stamp, delta.node, encode(delta)))
        self.store.log(None, "resolved", f"conflict {conflict_id}", now)
        return str(uuid.UUID(bytes=view.record_id))

    def promote_claims(self, now_ms: int | None = None) -> list[dict[str, Any]]:
        """Make check-ins' claims patients' records where none exists, and mark each
        check-in's identity (``claims``); returns what was done to each. Only check-ins
        written since the last pass are looked at (a cursor in the hub's meta), with
        their patients: a pass costs what arrived, not what the hub holds."""
        with self.store.own_writes():
            return self._promote_claims(wall_ms() if now_ms is None else now_ms)

    def _promote_claims(self, now: int) -> list[dict[str, Any]]:
        cursor = int(self.store.get_meta("claims_cursor") or 0)
        checkins: set[bytes] = set()
        more = True
        while more:
            deltas, last, more = self.store.changes_since(cursor, None, 4 << 20)
            for data in deltas:
                delta = decode(data)
                if delta.type == claims.CHECKIN.number and not delta.is_delete:
                    checkins.add(delta.record_id)
            cursor = last
        hlc = self._hlc()
        # first the identities kiosks without the fleet key sealed here, then the claims
        completed, done = claims.complete(
            self._views_of(checkins), self.x_key, self.fleet,
            lambda rid: next(iter(self._views_of({rid})), None), self.node, hlc, now,
            lambda first: erasure.registered_id(self.store, self.fleet, first))
        self._add_local(completed)
        views = self._views_of(checkins)
        subjects = {v.fields.get(claims.SUBJECT) for v in views}
        views += self._views_of({s for s in subjects if isinstance(s, bytes)})
        deltas_out, settled = claims.plan(views, self.node, hlc, now)
        self._add_local(deltas_out)
        done += settled
        self.store.set_meta("hlc", hlc.last)
        self.store.set_meta("claims_cursor", cursor)
        if done:
            self.store.log(None, "claims", f"{len(done)} check-in identities settled", now)
        self.write_verifiers(now)  # a promoted claim may be a patient's first birth date
        return done

    def _add_local(self, deltas: list[Delta]) -> None:
        for delta in deltas:
            self.store.add_local(Op(delta.record_id, delta.stamp, delta.node, encode(delta)))

    def history(self, record_id: str) -> list[dict[str, Any]]:
        """Every write the hub holds for one record, in stamp order: when (the stamp's
        wall time, ms), who (the kiosk whose node wrote it, or the hub) and what it
        set: a record's story (a check-in called, seen, its identity confirmed)."""
        try:
            rid = uuid.UUID(record_id).bytes
        except ValueError:
            raise UsageError(f"not a record id: {record_id!r}") from None
        ops = sorted(self.store.record_ops(rid), key=lambda op: (op.stamp, op.node))
        if not ops:
            raise UsageError(f"the hub holds no record {record_id}")
        kiosks = {d.node: d for d in self.store.devices()}
        out = []
        for op in ops:
            kiosk = kiosks.get(op.node)
            if op.node == self.node:
                by = "hub"
            elif kiosk is not None:
                by = f"kiosk {kiosk.device_id} ({kiosk.site} {kiosk.letter})"
            else:  # a kiosk since re-provisioned under a new node
                by = f"node {op.node:08x}"
            out.append({**_describe(decode(op.data)), "stamp": op.stamp,
                        "at_ms": op.stamp >> 16, "by": by})
        return out

    def _views_of(self, rids: set[bytes]) -> list[RecordView]:
        out = []
        for rid in sorted(rids):
            log = RecordLog(rid)
            for op in self.store.record_ops(rid):
                log.add(decode(op.data))
            if log.ops:
                out.append(log.view())
        return out

    def status(self, now_ms: int | None = None) -> dict[str, Any]:
        """The hub's state as plain data. Times: ISO 8601 UTC under their names, epoch ms
        under ``_ms`` (``timed``); cursors are arrival numbers, a stable point's with the
        hub time it stands for (``reached_hub_by``)."""
        head = self.store.head()
        kiosks = [timed({
            "device": d.device_id, "site": d.site, "letter": d.letter,
            "kiosk_number": d.kiosk_number, "state": d.state, "last_seen": d.last_seen,
            "last_batch": d.last_seq, "pull_cursor": d.cursor, "acked_cursor": d.acked,
            "backlog_deltas": self._backlog(d, head), "suspected_clone": bool(d.suspected_clone),
            "replaced": (None if (r := self.store.replacement(d.device_id)) is None
                         else timed(r, "at")),
            "role": d.role, "window_days": d.window_days if d.role == "clinician" else None,
            "fleet_generation": generation_of(self.fleet.moves_of(d.node))},
            "last_seen") for d in self.store.devices()]
        groups = sorted({(d.role, "*" if d.role == "full" else d.site)
                         for d in self.store.devices() if d.state == APPROVED})
        stable = [{"role": role, "site": site, "cursor": cursor,
                   "reached_hub_by": cursor_text(cursor)}
                  for role, site in groups
                  for cursor in [self.store.stable_point(role, site)]]
        views = self.conflicted()  # read once: the conflicts and the alerts
        conflicts = self.conflicts(views)
        return {"node": f"{self.node:08x}", "public_key": self.x_public.hex(),
                "deltas": self.store.count(),
                "kiosks": kiosks, "stable_points": stable, "conflicts": conflicts,
                "conflicts_held": sum(1 for c in conflicts if c["severity"] == "hold"),
                "quarantine": [timed(q, "at") for q in self.store.quarantined()],
                "log": [timed(e, "at") for e in self.store.events(20)],
                "documents": held(self.data / DOCUMENTS_DIR, self.store.sealer),
                "keys": self.store.keyring(),
                "held_batches": self.held_batches(),
                "alerts": alerts.alerts(self, now_ms, views),
                "fleet_rotation": fleet_rotation.progress(self.store)}

    def _backlog(self, dev: Device, head: int) -> int:
        """Deltas waiting for this kiosk's next pull."""
        if dev.cursor >= head:
            return 0
        return len(self.store.changes_since(dev.cursor, dev.node, 1 << 62)[0])


def _nodes() -> Iterator[int]:
    """Random kiosk nodes, as a kiosk picks its own (odd, 32 bits)."""
    while True:
        yield int.from_bytes(os.urandom(4), "big") | 1


def _describe(delta: Any) -> dict[str, Any]:
    """One held write, enough to see what it is: type, record, writer, fields."""
    def show(value: Any) -> Any:
        if isinstance(value, bytes):
            return str(uuid.UUID(bytes=value)) if len(value) == 16 else value.hex()
        return value
    return {"type": type_name(delta.type), "record": str(uuid.UUID(bytes=delta.record_id)),
            "node": f"{delta.node:08x}", "delete": delta.is_delete,
            "fields": {field_name(delta.type, n): show(v) for n, v in delta.set.items()},
            "add": {field_name(delta.type, n): list(v) for n, v in delta.add.items()},
            "remove": {field_name(delta.type, n): list(v) for n, v in delta.remove.items()}}
