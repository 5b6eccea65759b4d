"""``haven-kiosk fridge``: a technician enrols a fridge's sensor node, lists them, removes one
(``device.fridges.actions`` does it; this is its command line at the kiosk).
"""

from __future__ import annotations

import argparse
import json
from typing import Any


def run(args: argparse.Namespace, store: Any, kiosk_public: bytes) -> int:
    """One ``haven-kiosk fridge`` action on the open ``store``."""
    from device.fridges.actions import act
    from device.fridges.records import FridgeRecords
    from protocol.sync.sensor_records import action_lines

    op = args.fridge_command
    r = act(FridgeRecords(store, clock=lambda: store.clock() / 1000), kiosk_public, op,
            getattr(args, "name", None), getattr(args, "key", None),
            bool(getattr(args, "generate", False)), getattr(args, "model", None),
            getattr(args, "location", None))
    if getattr(args, "json", False):
        print(json.dumps(r["fridges"] if op == "list" else r, sort_keys=True))
    else:
        print("\n".join(action_lines(op, r)))
    return 0


def add_parser(sub: Any, data: Any, action_data: Any) -> None:
    """The ``fridge`` command; ``data(p, required=)`` and ``action_data(p)`` add the data
    directory's flag (``device.cli``)."""
    p = sub.add_parser("fridge", help="enrol, list or remove vaccine fridges' sensor nodes",
                       description="A vaccine fridge's temperature node speaks to this kiosk "
                       "on a serial line (fridges in the configuration) with a key the kiosk "
                       "was given here; any other key is refused.")
    data(p, required=False)
    fs = p.add_subparsers(dest="fridge_command", metavar="ACTION", required=True)
    a = fs.add_parser("add", help="enrol a node", description="Enrol a node: its public "
                      "key (--key, from its console's id), or a key pair made here "
                      "(--generate: the private key is printed once, for the node's console, "
                      "and kept nowhere).")
    a.add_argument("name", metavar="NAME", help="the fridge's name (1 to 64 characters)")
    how = a.add_mutually_exclusive_group(required=True)
    how.add_argument("--key", metavar="HEX", help="the node's public key")
    how.add_argument("--generate", action="store_true", help="make the node's key pair here")
    a.add_argument("--model", metavar="TEXT", help="the node's model")
    a.add_argument("--location", metavar="TEXT", help="where the fridge stands")
    lst = fs.add_parser("list", help="the nodes enrolled", description="List the nodes "
                        "enrolled, how many readings each has stored, and alarms raised.")
    lst.add_argument("--json", action="store_true", help="print them as JSON")
    r = fs.add_parser("remove", help="stop serving a node",
                      description="Stop serving a node: its key is refused from now on.")
    r.add_argument("name", metavar="NAME", help="the fridge's name")
    for q in (a, lst, r):
        action_data(q)
