"""``haven tech logs``'s kiosk side: the journal's entries from an index, as one file.

``logs`` (the certificate's ``read`` action) takes ``since`` (an index) and
``max`` (raw bytes, ``PIECE`` by default): the journal's complete lines from
``since`` (or from the oldest entry still kept, when older ones were rotated
away) up to ``max`` bytes, deflated (zlib), sent as a transfer. The reply says
where the piece starts and ends (``from``, ``next``), the oldest and newest
index kept (``first``, ``last``) and whether more follows (``more``): the tool
asks again from ``next`` until it has everything, and keeps ``next`` so a pull
interrupted anywhere goes on from there. A full piece is the same bytes each
time it is asked for, so a transfer cut short resumes its chunks too.
"""

from __future__ import annotations

import zlib
from typing import Any

from device.logs.journal import Journal, index_of
from device.tech.service import CommandError, Context, Outgoing, command
from protocol.manifest import build_manifest

PIECE = 1024 * 1024  #: raw log bytes per piece, by default
MAX_PIECE = 4 * 1024 * 1024
MIN_PIECE = 1024


def piece(journal: Journal, since: int, limit: int) -> tuple[bytes, dict[str, Any]]:
    """The deflated lines from ``since``, ``limit`` raw bytes at most (one line at
    least), and what the reply says of them."""
    first = journal.first_index
    start = max(since, first)
    lines: list[bytes] = []
    size = 0
    more = False
    for line in journal.lines(start):
        if lines and size + len(line) > limit:
            more = True
            break
        lines.append(line)
        size += len(line)
    raw = b"".join(lines)
    frm = index_of(lines[0]) if lines else None
    nxt = index_of(lines[-1]) if lines else None
    frm = start if frm is None else frm
    nxt = start if nxt is None else nxt + 1
    return zlib.compress(raw, 6), {"first": first, "from": frm, "next": nxt,
                                   "last": journal.next_index - 1, "entries": len(lines),
                                   "raw_bytes": size, "more": more}


@command("logs", action="read")
def logs(ctx: Context, args: dict[str, Any]) -> Outgoing:
    journal = ctx.env.console.log
    if not isinstance(journal, Journal):
        raise CommandError("no-journal", "this kiosk keeps no log on disk")
    since, limit = args.get("since", 0), args.get("max", PIECE)
    if type(since) is not int or since < 0:
        raise CommandError("bad-args", "logs takes since: an index, 0 or more")
    if type(limit) is not int or not MIN_PIECE <= limit <= MAX_PIECE:
        raise CommandError("bad-args", f"logs takes max: {MIN_PIECE} to {MAX_PIECE} bytes")
    data, result = piece(journal, since, limit)
    ctx.detail.update(since=since, entries=result["entries"])
    manifest = build_manifest([data], f"logs-{result['from']}.jsonl.z")
    return Outgoing(manifest, lambda offset, length: data[offset:offset + length],
                    {**result, "size": manifest.size})
