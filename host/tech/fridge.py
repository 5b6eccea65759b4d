"""``haven tech fridge PORT add|list|remove ...``: the tool's side of a kiosk's fridge nodes.

One request (``fridge``, the kiosk's ``device.fridges.tech_command``; the
credential must allow ``configure``). ``add NAME --key HEX`` enrols the node
whose console's ``id`` shows that public key; ``add NAME --generate`` has the
kiosk make the node's key pair and prints the node's private key once, with
the lines to type on the node's console: it is kept nowhere, in this tool's
log neither. ``list`` and ``remove NAME`` as ``haven-kiosk fridge``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from host import tech_log
from host.errors import UsageError
from host.tech.cli import SUBCOMMANDS, session
from protocol.sync.sensor_records import action_lines


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("op", choices=("add", "list", "remove"), help="what to do")
    p.add_argument("name", nargs="?", metavar="NAME", help="the fridge's name (add, remove)")
    p.add_argument("--key", metavar="HEX", help="add: the node's public key")
    p.add_argument("--generate", action="store_true",
                   help="add: the kiosk makes the node's key pair")
    p.add_argument("--model", metavar="TEXT", help="add: the node's model")
    p.add_argument("--location", metavar="TEXT", help="add: where the fridge stands")


def run(args: argparse.Namespace, client_for: Callable[[argparse.Namespace], Any]) -> int:
    if args.op != "list" and not args.name:
        raise UsageError(f"haven tech fridge {args.op} needs the fridge's NAME")
    if args.op == "add" and bool(args.generate) == (args.key is not None):
        raise UsageError("haven tech fridge add: give --key HEX or --generate (one)")
    call: dict[str, Any] = {"op": args.op}
    for name in ("name", "key", "model", "location"):
        if getattr(args, name) is not None:
            call[name] = getattr(args, name)
    if args.generate:
        call["generate"] = True
    with tech_log.logged(f"fridge.{args.op}", port=args.port) as entry:
        entry.detail = {"name": args.name}
        with session(args, client_for, entry) as client:
            r = client.call("fridge", call)
    if args.json:
        print(json.dumps(r, sort_keys=True))
    else:
        print("\n".join(action_lines(args.op, r)))
    return 0


def register() -> None:
    SUBCOMMANDS["fridge"] = (add_arguments, run, "enrol, list or remove the kiosk's vaccine "
                             "fridge nodes")
