"""``haven tech wipe PORT --credential FILE [--discard-unsynced]``: the tool's side.

One request (``wipe``, ``device.tech.wipe_command``): the kiosk refuses while it
holds anything the hub lacks (the counts in the one-line error) unless
``--discard-unsynced``, then asks for the service button to be held (its note is
shown), writes its audit entry and pushes it to the hub, destroys its keys, and
restarts to erase its data. The reply says whether the audit entry reached the hub;
when it did not, it was lost with the kiosk's data, and this tool's own log
(``host.tech_log``) is the only record of the wipe: the line says so.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from host import tech_log

#: Beyond the tool's --timeout: the kiosk's presence window and its wait for the hub.
KIOSK_WAITS = 60.0 + 20.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--discard-unsynced", action="store_true",
                   help="wipe even though the hub lacks some of the kiosk's data (lost)")


def run(args: argparse.Namespace, client_for: Callable[[argparse.Namespace], Any]) -> int:
    with tech_log.logged("wipe", port=args.port) as entry:
        try:
            with client_for(args) as client:
                w = client.welcome
                if w is not None:
                    entry.kiosk, entry.serial = w.device, w.serial
                r = client.call("wipe", {"discard_unsynced": bool(args.discard_unsynced)},
                                timeout=args.timeout + KIOSK_WAITS)
        finally:
            args.progress.end()
        discarded = r.get("discarded", {})
        entry.detail = {"discarded": sum(int(v) for v in discarded.values()),
                        "audit_synced": r.get("audit_synced")}
        if r.get("audit_synced") is not True:
            entry.result = "ok: the kiosk's audit entry was lost with its data"
    if args.json:
        print(json.dumps(r, sort_keys=True))
        return 0
    lost = ", ".join(f"{v} {k}" for k, v in discarded.items() if v) or "nothing"
    print(f"kiosk {entry.kiosk or '?'} wiped: keys destroyed; it restarts, erases its data "
          f"and starts as a fresh kiosk (discarded: {lost})")
    if r.get("audit_synced") is None:
        print("no audit entry on the kiosk: its keys were destroyed already (revoked); "
              "this tool's log records the wipe")
    elif not r.get("audit_synced"):
        print("the kiosk's audit entry could not reach the hub: it was lost with the data; "
              "this tool's log records the wipe")
    return 0


def register() -> None:
    from host.tech.cli import SUBCOMMANDS

    SUBCOMMANDS["wipe"] = (add_arguments, run, "erase a kiosk's keys and data (presence)")
