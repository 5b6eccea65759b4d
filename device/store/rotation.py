"""Rotating a kiosk's store key: every sealed value sealed again under a new key, in slices.

Theory of operation
-------------------
``start`` has the key provider make a new random key and keep it durable
beside the current one (``keys.RotatingKey``: ``store.key.next``, a second
blob sealed to the TPM, or a second wrap in ``passphrase.keys``) before
anything is sealed under it. From then on every ``Store`` opened on the
folder holds both keys (``keys.FieldCipher``: it seals under the new key and
opens under the new one, else the old one), and the process that holds the
run lock (``haven-kiosk run``, or ``haven-kiosk keys rotate`` itself when no
runtime runs) walks every sealed value of the kiosk, a slice at a time
(``step``):

- ``store.db``: the write log (``ops``), the records' sets and conflicts
  (``records.extra``), the field values and the quarantine;
- ``documents.db``: the chunk-naming key, the manifests and the chunks;
- ``sync.db``: the batches the hub has not acknowledged.

Each slice is a ``BULK`` job on the store's writer, as a garbage-collection
slice is (``collect``): check-ins waiting go first, a slice stops as soon as
one waits or its time is up (``collect._slice_s``), and between slices the
walk lets the WAL be checkpointed once it has grown. A slice commits without
an fsync, so the next check-in's commit writes out what the slices before it
wrote: while check-ins come, the walk rests ``BUSY_PAUSE_S`` after each
slice, so that a check-in carries a few slices' pages, not a stream of them
(``key_rotation`` in BENCHMARKS.md: at 50 check-ins a second, p99 1.6 times
its value at rest, the walk about five times as long as alone). A slice counts
as one commit toward the next checkpoint, as a GC slice does: counted by the
values it re-sealed, the walk checkpointed every few MiB and a check-in's
commit often waited behind one. A value that opens
under the new key is left alone; one that opens under the old key is sealed
again under the new one (same place, same associated data, a fresh nonce);
one that opens under neither was unreadable before and is counted, not
touched. The walk's place is kept in ``meta`` (``key_rotation``) in the
slice's own transaction (committed without an fsync: the next check-in's
carries it, and a power cut loses at most a slice, which is done again:
sealing again is idempotent), so a rotation cut anywhere resumes where it
was when the runtime starts again.

The walk goes over everything twice: the first pass re-seals, the second
checks that every value opens under the new key, and goes again until a
whole pass had nothing left to re-seal (a value sealed under the old key
while the first pass ran, by a process that opened the store before the
rotation began). Then the walk's end is committed with an fsync, and only
then, at the next ``step``, the provider swaps the keys (``promote_next``:
the new key takes the old one's name, the folder is synced, and the old key
is overwritten and unlinked as a wipe does), and the cipher forgets the old
key. A cut during the swap leaves one of the two keys under the provider's
name, each able to open every value, and the next ``step`` finishes it.

Writes: a rotation writes every sealed page once more (the WAL, then the
database at a checkpoint); a kiosk at rest writes nothing more for it (the
runtime looks for a next key with a ``stat`` every ``POLL_S``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlite_utils

from device.store.collect import BUSY_S, _settle, _slice_s
from device.store.exc import CorruptData, StoreError
from device.store.keys import FieldCipher, RotatingKey
from device.store.materialise import op_label
from device.store.providers import next_key_held
from device.store.writer import BULK
from protocol.crdt.clock import Dot
from protocol.driver.database import immediate, open_database

if TYPE_CHECKING:
    from device.store.store import Store

log = logging.getLogger("haven.store")
#: ``meta`` key: the walk's progress (JSON); absent when no rotation runs.
META = "key_rotation"
#: How often the runtime looks for a rotation to run (a ``stat``: nothing written).
POLL_S = 5.0
#: After a failure, the next try waits this many looks.
FAILED_WAIT = 12
#: Values per statement; a slice takes such chunks until its time is up.
ROWS = 64
#: While check-ins come (one in the last ``collect.BUSY_S``), the walk rests this long
#: after each slice (``collect.BUSY_SLICE_S`` then): see the module docstring.
BUSY_PAUSE_S = 0.02
STORE_DB = "store.db"


class RotationRunning(StoreError):
    """A rotation of the store key is under way already."""

    code = "rotation-running"


class CannotRotate(StoreError):
    """The store's key provider cannot rotate its key."""

    code = "cannot-rotate"


@dataclass(frozen=True)
class Sealed:
    """One column of sealed values: its file and table, the columns that order the walk
    (``key``), those its associated data is made of, and how (``label``; None: a field
    value, bound to record, field and dot)."""

    file: str
    table: str
    key: tuple[str, ...]
    ad: tuple[str, ...]
    column: str
    label: Callable[..., bytes] | None
    rows: int = ROWS
    where: str = ""


def sealed_columns() -> tuple[Sealed, ...]:
    """Every column of values sealed under the store key, in the walk's order."""
    from device.store.quarantine import LABEL as QUARANTINE_LABEL
    from device.sync import document_store as docs
    from device.sync.state import DB_NAME as SYNC_DB
    from device.sync.state import SEAL_LABEL

    return (
        Sealed(STORE_DB, "ops", ("id",), ("rid", "stamp", "node"), "sealed",
               lambda rid, stamp, node: op_label(bytes(rid), Dot(stamp, node))),
        Sealed(STORE_DB, "records", ("rid",), ("rid",), "extra",
               lambda rid: b"rec" + bytes(rid)),
        Sealed(STORE_DB, "field_values", ("rid", "field"), ("rid", "field", "stamp", "node"),
               "sealed", None),
        Sealed(STORE_DB, "quarantine", ("id",), (), "sealed", lambda: QUARANTINE_LABEL),
        Sealed(docs.DB_NAME, "meta", ("key",), (), "value", lambda: docs.NAMES_LABEL,
               where="key = 'names'"),
        Sealed(docs.DB_NAME, "documents", ("rowid",), ("rid",), "manifest",
               lambda rid: docs._manifest_label(bytes(rid))),
        Sealed(docs.DB_NAME, "chunks", ("rowid",), ("name",), "sealed",
               lambda name: docs._chunk_label(bytes(name)), rows=4),
        Sealed(SYNC_DB, "batches", ("seq",), (), "sealed", lambda: SEAL_LABEL),
    )


# The provider's side ------------------------------------------------------------------

def rotating_key(store: Store) -> RotatingKey:
    """The store's key provider, if it can rotate; ``CannotRotate`` otherwise."""
    provider = store.key_provider
    if not all(hasattr(provider, m) for m in ("has_next", "next_key", "make_next",
                                              "promote_next")):
        raise CannotRotate(f"the store's key provider ({type(provider).__name__}) cannot "
                           "rotate its key")
    return provider  # type: ignore[return-value]


def cipher_of(provider: Any) -> FieldCipher:
    """The cipher of a store whose key ``provider`` gives: with the next key sealing, and
    the key opening what it has not re-sealed yet, while a rotation is under way."""
    key = provider.key()
    has_next = getattr(provider, "has_next", None)
    upcoming = provider.next_key() if has_next is not None and has_next() else None
    return FieldCipher(key) if upcoming is None else FieldCipher(upcoming, old=key)


def start(store: Store) -> None:
    """Make the next key, durable before it returns; ``RotationRunning`` if one is held."""
    provider = rotating_key(store)
    if provider.has_next():
        raise RotationRunning("a rotation of the store key is under way already: it "
                              "finishes by itself (haven-kiosk status shows how far)")
    try:
        provider.make_next()
    except FileExistsError:
        raise RotationRunning("a rotation of the store key is under way already") from None


def under_way(store: Store) -> bool:
    """Whether a rotation waits to be walked or finished (a ``stat`` and a read); never
    for a provider that cannot rotate."""
    has_next = getattr(store.key_provider, "has_next", None)
    return has_next is not None and (has_next() or _progress(store.reader) is not None)


# The walk -----------------------------------------------------------------------------

def _progress(db: sqlite_utils.Database) -> dict[str, Any] | None:
    row = db.execute("SELECT value FROM meta WHERE key = ?", [META]).fetchone()
    return None if row is None else dict(json.loads(row[0]))


def _save(db: sqlite_utils.Database, state: dict[str, Any]) -> None:
    db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
               [META, json.dumps(state, sort_keys=True)])


def _fresh() -> dict[str, Any]:
    return {"pass": 1, "step": 0, "after": None, "walked": 0, "resealed": 0,
            "unreadable": 0, "swap": False}


def _packed(values: tuple[Any, ...]) -> list[Any]:
    return [{"x": bytes(v).hex()} if isinstance(v, (bytes, memoryview)) else v for v in values]


def _unpacked(values: list[Any]) -> list[Any]:
    return [bytes.fromhex(v["x"]) if isinstance(v, dict) else v for v in values]


class _Files:
    """Connections to the other files holding sealed values, on the writer thread."""

    def __init__(self, data: Path) -> None:
        self.data = data
        self._open: dict[str, sqlite_utils.Database | None] = {}

    def get(self, name: str) -> sqlite_utils.Database | None:
        if name not in self._open:
            path = self.data / name
            self._open[name] = (open_database(path, synchronous="FULL") if path.exists()
                                else None)
        return self._open[name]

    def close(self) -> None:
        for db in self._open.values():
            if db is not None:
                db.conn.close()
        self._open.clear()


def _chunk(cipher: FieldCipher, db: sqlite_utils.Database, spec: Sealed,
           after: list[Any] | None, state: dict[str, Any]) -> list[Any] | None:
    """The next chunk of ``spec``'s values after ``after`` sealed again where needed, in
    the caller's transaction; the last key walked, None at the end of the column."""
    keys = ", ".join(spec.key)
    marks = ", ".join("?" * len(spec.key))
    conds = [c for c in (spec.where, f"({keys}) > ({marks})" if after is not None else "")
             if c]
    try:
        rows = db.execute(
            f"SELECT {', '.join((*spec.key, *spec.ad, spec.column))} FROM {spec.table}"
            f"{' WHERE ' + ' AND '.join(conds) if conds else ''} ORDER BY {keys} LIMIT ?",
            [*(after or []), spec.rows]).fetchall()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):  # a file from before the table: nothing there
            return None
        raise  # busy, or worse: the slice is done again, never skipped
    n = len(spec.key)
    changed = []
    for row in rows:
        sealed = row[-1]
        if sealed is None:
            continue
        state["walked"] += 1
        try:
            again = (cipher.reseal_blob(spec.label(*row[n:-1]), bytes(sealed))
                     if spec.label is not None else
                     cipher.reseal_field(bytes(row[n]), row[n + 1], row[n + 2], row[n + 3],
                                         bytes(sealed)))
        except CorruptData:
            state["unreadable"] += 1
            continue
        if again is not None:
            changed.append((again, *row[:n]))
    if changed:
        db.conn.executemany(f"UPDATE {spec.table} SET {spec.column} = ?"
                            f" WHERE ({keys}) = ({marks})", changed)
    state["resealed"] += len(changed)
    return list(row[:n]) if len(rows) == spec.rows else None


def _slice(store: Store, files: _Files, db: sqlite_utils.Database) -> bool:
    """One slice of the walk (a job on the writer): True once it has reached its end."""
    started, limit = time.perf_counter(), _slice_s(store)
    columns = sealed_columns()
    with immediate(db, synchronous="NORMAL"):
        state = _progress(db) or _fresh()
        while not state["swap"]:
            spec = columns[state["step"]]
            after = None if state["after"] is None else _unpacked(state["after"])
            if spec.file == STORE_DB:
                last = _chunk(store.cipher, db, spec, after, state)
            else:
                other = files.get(spec.file)
                if other is None:
                    last = None
                else:
                    with immediate(other):
                        last = _chunk(store.cipher, other, spec, after, state)
            state["after"] = None if last is None else _packed(tuple(last))
            if last is None:
                _next_column(state, len(columns))
            if store.writer.urgent_waiting() or time.perf_counter() - started > limit:
                break
        if not state["swap"]:
            _save(db, state)
    if state["swap"]:  # the walk's end, and every slice before it, durable (an fsync)
        with immediate(db):
            _save(db, state)
    store.after_commit(1)  # one commit, as a GC slice counts: see the module docstring
    return bool(state["swap"])


def _next_column(state: dict[str, Any], columns: int) -> None:
    """On to the next column; after the last, the next pass, or the swap once a second
    pass or later had nothing to re-seal."""
    if state["step"] + 1 < columns:
        state["step"] += 1
        return
    if state["pass"] > 1 and state["resealed"] == 0:
        state["swap"] = True
        return
    state.update({"pass": state["pass"] + 1, "step": 0, "walked": 0, "resealed": 0,
                  "unreadable": 0})


def _finish(store: Store, provider: RotatingKey) -> None:
    """The swap, then the walk's end forgotten (see the module docstring)."""
    provider.promote_next()

    def job(db: sqlite_utils.Database) -> None:
        with immediate(db, synchronous="NORMAL"):
            state = _progress(db)
            db.execute("DELETE FROM meta WHERE key = ?", [META])
        store.cipher.forget_old()
        if state is not None and state.get("unreadable"):
            log.warning("store key rotated; %d values that opened under neither key were "
                        "left as they were (unreadable before the rotation too)",
                        state["unreadable"])
    store.writer.call(job, BULK)
    log.info("store key rotated: every value is sealed under the new key; the old key "
             "is destroyed")


def step(store: Store, files: _Files) -> bool:
    """One step of a rotation under way: a slice of the walk, or the swap; True while
    more remain."""
    provider = rotating_key(store)
    state = _progress(store.reader)
    if not provider.has_next():  # none, or swapped already (cut before the walk's end went)
        if state is not None or store.cipher.rotating:
            _finish(store, provider)
        return False
    if not store.cipher.rotating:  # the store was opened before the rotation began
        upcoming = provider.next_key()
        if upcoming is None:
            return False
        store.writer.call(lambda db: store.cipher.rotate(upcoming), BULK)
        if not store.cipher.rotating:  # the next key seals already, and no key is held beside
            raise StoreError("the store seals under the next key and holds no other: the "
                             "rotation cannot tell what is left under the old one; reopen "
                             "the store", "rotation-broken")
    if state is not None and state["swap"]:  # the walk's end is durable: the swap
        _finish(store, provider)
        return False
    # The slice that reaches the walk's end leaves the swap to the next step: a step
    # boundary (where ``stop`` or a power cut may fall) between the two.
    store.writer.call(lambda db: _slice(store, files, db), BULK)
    return True


def run(store: Store, stop: threading.Event | None = None,
        report: Callable[[dict[str, Any]], None] | None = None) -> bool:
    """Walk a rotation under way to its end (``stop``: sooner); True if it finished.
    ``report`` gets the walk's state (``meta``) after each slice."""
    stop = stop or threading.Event()
    with files_of(store) as files:
        while step(store, files):
            if report is not None:
                report(_progress(store.reader) or {})
            if store.writer.urgent_lately(BUSY_S):
                stop.wait(BUSY_PAUSE_S)  # check-ins come: see the module docstring
            if stop.is_set():
                return False
            _settle(store)
    return True


@contextlib.contextmanager
def files_of(store: Store) -> Iterator[_Files]:
    files = _Files(store.data)
    try:
        yield files
    finally:
        store.writer.call(lambda db: files.close(), BULK)


def keep_rotating(store: Store, stop: threading.Event, poll_s: float = POLL_S) -> None:
    """The runtime's thread: a rotation under way is walked to its end, now or once one
    begins (looked for every ``poll_s``), until ``stop``. A failure is logged once (a
    log line is a write to the card) and tried again after ``FAILED_WAIT`` looks."""
    said = ""
    while not stop.is_set():
        wait = poll_s
        try:
            if under_way(store):
                log.info("re-sealing the store under its new key, in the background")
                run(store, stop)
        except Exception as exc:  # noqa: BLE001 - logged; tried again later
            if str(exc) != said:
                log.error("the store key's rotation stopped (%s: %s); it is tried again",
                          type(exc).__name__, exc)
                said = str(exc)
            wait = poll_s * FAILED_WAIT
        stop.wait(wait)


# What it shows ------------------------------------------------------------------------

def progress(data: Path) -> dict[str, Any] | None:
    """A rotation under way in the kiosk folder ``data`` (read without its keys): its pass
    (1 re-seals, 2 and on check), the values walked in this pass of all there are, those
    re-sealed and those unreadable; None if none."""
    data = Path(data)
    if not (data / STORE_DB).exists():
        return None
    db = open_database(data / STORE_DB, readonly=True)
    try:
        state = _progress(db)
    finally:
        db.conn.close()
    if state is None:
        if not next_key_held(data):
            return None
        state = _fresh()
    return {"pass": state["pass"], "walked": state["walked"], "values": _count(data),
            "resealed": state["resealed"], "unreadable": state["unreadable"],
            "swapping": state["swap"]}


def _rows(data: Path, spec: Sealed, what: str) -> Iterator[tuple[Any, ...]]:
    """``SELECT what`` of ``spec``'s column, read-only; nothing if its file or table is
    missing."""
    path = Path(data) / spec.file
    if not path.exists():
        return
    db = open_database(path, readonly=True)
    try:
        yield from db.execute(f"SELECT {what} FROM {spec.table}"
                              f"{' WHERE ' + spec.where if spec.where else ''}")
    except sqlite3.OperationalError:
        return
    finally:
        db.conn.close()


def _count(data: Path) -> int:
    return sum(row[0] for spec in sealed_columns()
               for row in _rows(data, spec, f"COUNT({spec.column})"))


def opening(data: Path, cipher: FieldCipher) -> tuple[int, int]:
    """How many of the kiosk's sealed values ``cipher`` opens, and how many it does not
    (for checks: every value opens under the new key, none under the old)."""
    opened = failed = 0
    for spec in sealed_columns():
        n = len(spec.key)
        for row in _rows(data, spec, ", ".join((*spec.key, *spec.ad, spec.column))):
            if row[-1] is None:
                continue
            try:
                if spec.label is not None:
                    cipher.open_blob(spec.label(*row[n:-1]), bytes(row[-1]))
                else:
                    cipher.open_field(bytes(row[n]), row[n + 1], row[n + 2], row[n + 3],
                                      bytes(row[-1]))
                opened += 1
            except CorruptData:
                failed += 1
    return opened, failed
