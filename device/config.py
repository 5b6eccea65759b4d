"""The runtime's configuration: a TOML file (``/etc/haven/kiosk.toml``) under flags.

Every key is also a ``haven-kiosk run`` flag; a flag given on the command
line wins over the file, the file over the defaults. Unknown keys and
wrong types are refused with the key's name, never ignored silently.

Example::

    data = "/var/lib/haven"
    hub = ["tcp://hub.clinic.lan:7400", "/dev/ttyUSB0"]
    ui = "127.0.0.1:8080"
    idle_seconds = 60
    staff_pin = "4821"
    link_carrier = ["/dev/ttyUSB0"]
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from device.health.memory import MemoryLimits
from device.health.storage_guard import StorageLimits

DEFAULT_PATH = Path("/etc/haven/kiosk.toml")


class ConfigError(ValueError):
    """The configuration file or a flag is wrong."""


@dataclass
class KioskConfig:
    data: Path | None = None
    hub: list[str] = field(default_factory=list)
    ui: str = "127.0.0.1:8080"
    console: str | None = None
    idle_seconds: float = 60.0
    staff_pin: str | None = None
    interval: float = 10.0
    retry_max: float = 60.0
    round_limit: float = 60.0
    baud: int | None = None
    hold_time: float = 3.0
    #: Memory thresholds in MiB (``device.health.memory``): the runtime's RSS, the system's
    #: MemAvailable. 0 turns one off.
    memory_soft_mib: float = 64.0
    memory_hard_mib: float = 80.0
    memory_available_soft_mib: float = 64.0
    memory_available_hard_mib: float = 32.0
    #: Free space in MiB on the disk holding ``data`` (``device.health.storage_guard``): under
    #: low, the retention policy runs; under critical, check-ins are refused.
    storage_low_mib: float = 128.0
    storage_critical_mib: float = 32.0
    #: Seconds between two looks at memory and disk space.
    health_interval: float = 10.0
    #: Seconds between two looks at each hub URL's link (``device.sync.link_monitor``); a
    #: link that returns starts a round at once. 0 turns the link monitor off.
    link_interval: float = 1.0
    #: Serial hub URLs whose modem drives carrier detect: their link is up only with it.
    link_carrier: list[str] = field(default_factory=list)

    def ui_address(self) -> tuple[str, int]:
        host, sep, port = self.ui.rpartition(":")
        if not sep or not port.isdigit() or not host:
            raise ConfigError(f"ui: expected HOST:PORT, not {self.ui!r}")
        return host.strip("[]"), int(port)


_KINDS: dict[str, tuple[type, ...]] = {
    "data": (str,), "hub": (list,), "ui": (str,), "console": (str,),
    "idle_seconds": (int, float), "staff_pin": (str, int), "interval": (int, float),
    "retry_max": (int, float), "round_limit": (int, float), "baud": (int,),
    "hold_time": (int, float), "memory_soft_mib": (int, float), "memory_hard_mib": (int, float),
    "memory_available_soft_mib": (int, float), "memory_available_hard_mib": (int, float),
    "storage_low_mib": (int, float), "storage_critical_mib": (int, float),
    "health_interval": (int, float), "link_interval": (int, float), "link_carrier": (list,),
}
#: Thresholds, and the link monitor's interval: 0 turns one off, a negative one is a mistake.
THRESHOLDS = ("memory_soft_mib", "memory_hard_mib", "memory_available_soft_mib",
              "memory_available_hard_mib", "storage_low_mib", "storage_critical_mib",
              "link_interval")
URL_LISTS = ("hub", "link_carrier")


def read_file(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    section = doc.get("kiosk", doc)
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: [kiosk] must be a table")
    for key, value in section.items():
        kinds = _KINDS.get(key)
        if kinds is None:
            raise ConfigError(f"{path}: unknown key {key!r}")
        if not isinstance(value, kinds) or isinstance(value, bool):
            raise ConfigError(f"{path}: {key} has the wrong type ({type(value).__name__})")
        if key in URL_LISTS and not (isinstance(value, list)
                                     and all(isinstance(u, str) for u in value)):
            raise ConfigError(f"{path}: {key} must be a list of URLs")
    return dict(section)


def load(path: Path | None, flags: dict[str, Any]) -> KioskConfig:
    """The file at ``path`` (the default path only if it exists), with ``flags`` on top."""
    values: dict[str, Any] = {}
    if path is not None:
        values.update(read_file(path))
    elif DEFAULT_PATH.exists():
        values.update(read_file(DEFAULT_PATH))
    values.update({k: v for k, v in flags.items() if v is not None and v != []})
    names = {f.name for f in fields(KioskConfig)}
    cfg = KioskConfig(**{k: v for k, v in values.items() if k in names})
    if cfg.data is None:
        raise ConfigError("no data directory: give --data or data = ... in the config file")
    cfg.data = Path(cfg.data)
    if cfg.staff_pin is not None:
        cfg.staff_pin = str(cfg.staff_pin)
    for key in ("idle_seconds", "interval", "retry_max", "round_limit", "hold_time",
                "health_interval"):
        if float(getattr(cfg, key)) <= 0:
            raise ConfigError(f"{key} must be positive")
    for key in THRESHOLDS:
        if float(getattr(cfg, key)) < 0:
            raise ConfigError(f"{key} must be 0 (off) or more")
    for url in cfg.link_carrier:
        if url not in cfg.hub:
            raise ConfigError(f"link_carrier: {url!r} is not one of the hub URLs")
    cfg.ui_address()
    return cfg


def memory_limits(cfg: KioskConfig) -> MemoryLimits:
    return MemoryLimits(cfg.memory_soft_mib, cfg.memory_hard_mib,
                        cfg.memory_available_soft_mib, cfg.memory_available_hard_mib)


def storage_limits(cfg: KioskConfig) -> StorageLimits:
    return StorageLimits(cfg.storage_low_mib, cfg.storage_critical_mib)
