"""The node's keys and configuration, in files (flash on a board).

``node.key`` holds the node's static X25519 private key (32 bytes), written
by a technician's ``keygen`` or ``key`` command; ``config.json`` the rest:
the kiosk's static public key, the device name and the limits and intervals.
Every write goes to a temporary file first and is renamed over the old one,
so a power cut leaves the old file or the new one, never half of either.
"""

from __future__ import annotations

import json
import os

from protocol.crypto import X25519PrivateKey

#: name: (default, the least, the most) of each number a technician may set.
LIMITS = {
    "low": (200, -5500, 12500),  #: the range's low end, hundredths of °C
    "high": (800, -5500, 12500),  #: the range's high end
    "alarm_after": (1800, 60, 86400),  #: seconds outside the range before an alarm
    "interval": (60, 1, 3600),  #: seconds between readings
    "commit_every": (3600, 60, 86400),  #: seconds between commits of readings to flash
    "capacity": (2000, 10, 20000),  #: readings the ring holds
    "baud": (115200, 1200, 1000000),  #: the serial line's rate
}


class Settings:
    """What ``config.json`` and ``node.key`` in ``folder`` hold."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.values: dict[str, int] = {name: limit[0] for name, limit in LIMITS.items()}
        self.name = ""
        self.kiosk_public: bytes | None = None
        self.node_key: bytes | None = None
        self._public: tuple[bytes, bytes] | None = None
        try:
            with open(self._path("config.json")) as f:
                saved = json.load(f)
        except (OSError, ValueError):
            saved = {}
        for name, value in saved.get("values", {}).items():
            limit = LIMITS.get(name)
            if limit is not None and type(value) is int and limit[1] <= value <= limit[2]:
                self.values[name] = value  # anything else keeps its default
        self.name = saved.get("name", "")
        kiosk = saved.get("kiosk_public")
        self.kiosk_public = bytes.fromhex(kiosk) if kiosk else None
        try:
            with open(self._path("node.key"), "rb") as f:
                key = f.read()
            self.node_key = key if len(key) == 32 else None
        except OSError:
            self.node_key = None

    def __getitem__(self, name: str) -> int:
        return self.values[name]

    @property
    def node_public(self) -> bytes | None:
        key = self.node_key
        if key is None:
            return None
        if self._public is None or self._public[0] != key:  # X25519 costs ms on a board
            public = X25519PrivateKey.from_private_bytes(key).public_key().public_bytes_raw()
            self._public = (key, public)
        return self._public[1]

    @property
    def device(self) -> str:
        """The name the node gives the kiosk: set by the technician, else from its key."""
        public = self.node_public
        return self.name or ("fridge-" + public[:4].hex() if public else "fridge")

    def set_value(self, name: str, text: str) -> None:
        """Set one number (``LIMITS``); ``ValueError`` says why it does not fit."""
        if name not in LIMITS:
            raise ValueError(f"unknown setting {name!r}: " + ", ".join(sorted(LIMITS)))
        _, least, most = LIMITS[name]
        value = round(float(text) * 100) if name in ("low", "high") else int(text)
        if not least <= value <= most:
            raise ValueError(f"{name} must be {least} to {most}")
        low = value if name == "low" else self.values["low"]
        high = value if name == "high" else self.values["high"]
        if low >= high:
            raise ValueError("the range's low end must be below its high end")
        self.values[name] = value
        self.save()

    def set_name(self, name: str) -> None:
        if not 0 < len(name) <= 64:
            raise ValueError("a device name is 1 to 64 characters")
        self.name = name
        self.save()

    def set_kiosk_public(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("the kiosk's public key is 32 bytes (64 hex digits)")
        self.kiosk_public = key
        self.save()

    def set_node_key(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("the node's key is 32 bytes (64 hex digits)")
        X25519PrivateKey.from_private_bytes(key)
        self._write("node.key", key)
        self.node_key = key

    def generate_node_key(self) -> bytes:
        """A new static key from the system's random source; its public key."""
        self.set_node_key(os.urandom(32))
        public = self.node_public
        assert public is not None
        return public

    def save(self) -> None:
        saved = {"values": self.values, "name": self.name,
                 "kiosk_public": self.kiosk_public.hex() if self.kiosk_public else None}
        self._write("config.json", json.dumps(saved).encode())

    def _path(self, name: str) -> str:
        return self.folder + "/" + name

    def _write(self, name: str, data: bytes) -> None:
        temporary = self._path(name + ".new")
        with open(temporary, "wb") as f:
            f.write(data)
        os.rename(temporary, self._path(name))
