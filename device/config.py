"""The runtime's configuration: each option declared once, read from TOML and from flags.

Theory of operation: ``KioskConfig``'s fields are the options. Each field's
metadata (``option(...)``) carries its help, unit and allowed range; its type
comes from the field's annotation. From that one declaration come:

- the TOML reader (``read_file``): ``/etc/haven/kiosk.toml``, keys at the top
  level or in a ``[kiosk]`` table. An unknown key, a wrong type or a value out
  of range is refused with the file, the line, the key and the reason, never
  ignored silently;
- the command-line flags (``add_flags``): ``idle_seconds`` is
  ``--idle-seconds``, with the same help, type and range check;
- the README's table of options (``markdown_table``), which a test keeps equal.

``load`` puts them together: a flag given on the command line wins over the
file, the file over the declared default. Checks that involve two options
(``link_carrier`` must name hub URLs) run last, on the whole.
"""

from __future__ import annotations

import argparse
import difflib
import math
import re
import tomllib
import types
from collections.abc import Callable, Iterable
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

from device.exc import DeviceError
from device.health.memory import MemoryLimits
from device.health.storage_guard import StorageLimits

DEFAULT_PATH = Path("/etc/haven/kiosk.toml")


class ConfigError(DeviceError, ValueError):
    """The configuration file or a flag is wrong; the message names the key and why."""


@dataclass(frozen=True)
class Option:
    """What a field's metadata says about it as an option."""

    help: str
    #: ``"s"`` or ``"MiB"``: shown with the default and as the flag's metavar.
    unit: str = ""
    metavar: str = ""
    #: A number that must be above 0.
    positive: bool = False
    #: What a value of 0 means, if it is allowed and special ("off"); below 0 is refused.
    zero: str = ""
    #: A string option that also takes a bare TOML number (a PIN written ``1234``).
    number_text: bool = False
    #: A check of the value's form; returns an error message, or "" when it is fine.
    check: Callable[[Any], str] | None = None


def option(default: Any, help: str, **kw: Any) -> Any:
    """A ``KioskConfig`` field declared as an option (see ``Option`` for ``kw``)."""
    meta = {"option": Option(help, **kw)}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


def _host_port(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        return f"must be HOST:PORT, not {value!r}"
    return ""


def _hub_url(value: str) -> str:
    # A tcp:// URL names its host and port (as protocol.driver.link.open_link needs);
    # anything else is a serial device or a pyserial URL, checked when it is opened.
    if not value.startswith("tcp://"):
        return ""
    host, sep, port = value[len("tcp://"):].rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
        return f"must be tcp://HOST:PORT, not {value!r}"
    return ""


def _staff_pin(value: str) -> str:
    if value.startswith("scrypt$"):
        return ""
    if not (value.isascii() and value.isdigit() and 6 <= len(value) <= 12):
        return "must be 6 to 12 digits, or the hash haven-kiosk staff-pin set --print gives"
    return ""


def _hardware(value: str) -> str:
    if value not in ("gpio", "simulated"):
        return f"must be gpio or simulated, not {value!r}"
    return ""


def _print_width(value: int) -> str:
    if not (256 <= value <= 832 and value % 8 == 0):
        return f"must be 256 to 832 dots in steps of 8 (384: 58 mm, 576: 80 mm), not {value}"
    return ""


def _hub_key(value: str) -> str:
    try:
        ok = len(bytes.fromhex(value)) == 32
    except ValueError:
        ok = False
    return "" if ok else f"must be 64 hex digits (a 32-byte key), not {value!r}"


def _key_provider(value: str) -> str:
    if value not in ("file", "tpm", "passphrase"):
        return f"must be file, tpm or passphrase, not {value!r}"
    return ""


def _inside_data(value: str) -> str:
    parts = value.split("/")
    if value.startswith("/") or any(p in ("", ".", "..") for p in parts):
        return f"must be a folder inside the data directory (like export), not {value!r}"
    return ""


@dataclass
class KioskConfig:
    data: Path | None = option(None, "the kiosk's data directory", metavar="DIR")
    hub: list[str] = option([], "hub URLs (tcp://HOST:PORT, a serial device or a pyserial "
                            "URL), tried in order", metavar="URL", check=_hub_url)
    ui: str = option("127.0.0.1:8080", "where to serve the check-in page",
                     metavar="HOST:PORT", check=_host_port)
    idle_seconds: float = option(60.0, "the page resets to its start after this long "
                                 "untouched", unit="s", positive=True)
    staff_pin: str | None = option(None, "the staff screen's PIN as the scrypt hash that "
                                   "haven-kiosk staff-pin set --print gives (a PIN of 6 to 12 "
                                   "digits is taken as a flag only, for demos); unset: the "
                                   "hash staff-pin set keeps in the data directory, else the "
                                   "staff screen is off", metavar="HASH", number_text=True,
                                   check=_staff_pin)
    staff_pin_wait: float = option(3.0, "the longest wait after a wrong staff PIN before the "
                                   "next one is checked (two misses are free; the wait "
                                   "doubles from 0.5 s up to this)", unit="s", positive=True)
    interval: float = option(10.0, "seconds between sync rounds when idle, over a serial "
                             "line or with no kept-open session (keepalive 0)", unit="s",
                             positive=True)
    poll_interval: float = option(0.0, "seconds between sync rounds when idle on a kept-open "
                                  "TCP session, a slow fallback: the hub pushes its "
                                  "changes", unit="s", zero="off")
    retry_max: float = option(60.0, "longest wait between retries while no hub answers",
                              unit="s", positive=True)
    round_limit: float = option(60.0, "longest sync round", unit="s", positive=True)
    baud: int | None = option(None, "serial line speed, for pacing a serial hub link",
                              metavar="BAUD", positive=True)
    hold_time: float = option(3.0, "seconds the service button is held to sync now",
                              unit="s", positive=True)
    hardware: str = option("gpio", "the LED, service button and buzzer: gpio, the Pi's pins "
                           "(the runtime refuses to start without them), or simulated, for "
                           "a laptop, demos and tests", metavar="KIND", check=_hardware)
    memory_soft_mib: float = option(64.0, "this runtime's RSS past which SQLite's caches "
                                    "are dropped", unit="MiB", zero="off")
    memory_hard_mib: float = option(80.0, "this runtime's RSS past which an error is "
                                    "logged and the staff are told", unit="MiB",
                                    zero="off")
    memory_available_soft_mib: float = option(64.0, "the system's MemAvailable under which "
                                              "caches are dropped", unit="MiB",
                                              zero="off")
    memory_available_hard_mib: float = option(32.0, "the system's MemAvailable under which "
                                              "the staff are told", unit="MiB",
                                              zero="off")
    storage_low_mib: float = option(128.0, "free space on the data's disk under which the "
                                    "retention policy runs and the staff are told",
                                    unit="MiB", zero="off")
    storage_critical_mib: float = option(32.0, "free space under which new check-ins are "
                                         "refused", unit="MiB", zero="off")
    health_interval: float = option(10.0, "seconds between looks at memory and disk space",
                                    unit="s", positive=True)
    link_interval: float = option(1.0, "seconds between looks at each hub URL's link (its "
                                  "device node, or a route to its host); a link that "
                                  "returns starts a round at once", unit="s",
                                  zero="off")
    link_carrier: list[str] = option([], "serial hub URLs whose modem drives carrier "
                                     "detect: their link is up only with carrier",
                                     metavar="URL")
    keepalive: float = option(240.0, "the hub session stays open between rounds; seconds "
                              "of silence before the kiosk pings it over TCP (under a "
                              "cellular NAT's idle timeout; serial lines ping every few "
                              "seconds); 0 opens a new link and session every round",
                              unit="s", zero="off")
    reply_timeout: float = option(4.0, "seconds a kept-open TCP session waits for the hub's "
                                  "first answer (to a round or a keepalive) before it "
                                  "takes the link for dropped by a NAT and opens a new one",
                                  unit="s", zero="off")
    printer: str | None = option(None, "the ticket printer (ESC/POS): a device file "
                                 "(/dev/usb/lp0), a serial device (/dev/ttyUSB0) or a pyserial "
                                 "URL (socket://HOST:9100); unset: no printer",
                                 metavar="DEVICE")
    printer_width: int = option(384, "the printer's print width in dots: 384 for 58 mm "
                                "paper, 576 for 80 mm", metavar="DOTS", check=_print_width)
    printer_timeout: float = option(3.0, "longest wait for a ticket to print; the check-in "
                                    "is saved first, and the page then says to remember the "
                                    "number", unit="s", positive=True)
    printer_baud: int = option(9600, "a serial printer's line speed", metavar="BAUD",
                               positive=True)
    console: str | None = option(None, "the technician's console port, speaking SMP "
                                 "(MCUmgr) and Haven sessions: a serial device, a USB "
                                 "gadget's /dev/ttyGS0 or a pyserial URL; unset: no console",
                                 metavar="URL")
    console_baud: int = option(115200, "the console port's line speed", metavar="BAUD",
                               positive=True)
    console_export: str = option("export", "the folder, inside the data directory, that "
                                 "the console's file downloads come from", metavar="DIR",
                                 check=_inside_data)
    console_import: str = option("import", "the folder, inside the data directory, that "
                                 "the console's file uploads go to (nothing in it is ever "
                                 "installed or run)", metavar="DIR", check=_inside_data)
    fridges: list[str] = option([], "serial lines of vaccine fridges' sensor nodes (a serial "
                                "device or a pyserial URL), one node each; the node's key, "
                                "enrolled with haven-kiosk fridge add, says which fridge it "
                                "is", metavar="URL")
    fridge_baud: int = option(115200, "the fridge nodes' line speed", metavar="BAUD",
                              positive=True)
    log_max_mib: float = option(8.0, "the kiosk's own log (JSON lines in logs/ inside the "
                                "data directory, kept across restarts): its files' size in "
                                "all, the oldest dropped past it", unit="MiB", positive=True)
    hub_key: str | None = option(None, "the hub's public key (hex, as haven hub init prints "
                                 "it), set in a kiosk's image: provisioning then accepts only "
                                 "that hub's approvals and certificates; unset: the key the "
                                 "technician's credential brings, under presence and the code",
                                 metavar="HEX", check=_hub_key)
    provision_window: float = option(60.0, "provisioning a fresh kiosk: how long after the "
                                     "technician's request the service button may be held",
                                     unit="s", positive=True)
    provision_hold: float = option(3.0, "provisioning a fresh kiosk: how long the service "
                                   "button must be held (physical presence)", unit="s",
                                   positive=True)
    key_provider: str | None = option(None, "where the kiosk's keys are kept, chosen when "
                                      "haven-kiosk init makes the store: file (owner-only "
                                      "files on the card), tpm (sealed to a TPM 2.0, the "
                                      "fleet key inside it) or passphrase (wrapped under a "
                                      "passphrase staff type after each boot); unset: the "
                                      "one the store was made with, file for a new one",
                                      metavar="KIND", check=_key_provider)
    tpm_tcti: str | None = option(None, "the TPM of key_provider tpm, as a tpm2-tools "
                                  "TCTI (swtpm:host=H,port=N for a software TPM); "
                                  "haven-kiosk init records it in the data directory, and "
                                  "haven-kiosk run uses this one instead when it is set "
                                  "(the TPM moved); unset: the one recorded, "
                                  "device:/dev/tpmrm0 for a new store", metavar="TCTI")

    def ui_address(self) -> tuple[str, int]:
        error = _host_port(self.ui)
        if error:
            raise ConfigError(f"ui {error}")
        host, _, port = self.ui.rpartition(":")
        return host.strip("[]"), int(port)


# The declaration, read once ----------------------------------------------------------------

_KIND_NAMES = {Path: "a path (a string)", str: "a string", float: "a number",
               int: "a whole number", list: "a list of strings"}
_ACCEPTS: dict[type, tuple[type, ...]] = {Path: (str, Path), str: (str,), float: (int, float),
                                          int: (int,), list: (list,)}


@dataclass(frozen=True)
class Spec:
    """One option: its name, its type (from the annotation) and what ``option`` said."""

    name: str
    kind: type  #: Path, str, float, int or list (of strings)
    default: Any
    option: Option

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def metavar(self) -> str:
        return self.option.metavar or {"s": "S", "MiB": "MIB"}.get(self.option.unit, "VALUE")

    def describe_default(self) -> str:
        if self.default is None or self.default == []:
            return ""
        value = f"{self.default:g}" if isinstance(self.default, float) else str(self.default)
        return value + (f" {self.option.unit}" if self.option.unit else "")

    def help_text(self, flag: bool = True) -> str:
        """The help, with the default and what 0 means; for a ``flag``, how to repeat it."""
        text = self.option.help
        default = self.describe_default() if flag else ""
        if default:
            text += f" (default {default}"
            text += f"; 0 turns it {self.option.zero})" if self.option.zero else ")"
        elif self.option.zero:
            text += f" (0 turns it {self.option.zero})"
        if self.kind is list and flag:
            text += "; repeat the flag for more"
        return text

    def convert(self, value: Any, where: str | None = None) -> Any:
        """``value`` (from TOML or a flag) as this option's type, or a ConfigError that
        names where it came from: ``where`` (a file and line), or else the flag."""
        value, why = self.check(value)
        if why:
            raise ConfigError(f"{where}: {self.name} {why}" if where else f"{self.flag} {why}")
        return value

    def check(self, value: Any) -> tuple[Any, str]:
        """(``value`` converted, "") or (None, why it is refused)."""
        kind, o = self.kind, self.option
        accepted = isinstance(value, _ACCEPTS[kind] + ((int,) if o.number_text else ()))
        if isinstance(value, bool) or not accepted:
            return None, (f"has the wrong type: expected {_KIND_NAMES[kind]}, "
                          f"not {type(value).__name__} {value!r}")
        if kind is list:
            if not all(isinstance(v, str) for v in value):
                return None, f"must be a list of URLs (strings), not {value!r}"
            if o.check is not None and (why := next(filter(None, map(o.check, value)), "")):
                return None, why
            return list(value), ""
        value = kind(value)
        if kind is float and not math.isfinite(value):
            return None, f"must be a finite number, not {value}"
        if o.zero and value < 0:
            return None, f"must be 0 ({o.zero}) or more, not {value:g}"
        if o.positive and value <= 0:
            return None, f"must be positive, not {value:g}"
        if o.check is not None and (why := o.check(value)):
            return None, why
        return value, ""


def _specs() -> dict[str, Spec]:
    hints = get_type_hints(KioskConfig)
    out = {}
    for f in fields(KioskConfig):
        hint = hints[f.name]
        if get_origin(hint) in (Union, types.UnionType):  # X | None
            (hint,) = [a for a in get_args(hint) if a is not type(None)]
        kind = list if get_origin(hint) is list else hint
        if kind not in _KIND_NAMES:
            raise TypeError(f"KioskConfig.{f.name}: no reader for {hint!r}")
        default = f.default_factory() if f.default_factory is not MISSING else f.default
        out[f.name] = Spec(f.name, kind, default, f.metadata["option"])
    return out


#: Every option, in the order declared.
OPTIONS: dict[str, Spec] = _specs()


# The TOML reader ---------------------------------------------------------------------------

def _line_of(text: str, key: str) -> int | None:
    pattern = re.compile(rf"""^\s*["']?{re.escape(key)}["']?\s*=""")
    for n, line in enumerate(text.splitlines(), 1):
        if pattern.match(line):
            return n
    return None


def _unknown(key: str) -> str:
    close = difflib.get_close_matches(key, OPTIONS, n=1)
    return f"unknown key {key!r}" + (f" (did you mean {close[0]!r}?)" if close else "")


def read_file(path: Path) -> dict[str, Any]:
    """The options set in the TOML file at ``path``, each checked and converted."""
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not TOML: the file is not UTF-8 text") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not TOML: {exc}") from None
    section: Any = doc
    if "kiosk" in doc:
        section = doc["kiosk"]
        if not isinstance(section, dict):
            raise ConfigError(f"{path}: [kiosk] must be a table")
        if len(doc) > 1:
            others = ", ".join(sorted(k for k in doc if k != "kiosk"))
            raise ConfigError(f"{path}: keys outside the [kiosk] table: {others}")
    values = {}
    for key, value in section.items():
        line = _line_of(text, key)
        where = f"{path}" + (f", line {line}" if line else "")
        spec = OPTIONS.get(key)
        if spec is None:
            raise ConfigError(f"{where}: {_unknown(key)}")
        values[key] = spec.convert(value, where)
        if key == "staff_pin" and not str(values[key]).startswith("scrypt$"):
            raise ConfigError(
                f"{where}: staff_pin holds a PIN in plaintext, which is not kept: run "
                "haven-kiosk staff-pin set --data DIR (it keeps a scrypt hash in DIR), then "
                "remove staff_pin from this file (or set it to the hash that "
                "staff-pin set --print gives)")
    return values


# The flags ---------------------------------------------------------------------------------

def _flag_type(spec: Spec) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = spec.kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {_KIND_NAMES[spec.kind]}, not {text!r}") from None
        value, why = spec.check(value)
        if why:  # argparse names the flag
            raise argparse.ArgumentTypeError(why)
        return value

    parse.__name__ = _KIND_NAMES[spec.kind]
    return parse


def add_flags(parser: argparse.ArgumentParser, names: Iterable[str] | None = None, *,
              defaults: bool = False, required: Iterable[str] = ()) -> None:
    """Add a flag for each option in ``names`` (all by default).

    A flag left out is None (``[]`` for a list), so that ``load`` keeps the file's value;
    with ``defaults``, it is the declared default instead, for commands that read no file.
    """
    must = set(required)
    for name in OPTIONS if names is None else names:
        spec = OPTIONS[name]
        kw: dict[str, Any] = {"metavar": spec.metavar, "help": spec.help_text(),
                              "required": name in must}
        if spec.kind is list:
            kw["action"] = "append"
        else:
            kw["type"] = _flag_type(spec)
            kw["default"] = spec.default if defaults else None
        parser.add_argument(spec.flag, **kw)


def flags_of(args: argparse.Namespace) -> dict[str, Any]:
    """The options given as flags in ``args`` (those left out are None)."""
    return {name: getattr(args, name) for name in OPTIONS if hasattr(args, name)}


# Putting them together ---------------------------------------------------------------------

def load(path: Path | None, flags: dict[str, Any]) -> KioskConfig:
    """The file at ``path`` (the default path only if it exists), with ``flags`` on top.

    ``flags`` maps option names to values; None (or ``[]``) means not given.
    """
    values: dict[str, Any] = {}
    if path is not None:
        values.update(read_file(path))
    elif DEFAULT_PATH.exists():
        values.update(read_file(DEFAULT_PATH))
    for key, value in flags.items():
        if value is None or value == []:
            continue
        spec = OPTIONS.get(key)
        if spec is None:
            raise ConfigError(f"--{key.replace('_', '-')}: {_unknown(key)}")
        values[key] = spec.convert(value)
    cfg = KioskConfig(**values)
    if cfg.data is None:
        raise ConfigError("no data directory: give --data or data = ... in the config file")
    for url in cfg.link_carrier:
        if url not in cfg.hub:
            raise ConfigError(f"link_carrier: {url!r} is not one of the hub URLs")
    return cfg


def markdown_table() -> str:
    """The options as the README's Markdown table."""
    rows = ["| key | flag | default | what |", "|---|---|---|---|"]
    for spec in OPTIONS.values():
        default = spec.describe_default() or "none"
        rows.append(f"| `{spec.name}` | `{spec.flag}` | {default} | "
                    f"{spec.help_text(flag=False)} |")
    return "\n".join(rows)


def memory_limits(cfg: KioskConfig) -> MemoryLimits:
    return MemoryLimits(cfg.memory_soft_mib, cfg.memory_hard_mib,
                        cfg.memory_available_soft_mib, cfg.memory_available_hard_mib)


def storage_limits(cfg: KioskConfig) -> StorageLimits:
    return StorageLimits(cfg.storage_low_mib, cfg.storage_critical_mib)
