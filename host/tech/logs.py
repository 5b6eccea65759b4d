"""``haven tech logs PORT --out DIR [--since INDEX]``: pull a kiosk's log, what is new.

Theory of operation
-------------------
The kiosk's ``logs`` command (``device.logs.command``) sends its journal's
lines from an index as deflated pieces of about 1 MiB. The tool appends each
piece's lines to ``DIR/haven-logs.jsonl`` and then records, in
``DIR/haven-logs.json`` (written whole), the kiosk, the next index to ask for
and the length of the file as it stands. A pull run again asks from that index;
the file is first cut back to the recorded length, so lines appended by a pull
killed before its record are not held twice. ``--since INDEX`` starts a first
pull there (only the recent entries); the tool never writes an index it
already holds. Entries the kiosk rotated away before they were pulled are
reported as a gap. A ``DIR`` holding another kiosk's logs is refused.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from host import tech_log
from host.errors import HavenError, UsageError
from host.tech.cli import SUBCOMMANDS, session
from protocol.driver.secret_files import write_whole

LINES = "haven-logs.jsonl"
STATE = "haven-logs.json"
#: A piece inflates to at most this (the kiosk sends 4 MiB of lines at most).
MAX_RAW = 8 * 1024 * 1024


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="where the logs go (made if missing); run again with the same DIR "
                        "to pull only what is new")
    p.add_argument("--since", type=int, metavar="INDEX",
                   help="start at this entry index rather than where DIR's last pull ended")


def load_state(out: Path) -> dict[str, Any] | None:
    try:
        state = json.loads((out / STATE).read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise UsageError(f"{out / STATE}: unreadable ({exc}); move it away to start over") \
            from None
    if not (isinstance(state, dict) and isinstance(state.get("kiosk"), str)
            and type(state.get("next")) is int and type(state.get("bytes")) is int
            and state["next"] >= 0 and state["bytes"] >= 0):
        raise UsageError(f"{out / STATE}: not a log pull's record; move it away to start over")
    return state


def check_piece(raw: bytes, since: int, result: dict[str, Any]) -> list[bytes]:
    """The piece's lines, each a JSON object with an increasing index from
    ``result["from"]`` below ``result["next"]``, none below ``since``; else HavenError."""
    lines = raw.splitlines(keepends=True)
    last = max(since, result["from"]) - 1
    for line in lines:
        try:
            entry = json.loads(line)
            index = entry["i"]
        except (ValueError, KeyError, TypeError, RecursionError):
            raise HavenError("logs: the kiosk sent a line that is not a log entry") from None
        if type(index) is not int or index <= last or index >= result["next"]:
            raise HavenError(f"logs: entry {index} out of order (after {last})")
        last = index
    if len(lines) != result["entries"]:
        raise HavenError("logs: the piece holds other entries than the kiosk said")
    return lines


def inflate(path: Path) -> bytes:
    d = zlib.decompressobj()
    try:
        raw = d.decompress(path.read_bytes(), MAX_RAW)
    except zlib.error as exc:
        raise HavenError(f"logs: a damaged piece ({exc})") from None
    if d.unconsumed_tail or not d.eof:
        raise HavenError("logs: a piece larger than a kiosk sends")
    return raw


def pull_logs(client: Any, out: Path, since: int | None = None,
              progress: Any = None) -> dict[str, Any]:
    """Pull what is new into ``out``; a summary (entries, first and next index, gaps)."""
    kiosk = client.welcome.device if client.welcome is not None else ""
    out.mkdir(parents=True, exist_ok=True)
    state = load_state(out)
    if state is not None and state["kiosk"] != kiosk:
        raise UsageError(f"{out} holds the logs of kiosk {state['kiosk']}, not {kiosk}: "
                         "use another --out")
    held = state["next"] if state is not None else 0
    lines_path = out / LINES
    with open(lines_path, "ab") as f:  # a pull killed after appending, before its record
        kept, size = (state["bytes"] if state is not None else 0), os.fstat(f.fileno()).st_size
        if size < kept or (state is None and size):
            # Cut back or padded with zeros, lines pulled before (some perhaps rotated away
            # on the kiosk since) would be lost or spoiled: the field worker decides.
            raise UsageError(
                f"{lines_path} holds {size} bytes, its record {out / STATE} says "
                + (f"{kept}" if state is not None else "nothing (it is missing)")
                + ": move the folder's files away, or use another --out")
        f.truncate(kept)
    start = max(held, since or 0)
    summary: dict[str, Any] = {"kiosk": kiosk, "path": str(lines_path), "entries": 0,
                               "from": start, "next": start, "gaps": []}
    while True:
        r = client.fetch("logs", {"since": start}, out, progress)
        piece = Path(r["path"])
        try:
            raw = inflate(piece)
        finally:
            with contextlib.suppress(OSError):
                piece.unlink()
        lines = check_piece(raw, start, r)
        if r["from"] > start:
            summary["gaps"].append([start, r["from"] - 1])
        with open(lines_path, "ab") as f:
            f.writelines(lines)
            f.flush()
            os.fsync(f.fileno())
            size = f.tell()
        if summary["entries"] == 0:
            summary["from"] = r["from"] if lines else start
        summary["entries"] += len(lines)
        start = summary["next"] = max(start, r["next"])
        write_whole(out / STATE, json.dumps({"kiosk": kiosk, "next": start,
                                             "bytes": size}).encode())
        summary["last"] = r["last"]
        if not r["more"]:
            return summary


def run(args: argparse.Namespace, client_for: Callable[[argparse.Namespace], Any]) -> int:
    if args.since is not None and args.since < 0:
        raise UsageError("--since takes an entry index, 0 or more")
    with tech_log.logged("logs", port=args.port) as entry:
        with session(args, client_for, entry) as client:
            r = pull_logs(client, args.out, args.since, args.progress)
        entry.detail = {"entries": r["entries"], "next": r["next"]}
    if args.json:
        print(json.dumps(r, sort_keys=True))
        return 0
    got = (f"{r['entries']} entries ({r['from']} to {r['next'] - 1})" if r["entries"]
           else "nothing new")
    print(f"kiosk {r['kiosk']}: {got} -> {r['path']}; the next pull starts at {r['next']}")
    for first, last in r["gaps"]:
        print(f"entries {first} to {last} were rotated away on the kiosk before this pull")
    return 0


def register() -> None:
    SUBCOMMANDS["logs"] = (add_arguments, run, "pull the kiosk's log, what is new since "
                           "the last pull into the same folder")
