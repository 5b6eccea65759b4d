"""The chain that binds the check-ins taken while locked (``pending``) to the run that took them.

Theory of operation
-------------------
Whoever holds the card holds ``pending.db``, the public key its entries are
sealed to (HPKE's base mode: anyone with the public key can seal), and every
key a locked kiosk keeps there (its Ed25519 identity key too: a signature with
it would stop no one who has the card). Without the chain such a person could
alter an entry (seal other values under its id, time and number), remove one,
or add their own, and the unlock would merge the result as real check-ins.

So each process that takes a check-in while locked starts a session with a
random 32-byte key k_0 that exists only in its memory: k_0 goes on the card
only sealed to the pending public key (the HPKE info binds the session's id
and start), in the ``sessions`` row. Entry i carries
``HMAC(k_i, "mac" || sid || i || cid || time || number || sealed)``; then
k_{i+1} = HMAC(k_i, "next") takes k_i's place; the session's count n and its
tag ``HMAC(k_n, "end" || sid || n)`` are written in the entry's transaction.
At the unlock the private key opens k_0 and the merge walks the chain
(``verify``).

What this gives: an entry of a session cannot be altered, given another
position or session, or removed, without the merge refusing it or naming what
is missing (a gap; a count whose tag fails), and every genuine entry still
merges. What it cannot give: someone with the card can add a session of their
own, sealed to the same public key (as anyone at the page may check in while
the kiosk is locked), remove a whole session with all its entries, and put
back an older copy of the whole file; only a key or a counter off the card (a
TPM) would stop that. Entries from before the chain (no
session) are merged as before, and counted as unchained.
"""

from __future__ import annotations

import hmac
import os
import struct
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from protocol.errors import ProtocolError
from protocol.sync.certificate import open_sealed, seal

SESSION_INFO = b"haven/pending-session/v1\x00"
KEY_SIZE, SID_SIZE = 32, 16
#: The most entries a session is checked for (a night of check-ins is a few hundred).
MAX_ENTRIES = 1 << 20
_MAC, _NEXT, _END = b"mac\x00", b"next\x00", b"end\x00"


def _h(key: bytes, *parts: bytes) -> bytes:
    return hmac.digest(key, b"".join(parts), "sha256")


def _q(n: int) -> bytes:
    return struct.pack(">Q", n)


def entry_mac(key: bytes, sid: bytes, seq: int, cid: bytes, at_ms: int, number: str,
              sealed: bytes) -> bytes:
    return _h(key, _MAC, sid, _q(seq), cid, _q(at_ms), number.encode(), b"\x00", sealed)


def end_tag(key: bytes, sid: bytes, count: int) -> bytes:
    return _h(key, _END, sid, _q(count))


def _session_info(sid: bytes, started_ms: int) -> bytes:
    return SESSION_INFO + sid + _q(started_ms)


class Chain:
    """A session's chain in this process's memory: the key of its next entry."""

    def __init__(self, public_key: bytes, started_ms: int) -> None:
        self.sid = os.urandom(SID_SIZE)
        self.started_ms = started_ms
        self._key = os.urandom(KEY_SIZE)
        self.sealed_key = seal(self._key, public_key, _session_info(self.sid, started_ms))
        self.count = 0

    def link(self, cid: bytes, at_ms: int, number: str, sealed: bytes
             ) -> tuple[int, bytes, bytes]:
        """(seq, mac) of the next entry, and the session's tag once it is in; ``advance``
        after the entry is committed."""
        mac = entry_mac(self._key, self.sid, self.count, cid, at_ms, number, sealed)
        return self.count, mac, end_tag(_h(self._key, _NEXT), self.sid, self.count + 1)

    def advance(self) -> None:
        self._key = _h(self._key, _NEXT)
        self.count += 1


@dataclass
class Verdict:
    """A session checked: the entries whose MAC holds, and what is wrong, in words."""

    good: set[bytes] = field(default_factory=set)  #: check-in ids
    bad: dict[bytes, str] = field(default_factory=dict)  #: check-in id -> why
    missing: list[str] = field(default_factory=list)


def verify(private_key: X25519PrivateKey, session: tuple[Any, ...],
           rows: list[tuple[Any, ...]]) -> Verdict:
    """Check ``rows`` (cid, at_ms, number, sealed, seq, mac) against their ``session``
    (sid, started_ms, sealed_key, count, tag)."""
    sid, started_ms, sealed_key, count, tag = session
    out = Verdict()
    try:
        key = open_sealed(sealed_key, private_key, _session_info(sid, started_ms))
    except (ProtocolError, ValueError, TypeError, struct.error):
        for row in rows:
            out.bad[row[0]] = "its session's key does not open (the session was altered)"
        return out
    by_seq: dict[int, list[tuple[Any, ...]]] = {}
    for row in rows:
        if isinstance(row[4], int) and 0 <= row[4] < MAX_ENTRIES:
            by_seq.setdefault(row[4], []).append(row)
        else:
            out.bad[row[0]] = "its place in the session is not one"
    if not isinstance(count, int) or not 0 < count <= MAX_ENTRIES:
        count = -1  # no tag to check: altered
    held: set[int] = set()
    counted = False
    for seq in range(max([count, *(s + 1 for s in by_seq)])):
        for row in by_seq.get(seq, []):
            if _holds(key, sid, seq, row):
                out.good.add(row[0])
                held.add(seq)
            else:
                out.bad[row[0]] = "its MAC does not hold (altered, or not this session's)"
        key = _h(key, _NEXT)
        if seq + 1 == count:
            counted = isinstance(tag, bytes) and hmac.compare_digest(
                tag, end_tag(key, sid, count))
    if not counted:
        out.missing.append("its count of entries was altered: entries after number "
                           f"{max(held, default=-1) + 1} may be missing")
    elif gaps := sorted(set(range(count)) - set(by_seq)):  # altered ones: in ``bad``
        out.missing.append(f"{len(gaps)} of its {count} entries are missing (removed): "
                           f"number {', '.join(str(g + 1) for g in gaps[:10])}")
    return out


def _holds(key: bytes, sid: bytes, seq: int, row: tuple[Any, ...]) -> bool:
    cid, at_ms, number, sealed, _, mac = row
    if not (isinstance(cid, bytes) and isinstance(at_ms, int) and isinstance(number, str)
            and isinstance(sealed, bytes) and isinstance(mac, bytes) and 0 <= at_ms < 1 << 63):
        return False
    return hmac.compare_digest(mac, entry_mac(key, sid, seq, cid, at_ms, number, sealed))
