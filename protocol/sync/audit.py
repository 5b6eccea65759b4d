"""The kiosk's audit chain: every technician action, signed and hash-chained
(SPEC.md "Audit").

Theory of operation
-------------------
An entry says who acted (a technician certificate's serial, or ``presence``
for someone at the kiosk's button without a credential), what they did,
when (milliseconds since 1970, the kiosk's best time) and the result, with
an optional detail: a flat map that never holds a patient's values. The
kiosk numbers its entries 1, 2, ... and chains them as it chains its
batches (``batches.chain_hash``, ``batches.head_bytes``), under labels of
their own::

    entry = strict CBOR {1: seq, 2: time, 3: who, 4: what, 5: result, ? 6: detail}
    hash  = SHA-256("haven-audit\\0" || prev || seq as u64 || entry)
    sig   = Ed25519(kiosk key, "haven-audit-head\\0" || device || "\\0" || seq as u64 || hash)

``prev`` is the hash of entry ``seq - 1`` (32 zero bytes for entry 1).
Each entry travels as one put of record type ``audit`` (8) on the record
``audit_id(node, seq)``, which no write ever touches again, through the
kiosk's ordinary outbox and sync rounds. ``verify`` checks the entries a
hub holds for one kiosk: each signature, each link to the entry before, and
the numbers missing (a gap stays reported until the entry arrives).

Everything here is pure: no I/O, no clock.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from protocol import MICROPYTHON, strict_cbor
from protocol.crdt.delta import PUT, Delta
from protocol.crdt.schema import AUDIT
from protocol.errors import LocalProtocolError, RemoteProtocolError
from protocol.sync.batches import GENESIS, chain_hash, head_bytes, head_signed

if TYPE_CHECKING:
    from collections.abc import Iterable

    from protocol.crypto import Ed25519PrivateKey
if TYPE_CHECKING or not MICROPYTHON:
    from collections.abc import Mapping
else:  # MicroPython has no collections.abc; a detail is a dict there
    Mapping = dict

ENTRY_LABEL = b"haven-audit\x00"
HEAD_LABEL = b"haven-audit-head\x00"
PRESENCE = "presence"
#: ``who``: a certificate serial (or ``presence``); ``what`` and ``result``: short codes;
#: detail keys: names. Each is (its first character, the others, the longest).
_LOWER = "abcdefghijklmnopqrstuvwxyz"
_DIGITS = "0123456789"
_WHO = (frozenset(_LOWER.upper() + _LOWER + _DIGITS),
        frozenset(_LOWER.upper() + _LOWER + _DIGITS + "._:-"), 64)
_CODE = (frozenset(_LOWER + _DIGITS), frozenset(_LOWER + _DIGITS + "._:-"), 64)
_KEY = (frozenset(_LOWER), frozenset(_LOWER + _DIGITS + "_"), 32)
MAX_DETAIL_ITEMS = 16
MAX_DETAIL_TEXT = 200
MAX_DETAIL_JSON = 2048
#: Detail keys refused outright: they name what a patient is or typed.
PATIENT_WORDS = frozenset({
    "name", "birthdate", "birth_date", "birth", "gender", "telecom", "phone", "address",
    "identifier", "passport", "code", "patient", "patient_id", "subject", "claim",
    "claimname", "claim_name", "claimbirthdate", "claim_birth_date", "allergies",
    "conditions", "reason", "reasoncode", "medication", "value", "note", "text"})
#: The record id's first 8 bytes, then (variant, node, seq) in the last 8: the entries of
#: one kiosk are one range of record ids, which a hub reads in one index scan.
ID_PREFIX = b"hAvAud\x80\x00"
MAX_SEQ = (1 << 30) - 1


class AuditError(RemoteProtocolError):
    """An entry as received is not one (malformed, or not signed by its kiosk)."""

    code = "bad-audit"


class AuditValueError(LocalProtocolError):
    """A caller's entry would not be a valid one (or would hold a patient's value)."""

    code = "audit-value"


@dataclass(frozen=True)
class Entry:
    __match_args__ = ("seq", "time", "who", "what", "result", "detail")
    seq: int
    time: int
    who: str
    what: str
    result: str
    detail: str | None = None  #: canonical JSON text of a flat map, or None

    def encode(self) -> bytes:
        body: dict[int, Any] = {1: self.seq, 2: self.time, 3: self.who, 4: self.what,
                                5: self.result}
        if self.detail is not None:
            body[6] = self.detail
        return strict_cbor.dumps(body)

    def hash(self, prev: bytes) -> bytes:
        return chain_hash(ENTRY_LABEL, prev, self.seq, self.encode())


@dataclass(frozen=True)
class Signed:
    __match_args__ = ("entry", "prev", "sig")
    entry: Entry
    prev: bytes
    sig: bytes

    @property
    def hash(self) -> bytes:
        return self.entry.hash(self.prev)

    def values(self) -> dict[str, Any]:
        """The audit record's fields, by name (what ``build_put`` takes)."""
        e = self.entry
        out: dict[str, Any] = {"sequence": e.seq, "recorded": e.time, "agent": e.who,
                               "action": e.what, "outcome": e.result,
                               "prev": self.prev.hex(), "signature": self.sig.hex()}
        if e.detail is not None:
            out["detail"] = e.detail
        return out


def device_id(node: int) -> str:
    return f"{node:08x}"


def audit_id(node: int, seq: int) -> bytes:
    """The record id of entry ``seq`` of kiosk ``node``: a version-8 UUID."""
    if not 0 <= node < 1 << 32 or not 1 <= seq <= MAX_SEQ:
        raise AuditValueError(f"no audit entry {seq} of node {node}")
    return ID_PREFIX + ((0b10 << 62) | (node << 30) | seq).to_bytes(8, "big")


def id_range(node: int | None = None) -> tuple[bytes, bytes]:
    """The first and last record id of ``node``'s entries (of every kiosk's: None)."""
    if node is None:
        return ID_PREFIX + b"\x00" * 8, ID_PREFIX + b"\xff" * 8
    return audit_id(node, 1), audit_id(node, MAX_SEQ)


def is_audit_id(rid: bytes) -> bool:
    return rid[:8] == ID_PREFIX


def _is(rule: tuple[frozenset[str], frozenset[str], int], text: object) -> bool:
    """Whether ``text`` is a string that ``rule`` allows (a regular expression's work,
    without MicroPython's ``re``, which has no counted repetition)."""
    first, rest, longest = rule
    return (isinstance(text, str) and 0 < len(text) <= longest and text[0] in first
            and all(c in rest for c in text[1:]))


_JSON_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t",
                 "\b": "\\b", "\f": "\\f"}


def _json_value(value: str | int | bool | None) -> str:
    """``value`` as ``json.dumps(value, ensure_ascii=False)`` writes it. (MicroPython's
    json writes \\b and \\f otherwise, and knows no ``sort_keys``.)"""
    if type(value) is not str:
        return json.dumps(value)
    out = []
    for c in value:
        escaped = _JSON_ESCAPES.get(c)
        if escaped is None and c < " ":
            escaped = f"\\u{ord(c):04x}"
        out.append(escaped or c)
    return '"' + "".join(out) + '"'


def detail_text(detail: Mapping[str, Any] | None) -> str | None:
    """``detail`` as canonical JSON; ``AuditValueError`` if it is not a small flat map of
    codes to short values, or names a patient's field."""
    if detail is None:
        return None
    if not isinstance(detail, Mapping) or len(detail) > MAX_DETAIL_ITEMS:
        raise AuditValueError(f"an audit detail is a map of at most {MAX_DETAIL_ITEMS} items")
    for key, value in detail.items():
        if not _is(_KEY, key):
            raise AuditValueError(f"audit detail key {key!r}: lower-case letters, digits, _")
        if key in PATIENT_WORDS:
            raise AuditValueError(f"audit detail key {key!r} names a patient's value; "
                                  "audit entries never hold one")
        if value is not None and type(value) not in (str, int, bool):
            raise AuditValueError(f"audit detail {key}: text, a number, true/false or null")
        if type(value) is str and len(value) > MAX_DETAIL_TEXT:
            raise AuditValueError(f"audit detail {key}: at most {MAX_DETAIL_TEXT} characters")
    # canonical: keys sorted, no spaces (the keys need no escapes)
    text = "{" + ",".join(f'"{key}":{_json_value(detail[key])}' for key in sorted(detail)) + "}"
    if len(text) > MAX_DETAIL_JSON:
        raise AuditValueError(f"audit detail: at most {MAX_DETAIL_JSON} characters of JSON")
    return text


def make_entry(seq: int, time: int, who: str, what: str, result: str,
               detail: Mapping[str, Any] | None = None) -> Entry:
    """A checked entry; ``AuditValueError`` names what is wrong."""
    if not _is(_WHO, who):
        raise AuditValueError(f"audit who {who!r}: a certificate serial or {PRESENCE!r}")
    for label, text in (("what", what), ("result", result)):
        if not _is(_CODE, text):
            raise AuditValueError(f"audit {label} {text!r}: a code of at most 64 lower-case"
                                  " letters, digits and . _ : -")
    if type(time) is not int or time < 0:
        raise AuditValueError("audit time: milliseconds since 1970")
    audit_id(0, seq)  # in range
    return Entry(seq, time, who, what, result, detail_text(detail))


def sign(key: Ed25519PrivateKey, node: int, prev: bytes, entry: Entry) -> Signed:
    hash_ = entry.hash(prev)
    return Signed(entry, prev, key.sign(head_bytes(device_id(node), entry.seq, hash_,
                                                   HEAD_LABEL)))


def next_link(key: Ed25519PrivateKey, node: int, head: bytes | None,
              entry: Entry) -> tuple[bytes, Signed, bytes]:
    """``entry`` (its number aside) as the link after ``head``, the chain head a kiosk
    keeps (CBOR ``[node, seq, hash]``, None before the first; another node's head is
    another identity's, so the chain starts again at 1): its record id, the signed
    entry and the new head."""
    seq, prev = 1, GENESIS
    if head is not None:
        head_node, head_seq, head_hash = strict_cbor.loads(head)
        if head_node == node:
            seq, prev = head_seq + 1, head_hash
    signed = sign(key, node, prev, dataclasses.replace(entry, seq=seq))
    return audit_id(node, seq), signed, strict_cbor.dumps([node, seq, signed.hash])


def is_signed(public: bytes, node: int, signed: Signed) -> bool:
    return head_signed(public, signed.sig, head_bytes(
        device_id(node), signed.entry.seq, signed.hash, HEAD_LABEL))


def from_delta(delta: Delta) -> Signed:
    """The signed entry a write carries; ``AuditError`` if it is not one."""
    f = {AUDIT.by_number[k].name: v for k, v in delta.set.items() if k in AUDIT.by_number}
    if delta.type != AUDIT.number or delta.kind != PUT or delta.add or delta.remove:
        raise AuditError("not an audit entry's put", "audit-shape")
    try:
        seq, time = f["sequence"], f["recorded"]
        who, what, result = f["agent"], f["action"], f["outcome"]
        prev, sig = bytes.fromhex(f["prev"]), bytes.fromhex(f["signature"])
    except (KeyError, TypeError, ValueError):
        raise AuditError("an audit entry lacks a field, or a hash is not hex",
                         "audit-shape") from None
    detail = f.get("detail")
    if (type(seq) is not int or type(time) is not int or not all(
            type(x) is str for x in (who, what, result)) or len(prev) != 32
            or len(sig) != 64 or (detail is not None and type(detail) is not str)):
        raise AuditError("an audit entry's fields have the wrong kinds", "audit-shape")
    if not 1 <= seq <= MAX_SEQ or delta.record_id != audit_id(delta.node, seq):
        raise AuditError("an audit entry on a record not named by its kiosk and number",
                         "audit-id")
    return Signed(Entry(seq, time, who, what, result, detail), prev, sig)


# Checking a kiosk's chain (the hub) -----------------------------------------------------

VERIFIED = "verified"  #: signed by the kiosk, and linked to the entry before it
AFTER_GAP = "after-gap"  #: signed; the entry before it has not arrived, so its link waits
UNLINKED = "unlinked"  #: signed, but not over the hash of the entry before it
BAD_SIGNATURE = "bad-signature"  #: not signed by this kiosk: forged or edited
MALFORMED = "malformed"  #: not an audit entry at all
REWRITTEN = "rewritten"  #: two different writes for one number


def verify(node: int, public: bytes, deltas: Iterable[Delta]) -> dict[str, Any]:
    """One kiosk's audit entries as held (its ``audit_id`` records' writes, any order),
    checked: entries by number with a status each, the gaps, and whether all is well."""
    by_seq: dict[int, list[tuple[Delta, Signed | None, str]]] = {}
    for delta in deltas:
        try:
            signed: Signed | None = from_delta(delta)
        except AuditError as exc:
            signed, problem = None, exc.code
        else:
            problem = ""
        seq = signed.entry.seq if signed else (
            int.from_bytes(delta.record_id[8:], "big") & MAX_SEQ)
        by_seq.setdefault(seq, []).append((delta, signed, problem))
    entries: list[dict[str, Any]] = []
    hashes: dict[int, bytes] = {}
    for seq in sorted(by_seq):
        held = by_seq[seq]
        _, signed, problem = held[0]
        if signed is not None and is_signed(public, node, signed) and len(held) == 1:
            hashes[seq] = signed.hash
        entries.append(_row(seq, node, public, held))
    for row in entries:
        if row["status"] != VERIFIED:
            continue
        seq, prev = row["seq"], bytes.fromhex(row["prev"])
        if seq == 1:
            row["status"] = VERIFIED if prev == GENESIS else UNLINKED
        elif seq - 1 not in by_seq:
            row["status"] = AFTER_GAP
        elif hashes.get(seq - 1) != prev:
            row["status"] = UNLINKED
    gaps = _gaps(sorted(by_seq))
    return {"entries": entries, "gaps": gaps, "last": max(by_seq, default=0),
            "ok": not gaps and all(r["status"] == VERIFIED for r in entries)}


def _row(seq: int, node: int, public: bytes,
         held: list[tuple[Delta, Signed | None, str]]) -> dict[str, Any]:
    delta, signed, problem = held[0]
    row: dict[str, Any] = {"seq": seq, "stamp": delta.stamp}
    if signed is None:
        row.update(status=MALFORMED, problem=problem)
        return row
    e = signed.entry
    row.update({"time": e.time, "who": e.who, "what": e.what, "result": e.result,
                "detail": _detail(e.detail), "prev": signed.prev.hex()})
    if len(held) > 1:
        row.update(status=REWRITTEN, writes=len(held))
    elif not is_signed(public, node, signed):
        row["status"] = BAD_SIGNATURE
    else:
        row["status"] = VERIFIED
    return row


def _detail(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except (ValueError, RuntimeError):  # RecursionError (a RuntimeError): nested too deep
        return text


def _gaps(seqs: list[int]) -> list[list[int]]:
    """The missing numbers as [first, last] ranges, from 1 to the highest held."""
    out: list[list[int]] = []
    expect = 1
    for seq in seqs:
        if seq > expect:
            out.append([expect, seq - 1])
        expect = seq + 1
    return out
