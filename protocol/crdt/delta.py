"""One delta per write, in compact deterministic CBOR.

Theory of operation
-------------------
A delta is one write to one record. It travels as a CBOR array (RFC 8949,
deterministic encoding of section 4.2.1) whose first four items are fixed::

    [head, record_id, node, stamp, key1, value1, key2, value2, ...]

* ``head = type << 1 | kind`` (kind 0 put, 1 delete), one byte for the
  first eleven types;
* ``record_id`` the 16 bytes of the record's UUID;
* ``node`` the writer's 32-bit node id, ``stamp`` its HLC stamp: together
  the write's dot;
* then key/value pairs, like a CBOR map laid flat (saving the map header),
  in the deterministic map order: unsigned keys are field numbers whose
  values are last-writer-wins assignments (``null`` clears), then negative
  keys for the rest:

  ``-1`` schema version (left out when 1); ``-2`` causal context, a flat
  array ``[node, stamp, ...]`` of the record's versions from *other* nodes
  that the writer had seen (its own earlier writes are implied by its
  stamps); ``-3`` set additions ``{field: [element, ...]}``; ``-4`` set
  removals, same shape; ``-5`` the id of the conflict this write resolves.
  Unknown negative keys from a newer peer are kept and passed on.

A single-field overwrite with a 12-character string is 47 bytes.

``decode`` is strict: the bytes must be exactly what ``encode`` would make
of the result (so one write has one encoding, and hashing it is safe),
context dots must be older than the write, and a set element may not be
both added and removed. Every refusal is a ``RemoteProtocolError`` with a
short code.

``decode_many`` gives the same answers for a batch, faster: it lets cbor2's
C decoder read the whole batch as one array in one call, then proves each
delta canonical by re-encoding it in C and comparing bytes (which also pins
every delta's boundaries, so a truncated one cannot borrow bytes from the
next), checks value types and depth, and checks the delta's own rules (key
order, sorted context and set elements) on the decoded items instead of
re-encoding it in Python. Anything it is not sure of, and every refusal,
goes through ``decode`` one by one, so the errors and codes are the same.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from protocol import MICROPYTHON, strict_cbor
from protocol.crdt.clock import MAX_NODE, MAX_STAMP, Dot
from protocol.errors import LocalProtocolError, RemoteProtocolError

if TYPE_CHECKING or not MICROPYTHON:  # the batch path's C codec (none under MicroPython)
    import functools

    import cbor2
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

PUT = 0
DELETE = 1
KEY_SCHEMA = -1
KEY_CTX = -2
KEY_ADD = -3
KEY_REMOVE = -4
KEY_RESOLVES = -5
MAX_FIELD = 0xFFFF
MAX_TYPE = 0x7FFF
MAX_DELTA_SIZE = 32 * 1024
CONFLICT_ID_SIZE = 8


class DeltaError(RemoteProtocolError):
    code = "bad-delta"


@dataclass(frozen=True)
class Delta:
    """One write. Values are in wire form (see ``schema.FieldSpec.to_wire``)."""

    __match_args__ = (
        "record_id", "type", "node", "stamp", "kind", "set", "add", "remove", "ctx", "schema",
        "resolves", "extra"
    )
    record_id: bytes
    type: int
    node: int
    stamp: int
    kind: int = PUT
    set: Mapping[int, Any] = field(default_factory=dict)
    add: Mapping[int, tuple[str, ...]] = field(default_factory=dict)
    remove: Mapping[int, tuple[str, ...]] = field(default_factory=dict)
    ctx: tuple[Dot, ...] = ()
    schema: int = 1
    resolves: bytes | None = None
    extra: Mapping[int, Any] = field(default_factory=dict)

    @property
    def dot(self) -> Dot:
        return Dot(self.stamp, self.node)

    @property
    def is_delete(self) -> bool:
        return self.kind == DELETE


def _key_order(key: int) -> tuple[int, int]:
    return (0, key) if key >= 0 else (1, -1 - key)


def encode(delta: Delta) -> bytes:
    """The deterministic bytes of ``delta``."""
    _check(delta, LocalProtocolError)
    return _encode(delta)


def _encode(delta: Delta) -> bytes:
    pairs: dict[int, Any] = dict(delta.extra)
    pairs.update(delta.set)
    if delta.schema != 1:
        pairs[KEY_SCHEMA] = delta.schema
    if delta.ctx:
        pairs[KEY_CTX] = [x for dot in sorted(set(delta.ctx)) for x in (dot.node, dot.stamp)]
    if delta.add:
        pairs[KEY_ADD] = {k: sorted(set(v)) for k, v in delta.add.items()}
    if delta.remove:
        pairs[KEY_REMOVE] = {k: sorted(set(v)) for k, v in delta.remove.items()}
    if delta.resolves is not None:
        pairs[KEY_RESOLVES] = delta.resolves
    items: list[Any] = [delta.type << 1 | delta.kind, delta.record_id, delta.node, delta.stamp]
    for key in sorted(pairs, key=_key_order):
        items += (key, pairs[key])
    return strict_cbor.dumps(items)


def decode(data: bytes) -> Delta:
    """Parse and check one delta; raises ``RemoteProtocolError`` on anything amiss."""
    obj = strict_cbor.loads(data, max_size=MAX_DELTA_SIZE)
    if not isinstance(obj, list) or len(obj) < 4 or len(obj) % 2:
        raise DeltaError("a delta is an array of 4 items and key/value pairs", "delta-shape")
    head, rid, node, stamp = obj[:4]
    if type(head) is not int or not 0 <= head <= (MAX_TYPE << 1 | 1):
        raise DeltaError("delta head out of range", "delta-head")
    if head & 1 not in (PUT, DELETE):
        raise DeltaError("unknown delta kind", "delta-kind")
    pairs: dict[int, Any] = {}
    for i in range(4, len(obj), 2):
        key = obj[i]
        if type(key) is not int or key in pairs:
            raise DeltaError("delta keys are distinct integers", "delta-key")
        pairs[key] = obj[i + 1]
    sets: dict[int, Any] = {}
    extra: dict[int, Any] = {}
    for key, value in pairs.items():
        if 0 <= key <= MAX_FIELD:
            sets[key] = value
        elif key < 0 and key not in (KEY_SCHEMA, KEY_CTX, KEY_ADD, KEY_REMOVE, KEY_RESOLVES):
            extra[key] = value
        elif key >= 0:
            raise DeltaError(f"field number {key} out of range", "delta-key")
    schema = pairs.get(KEY_SCHEMA, 1)
    resolves = pairs.get(KEY_RESOLVES)
    delta = Delta(
        record_id=rid if type(rid) is bytes else b"",
        type=head >> 1,
        node=node if type(node) is int else -1,
        stamp=stamp if type(stamp) is int else -1,
        kind=head & 1,
        set=sets,
        add=_elements(pairs[KEY_ADD]) if KEY_ADD in pairs else {},
        remove=_elements(pairs[KEY_REMOVE]) if KEY_REMOVE in pairs else {},
        ctx=_ctx(pairs[KEY_CTX]) if KEY_CTX in pairs else (),
        schema=schema if type(schema) is int else -1,
        resolves=resolves if resolves is None or type(resolves) is bytes else b"",
        extra=extra,
    )
    _check(delta, DeltaError)
    if _encode(delta) != data:
        raise DeltaError("delta is not in deterministic form", "delta-noncanonical")
    return delta


def _ctx(obj: Any) -> tuple[Dot, ...]:
    if not isinstance(obj, list) or len(obj) % 2 or not obj:
        raise DeltaError("causal context is a non-empty flat array of node, stamp", "delta-ctx")
    dots = []
    for i in range(0, len(obj), 2):
        node, stamp = obj[i], obj[i + 1]
        if not (type(node) is int and 0 <= node <= MAX_NODE and type(stamp) is int
                and 0 < stamp <= MAX_STAMP):
            raise DeltaError("causal context dot out of range", "delta-ctx")
        dots.append(Dot(stamp, node))
    return tuple(dots)


def _elements(obj: Any) -> dict[int, tuple[str, ...]]:
    if not isinstance(obj, dict) or not obj:
        raise DeltaError("set changes are a non-empty map of field to elements", "delta-set")
    out: dict[int, tuple[str, ...]] = {}
    for key, values in obj.items():
        if not (type(key) is int and 0 <= key <= MAX_FIELD and isinstance(values, list)
                and values and all(type(v) is str for v in values)):
            raise DeltaError("set changes are field -> non-empty list of text", "delta-set")
        out[key] = tuple(values)
    return out


def _check(delta: Delta, error: type[LocalProtocolError] | type[RemoteProtocolError]) -> None:
    if len(delta.record_id) != 16:
        raise error("record id is 16 bytes", "delta-rid")
    if not 0 <= delta.type <= MAX_TYPE or delta.kind not in (PUT, DELETE):
        raise error("delta type or kind out of range", "delta-head")
    if not 0 <= delta.node <= MAX_NODE:
        raise error("node id is a 32-bit unsigned integer", "delta-node")
    if not 0 < delta.stamp <= MAX_STAMP:
        raise error("stamp is a positive 64-bit integer", "delta-stamp")
    if not 1 <= delta.schema <= 0xFFFF:
        raise error("schema version out of range", "delta-schema")
    if delta.resolves is not None and len(delta.resolves) != CONFLICT_ID_SIZE:
        raise error(f"a conflict id is {CONFLICT_ID_SIZE} bytes", "delta-resolves")
    if any(dot.stamp >= delta.stamp for dot in delta.ctx):
        raise error("causal context names a write that is not older", "delta-ctx")
    if any(dot.node == delta.node for dot in delta.ctx):
        raise error("causal context names the writer's own write", "delta-ctx")
    if delta.kind == DELETE and (delta.set or delta.add or delta.remove):
        raise error("a delete carries no field changes", "delta-kind")
    for key in list(delta.set) + list(delta.add) + list(delta.remove):
        if not 0 <= key <= MAX_FIELD:
            raise error(f"field number {key} out of range", "delta-key")
    for key in delta.extra:
        if key >= 0 or key in (KEY_SCHEMA, KEY_CTX, KEY_ADD, KEY_REMOVE, KEY_RESOLVES):
            raise error("extra keys are unknown negative keys", "delta-key")
    for key in set(delta.set) & (set(delta.add) | set(delta.remove)):
        raise error(f"field {key} is both assigned and changed as a set", "delta-set")
    for key in set(delta.add) & set(delta.remove):
        if set(delta.add[key]) & set(delta.remove[key]):
            raise error("an element is both added and removed", "delta-set")
    if sorted(set(delta.ctx)) != sorted(delta.ctx):
        raise error("causal context repeats a dot", "delta-ctx")
    for values in list(delta.add.values()) + list(delta.remove.values()):
        if not values or list(values) != sorted(set(values)):
            raise error("set elements are sorted and distinct", "delta-set")


# Batch decoding ----------------------------------------------------------------------

#: Deltas up to this size take the batch path: each CBOR item is at least one byte, so
#: none can hold more items than ``strict_cbor``'s cap.
FAST_MAX_SIZE = min(MAX_DELTA_SIZE, strict_cbor.DEFAULT_MAX_ITEMS)
_MAX_DEPTH = strict_cbor.DEFAULT_MAX_DEPTH
_INT_MIN = -(1 << 64)
_INT_MAX = (1 << 64) - 1
_SCALAR_TYPES = frozenset({str, bytes, bool, float, type(None)})
_MAX_HEAD = MAX_TYPE << 1 | 1
_NEGATIVE_RANK = MAX_FIELD + 1  # negative keys sort after every field number
if not MICROPYTHON:
    _canonical: Callable[[Any], bytes] = functools.partial(cbor2.dumps, canonical=True)


def _plain(value: Any, depth: int) -> bool:
    """Only what strict CBOR decodes to: no tag made an object, no bignum, depth capped."""
    t = type(value)
    if t is int:
        return bool(_INT_MIN <= value <= _INT_MAX)
    if t in _SCALAR_TYPES:
        return True
    if depth >= _MAX_DEPTH:
        return False
    if t is list:
        return all(_plain(v, depth + 1) for v in value)
    if t is dict:
        return all(_plain(k, depth + 1) and _plain(v, depth + 1) for k, v in value.items())
    return False


def _sorted_text(values: Any) -> tuple[str, ...] | None:
    if type(values) is not list or not values:
        return None
    prev = None
    for v in values:
        if type(v) is not str or (prev is not None and v <= prev):
            return None
        prev = v
    return tuple(values)


def _fast_elements(obj: Any) -> dict[int, tuple[str, ...]] | None:
    if type(obj) is not dict or not obj:
        return None
    out: dict[int, tuple[str, ...]] = {}
    for key, values in obj.items():
        elems = _sorted_text(values)
        if type(key) is not int or not 0 <= key <= MAX_FIELD or elems is None:
            return None
        out[key] = elems
    return out


def _fast_ctx(obj: Any, node: int, stamp: int) -> tuple[Dot, ...] | None:
    if type(obj) is not list or not obj or len(obj) % 2:
        return None
    dots = []
    prev: tuple[int, int] = (0, -1)
    for i in range(0, len(obj), 2):
        n, s = obj[i], obj[i + 1]
        if (type(n) is not int or type(s) is not int or not 0 <= n <= MAX_NODE
                or not 0 < s < stamp or n == node or (s, n) <= prev):
            return None
        prev = (s, n)
        dots.append(Dot(s, n))
    return tuple(dots)


_new = object.__new__


def _fast(obj: Any) -> Delta | None:
    """The delta ``decode`` would return for these decoded items, or ``None`` if unsure."""
    if type(obj) is not list:
        return None
    n = len(obj)
    if n < 4 or n % 2:
        return None
    head, rid, node, stamp = obj[0], obj[1], obj[2], obj[3]
    if (type(head) is not int or not 0 <= head <= _MAX_HEAD or type(rid) is not bytes
            or len(rid) != 16 or type(node) is not int or not 0 <= node <= MAX_NODE
            or type(stamp) is not int or not 0 < stamp <= MAX_STAMP):
        return None
    sets: dict[int, Any] = {}
    extra: dict[int, Any] = {}
    add: dict[int, tuple[str, ...]] = {}
    remove: dict[int, tuple[str, ...]] = {}
    ctx: tuple[Dot, ...] = ()
    schema = 1
    resolves: bytes | None = None
    last = -1  # keys in ``_key_order``: field numbers ascend, then -1, -2, ...
    for i in range(4, n, 2):
        key, value = obj[i], obj[i + 1]
        if type(key) is not int:
            return None
        rank = key if key >= 0 else _NEGATIVE_RANK - 1 - key
        if rank <= last:
            return None
        last = rank
        if key >= 0:
            if key > MAX_FIELD or not (type(value) in _SCALAR_TYPES or _plain(value, 1)):
                return None
            sets[key] = value
            continue
        if key == KEY_SCHEMA:
            if type(value) is not int or not 2 <= value <= 0xFFFF:
                return None
            schema = value
        elif key == KEY_CTX:
            found = _fast_ctx(value, node, stamp)
            if found is None:
                return None
            ctx = found
        elif key in (KEY_ADD, KEY_REMOVE):
            elems = _fast_elements(value)
            if elems is None:
                return None
            if key == KEY_ADD:
                add = elems
            else:
                remove = elems
        elif key == KEY_RESOLVES:
            if type(value) is not bytes or len(value) != CONFLICT_ID_SIZE:
                return None
            resolves = value
        else:
            if not _plain(value, 1):
                return None
            extra[key] = value
    kind = head & 1
    if kind == DELETE and (sets or add or remove):
        return None
    if (add or remove) and (set(sets) & (set(add) | set(remove))):
        return None
    if add and remove:
        for k in set(add) & set(remove):
            if set(add[k]) & set(remove[k]):
                return None
    delta: Delta = _new(Delta)
    delta.__dict__.update(
        record_id=rid, type=head >> 1, node=node, stamp=stamp, kind=kind, set=sets, add=add,
        remove=remove, ctx=ctx, schema=schema, resolves=resolves, extra=extra)
    return delta


def _array_header(n: int) -> bytes:
    if n < 24:
        return bytes([0x80 | n])
    for info, width in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if n < 1 << (8 * width):
            return bytes([0x80 | info]) + n.to_bytes(width, "big")
    raise LocalProtocolError("batch too large")


def decode_many(items: Sequence[bytes]) -> list[Delta | RemoteProtocolError]:
    """``decode`` each item: the delta, or the ``RemoteProtocolError`` it raised."""
    out: list[Delta | RemoteProtocolError | None] = [None] * len(items)
    batch = [i for i, data in enumerate(items)
             if type(data) is bytes and 0 < len(data) <= FAST_MAX_SIZE and not MICROPYTHON]
    objs: Any = None
    if batch:
        blob = _array_header(len(batch)) + b"".join([items[i] for i in batch])
        try:
            objs = cbor2.loads(blob, allow_indefinite=False, allow_duplicate_keys=False,
                               max_depth=_MAX_DEPTH + 2)
        except Exception:  # any refusal: every delta goes through ``decode``
            objs = None
    if type(objs) is list and len(objs) == len(batch):
        try:
            again: list[bytes | None] = list(map(_canonical, objs))
        except Exception:
            again = [None] * len(objs)
        for j, i in enumerate(batch):
            if again[j] == items[i]:
                out[i] = _fast(objs[j])
    result: list[Delta | RemoteProtocolError] = []
    for i, got in enumerate(out):
        if got is None:
            try:
                got = decode(items[i])
            except RemoteProtocolError as exc:
                got = exc
        result.append(got)
    return result
