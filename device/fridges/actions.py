"""A technician's fridge actions, as data: ``haven-kiosk fridge`` at the kiosk and
``haven tech fridge`` on its console both run ``act`` and show what it returns.

``add`` enrols a node by the public key its console's ``id`` shows (``key``,
hex), or with ``generate`` makes the node's key pair here: its private key is
in the result, for the node's console, and kept nowhere (the kiosk needs only
the public key, and what is on its card may be read by whoever takes it).
Either way the result holds the kiosk's public key, which the node must be
given (``kiosk HEX`` on its console). ``list`` gives the nodes enrolled, how
far each one's readings are stored and its alarms raised; ``remove`` stops
serving one (its key is refused from then on).
"""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from device.fridges.records import EnrolmentError, FridgeRecords
from protocol.sync.sensor_records import fingerprint

OPS = ("add", "list", "remove")


def _public_key(text: Any) -> bytes:
    try:
        key = bytes.fromhex(text.strip()) if isinstance(text, str) else b""
    except ValueError:
        key = b""
    if len(key) != 32:
        raise EnrolmentError("a node's public key is 64 hex digits, as its console's id "
                             "command shows it")
    return key


def act(records: FridgeRecords, kiosk_public: bytes, op: Any, name: Any = None,
        key: Any = None, generate: bool = False, model: Any = None,
        location: Any = None) -> dict[str, Any]:
    """Do ``op``; its result as plain data. ``EnrolmentError`` for what does not fit."""
    if op == "list":
        return {"fridges": [{
            "slot": e.slot, "name": e.name, "model": e.model, "location": e.location,
            "fingerprint": fingerprint(e.key), "key": e.key.hex(),
            "stored": records.cursor(e).acked, "alarms": sorted(records.cursor(e).raised),
        } for e in records.enrolments()]}
    if not isinstance(name, str):
        raise EnrolmentError(f"{op} needs the fridge's name")
    if op == "remove":
        return {"removed": records.remove(name).name}
    if op != "add":
        raise EnrolmentError(f"no fridge action {op!r}: one of {', '.join(OPS)}")
    if generate == (key is not None):
        raise EnrolmentError("add takes the node's public key, or makes a key pair: one")
    private = X25519PrivateKey.generate() if generate else None
    public = (private.public_key().public_bytes_raw() if private is not None
              else _public_key(key))
    e = records.enrol(name, public, model if isinstance(model, str) else "",
                      location if isinstance(location, str) else "")
    out = {"name": e.name, "slot": e.slot, "fingerprint": fingerprint(public),
           "kiosk": kiosk_public.hex()}
    if private is not None:
        out["node_key"] = private.private_bytes_raw().hex()
    return out
