"""``haven hub backup`` and ``haven hub restore``: the hub's data, copied while it serves.

Theory of operation
-------------------
A backup directory holds ``hub.db``, the hub's ``documents/`` and
``manifest.json``: the hub's id (its Ed25519 public key, hex), the
database's schema version, its head arrival number, when it was taken, and
each file's size and SHA-256. Never a key (``hub.SECRET_FILES``): those are
``haven hub keys backup``'s, kept apart (``host.hub.key_backup``).

The manifest is signed with the hub's Ed25519 key (the one key a backup
reads, to name the hub and sign): a manifest rewritten with its files is
refused unless the hub's key signed it, and the database must record the
same hub id (``hub.HUB_ID``) as the manifest.

The database is copied with SQLite's online backup API from a connection of
its own that holds one read transaction for the whole copy: in WAL mode a
reader stalls no writer, so the hub goes on committing check-ins, and the
copy is that snapshot, page for page, whatever commits meanwhile (without
the transaction, each step would see the pages a commit changed and start
over). Steps of ``STEP_PAGES`` pages keep the connection's lock short and
the process responsive. The copy is then made one file (rollback journal),
records the hub's id (``hub.HUB_ID``) if the live database had not yet, and
must pass ``PRAGMA integrity_check`` before it counts. Documents follow the
database, so every document whose record the copy holds and that was whole
when the copy was taken is in the backup (a newer one may be too; a part
file still being received is not). Their manifests (``objects/``) are
listed before their chunks, as the hub writes them the other way round, so
no manifest in the backup lacks a chunk. A database among them (the chunk index)
is copied the same way.

Everything goes to ``DIR/.partial`` first; then the files move into ``DIR``
and the manifest is written last, atomically: a directory without a
manifest is no backup (an interrupted one), and one with a manifest is
whole. A directory already holding a backup is refused unless forced (its
manifest goes once the new copy is whole and checked, before its files are
replaced, so no manifest ever describes other files); so is a directory
that holds anything else, or too little free space for the files' present
size.

Restoring checks the manifest, every file's size and hash, that the database
opens and passes ``integrity_check``, and that it is no newer than this
release, all before anything is written; it refuses a target directory that
holds hub data already, or another hub's keys. The files are copied into
``NEWDIR/.restoring`` and moved into place, the database last, and the
staging directory is removed after: a restore cut short (documents moved, no
database yet, the staging directory still there) is taken over by the next
one. The kiosks
give back what the backup missed (storage.py: arrival numbers after a
restore).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from host.errors import UsageError
from host.hub.document_inbox import DOCUMENTS_DIR
from host.hub.fleet_rotation import is_later_key_name
from host.hub.hub import DATABASE_URL, DB, ED_KEY, HUB_ID, SECRET_FILES
from host.hub.sealed_documents import OBJECTS
from host.hub.storage import MIGRATIONS, NUMBER_FLOOR, next_number
from protocol.driver.errors import SecretFileError
from protocol.driver.secret_files import fsync_dir, read_at_most, read_secret, write_whole
from protocol.driver.wall_clock import utc_text, wall_ms

MANIFEST = "manifest.json"
SIGNATURE_LABEL = b"haven/hub/backup-manifest/v1\x00"
FORMAT, VERSION = "haven-hub-backup", 1
STAGING, RESTORING = ".partial", ".restoring"
STEP_PAGES = 1024  #: 4 MiB of 4 KiB pages per step of the online backup
#: Kiosk numbers a restored hub skips: more kiosks than a hub enrols between two backups.
RESTORE_NUMBER_GAP = 1000
MARGIN = 16 << 20  #: bytes left free beyond the backup's own
_CHUNK = 1 << 20
_SKIPPED = ("-wal", "-shm", "-journal", ".part", ".tmp")
_SQLITE = b"SQLite format 3\x00"


@dataclass
class Manifest:
    hub_id: str
    schema_version: int
    head: int
    created_ms: int
    files: dict[str, dict[str, Any]] = field(default_factory=dict)  #: path -> size, sha256

    @property
    def created(self) -> str:
        return utc_text(self.created_ms)


def _ed_key(data: Path) -> Ed25519PrivateKey:
    try:
        return Ed25519PrivateKey.from_private_bytes(read_secret(data / ED_KEY, "hub key", 32))
    except SecretFileError as exc:
        raise UsageError(f"{data} holds no usable hub key: {exc}") from None


def _hub_id(data: Path) -> str:
    return _ed_key(data).public_key().public_bytes_raw().hex()


def _signed_body(doc: dict[str, Any]) -> bytes:
    """What the manifest's signature covers: every field but the signature, as JSON."""
    body = {k: v for k, v in doc.items() if k != "signature"}
    return SIGNATURE_LABEL + json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


# Taking a backup --------------------------------------------------------------------


def backup(data: Path, to: Path, *, force: bool = False, step_pages: int = STEP_PAGES,
           progress: Callable[[int, int], None] | None = None) -> Manifest:
    """Back up the hub in ``data`` to ``to`` while it may be serving; returns the manifest.
    ``progress(remaining, total)`` is called after each step (``step_pages`` pages) of the
    database's copy."""
    data, to = Path(data), Path(to)
    if not data.is_dir():
        raise _no_directory(data, "give the hub's data directory")
    if (data / DATABASE_URL).exists():
        raise UsageError("this hub's database is on PostgreSQL: back it up with PostgreSQL's "
                         "own tools (pg_basebackup, or pg_dump; deploy/postgresql.md), and its "
                         "keys with haven hub keys backup")
    if not (data / DB).exists():
        raise UsageError(f"{data} holds no hub database ({DB})")
    ed_key = _ed_key(data)
    hub_id = ed_key.public_key().public_bytes_raw().hex()
    if to.resolve() == data.resolve() or data.resolve() in to.resolve().parents:
        raise UsageError(f"{to} is inside the hub's data directory; back up elsewhere")
    _check_target(to, force)
    _check_space(data, to)
    to.mkdir(mode=0o700, parents=True, exist_ok=True)
    staging = to / STAGING
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(mode=0o700)
    _copy_database(data / DB, staging / DB, step_pages, progress)
    with _connect(staging / DB) as db:
        held = db.execute("SELECT value FROM meta WHERE key = ?", [HUB_ID]).fetchone()
        if held is not None and held[0] != hub_id:
            raise UsageError(f"{data / DB} belongs to hub {held[0]}, not to the hub of the "
                             f"keys beside it ({hub_id})")
        db.execute("INSERT OR IGNORE INTO meta VALUES (?, ?)", [HUB_ID, hub_id])
        db.commit()
        _check_integrity(db, staging / DB)
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        head = int(db.execute("SELECT COALESCE(MAX(hseq), 0) FROM ops").fetchone()[0])
    _copy_documents(data / DOCUMENTS_DIR, staging / DOCUMENTS_DIR)
    manifest = Manifest(hub_id, version, head, wall_ms(),
                        {path: _describe(staging / path) for path in _files(staging)})
    _publish(staging, to, manifest, ed_key)
    return manifest


def _check_target(to: Path, force: bool) -> None:
    if (to / MANIFEST).exists():
        if not force:
            try:
                old = read_manifest(to)
                what = f"a backup of hub {old.hub_id[:16]}... taken {old.created}"
            except UsageError:
                what = "a backup (its manifest unreadable)"
            raise UsageError(f"{to} already holds {what}; give another --to, or --force to "
                             "replace it")
    elif to.is_dir() and not force and any(p.name not in (STAGING, DB, DOCUMENTS_DIR)
                                           for p in to.iterdir()):
        raise UsageError(f"{to} holds other files; give an empty or new directory (or "
                         "--force to put the backup among them)")
    else:
        check_directory(to)


def check_directory(path: Path) -> None:
    """Refuse a directory to write into that is a file, or that cannot be made because
    a file stands where one of its parents should be."""
    where = path
    while not where.exists() and where != where.parent:
        where = where.parent
    if not where.is_dir():
        raise UsageError(f"{path} is not a directory" if where == path else
                         f"{path} cannot be made: {where} is a file, not a directory")


def _no_directory(path: Path, hint: str) -> UsageError:
    return UsageError(f"{path} is {'not a directory' if path.exists() else 'missing'} "
                      f"({hint})")


def _check_space(data: Path, to: Path) -> None:
    need = sum(p.stat().st_size for p in [data / DB, data / f"{DB}-wal"] if p.exists())
    docs = data / DOCUMENTS_DIR
    need += sum(p.stat().st_size for p in docs.rglob("*") if p.is_file()) if docs.is_dir() else 0
    where = to
    while not where.exists():
        where = where.parent
    free = shutil.disk_usage(where).free
    if need + MARGIN > free:
        raise UsageError(f"{where} has {free >> 20} MiB free; the backup needs about "
                         f"{(need + MARGIN) >> 20} MiB: free some space or back up elsewhere")


@contextlib.contextmanager
def _connect(path: Path, *, readonly: bool = False) -> Iterator[sqlite3.Connection]:
    uri = f"file:{path}?mode=ro&immutable=1" if readonly else f"file:{path}"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=30.0, isolation_level=None
                               if readonly else "DEFERRED")
    except sqlite3.Error as exc:
        raise UsageError(f"cannot open {path}: {exc}") from None
    try:
        yield conn
    except sqlite3.DatabaseError as exc:
        raise UsageError(f"{path} is not a sound database: {exc}") from None
    finally:
        conn.close()


def _copy_database(source: Path, target: Path, step_pages: int = STEP_PAGES,
                   progress: Callable[[int, int], None] | None = None) -> None:
    """A consistent copy of a live database, as one file (no WAL) owner-only."""
    src = sqlite3.connect(source, timeout=30.0, isolation_level=None)
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        dst = sqlite3.connect(target, isolation_level=None)
        try:
            src.execute("BEGIN")
            src.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()  # the snapshot
            src.backup(dst, pages=step_pages,
                       progress=None if progress is None
                       else lambda _status, remaining, total: progress(remaining, total))
            src.execute("ROLLBACK")
            dst.execute("PRAGMA journal_mode = DELETE")
        finally:
            dst.close()
    except sqlite3.Error as exc:
        raise UsageError(f"cannot copy {source}: {exc}") from None
    finally:
        src.close()  # the copy's last commits were synced (synchronous=FULL, its default)


def _check_integrity(db: sqlite3.Connection, path: Path) -> None:
    rows = db.execute("PRAGMA integrity_check").fetchall()
    if [r[0] for r in rows] != ["ok"]:
        raise UsageError(f"{path} fails its integrity check: "
                         + "; ".join(str(r[0]) for r in rows[:3]))


def _copy_documents(source: Path, target: Path) -> None:
    """Every whole file under ``source`` (not a part file or a database's log), databases
    by the backup API."""
    if not source.is_dir():
        return
    # a document's manifest is written after its chunks: the manifests listed first, every
    # chunk one of them names is there when the rest is listed
    objects = source / OBJECTS
    listed = sorted(objects.rglob("*")) if objects.is_dir() else []
    listed += sorted(p for p in source.rglob("*") if objects not in p.parents)
    for path in listed:
        rel = path.relative_to(source)
        if path.is_symlink() or not path.is_file() or path.name.endswith(_SKIPPED):
            continue
        dest = target / rel
        dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            with path.open("rb") as f:
                is_db = f.read(len(_SQLITE)) == _SQLITE
            if is_db:
                _copy_database(path, dest)
            else:
                _copy_file(path, dest)
        except FileNotFoundError:  # removed since it was listed
            continue


def _copy_file(source: Path, target: Path) -> None:
    with source.open("rb") as src, open(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL,
                                                0o600), "wb") as dst:
        shutil.copyfileobj(src, dst, _CHUNK)
        dst.flush()
        os.fsync(dst.fileno())


def _files(root: Path) -> list[str]:
    return sorted(PurePosixPath(p.relative_to(root)).as_posix()
                  for p in root.rglob("*") if p.is_file())


def _describe(path: Path) -> dict[str, Any]:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return {"size": path.stat().st_size, "sha256": digest.hexdigest()}


def _publish(staging: Path, to: Path, manifest: Manifest, ed_key: Ed25519PrivateKey) -> None:
    """Move the staged files into ``to``, then write the manifest: the backup exists."""
    if (to / MANIFEST).exists():  # no manifest while the files change: no stale backup
        (to / MANIFEST).unlink()
        fsync_dir(to)
    for entry in (DB, DOCUMENTS_DIR):
        old = to / entry
        if old.is_dir():
            shutil.rmtree(old)
        elif old.exists():
            old.unlink()
        if (staging / entry).exists():
            os.replace(staging / entry, old)
    for directory in {to} | {(to / p).parent for p in manifest.files}:
        fsync_dir(directory)
    doc = {"format": FORMAT, "version": VERSION, **asdict(manifest),
           "created": manifest.created}
    doc["signature"] = ed_key.sign(_signed_body(doc)).hex()
    text = json.dumps(doc, indent=1, sort_keys=True) + "\n"
    write_whole(to / MANIFEST, text.encode())
    shutil.rmtree(staging, ignore_errors=True)
    fsync_dir(to)


# Reading and restoring one ----------------------------------------------------------


def read_manifest(source: Path) -> Manifest:
    """A backup directory's manifest, its every field checked; ``UsageError`` otherwise.

    It is read up to ``_manifest_limit`` bytes and no further, and parsed strictly: JSON
    with no repeated key, no number but whole ones, each field of its one type."""
    path = source / MANIFEST
    if not source.is_dir():
        raise _no_directory(source, "give the directory haven hub backup wrote")
    if not path.exists():
        raise UsageError(f"{source} holds no backup ({MANIFEST} is missing: not a backup "
                         "directory, or a backup that was cut short)")
    damaged = f"{path} is damaged"
    limit = _manifest_limit(source)
    try:
        doc = json.loads(read_at_most(path, limit).decode("utf-8"),
                         object_pairs_hook=_no_repeats, parse_float=_no_fraction,
                         parse_constant=_no_fraction)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise UsageError(f"{damaged}: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise UsageError(f"{damaged}: not a hub backup's manifest")
    if doc.get("version") != VERSION:
        raise UsageError(f"{path} is of backup version {doc.get('version')!r}; this release "
                         f"reads version {VERSION}")
    try:
        if set(doc) != _MANIFEST_FIELDS:
            raise ValueError(f"its fields are not {', '.join(sorted(_MANIFEST_FIELDS))}")
        manifest = Manifest(_hex(doc, "hub_id", 32), _count(doc, "schema_version"),
                            _count(doc, "head"), _count(doc, "created_ms"),
                            _of(doc, "files", dict))
        _of(doc, "created", str)
        for name, entry in manifest.files.items():
            _check_path(name)
            if not isinstance(entry, dict) or set(entry) != {"size", "sha256"}:
                raise ValueError(f"its entry for {name!r} is not a size and a sha256")
            _hex(entry, "sha256", 32)
            _count(entry, "size")
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(manifest.hub_id)).verify(
            bytes.fromhex(_hex(doc, "signature", 64)), _signed_body(doc))
    except InvalidSignature:
        raise UsageError(f"{damaged}: its signature is not its hub's (altered)") from None
    except ValueError as exc:
        raise UsageError(f"{damaged}: {exc}") from None
    if DB not in manifest.files:
        raise UsageError(f"{damaged}: it lists no {DB}")
    return manifest


_MANIFEST_FIELDS = {"format", "version", "hub_id", "schema_version", "head", "created_ms",
                    "created", "files", "signature"}
#: A manifest's bytes beyond its files' entries (its other fields: well under 1 KiB).
_MANIFEST_BASE = 64 << 10
#: A file's entry in a manifest beyond its name's (sha256, size, JSON's punctuation).
_ENTRY_BYTES = 256


def _manifest_limit(source: Path) -> int:
    """The most a backup's manifest can take: an entry per file beside it (a name costs
    at most 6 bytes a character, JSON-escaped). No fixed cap: a hub's chunk files have
    no bound but the disk; a manifest larger than its list of files is none of ours."""
    return _MANIFEST_BASE + sum(6 * len(str(p.relative_to(source))) + _ENTRY_BYTES
                                for p in source.rglob("*") if p.name != MANIFEST)


def _no_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    doc = dict(pairs)
    if len(doc) != len(pairs):
        raise ValueError("a key is repeated")
    return doc


def _no_fraction(text: str) -> Any:
    raise ValueError(f"{text} is not a whole number")


def _of(doc: dict[str, Any], key: str, kind: type) -> Any:
    value = doc.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ValueError(f"its {key} is not a {kind.__name__}")
    return value


def _count(doc: dict[str, Any], key: str) -> int:
    value: int = _of(doc, key, int)
    if value < 0:
        raise ValueError(f"its {key} is negative")
    return value


def _hex(doc: dict[str, Any], key: str, size: int) -> str:
    value: str = _of(doc, key, str)
    if len(value) != 2 * size or not set(value) <= set("0123456789abcdef"):
        raise ValueError(f"its {key} is not {size} bytes in hex")
    return value


def _check_path(name: str) -> None:
    """A manifest's file: ``hub.db`` or under ``documents/``, never a key, nowhere else."""
    parts = PurePosixPath(name).parts
    if not (name == DB or (len(parts) > 1 and parts[0] == DOCUMENTS_DIR)) or any(
            p in ("", ".", "..") for p in parts) or name.startswith("/") or "\\" in name \
            or parts[-1] in SECRET_FILES:
        raise ValueError(f"it lists {name!r}, which no backup holds")


def verify(source: Path) -> Manifest:
    """Check a backup directory whole: the manifest, each file's size and hash, and the
    database (opens, integrity, a schema this release knows). Writes nothing."""
    manifest = read_manifest(source)
    problems = []
    for name, entry in sorted(manifest.files.items()):
        path = source / name
        if not path.is_file():
            problems.append(f"{name} is missing")
        elif path.stat().st_size != int(entry["size"]) or \
                _describe(path)["sha256"] != entry["sha256"]:
            problems.append(f"{name} was altered (not the size and hash its manifest gives)")
    if problems:
        raise UsageError(f"the backup in {source} is not whole: " + "; ".join(problems[:5])
                         + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""))
    with _connect(source / DB, readonly=True) as db:
        _check_integrity(db, source / DB)
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        held = db.execute("SELECT value FROM meta WHERE key = ?", [HUB_ID]).fetchone()
    if version != manifest.schema_version or held is None or held[0] != manifest.hub_id:
        raise UsageError(f"the backup in {source} is not whole: its database is not the "
                         "one its manifest describes")
    if version > len(MIGRATIONS.steps):
        raise UsageError(f"the backup in {source} was made by a newer release (schema "
                         f"{version}; this release knows up to {len(MIGRATIONS.steps)})")
    return manifest


def restore(source: Path, data: Path) -> Manifest:
    """Bring the backup in ``source`` back into ``data`` (new, or holding only this hub's
    keys); returns its manifest. Checks everything before writing anything."""
    source, data = Path(source), Path(data)
    check_directory(data)
    manifest = verify(source)
    # documents without a database, beside our staging: a restore cut short, taken over
    resumed = (data / RESTORING).is_dir() and not (data / DB).exists()
    if (data / DB).exists() or ((data / DOCUMENTS_DIR).exists() and not resumed):
        raise UsageError(f"{data} holds a hub's data already; not overwriting it (restore "
                         "into a new directory)")
    others = sorted(p.name for p in data.iterdir() if p.name not in (
        *SECRET_FILES, RESTORING, DOCUMENTS_DIR) and not is_later_key_name(p.name)
        ) if data.is_dir() else []
    if others:
        raise UsageError(f"{data} holds other files ({', '.join(others[:3])}"
                         f"{', ...' if len(others) > 3 else ''}); restore into a new "
                         "directory, or one holding only this hub's keys")
    if (data / ED_KEY).exists():
        mine = _hub_id(data)
        if mine != manifest.hub_id:
            raise UsageError(f"{data} holds hub {mine}'s keys, but the backup is hub "
                             f"{manifest.hub_id}'s")
    data.mkdir(mode=0o700, parents=True, exist_ok=True)
    staging = data / RESTORING
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(mode=0o700)
    for name in manifest.files:
        dest = staging / name
        dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        _copy_file(source / name, dest)
    copied = {name: _describe(staging / name) for name in manifest.files}
    if copied != {n: {"size": int(e["size"]), "sha256": e["sha256"]}
                  for n, e in manifest.files.items()}:
        shutil.rmtree(staging, ignore_errors=True)
        raise UsageError(f"the backup in {source} changed while it was read; nothing restored")
    if (staging / DB).exists():
        _skip_numbers(staging / DB)
    if resumed:
        shutil.rmtree(data / DOCUMENTS_DIR, ignore_errors=True)
    for entry in (DOCUMENTS_DIR, DB):  # the database last: with it, the restore is done
        if (staging / entry).exists():
            os.replace(staging / entry, data / entry)
    fsync_dir(data)
    shutil.rmtree(staging, ignore_errors=True)  # last: its presence marks a restore cut short
    return manifest


def _skip_numbers(db_path: Path) -> None:
    """Kiosk numbers the lost hub may have given after the backup are never given again:
    a short code is its kiosk's number and a count, and a patient id derives from the
    code, so a number given twice could give two patients one id. New kiosks are
    numbered past ``RESTORE_NUMBER_GAP`` more than the backup knew of."""
    with contextlib.closing(sqlite3.connect(db_path, isolation_level=None)) as db:
        top = next_number(db) - 1  # type: ignore[arg-type]
        db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                   [NUMBER_FLOOR, top + RESTORE_NUMBER_GAP])
