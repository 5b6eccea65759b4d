"""``haven-kiosk fridge``: a technician enrols a fridge's sensor node, lists them, removes one.

``add NAME --key HEX`` enrols the node whose public key its console's ``id``
shows. ``add NAME --generate`` makes the node's key pair here instead and
prints the lines to type on the node's console: the private key is printed
once and never written to the kiosk's disk or log (the kiosk needs only the
public key; what is on its card may be read by whoever takes the card). Both
print the kiosk's public key, which the node must be given (``kiosk HEX``).
"""

from __future__ import annotations

import argparse
import json
from typing import Any


def _public_hex(text: str) -> bytes:
    from device.fridges.records import EnrolmentError

    try:
        key = bytes.fromhex(text.strip())
    except ValueError:
        key = b""
    if len(key) != 32:
        raise EnrolmentError("--key takes the node's public key: 64 hex digits, as its "
                             "console's id command shows it")
    return key


def run(args: argparse.Namespace, store: Any, kiosk_public: bytes) -> int:
    """One ``haven-kiosk fridge`` action on the open ``store``."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from device.fridges.records import FridgeRecords
    from protocol.sync.sensor_records import fingerprint

    records = FridgeRecords(store, clock=lambda: store.clock() / 1000)
    action = args.fridge_command
    if action == "list":
        rows: list[dict[str, Any]] = [{
            "slot": e.slot, "name": e.name, "model": e.model, "location": e.location,
            "fingerprint": fingerprint(e.key), "key": e.key.hex(),
            "stored": records.cursor(e).acked, "alarms": sorted(records.cursor(e).raised),
        } for e in records.enrolments()]
        if args.json:
            print(json.dumps(rows, sort_keys=True))
        for r in [] if args.json else rows:
            alarms = f"  ALARM: {', '.join(r['alarms'])}" if r["alarms"] else ""
            print(f"{r['slot']:3}  {r['name']}  {r['fingerprint']}  {r['stored']} readings"
                  f"{alarms}")
        return 0
    if action == "remove":
        gone = records.remove(args.name)
        print(f"fridge {gone.name!r} removed: its node is refused from now on")
        return 0
    private = X25519PrivateKey.generate() if args.generate else None
    key = (private.public_key().public_bytes_raw() if private is not None
           else _public_hex(args.key or ""))
    e = records.enrol(args.name, key, args.model or "", args.location or "")
    print(f"fridge {e.name!r} enrolled (slot {e.slot}), node key {fingerprint(key)}")
    print("On the node's console, type:")
    if private is not None:
        print(f"  key {private.private_bytes_raw().hex()}")
    print(f"  kiosk {kiosk_public.hex()}")
    print(f"  name {e.name}")
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
