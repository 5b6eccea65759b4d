"""Wiping a kiosk: its keys first, then its data; and its keys alone once revoked.

Theory of operation
-------------------
What the card holds of patients is sealed at rest: field values, deltas, the
outbox, sync batches and document chunks are AES-256-GCM under keys derived
from the store key (``device.store.keys``). So destroying the keys is what
counts, and it comes first. The keys are the kiosk's X25519 key (its session
identity; the certificate's fleet key is sealed to it), its Ed25519 key (it
signs batches and the audit), the fleet key as installed (``fleet.key``:
patient ids derive from it), and the store key when the default provider
keeps it in ``store.key``. A store key from another provider (a TPM, a secure
element) is not a file here: destroying it is that provider's business.

Each key file is overwritten with random bytes of its own length, synced,
then unlinked, and the folder synced. On an SD card that achieves little: its
controller levels wear by writing each write to fresh flash pages and
remapping, so the old pages can keep the old bytes until it erases them in
its own time, and no command from the host can make it (no secure erase that
a card reader honours). Overwriting only defeats reading the file system
back. The real protection is that every patient value was sealed under a key
that is gone; what remains readable on a card whose old pages are recovered
is what was never sealed (record ids, write stamps, queue counters, the
site and letter) and, at worst, a key page the controller had not yet erased.
THREAT_MODEL.md says the same.

Then the data: the databases, their write-ahead logs, the documents, the sync
checkpoints and everything else in the data folder are unlinked (not
overwritten: they are sealed, and writing a whole card again costs it wear
for no gain), all but the run lock and ``wiped.json``, the marker. The marker
is written before the first key goes, with the state of the work:

- ``wiping``: keys destroyed or being destroyed, data not yet erased. ``finish``
  (the runtime calls it at start, before it opens anything) erases the data;
  a wipe cut short by a power cut is finished at the next start.
- ``wiped``: nothing of the old kiosk is left. ``finish`` makes a fresh,
  unenrolled kiosk in the folder (a new store, new keys, an enrolment request
  that leaves the letter to the hub) at the old site, and the runtime says so
  in one line (``fresh_note``) until the kiosk is enrolled again.
- ``revoked``: the hub revoked this kiosk, and it destroyed its keys at that
  contact (``wipe_on_revocation``). Its data stays where it is, sealed under
  keys that no longer exist: unreadable by anyone, the kiosk included. The
  runtime keeps showing REVOKED and takes no check-in (``SealedStore``).

While the marker says ``wiping`` or ``revoked``, ``device.enrol.ensure_keys``
refuses to make new keys: nothing signs or seals under a new key by accident.

A technician's wipe (``wipe``) is refused while anything is unsynced: outbox
entries the hub has not acknowledged (queued, or quarantined: the hub refused
them, and the wipe would lose them too) and documents whose content the hub
has not confirmed. ``UnsyncedData`` names the count of each, and nothing is
erased. ``discard_unsynced`` wipes anyway, and the count goes into the audit.
The wipe is audited before the keys go (``device.audit``); ``sync``, when the
caller has a link (the runtime), pushes that entry to the hub and says
whether it arrived. Without a link the entry goes with the data: the report
says so, and the technician's tool keeps its own log.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from device import audit
from device.enrol import APPROVAL, CERT, ED_KEY, REQUEST, X_KEY
from device.store import Store, StoreError
from device.store.fleet import later_key_files
from device.store.pending import DB_NAME as PENDING_DB
from device.store.providers import ROTATION_FILES, TPM_STORE_KEY, provider_of
from device.store.store import DB_NAME, FLEET_KEY, STORE_KEY
from device.store.tpm_key import FLEET_RECORD, TpmFleetKeeper
from device.store.unlock import KEYS_FILE as PASSPHRASE_KEYS
from device.sync.document_store import DB_NAME as DOCS_DB
from device.sync.document_store import HELD
from protocol.driver.secret_files import destroy_secret, fsync_dir
from protocol.driver.wall_clock import wall_ms
from protocol.errors import ProtocolError

log = logging.getLogger("haven.wipe")

MARKER = "wiped.json"
WIPING, WIPED, REVOKED = "wiping", "wiped", "revoked"
#: The private keys and secrets, destroyed first (overwritten, then unlinked).
KEY_FILES = (X_KEY, ED_KEY, FLEET_KEY, STORE_KEY)
#: Keys another provider keeps on the card, wrapped, destroyed with them when present:
#: under a passphrase, its keys file (check-ins sealed while locked open with a key in it);
#: with a TPM, the store key's sealed blobs and the record of the fleet key's handles (the
#: keys at those handles are evicted from the TPM first).
#: A key rotation under way (``device.store.rotation``) keeps the next key (or the old one,
#: cut in its swap) beside them: destroyed too.
WRAPPED_KEY_FILES = (PASSPHRASE_KEYS, f"{TPM_STORE_KEY}.tpm", FLEET_RECORD, *ROTATION_FILES)
#: What holds the fleet key sealed to the kiosk's key, or names the identity: removed
#: with the keys (the certificate is kept by a revoked kiosk: it says whose it was).
IDENTITY_FILES = (CERT, APPROVAL, REQUEST)
#: Left in the folder by a wipe.
KEEP = frozenset({"run.lock", MARKER})


class UnsyncedData(StoreError):
    """A wipe refused: the kiosk holds what the hub does not have yet."""

    code = "unsynced"


class KeysDestroyed(StoreError):
    """The kiosk's keys were destroyed (revoked, or a wipe under way)."""

    code = "keys-destroyed"


class NotKioskData(StoreError):
    code = "not-kiosk-data"


@dataclass(frozen=True)
class Unsent:
    """What a wipe would lose: outbox entries the hub has not acknowledged (queued and
    quarantined) and documents whose content it has not confirmed."""

    entries: int = 0
    quarantined: int = 0
    documents: int = 0
    #: check-ins taken while the store was locked (``device.store.pending``), not merged
    locked: int = 0

    @property
    def total(self) -> int:
        return self.entries + self.quarantined + self.documents + self.locked

    def describe(self) -> str:
        parts = [f"{self.entries} outbox entries the hub has not acknowledged"]
        if self.quarantined:
            parts.append(f"{self.quarantined} quarantined entries")
        parts.append(f"{self.documents} documents not sent")
        if self.locked:
            parts.append(f"{self.locked} check-ins taken while locked, not unlocked since")
        return ", ".join(parts)

    def detail(self) -> dict[str, int]:
        return {"entries": self.entries, "quarantined": self.quarantined,
                "documents": self.documents, **({"locked": self.locked} if self.locked else {})}


@dataclass(frozen=True)
class Report:
    """What a wipe did: the counts it discarded, the key files destroyed, whether its
    audit entry reached the hub (None: it was not written, the keys were gone)."""

    discarded: Unsent
    keys: list[str]
    audit_synced: bool | None

    def as_dict(self) -> dict[str, Any]:
        return {"discarded": self.discarded.detail(), "keys": self.keys,
                "audit_synced": self.audit_synced}


# What is unsynced ------------------------------------------------------------------------

def unsynced(store: Store) -> Unsent:
    """What ``store``'s kiosk holds that the hub does not (see ``Unsent``)."""
    st = store.status()["outbox"]
    entries = sum(int(lane["entries"]) for lane in st["lanes"].values())
    return Unsent(entries, len(st["quarantined"]), _held_documents(store.data))


def unsynced_of(data: Path) -> Unsent:
    """The same, read from the files alone (for a kiosk whose keys are gone: the counts
    are not sealed)."""
    entries = quarantined = 0
    path = Path(data) / DB_NAME
    if path.exists():
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            for state, n in db.execute("SELECT state, COUNT(*) FROM outbox GROUP BY state"):
                if state == "quarantined":
                    quarantined += n
                else:
                    entries += n
    return Unsent(entries, quarantined, _held_documents(Path(data)), _locked_checkins(data))


def _locked_checkins(data: Path) -> int:
    path = Path(data) / PENDING_DB
    if not path.exists():
        return 0
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            return int(db.execute("SELECT COUNT(*) FROM checkins").fetchone()[0])
    except sqlite3.OperationalError:  # no table yet
        return 0


def _held_documents(data: Path) -> int:
    path = data / DOCS_DB
    if not path.exists():
        return 0
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            return int(db.execute("SELECT COUNT(*) FROM documents WHERE state = ?",
                                  [HELD]).fetchone()[0])
    except sqlite3.OperationalError:  # no table yet
        return 0


def check_unsynced(lost: Unsent, discard_unsynced: bool) -> None:
    """``UnsyncedData`` naming what would be lost, unless nothing would or the caller
    discards it."""
    if lost.total and not discard_unsynced:
        raise UnsyncedData(f"refusing to wipe: {lost.describe()} would be lost; sync first, "
                           "or wipe with --discard-unsynced")


# The marker --------------------------------------------------------------------------------

def read_marker(data: Path) -> dict[str, Any] | None:
    """The wipe marker of the kiosk in ``data`` (see above), or None."""
    try:
        value = json.loads((Path(data) / MARKER).read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) and isinstance(value.get("state"), str) else None


def _write_marker(data: Path, marker: dict[str, Any]) -> None:
    from device.tech.files import write_whole

    write_whole(Path(data) / MARKER, (json.dumps(marker, sort_keys=True) + "\n").encode())


def keys_destroyed(data: Path) -> dict[str, Any] | None:
    """The marker while it says the keys are gone (``wiping`` or ``revoked``), else None."""
    marker = read_marker(data)
    return marker if marker is not None and marker["state"] in (WIPING, REVOKED) else None


def refuse_if_destroyed(data: Path) -> None:
    """``KeysDestroyed`` while the keys are gone: no new key is made in their place."""
    marker = keys_destroyed(data)
    if marker is not None:
        why = ("the hub revoked this kiosk" if marker["state"] == REVOKED
               else "it is being wiped")
        raise KeysDestroyed(f"this kiosk's keys were destroyed ({why}); wipe it "
                            "(haven-kiosk wipe) and provision it again to use it")


# Destroying and erasing -------------------------------------------------------------------

def _evict_tpm_keys(data: Path) -> None:
    """A TPM kiosk's fleet and site keys out of its TPM; a TPM that does not answer is
    logged (the record of their handles is destroyed anyway, and the keys are useless
    without the card's data)."""
    try:
        TpmFleetKeeper(data).evict()
    except (StoreError, ProtocolError) as exc:
        log.warning("the fleet key was not evicted from the TPM: %s", exc)


def destroy_keys(data: Path, state: str, **facts: Any) -> list[str]:
    """Write the marker (``state`` and ``facts``), then destroy the key files (and, but
    for a revoked kiosk, the certificate, approval and request); returns the key files
    destroyed."""
    data = Path(data)
    _write_marker(data, {"state": state, "at": wall_ms(), **facts})
    _evict_tpm_keys(data)
    later = [path.name for path in later_key_files(data / FLEET_KEY)]  # rotated fleet keys
    gone = [name for name in (*KEY_FILES, *WRAPPED_KEY_FILES, *later)
            if destroy_secret(data / name)]
    for name in () if state == REVOKED else IDENTITY_FILES:
        destroy_secret(data / name)
    with contextlib.suppress(OSError):
        fsync_dir(data)
    return gone


def is_kiosk_data(data: Path) -> bool:
    """Whether ``data`` holds a kiosk (a store, keys or a wipe marker): nothing else is
    ever erased."""
    data = Path(data)
    return data.is_dir() and any((data / name).exists()
                                 for name in (DB_NAME, MARKER, *KEY_FILES, *WRAPPED_KEY_FILES))


def erase_data(data: Path) -> int:
    """Unlink everything in ``data`` but the run lock and the marker; returns how many
    entries went."""
    data = Path(data)
    gone = 0
    for entry in sorted(data.iterdir()):
        if entry.name in KEEP:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
        gone += 1
    with contextlib.suppress(OSError):
        fsync_dir(data)
    return gone


def finish(data: Path) -> dict[str, Any] | None:
    """Carry a wipe on from where its marker says (see above): erase the data of a kiosk
    whose keys are gone, then make a fresh unenrolled kiosk at its site. Idempotent; a
    revoked kiosk's data stays. Returns the marker (None: never wiped)."""
    data = Path(data)
    marker = read_marker(data)
    if marker is None or marker["state"] == REVOKED:
        return marker
    if marker["state"] == WIPING:
        erase_data(data)
        marker = {**marker, "state": WIPED}
        _write_marker(data, marker)
    if not (data / DB_NAME).exists():
        from device.enrol import write_request
        from device.store import init_store

        with init_store(data, str(marker.get("site") or "unassigned"), None) as store:
            write_request(store, hub_letter=True)
    return marker


def fresh_note(data: Path) -> str | None:
    """The one line a runtime says of a kiosk wiped and not enrolled since, or None."""
    marker = read_marker(data)
    if marker is None or marker["state"] != WIPED or (Path(data) / CERT).exists():
        return None
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(int(marker.get("at", 0)) / 1000))
    return (f"this kiosk was wiped on {when}: it starts as a fresh kiosk, not enrolled "
            "(provision it, or haven-kiosk enroll)")


# A technician's wipe, and a revoked kiosk's ------------------------------------------------

def wipe(store: Store, *, who: str, discard_unsynced: bool = False,
         sync: Callable[[], bool] | None = None, what: str = "wipe") -> Report:
    """A technician's wipe of the kiosk ``store`` belongs to (see above), up to the keys:
    refused (``UnsyncedData``, nothing changed) while anything is unsynced unless
    ``discard_unsynced``; audited as ``who`` doing ``what``; ``sync()`` (a round,
    bounded) says whether the audit entry reached the hub; then the keys are destroyed
    and the marker says
    ``wiping``. The caller closes the store and calls ``finish`` (the runtime does at
    its next start)."""
    data = store.data
    lost = unsynced(store)
    check_unsynced(lost, discard_unsynced)
    audit.record(store, who, what, "ok", {"discarded": lost.total} if lost.total else None)
    synced = False
    if sync is not None:
        try:
            synced = sync()
        except Exception as exc:  # a wipe whose entry could not go still goes on
            log.warning("the wipe's audit entry was not synced: %s", exc)
    site = store.status().get("site")
    keys = destroy_keys(data, WIPING, site=site, discarded=lost.detail(), by=who)
    log.info("wiped by %s: keys destroyed (%s); the data goes next",
                who, ", ".join(keys) or "none left")
    return Report(lost, keys, synced)


def wipe_folder(data: Path, *, who: str, discard_unsynced: bool = False) -> Report:
    """A whole wipe of a kiosk that is not running (``haven-kiosk wipe``): ``wipe``,
    then ``finish``. ``NotKioskData`` for a folder that holds no kiosk."""
    data = Path(data)
    refuse_unless_kiosk_data(data)
    if keys_destroyed(data) is not None:
        report = wipe_without_keys(data, who)
    elif provider_of(data) == "passphrase":  # locked: its store opens with staff's passphrase
        check_unsynced(unsynced_of(data), discard_unsynced)
        report = wipe_without_keys(data, who)
    else:
        with Store(data) as store:
            report = wipe(store, who=who, discard_unsynced=discard_unsynced)
    finish(data)
    return report


def wipe_without_keys(data: Path, who: str) -> Report:
    """The wipe of a kiosk whose keys are gone already (revoked): what is unsynced was
    lost with them (counted from the files), and nothing can sign an audit entry."""
    marker = read_marker(data) or {}
    lost = unsynced_of(data)
    keys = destroy_keys(data, WIPING, site=marker.get("site") or _site_of(Path(data)),
                        discarded=lost.detail(), by=who)
    return Report(lost, keys, None)


def refuse_unless_kiosk_data(data: Path) -> None:
    """``NotKioskData`` for a folder that holds no kiosk."""
    if not is_kiosk_data(data):
        raise NotKioskData(f"{data} holds no kiosk data (no {DB_NAME}, no keys): "
                           "nothing erased")


def _site_of(data: Path) -> str | None:
    path = data / DB_NAME
    if not path.exists():
        return None
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'site'").fetchone()
    except sqlite3.Error:
        return None
    return str(row[0]) if row and row[0] else None


def wipe_on_revocation(data: Path, detail: str) -> list[str]:
    """The hub revoked this kiosk: destroy its keys now, keep its data (sealed under
    keys that no longer exist) and its certificate. Idempotent; never raises (a key
    that cannot be destroyed is logged, loudly). Returns the key files destroyed."""
    data = Path(data)
    marker = read_marker(data)
    if (marker is not None and marker["state"] == REVOKED
            and not any((data / name).exists() for name in (*KEY_FILES, *WRAPPED_KEY_FILES))):
        return []  # done at an earlier contact
    try:
        keys = destroy_keys(data, REVOKED, detail=detail[:200], site=_site_of(data))
    except OSError as exc:
        log.error("revoked, but its keys could not be destroyed: %s", exc)
        return []
    log.error("this kiosk was revoked (%s): its keys are destroyed (%s); its data stays "
              "sealed under them, unreadable", detail, ", ".join(keys) or "none left")
    return keys


class SealedStore:
    """What a revoked kiosk's runtime holds in place of its store once the keys are
    gone: every store call refuses with ``KeysDestroyed`` (a check-in is refused with
    the page's "store" error), and nothing is opened or written."""

    def __init__(self, data: Path) -> None:
        self.data = Path(data)
        self.clock = wall_ms
        self.node = 0

    def close(self) -> None:
        pass

    def release_memory(self) -> None:
        pass

    def truncate_wal(self) -> None:
        pass

    def __enter__(self) -> SealedStore:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def __getattr__(self, name: str) -> Callable[..., Any]:
        def refuse(*args: Any, **kwargs: Any) -> Any:
            refuse_if_destroyed(self.data)
            raise KeysDestroyed("this kiosk's keys were destroyed")
        return refuse
