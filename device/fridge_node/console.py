"""A technician's commands on the node's console (USB serial, or stdin under the unix port).

``help`` lists them. Each takes one line and answers with text; a command
that cannot be done says why and changes nothing. Keys and settings are saved
to flash at once (``settings``); the range and alarm time apply at once, the
ring's capacity and the line's rate from the next boot.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from device.fridge_node.settings import LIMITS

if TYPE_CHECKING:
    from device.fridge_node.node import Node

HELP = """commands:
  id                 the node's name and public key (give the key to the kiosk)
  keygen             make a new node key (the kiosk must be given the new public key)
  key HEX            set the node's private key (64 hex digits)
  kiosk HEX          set the kiosk's public key (64 hex digits)
  name NAME          set the node's name (1 to 64 characters)
  set NAME VALUE     set a limit or interval: """ + ", ".join(sorted(LIMITS)) + """
                     (low and high in degrees C, times in seconds)
  config             the settings
  status             readings held, dropped, faults, alarms and the link"""


NEXT_BOOT = ("capacity",)  #: settings the running node does not take (its ring is allocated)


def _hex_key(text: str) -> bytes:
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise ValueError("a key is 64 hex digits") from None
    if len(key) != 32:
        raise ValueError("a key is 64 hex digits")
    return key


def handle(node: Node, line: str) -> str:
    """Run one command line; its answer."""
    words = line.split()
    if not words:
        return ""
    command, args = words[0], words[1:]
    s = node.settings
    try:
        if command == "help":
            return HELP
        if command == "id":
            public = s.node_public
            return f"name {s.device}\npublic {public.hex() if public else 'none (keygen)'}"
        if command == "keygen" and not args:
            return "public " + s.generate_node_key().hex()
        if command == "key" and len(args) == 1:
            s.set_node_key(_hex_key(args[0]))
            return "ok"
        if command == "kiosk" and len(args) == 1:
            s.set_kiosk_public(_hex_key(args[0]))
            return "ok"
        if command == "name" and len(args) == 1:
            s.set_name(args[0])
            return "ok"
        if command == "set" and len(args) == 2:
            s.set_value(args[0], args[1])
            node.apply_settings()
            return "ok (from the next boot)" if args[0] in NEXT_BOOT else "ok"
        if command == "config":
            kiosk = s.kiosk_public.hex() if s.kiosk_public else "none"
            lines = [f"{name} {s[name]}" for name in sorted(LIMITS)]
            return "\n".join([f"name {s.device}", f"kiosk {kiosk}"] + lines)
        if command == "status":
            status = node.status()
            return "\n".join(f"{name} {status[name]}" for name in sorted(status))
    except ValueError as exc:
        return f"error: {exc}"
    except OSError as exc:  # the flash is full or read-only: nothing was changed
        return f"error: cannot save: {exc}"
    return f"error: unknown command {line.strip()!r} (help lists them)"
