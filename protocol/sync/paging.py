"""Pages of a hub's pull: the deltas sent at each arrival position, none ever dropped.

Theory of operation
-------------------
A pull sends, in arrival order, the deltas after the kiosk's cursor. Some
positions send a group: a write late to a deleted record brings the record's
older deltas with it, and a patient entering a clinician station's scope
brings their records (``host.hub.scopes``). A page ends before a group that
would take it past its byte limit, so a group that fits in a page is never
split, and the page's cursor is the last position sent whole.

A group larger than a page on its own (a record whose history passes the
limit) cannot wait for a page big enough: a message has a hard limit
(``max_message``, 1 MiB), and a page past it would end the session at the
same cursor every time. Such a group is split, in its order: the page carries
as many of its deltas as fit (at least one) and its cursor stays before the
group, with ``more``. The session remembers what it sent of the group
(``PageSplit``); the kiosk's next pull, from that cursor in the same session,
gets the rest, and the cursor passes the group only with its last part. The
kiosk merges each page before it asks for the next and collects nothing while
a pull is under way, so it holds the whole group once the cursor passes it. A
session that ends inside a group leaves the kiosk's cursor before it: the
next session sends the whole group again (duplicates are exact at the kiosk).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from protocol import strict_cbor
from protocol.sync import batches

#: A page's payload (deflated) stays within this: a peer decodes no message larger
#: than ``strict_cbor.DEFAULT_MAX_SIZE`` (64 KiB), and the rest of a ``sync-changes``
#: (cursor, sums, the signed stable point) takes far less than the margin.
PAYLOAD_BYTES = strict_cbor.DEFAULT_MAX_SIZE - 2048


@dataclass
class PageSplit:
    """One session's place inside a group larger than a page: the cursor of the page
    that ended inside it, the group's position, and the deltas of it sent so far."""

    cursor: int | None = None
    at: int | None = None
    sent: set[bytes] = field(default_factory=set)

    def rest(self, cursor: int, at: int, group: list[bytes]) -> list[bytes]:
        """What is left to send of the group at ``at`` to a pull from ``cursor``."""
        if (self.cursor, self.at) != (cursor, at):
            return group
        return [d for d in group if d not in self.sent]

    def copy(self) -> PageSplit:
        return PageSplit(self.cursor, self.at, set(self.sent))


def paged(groups: Iterable[tuple[int, list[bytes]]], cursor: int, end: int,
          max_bytes: int, split: PageSplit | None = None) -> tuple[list[bytes], int, bool]:
    """A page of (arrival, the deltas sent at it) after ``cursor``: (deltas, cursor, more).
    The page ends before a group that would pass ``max_bytes``; a group that passes it
    alone is split across pages when the session keeps a ``split`` (without one it goes
    whole, as for counting). ``end``: the cursor of the last page (every arrival up to it
    was looked at)."""
    out: list[bytes] = []
    size, last = 0, cursor
    for hseq, group in groups:
        if split is not None:
            group = split.rest(cursor, hseq, group)
        grown = sum(map(len, group))
        if out and group and size + grown > max_bytes:
            return _passed(split, out), last, True
        if split is not None and grown > max_bytes:  # alone on the page: split it
            part = _fitting(group, max_bytes)
            sent = split.sent if (split.cursor, split.at) == (cursor, hseq) else set()
            split.cursor, split.at, split.sent = last, hseq, sent | set(part)
            return part, last, True
        out += group
        size += grown
        last = hseq
    return _passed(split, out), max(last, end), False


def _passed(split: PageSplit | None, page: list[bytes]) -> list[bytes]:
    """``page``, which passes any group split before: the session forgets it."""
    if split is not None:
        split.cursor = split.at = None
        split.sent = set()
    return page


def packed(page: Callable[[int], tuple[list[bytes], int, bool]], max_bytes: int
           ) -> tuple[bytes, int, bool]:
    """``page(max_bytes)`` packed (``batches.pack``): (payload, cursor, more), with
    ``max_bytes`` cut until the payload fits a message. Pages count the deltas' own
    bytes, which deflate usually shrinks far below the message's limit, but not text
    that does not compress: the page is cut again by the ratio deflate achieved, with a
    tenth to spare. ``page`` must start from the same place each time."""
    while True:
        deltas, cursor, more = page(max_bytes)
        payload = batches.pack(deltas)
        if len(payload) <= PAYLOAD_BYTES or len(deltas) <= 1 or max_bytes == 1:
            return payload, cursor, more
        fits = sum(map(len, deltas)) * PAYLOAD_BYTES * 9 // (len(payload) * 10)
        max_bytes = max(1, min(max_bytes - 1, fits))


def _fitting(group: list[bytes], max_bytes: int) -> list[bytes]:
    """The longest head of ``group`` within ``max_bytes``; its first delta at least."""
    size = 0
    for n, data in enumerate(group):
        size += len(data)
        if n and size > max_bytes:
            return group[:n]
    return group
